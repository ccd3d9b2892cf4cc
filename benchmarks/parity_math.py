"""Parity of ``MathVerifier`` with math-verify on real model samples (GSM8K, MATH-500).

Either samples the embedded model first (``--generate N``: ``mpo-gym eval --suite
gsm8k,math500 --model default --limit N``, greedy, data from ``../shared/data`` beside the
checkout unless ``--data-dir`` says otherwise), or reads ``samples.jsonl`` files that
``mpo-gym eval`` wrote (``--samples PATH ...``). Then, per suite, both checkers judge the
same (reference, response) rows: ours with its default settings, math-verify with its
default ``parse``/``verify`` (the reference wrapped in ``\\boxed{}``, as ``mpo-gym
audit-math`` does). Prints the agreement table and every disagreement (the rows
``mpo-gym audit-math FILE`` lists), for the closing note to explain one by one.

    python benchmarks/parity_math.py --generate 40 [--out runs/parity-math]
    python benchmarks/parity_math.py --samples runs/eval-.../samples.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from mpo_gym.verifiers import MathVerifier
from mpo_gym.verifiers.math_audit import audit_math, math_verify_says

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # ../shared/data


def generate(limit: int, out: Path, data_dir: Path | None, timeout_s: int) -> Path:
    """Sample the embedded model on the first ``limit`` tasks of GSM8K and MATH-500."""
    cmd = [sys.executable, "-m", "mpo_gym.cli", "eval", "--suite", "gsm8k,math500",
           "--model", "default", "--limit", str(limit), "--out", str(out), "--no-progress"]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    subprocess.run(cmd, check=True, timeout=timeout_s)
    return out / "samples.jsonl"


def parity(paths: list[Path]) -> dict[str, dict]:
    """Per suite: counts of (ours correct, math-verify correct) and the disagreements."""
    rows_by_suite: dict[str, list[dict]] = defaultdict(list)
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows_by_suite[row.get("suite", path.stem)].append(row)
    verifier = MathVerifier()
    report = {}
    for suite, rows in sorted(rows_by_suite.items()):
        verdicts = verifier.verify_batch([r["response"] for r in rows],
                                         [r["reference"] for r in rows])
        table: Counter = Counter()
        for row, v in zip(rows, verdicts):
            theirs = bool(math_verify_says(str(row["reference"]), str(row["response"])))
            table[(v.correct, theirs)] += 1
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            f.write("\n".join(json.dumps({"reference": r["reference"],
                                          "response": r["response"]}) for r in rows) + "\n")
        disagreements = audit_math(f.name, verifier=verifier)  # what `mpo-gym audit-math` lists
        Path(f.name).unlink()
        report[suite] = {
            "rows": len(rows),
            "both_correct": table[(True, True)],
            "both_not": table[(False, False)],
            "only_ours": table[(True, False)],
            "only_math_verify": table[(False, True)],
            "ours_statuses": dict(Counter(v.status for v in verdicts)),
            "disagreements": [dict(d, task_id=rows[d["line"] - 1].get("task_id"))
                              for d in disagreements],
        }
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--generate", type=int, metavar="N", help="sample N tasks of each suite")
    src.add_argument("--samples", type=Path, nargs="+", help="samples.jsonl from mpo-gym eval")
    ap.add_argument("--out", type=Path, default=Path("runs/parity-math"))
    ap.add_argument("--data-dir", type=Path, default=SHARED if SHARED.exists() else None)
    ap.add_argument("--timeout", type=int, default=3600, help="limit for sampling, seconds")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    paths = args.samples or [generate(args.generate, args.out, args.data_dir, args.timeout)]
    report = parity(paths)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print("| suite | rows | both correct | both not | only ours | only math-verify | ours statuses |")
    print("|---|---|---|---|---|---|---|")
    for suite, r in report.items():
        print(f"| {suite} | {r['rows']} | {r['both_correct']} | {r['both_not']} | "
              f"{r['only_ours']} | {r['only_math_verify']} | {r['ours_statuses']} |")
    for suite, r in report.items():
        for d in r["disagreements"]:
            print(f"\n{suite} {d['task_id']}: ours={d['ours']} math_verify={d['math_verify']} "
                  f"reference={d['reference']!r} extracted={d['extracted']!r} ({d['detail']})\n"
                  f"  ...{d['response'][-200:]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
