"""Compare ``MathVerifier`` with math-verify on a JSONL file of (reference, response) rows.

Usage (wired as ``mpo-gym audit-math FILE.jsonl``)::

    python -m mpo_gym.verifiers.math_audit runs/samples.jsonl [--limit N] [--json]

Each row needs ``"reference"`` and ``"response"`` fields (``"answer"``/``"solution"`` are
accepted as aliases). Rows where the two checkers disagree are printed, so that real false
negatives and false positives can be turned into regression cases. math-verify is a dev
dependency (``pip install 'mpo-gym[dev]'``); it uses ``signal.alarm`` for its own time
limits, so call this from the main thread.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .math import MathVerifier

__all__ = ["audit_math", "main", "math_verify_says"]


def math_verify_says(reference: str, response: str) -> bool | None:
    """math-verify's verdict (``True`` = correct), or ``None`` if it is unavailable or fails.

    The reference is wrapped in ``\\boxed{}`` unless it already has one, so that its LaTeX
    extractor reads it whole.
    """
    try:
        from math_verify import parse, verify
    except ImportError:
        return None
    gold_text = reference if "\\boxed" in reference else "\\boxed{" + reference + "}"
    try:
        return bool(verify(parse(gold_text), parse(response)))
    except Exception:  # its own failures (timeouts included) are "not verified"
        return None


def _read_rows(path: str | Path) -> list[tuple[str, str]]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        obj = json.loads(line)
        ref = obj.get("reference", obj.get("answer"))
        resp = obj.get("response", obj.get("solution"))
        if ref is None or resp is None:
            raise ValueError(
                f"{path}:{n}: each row needs 'reference' and 'response'; got keys {sorted(obj)}"
            )
        rows.append((str(ref), str(resp)))
    return rows


def audit_math(
    path: str | Path, limit: int | None = None, verifier: MathVerifier | None = None
) -> list[dict[str, Any]]:
    """Rows of ``path`` on which ``MathVerifier`` and math-verify disagree.

    Returns:
        One dict per disagreement: ``line`` (1-based row index), ``reference``,
        ``response`` (last 300 characters), ``ours`` (status), ``extracted``, ``detail``,
        ``math_verify`` (``True``/``False``, or ``None`` when it failed on that row).

    Raises:
        ImportError: math-verify is not installed.
    """
    import math_verify  # noqa: F401 - fail early with a clear error

    rows = _read_rows(path)[:limit]
    verifier = verifier or MathVerifier()
    ours = verifier.verify_batch([r for _, r in rows], [g for g, _ in rows])
    out = []
    for i, ((ref, resp), v) in enumerate(zip(rows, ours), 1):
        theirs = math_verify_says(ref, resp)
        if (v.status == "correct") != bool(theirs):
            out.append({
                "line": i, "reference": ref, "response": resp[-300:], "ours": v.status,
                "extracted": v.extracted, "detail": v.detail, "math_verify": theirs,
            })
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: print disagreements; exit status 0 (1 when the file cannot be read)."""
    ap = argparse.ArgumentParser(prog="mpo-gym audit-math", description=__doc__.split("\n")[0])
    ap.add_argument("path", help="JSONL file with 'reference' and 'response' fields")
    ap.add_argument("--limit", type=int, default=None, help="only the first N rows")
    ap.add_argument("--timeout", type=float, default=5.0, help="per-check limit, seconds")
    ap.add_argument("--json", action="store_true", help="print disagreements as JSON lines")
    args = ap.parse_args(argv)
    try:
        rows = audit_math(args.path, args.limit, MathVerifier(timeout_s=args.timeout))
    except (OSError, ValueError, ImportError) as exc:
        print(f"audit-math: {exc}", file=sys.stderr)
        return 1
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(f"line {row['line']}: ours={row['ours']} math_verify={row['math_verify']} "
                  f"reference={row['reference']!r} extracted={row['extracted']!r} "
                  f"({row['detail']})")
    if not args.json:
        print(f"{len(rows)} disagreement(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
