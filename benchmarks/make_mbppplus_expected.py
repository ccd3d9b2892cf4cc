"""Derive MBPP+'s expected outputs (the package's ``envs/data/mbppplus/``) in the sandbox.

EvalPlus's ``MbppPlus.jsonl.gz`` (v0.2.0) has inputs but no outputs: EvalPlus computes the
ground truth by running each task's reference solution (``prompt + canonical_solution``) on a
copy of each input. This script does the same, but in ``mpo_gym``'s sandbox (the reference
solutions are dataset code; nothing from the file runs in this process), and writes one gzip
JSON line per task:

    {"task_id": "Mbpp/2", "entry_point": "similar_elements", "prompt": "...",
     "canonical_solution": "...", "oracle": "set", "n_base": 3,
     "tests": [[ARGS, EXPECTED], ...], "atol": [...], "alt": [...]}

(``prompt`` and ``canonical_solution`` are EvalPlus's, unchanged: the prompt is a docstring with
the task text and one example assert.)

``ARGS`` (the positional arguments, a list) and ``EXPECTED`` are encoded by
``mpo_gym.verifiers.code_plus.encode_value`` (``repr`` text where ``ast.literal_eval`` gives it
back exactly, else typed JSON). ``atol`` (only when some input has a tolerance) is the
tolerance EvalPlus applies to each input: the task's ``atol``, or ``1e-6`` from the first input
of its group (base, plus) with a float expected value on, when that is 0 (EvalPlus's loop
keeps the raised value). ``alt`` (tasks 558 and 581 only) is the second accepted value of
EvalPlus's special oracle for that input, computed by a function written here, in the
sandbox too. ``oracle`` is EvalPlus's special comparison for the entry point
(``mpo_gym.verifiers.code_tests.PLUS_ORACLES``). ``mbpp_asserts`` says whether the reference
solution passes the MBPP task's own asserts (checked with ``CodeVerifier``; see
:func:`mark_mbpp_asserts`).

Inputs are first rebuilt as EvalPlus does before use (JSON has no tuples, sets or complex
numbers: ``mbpp_deserialize_inputs``; the table below is that rule, restated). An input is
dropped, and counted, when the reference solution raises on it, returns something that is
not a plain primitive, or runs longer than ``--max-input-s`` alone; and to bound the reward's
cost per response, a task keeps its inputs in file order while their reference run time adds
up to at most ``--max-task-s``, their encoded arguments to ``--max-args-bytes`` and their
expected values to ``--max-expected-bytes`` (base inputs are kept before plus inputs).

    python benchmarks/make_mbppplus_expected.py PATH/TO/MbppPlus.jsonl.gz [--out envs/data/mbppplus]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mpo_gym.verifiers.code_plus import encode_value
from mpo_gym.verifiers.code_runner import EncodeError, decode, encode
from mpo_gym.verifiers.sandbox import Limits, Sandbox, collect

OUT_NAME = "mbppplus_tests.jsonl.gz"
WRAPPER = "__mbppplus_timed__"

# EvalPlus's special oracles, by entry point (evalplus/eval/__init__.py, _special_oracle.py).
SET_EQ = {"similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
          "larg_nnum", "intersection_array", "find_dissimilar", "Diff"}
NOT_NONE = {"check_str", "text_match_three", "text_starta_endb"}
ORACLES = {"are_equivalent": "any", "sum_div": "or_zero", "surface_Area": "alt_tol",
           "digit_distance_nums": "alt"}
# Second accepted values for the "alt" oracles, written for this script (run in the sandbox).
ALT_CODE = {
    "surface_Area": (
        "import math\n"
        "def surface_Area(base, height):\n"
        "    slant = math.sqrt((base / 2) ** 2 + height ** 2)\n"
        "    return round(base * base + 2 * base * slant)\n"
    ),
    "digit_distance_nums": (
        "def digit_distance_nums(a, b):\n"
        "    x, y = str(a), str(b)\n"
        "    width = max(len(x), len(y))\n"
        "    return sum(abs(int(p) - int(q)) for p, q in zip(x.zfill(width), y.zfill(width)))\n"
    ),
}

# How EvalPlus rebuilds each task's JSON inputs (its mbpp_deserialize_inputs), by task number.
EACH_ARG_TUPLE = {2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596,
                  616, 630, 726, 740, 744, 809}
EACH_ARG_ITEMS_TUPLE = {63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780}
FIRST_ARG_ITEMS_TUPLE = {75, 413, 444, 753}
SECOND_ARG_TUPLE = {106, 750}
FIRST_ARG_TUPLE = {250, 405, 446, 617, 720, 763, 808, 307}
EACH_ARG_NESTED_TUPLE = {259, 401, 445}
ALL_LISTS_TUPLE = {580, 615, 791}


def _deep_tuple(value: Any) -> Any:
    return tuple(_deep_tuple(v) for v in value) if isinstance(value, list) else value


def rebuild_input(number: int, inp: list) -> list:
    """One input as the positional arguments EvalPlus passes (tuples and sets restored)."""
    if number in EACH_ARG_TUPLE:
        return [tuple(arg) for arg in inp]
    if number in EACH_ARG_ITEMS_TUPLE:
        return [[tuple(item) for item in arg] for arg in inp]
    if number in FIRST_ARG_ITEMS_TUPLE:
        return [[tuple(item) for item in inp[0]], inp[1]]
    if number in SECOND_ARG_TUPLE:
        return [inp[0], tuple(inp[1])]
    if number in FIRST_ARG_TUPLE:
        return [tuple(inp[0]), *inp[1:]] if number == 307 else [tuple(inp[0]), inp[1]]
    if number in EACH_ARG_NESTED_TUPLE:
        return [tuple(tuple(item) for item in arg) for arg in inp]
    if number in ALL_LISTS_TUPLE:
        return list(_deep_tuple(inp))
    if number == 115:  # an empty list becomes {} (a dict), as there
        return [[set(item) if isinstance(item, list) and item else {} for item in inp[0]]]
    if number == 124:
        return [float(inp[0]), complex(inp[1])]
    if number == 252:
        return [complex(inp[0])]
    if number == 278:
        return [tuple(tuple(item) if isinstance(item, list) else item for item in inp[0])]
    if number == 722:
        return [{key: tuple(value) for key, value in inp[0].items()}, *inp[1:]]
    return list(inp)


def is_floats(value: Any) -> bool:
    """EvalPlus's test for "a float, or a non-empty list/tuple of floats"."""
    if isinstance(value, float):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, float) for v in value)


def _program(code: str, entry: str, not_none: bool) -> str:
    result = "__out is not None" if not_none else "__out"
    return (
        f"{code}\n\n"
        f"def {WRAPPER}(*args):\n"
        "    import time as __time\n"
        "    __start = __time.perf_counter()\n"
        f"    __out = {entry}(*args)\n"
        f"    return [__time.perf_counter() - __start, {result}]\n"
    )


def run_inputs(sandbox: Sandbox, program: str, inputs: list[list], deadline_s: float) -> list[Any]:
    """Per input: ``("ok", seconds, value)``, ``("raised", kind)``, ``("not_primitive",)`` or
    ``("timeout",)``; one sandboxed process for all, then one per input if that one fails."""
    out = _run_batch(sandbox, program, inputs, deadline_s)
    if out is not None:
        return out
    singles = []
    for inp in inputs:
        one = _run_batch(sandbox, program, [inp], min(deadline_s, 20.0))
        singles.append(one[0] if one is not None else ("timeout",))
    return singles


def _run_batch(sandbox: Sandbox, program: str, inputs: list[list], deadline_s: float) -> list[Any] | None:
    calls = [[WRAPPER, encode(list(inp)), encode({})] for inp in inputs]
    run = sandbox.start({"mode": "calls", "code": program, "calls": calls})
    result = collect([run], time.monotonic() + deadline_s)[0]
    lines = [json.loads(line) for line in result.channel.split(b"\n") if line.strip()]
    if result.failure or result.timed_out or result.overflow or not lines:
        return None
    if lines[0].get("status") == "load_error":
        raise RuntimeError(f"reference solution does not load: {lines[0]['error']}")
    if lines[-1] != {"status": "done", "n": len(inputs)} or result.returncode != 0:
        return None
    out: list[Any] = []
    for message in lines[:-1]:
        if "ok" in message:
            seconds, value = decode(message["ok"])  # type: ignore[misc]
            out.append(("ok", float(seconds), value))
        elif "exc" in message:
            out.append(("raised", str(message["exc"][0])))
        else:
            out.append(("not_primitive",))
    return out


def _size(encoded: Any) -> int:
    return len(json.dumps(encoded, separators=(",", ":")))


def derive_task(sandbox: Sandbox, row: dict, opts: argparse.Namespace) -> tuple[dict | None, Counter]:
    """The output line of one task and the counts of what was kept and dropped (and why)."""
    number = int(row["task_id"].split("/")[1])
    entry = row["entry_point"]
    groups = {g: [rebuild_input(number, inp) for inp in row[f"{g}_input"]] for g in ("base", "plus")}
    program = _program(row["prompt"] + row["canonical_solution"], entry, entry in NOT_NONE)
    alt_program = _program(ALT_CODE[entry], entry, False) if entry in ALT_CODE else None
    counts: Counter = Counter()
    kept: list[tuple[str, list, Any, float, Any]] = []
    budget = {"time": opts.max_task_s, "args": opts.max_args_bytes, "expected": opts.max_expected_bytes}
    for group, inputs in groups.items():
        results = run_inputs(sandbox, program, inputs, opts.deadline_s)
        alts = run_inputs(sandbox, alt_program, inputs, opts.deadline_s) if alt_program else [None] * len(inputs)
        atol = float(row["atol"])
        for inp, res, alt in zip(inputs, results, alts):
            counts[f"{group}_total"] += 1
            if res[0] == "ok" and atol == 0 and is_floats(res[2]):
                atol = 1e-6  # EvalPlus raises the tolerance from here on, for the rest of the group
            reason = None
            if res[0] != "ok":
                reason = res[0]
            elif res[1] > opts.max_input_s:
                reason = "slow"
            elif alt is not None and alt[0] != "ok":
                reason = "alt_" + alt[0]
            if reason is None:
                try:
                    args_enc, expected_enc = encode_value(inp), encode_value(res[2])
                    alt_enc = encode_value(alt[2]) if alt is not None else None
                except (EncodeError, RecursionError, ValueError):
                    reason = "unencodable"
            if reason is None:
                cost = {"time": res[1], "args": _size(args_enc), "expected": _size(expected_enc)}
                over = [k for k in budget if cost[k] > budget[k]]
                if over:
                    reason = f"cap_{over[0]}"
                else:
                    for k in budget:
                        budget[k] -= cost[k]
                    kept.append((group, args_enc, expected_enc, atol, alt_enc))
            counts[f"{group}_{'kept' if reason is None else 'dropped_' + reason}"] += 1
    if not kept:
        return None, counts
    line: dict[str, Any] = {"task_id": row["task_id"], "entry_point": entry, "prompt": row["prompt"],
                            "canonical_solution": row["canonical_solution"]}
    oracle = "set" if entry in SET_EQ else "not_none" if entry in NOT_NONE else ORACLES.get(entry, "eq")
    if oracle != "eq":
        line["oracle"] = oracle
    line["n_base"] = sum(1 for k in kept if k[0] == "base")
    line["tests"] = [[k[1], k[2]] for k in kept]
    if any(k[3] for k in kept):
        line["atol"] = [k[3] for k in kept]
    if alt_program:
        line["alt"] = [k[4] for k in kept]
    return line, counts


def mark_mbpp_asserts(lines: list[dict], workers: int) -> Counter:
    """Set each line's ``mbpp_asserts``: whether MBPP+'s reference solution passes the MBPP task's
    own asserts (``test_list`` and ``challenge_test_list``, as ``mpo_gym/MBPP-v0`` grades them),
    checked by ``CodeVerifier`` in the sandbox. Where it does not (MBPP+ changed the signature or
    the expected values), the two test sets contradict each other and the MBPP env does not add
    MBPP+'s tests to that task."""
    from mpo_gym.envs.suites import load_rows
    from mpo_gym.verifiers.code import CodeVerifier

    mbpp = {int(r["task_id"]): r for split in ("prompt", "test", "validation", "train") for r in load_rows("mbpp", split)}
    refs, solutions = [], []
    for line in lines:
        row = mbpp[int(line["task_id"].split("/")[1])]
        tests = list(row["test_list"]) + [t for t in row.get("challenge_test_list") or [] if t not in row["test_list"]]
        refs.append({"test_list": tests, "test_setup_code": row.get("test_setup_code") or ""})
        solutions.append(f"```python\n{line['prompt']}{line['canonical_solution']}\n```")
    with CodeVerifier(timeout_s=20.0, concurrency=workers) as verifier:
        verdicts = verifier.verify_batch(solutions, refs)
    counts: Counter = Counter()
    for line, verdict in zip(lines, verdicts):
        line["mbpp_asserts"] = verdict.correct
        counts["mbpp_asserts_pass" if verdict.correct else "mbpp_asserts_fail"] += 1
        if not verdict.correct:
            print(f"{line['task_id']}: MBPP+ reference fails MBPP's asserts: {verdict.detail[:120]}")
    return counts


def _write(out: Path, lines: list[dict]) -> tuple[bytes, bytes]:
    text = "".join(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n" for line in lines).encode("utf-8")
    data = gzip.compress(text, compresslevel=9, mtime=0)
    out.mkdir(parents=True, exist_ok=True)
    (out / OUT_NAME).write_bytes(data)
    return text, data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="EvalPlus's MbppPlus.jsonl.gz (v0.2.0)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "envs/data/mbppplus")
    parser.add_argument("--max-input-s", type=float, default=0.5, help="drop an input the reference needs longer for")
    parser.add_argument("--max-task-s", type=float, default=0.25, help="reference run time kept per task")
    parser.add_argument("--max-args-bytes", type=int, default=64_000, help="encoded arguments kept per task")
    parser.add_argument("--max-expected-bytes", type=int, default=64_000, help="encoded expected values kept per task")
    parser.add_argument("--deadline-s", type=float, default=120.0, help="wall-clock limit of one sandboxed run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="only the first N tasks (a trial run)")
    parser.add_argument("--mark-only", action="store_true",
                        help="only (re)compute the mbpp_asserts field of an existing output file")
    opts = parser.parse_args(argv)
    if opts.mark_only:
        path = opts.out / OUT_NAME
        lines = [json.loads(x) for x in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines() if x]
        counts = mark_mbpp_asserts(lines, opts.workers)
        text, data = _write(opts.out, lines)
        print(json.dumps({**counts, "bytes_uncompressed": len(text), "bytes_gzip": len(data),
                          "sha256": hashlib.sha256(data).hexdigest()}, indent=1))
        return 0
    raw = opts.source.read_bytes()
    rows = [json.loads(line) for line in gzip.decompress(raw).decode("utf-8").splitlines() if line.strip()]
    rows = rows[: opts.limit] if opts.limit else rows
    sandbox = Sandbox(Limits(cpu_s=int(opts.deadline_s) + 5, memory_mb=2048, channel_bytes=256 << 20,
                             output_bytes=16 << 20))
    start = time.perf_counter()
    with ThreadPoolExecutor(opts.workers) as pool:
        results = list(pool.map(lambda r: derive_task(sandbox, r, opts), rows))
    lines, totals, empty = [], Counter(), []
    for row, (line, counts) in zip(rows, results):
        totals.update(counts)
        if line is None:
            empty.append(row["task_id"])
        else:
            lines.append(line)
        dropped = {k: v for k, v in counts.items() if "dropped" in k}
        if dropped:
            print(f"{row['task_id']}: {dict(sorted(dropped.items()))}")
    totals.update(mark_mbpp_asserts(lines, opts.workers))
    text, data = _write(opts.out, lines)
    summary = {
        "source_sha256": hashlib.sha256(raw).hexdigest(),
        "tasks": len(rows), "tasks_written": len(lines), "tasks_without_tests": empty,
        "bytes_uncompressed": len(text), "bytes_gzip": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "seconds": round(time.perf_counter() - start, 1),
        **dict(sorted(totals.items())),
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
