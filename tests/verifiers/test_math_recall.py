"""Recall and false positives of ``MathVerifier`` vs math-verify on the same cases."""

from __future__ import annotations

import importlib.util
import json
from collections import defaultdict
from pathlib import Path

import pytest

from mpo_gym.verifiers import MathVerifier
from mpo_gym.verifiers.math_audit import audit_math, main, math_verify_says

pytest.importorskip("math_verify")


def _load_cases() -> list[tuple[str, str, str, str]]:
    path = Path(__file__).with_name("test_math_table.py")
    spec = importlib.util.spec_from_file_location("_math_table_cases", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CASES


CASES = _load_cases()


@pytest.fixture(scope="module")
def scores():
    ours = MathVerifier(timeout_s=10.0).verify_batch([c[2] for c in CASES], [c[1] for c in CASES])
    per_family: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for (family, ref, resp, expected), v in zip(CASES, ours):
        theirs = bool(math_verify_says(ref, resp))
        for name, said in (("ours", v.correct), ("math_verify", theirs)):
            if expected == "correct":
                per_family[family][name + "_tp"][0] += said
                per_family[family][name + "_tp"][1] += 1
            else:
                per_family[family][name + "_fp"][0] += said
                per_family[family][name + "_fp"][1] += 1
    return per_family


def _total(scores, key: str) -> tuple[int, int]:
    hits = sum(f[key][0] for f in scores.values())
    return hits, sum(f[key][1] for f in scores.values())


def test_zero_false_positives_and_recall_at_least_math_verify(scores):
    ours_tp, positives = _total(scores, "ours_tp")
    mv_tp, _ = _total(scores, "math_verify_tp")
    ours_fp, negatives = _total(scores, "ours_fp")
    mv_fp, _ = _total(scores, "math_verify_fp")
    print(f"\nrecall ours {ours_tp}/{positives}, math-verify {mv_tp}/{positives}; "
          f"false positives ours {ours_fp}/{negatives}, math-verify {mv_fp}/{negatives}")
    assert ours_fp == 0
    assert ours_tp >= mv_tp


def test_recall_per_family_at_least_math_verify(scores):
    behind = {fam: (s["ours_tp"][0], s["math_verify_tp"][0]) for fam, s in scores.items()
              if s["ours_tp"][0] < s["math_verify_tp"][0]}
    assert behind == {}


def test_audit_tool_lists_disagreements(tmp_path, capsys):
    rows = [
        {"reference": "\\frac{1}{2}", "response": "\\boxed{0.5}"},  # both correct
        {"reference": "30^\\circ", "response": "\\boxed{\\frac{\\pi}{6}}"},  # only ours
        {"reference": "0", "response": "\\boxed{a+3z=0}"},  # only math-verify
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    found = audit_math(path)
    assert [d["line"] for d in found] == [2, 3]
    assert found[0]["ours"] == "correct" and found[0]["math_verify"] is False
    assert main([str(path)]) == 0
    assert "2 disagreement(s)" in capsys.readouterr().out


def test_audit_tool_rejects_rows_without_fields(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"gold": "1", "text": "1"}) + "\n")
    assert main([str(path)]) == 1
    assert "needs 'reference' and 'response'" in capsys.readouterr().err


@pytest.mark.slow
def test_realistic_mix_recall_at_least_math_verify():
    """The benchmark's 1,000 MATH-500/GSM8K cases: everything math-verify accepts, we accept."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_math_verifier.py"
    spec = importlib.util.spec_from_file_location("_bench_math", path)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    if not (bench.SHARED / "math500" / "test.jsonl").exists():
        pytest.skip("MATH-500 / GSM8K copies not available")
    cases = bench.build_cases(1000)
    ours = MathVerifier().verify_batch([c[0] for c in cases], [c[1] for c in cases])
    only_theirs = [c for c, v in zip(cases, ours)
                   if math_verify_says(c[1], c[0]) and not v.correct]
    assert only_theirs == []
