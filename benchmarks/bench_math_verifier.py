"""Throughput of ``MathVerifier`` (process-isolated, ``verify_batch``) vs math-verify.

A mixed set of 1,000 realistic cases is built from the shared MATH-500 and GSM8K copies:
full reference solutions against their answers, the same solutions against another
problem's answer, answers rewritten the way models write them (``a/b``, ``\\dfrac``, units,
"The final answer is", ``x = ...``), and GSM8K "#### N" responses. Both checkers judge the
same cases in the same run; math-verify runs in-process without isolation, once on one core
and once with one process per core. Prints checks per second and the ratios, plus how often
the two disagree.

    python benchmarks/bench_math_verifier.py [--n 1000] [--workers 2] [--skip-math-verify]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
from pathlib import Path

from mpo_gym.verifiers import MathVerifier
from mpo_gym.verifiers.math_extract import extract_answer, extract_reference, normalize

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


def _mv_check(pair: tuple[str, str]) -> bool:
    from mpo_gym.verifiers.math_audit import math_verify_says

    return bool(math_verify_says(pair[1], pair[0]))


def _needs_worker(response: str, reference: str) -> bool:
    """Whether the in-process string comparison cannot settle this case."""
    answer = extract_answer(response)
    return answer is not None and normalize(answer) != normalize(extract_reference(reference))


def run_ours(cases: list[tuple[str, str]], workers: int) -> tuple[float, list]:
    verifier = MathVerifier(timeout_s=5.0, workers=workers)
    start = time.perf_counter()
    verifier.verify("\\boxed{2/4}", "1/2")  # start the pool outside the timed part
    print(f"pool start-up: {time.perf_counter() - start:.2f}s")
    hard = [c for c in cases if _needs_worker(*c)]
    start = time.perf_counter()  # cold caches: the worker-only subset first
    verifier.verify_batch([c[0] for c in hard], [c[1] for c in hard])
    hard_secs = time.perf_counter() - start
    print(f"worker path only: {len(hard)} cases, {len(hard) / hard_secs:.1f} checks/s")
    verifier.pool.close()  # fresh workers (empty parse caches) for the full run
    verifier.verify("\\boxed{2/4}", "1/2")
    start = time.perf_counter()
    verdicts = verifier.verify_batch([c[0] for c in cases], [c[1] for c in cases])
    return time.perf_counter() - start, verdicts


def run_math_verify(cases: list[tuple[str, str]], procs: int) -> tuple[float, list[bool]]:
    start = time.perf_counter()
    if procs == 1:
        said = [_mv_check(c) for c in cases]
    else:
        import multiprocess

        with multiprocess.get_context("fork").Pool(procs) as pool:
            said = pool.map(_mv_check, cases, chunksize=8)
    return time.perf_counter() - start, said


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--skip-math-verify", action="store_true")
    args = ap.parse_args(argv)
    cases = build_cases(args.n)
    secs, verdicts = run_ours(cases, args.workers)
    statuses = {s: sum(v.status == s for v in verdicts) for s in sorted({v.status for v in verdicts})}
    ours_rate = len(cases) / secs
    print(f"cases: {len(cases)}; ours: {ours_rate:.1f} checks/s ({secs:.2f}s, {args.workers} "
          f"workers, process isolation); statuses {statuses}")
    if args.skip_math_verify:
        return
    mv1_secs, said = run_math_verify(cases, 1)
    mvn_secs, _ = run_math_verify(cases, args.workers)
    mv1, mvn = len(cases) / mv1_secs, len(cases) / mvn_secs
    print(f"math-verify: {mv1:.1f} checks/s on 1 core, {mvn:.1f} checks/s with {args.workers} "
          "processes (no isolation)")
    print(f"ratio ours / math-verify: {ours_rate / mv1:.2f}x vs 1 core, "
          f"{ours_rate / mvn:.2f}x vs {args.workers} processes")
    only_ours = sum(v.correct and not m for v, m in zip(verdicts, said))
    only_mv = sum(m and not v.correct for v, m in zip(verdicts, said))
    print(f"agreement: {len(cases) - only_ours - only_mv}/{len(cases)}; correct only for ours "
          f"{only_ours}, only for math-verify {only_mv}")


if __name__ == "__main__":
    main()
