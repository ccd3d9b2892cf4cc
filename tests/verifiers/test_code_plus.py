"""MBPP+ support in the code verifier: the value codec and EvalPlus's comparison rule."""

from __future__ import annotations

import json
import math

import pytest

from mpo_gym.verifiers.code_compare import plus_result_equal, plus_values_equal
from mpo_gym.verifiers.code_plus import PlusTests, decode_value, encode_value, identical
from mpo_gym.verifiers.code_runner import EncodeError, encode
from mpo_gym.verifiers.code_tests import PlusRule

TRICKY = [
    0, -1, True, False, None, 1.5, -0.0, 0.1 + 0.2, float("inf"), float("-inf"), float("nan"),
    10**5000, -(2**200), 3 + 4j, complex(float("nan"), 1), b"\x00\xff", "it's \"quoted\"\n\t\u00e9\ud800",
    (), (1,), [], [[]], set(), frozenset(), {-0.0, 0.5}, frozenset({(1, 2)}), {1: (2, 3), "k": [None]},
    {(1, "a"): {2.5}}, [float("nan"), (float("inf"), set())], [10**4400, {10**5000: 1}],
]  # fmt: skip


@pytest.mark.parametrize("value", TRICKY, ids=lambda v: type(v).__name__)
def test_encoding_round_trips_tricky_values_exactly(value):
    encoded = encode_value(value)
    again = decode_value(json.loads(json.dumps(encoded)))  # through the file's JSON, too
    assert identical(again, value)
    assert type(again) is type(value)


def test_encoding_is_compact_repr_where_literal_eval_reads_it_back():
    assert encode_value((1, [2.5, None], {"a": {3}})) == "(1, [2.5, None], {'a': {3}})"
    # what literal_eval cannot give back exactly falls back to typed JSON
    assert encode_value(set()) == "set()"  # literal_eval reads it (Python 3.9+)
    for value in (float("inf"), float("nan"), frozenset(), 10**5000, [(), frozenset()]):
        assert isinstance(encode_value(value), dict), value


def test_identical_is_stricter_than_equality():
    assert 1 == True and not identical(1, True)  # noqa: E712
    assert 1 == 1.0 and not identical(1, 1.0)
    assert (1, 2) != [1, 2] and not identical((1, 2), [1, 2])
    assert not identical(0.0, -0.0)
    assert identical(float("nan"), float("nan"))
    assert not identical(object(), object())
    with pytest.raises(EncodeError):
        encode_value(object())


def _eq(got, expected, atol=0.0, oracle="eq", alt=None):
    return plus_values_equal(got, expected, PlusRule(atol, oracle, alt))


def test_evalplus_rule_exact_then_tolerance():
    assert _eq([1, 2], [1, 2]) and not _eq([1, 2], [2, 1])
    assert _eq(1, True) and _eq(2.0, 2)  # plain ==, as there
    assert not _eq(0.1 + 0.2, 0.3)  # no tolerance in force: exact
    assert _eq(0.1 + 0.2, 0.3, atol=1e-6)  # EvalPlus's default float tolerance
    assert _eq(1.0 + 1e-7, 1.0, atol=1e-6) and not _eq(1.0 + 1e-5, 1.0, atol=1e-6)
    assert _eq(1e9 + 50, 1e9, atol=1e-6)  # rtol 1e-7 of numpy.allclose
    assert _eq([1.0, 2.0000001], [1.0, 2.0], atol=1e-6)
    assert not _eq((1.0, 2.0), [1.0, 2.0], atol=1e-6)  # the tolerance path needs the same type
    assert not _eq([1.0], [1.0, 1.0], atol=1e-6)  # and the same length
    assert not _eq(2, 2.0000001, atol=1e-6)  # int vs float: type differs
    assert not _eq("a", "b", atol=1e-4) and not _eq(float("nan"), float("nan"), atol=1e-6)


def test_evalplus_special_oracles():
    assert _eq([3, 4, 4], (4, 3), oracle="set") and not _eq([3], (4, 3), oracle="set")
    assert not _eq([[1]], [[1]], oracle="set")  # set() of a list of lists raises: fails
    assert _eq("Found", True, oracle="not_none") and not _eq(None, True, oracle="not_none")
    assert _eq(None, False, oracle="not_none") and _eq(True, True, oracle="not_none")
    assert not _eq(False, True, oracle="not_none")  # a bool is compared as a bool
    assert _eq("anything", False, oracle="any")
    assert _eq(0, 7, oracle="or_zero") and _eq(7, 7, oracle="or_zero") and not _eq(1, 7, oracle="or_zero")
    assert _eq(5, 9, oracle="alt", alt=5) and not _eq(6, 9, oracle="alt", alt=5)
    assert _eq(33.00005, 40, atol=1e-4, oracle="alt_tol", alt=33) and not _eq("x", 40, atol=1e-4, oracle="alt_tol", alt=33)


def test_unrebuilt_results_pass_only_where_evalplus_ignores_the_value():
    bad, big = {"bad": "unsupported type Match"}, {"too_large": 10**6}
    rule = PlusRule(0.0, "not_none")
    assert plus_result_equal(bad, True, rule)[0] and not plus_result_equal(bad, False, rule)[0]
    assert plus_result_equal(big, True, PlusRule(0.0, "any"))[0]
    assert not plus_result_equal(bad, 3, PlusRule())[0]
    assert plus_result_equal({"ok": encode([1.0, 2.0])}, [1.0, 2.0], PlusRule())[0]
    # a result larger than anything the test accepts is not rebuilt
    equal, got = plus_result_equal({"ok": encode(list(range(5000)))}, [1, 2], PlusRule())
    assert not equal and "5000" in repr(got)


def test_plus_tests_decode_once_and_describe_their_inputs():
    row = {"task_id": "Mbpp/9", "entry_point": "f", "n_base": 1, "oracle": "set",
           "tests": [["[(1, 2)]", "[1]"], [[encode_value((float("inf"),))][0], "[]"]],
           "atol": [0.0, 1e-6]}  # fmt: skip
    row["tests"][1][0] = encode_value([float("inf")])
    plus = PlusTests("Mbpp/9", "f", 1, 2, json.dumps(row))
    cases = plus.cases()
    assert cases is plus.cases()  # cached
    assert [c.args for c in cases][0] == ((1, 2),) and math.isinf(cases[1].args[0])
    assert cases[0].source == "MBPP+ base input 1/1: f((1, 2))"
    assert cases[1].source.startswith("MBPP+ plus input 1/1: f(inf)")
    assert [c.plus for c in cases] == [PlusRule(0.0, "set"), PlusRule(1e-6, "set")]
    assert "Mbpp/9: 2 tests" in str(plus) and "record" not in repr(plus)
    with pytest.raises(ValueError, match="oracle"):
        PlusTests("Mbpp/9", "f", 1, 2, json.dumps({**row, "oracle": "close"})).cases()
