"""Throughput of ``MathVerifier`` (process-isolated, ``verify_batch``) vs math-verify.

A mixed set of realistic cases is built from the MATH-500 and GSM8K copies in
``../shared/data`` (beside the checkout): full reference solutions against their answers,
the same solutions against another problem's answer, answers rewritten the way models
write them (``a/b``, ``\\dfrac``, units, "The final answer is", ``x = ...``), and GSM8K
"#### N" responses.

Two sets are timed, with the same inputs for both checkers:

- **parsing**: the cases that our in-process string comparison does not settle (the
  extracted answer and the reference differ as normalised strings), so both checkers
  must parse and compare;
- **all**: every case (ours settles the rest in the caller without a worker).

At equal cores: ours with ``--workers`` worker processes (plus the caller, which only runs
string code) against math-verify in the same number of fresh forked processes (its
default ``parse``/``verify``, its own ``signal.alarm`` time limits, no isolation between
checks). Each configuration runs ``--rounds`` times, interleaved, on fresh processes (no
warm parse caches from an earlier round); the best round is reported, with the caller's
CPU time for ours. Timings on a shared machine are noisy: compare the ratios.

    python benchmarks/bench_math_verifier.py [--n 1000] [--workers 1,2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

from mpo_gym.verifiers import MathVerifier
from mpo_gym.verifiers.math_extract import (
    count_items,
    extract_answer,
    extract_reference,
    normalize,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # ../shared/data


def _rows(name: str) -> list[dict]:
    path = SHARED / name / "test.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _rewrite(answer: str, rng: random.Random) -> str:
    """One of the ways a model writes the same answer."""
    frac = re.fullmatch(r"\\d?frac\{(-?\d+)\}\{(\d+)\}", answer)
    options = [
        lambda: f"The final answer is ${answer}$. I hope it is correct.",
        lambda: f"Therefore, the answer is $\\boxed{{{answer.replace('frac', 'dfrac')}}}$.",
        lambda: f"Answer: {answer}",
        lambda: f"so $x = {answer}$, i.e. $\\boxed{{x = {answer}}}$",
    ]
    if frac:
        options.append(lambda: f"\\boxed{{{frac.group(1)}/{frac.group(2)}}}")
        options.append(lambda: f"\\boxed{{{int(frac.group(1)) / int(frac.group(2)):.10g}}}")
    if re.fullmatch(r"-?\d+", answer):
        options.append(lambda: f"\\boxed{{{answer} \\text{{ units}}}}")
        options.append(lambda: f"\\boxed{{{int(answer):,}}}")
    return rng.choice(options)()


def build_cases(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (response, reference) pairs, a realistic mix of correct and incorrect."""
    rng = random.Random(seed)
    math500, gsm8k = _rows("math500"), _rows("gsm8k")
    if not math500 or not gsm8k:
        raise SystemExit(f"MATH-500 / GSM8K copies not found under {SHARED}")
    cases: list[tuple[str, str]] = []
    for i, row in enumerate(math500[: n // 4]):
        cases.append((row["solution"], row["answer"]))
        cases.append((row["solution"], math500[(i + 7) % len(math500)]["answer"]))
    for row in math500[: n // 5]:
        cases.append((_rewrite(row["answer"], rng), row["answer"]))
    for i, row in enumerate(gsm8k[: (n - len(cases)) // 2 + 1]):
        gold = row["answer"].split("####")[-1].strip()
        other = gsm8k[(i + 3) % len(gsm8k)]["answer"].split("####")[-1].strip()
        cases.append((row["answer"], gold))
        cases.append((row["answer"], other))
    rng.shuffle(cases)
    return cases[:n]


def needs_parsing(response: str, reference: str) -> bool:
    """Whether our in-process string comparison cannot settle this case."""
    gold = extract_reference(reference)
    answer = extract_answer(response, items=count_items(normalize(gold)))
    return answer is not None and normalize(answer) != normalize(gold)


def _mv_check(pair: tuple[str, str]) -> bool:
    from mpo_gym.verifiers.math_audit import math_verify_says

    return bool(math_verify_says(pair[1], pair[0]))


def time_ours(cases: list[tuple[str, str]], workers: int) -> tuple[float, float, list]:
    """Seconds (wall, caller CPU) for one ``verify_batch`` on fresh workers, and verdicts."""
    verifier = MathVerifier(timeout_s=5.0, workers=workers)
    verifier.pool.close()  # fresh workers: no parse cache from an earlier round
    verifier = MathVerifier(timeout_s=5.0, workers=workers)
    verifier.verify_batch(["\\boxed{2/4}"] * workers, ["1/2"] * workers)  # start-up, untimed
    wall, cpu = time.perf_counter(), time.process_time()
    verdicts = verifier.verify_batch([c[0] for c in cases], [c[1] for c in cases])
    return time.perf_counter() - wall, time.process_time() - cpu, verdicts


def time_math_verify(cases: list[tuple[str, str]], procs: int) -> tuple[float, list[bool]]:
    """Seconds for math-verify on ``procs`` fresh forked processes, and its verdicts."""
    import math_verify  # noqa: F401 - imported before the fork, as our workers inherit sympy
    import multiprocess

    with multiprocess.get_context("fork").Pool(procs) as pool:
        pool.map(_mv_check, [("\\boxed{2/4}", "1/2")] * procs)  # start-up, untimed
        start = time.perf_counter()
        said = pool.map(_mv_check, cases, chunksize=4)
        return time.perf_counter() - start, said


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--workers", default="1,2", help="comma-separated core counts to compare")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-math-verify", action="store_true")
    args = ap.parse_args(argv)
    cores = [int(w) for w in args.workers.split(",")]
    cases = build_cases(args.n)
    sets = {"parsing": [c for c in cases if needs_parsing(*c)], "all": cases}
    print(f"cases: {len(cases)}; {len(sets['parsing'])} need parsing, "
          f"{len(cases) - len(sets['parsing'])} are settled by string equality in the caller")
    rows = []
    for name, subset in sets.items():
        for n in cores:
            best_ours, best_mv, cpu, verdicts, said = None, None, 0.0, [], []
            for _ in range(args.rounds):  # interleaved rounds: load changes hit both
                wall, c, verdicts = time_ours(subset, n)
                if best_ours is None or wall < best_ours:
                    best_ours, cpu = wall, c
                if not args.skip_math_verify:
                    secs, said = time_math_verify(subset, n)
                    best_mv = secs if best_mv is None else min(best_mv, secs)
            ours_rate = len(subset) / best_ours
            mv_rate = len(subset) / best_mv if best_mv else float("nan")
            only_ours = sum(v.correct and not m for v, m in zip(verdicts, said))
            only_mv = sum(m and not v.correct for v, m in zip(verdicts, said))
            rows.append((name, len(subset), n, ours_rate, cpu, mv_rate, only_ours, only_mv))
    print("\n| cases | n | cores | ours checks/s (caller CPU s) | math-verify checks/s | ratio "
          "| correct only ours / only math-verify |")
    print("|---|---|---|---|---|---|---|")
    for name, size, n, ours_rate, cpu, mv_rate, only_ours, only_mv in rows:
        print(f"| {name} | {size} | {n} | {ours_rate:.1f} ({cpu:.1f}) | {mv_rate:.1f} | "
              f"{ours_rate / mv_rate:.2f}x | {only_ours} / {only_mv} |")


if __name__ == "__main__":
    main()
