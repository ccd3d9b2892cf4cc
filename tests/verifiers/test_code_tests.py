"""Tests for the test-plan rewrite (``code_tests``) and the typed codec (``code_runner``)."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mpo_gym.verifiers.code_compare import (
    Budget,
    Unequal,
    budget_for,
    decode_bounded,
    result_equal,
    values_equal,
)
from mpo_gym.verifiers.code_runner import EncodeError, decode, dumps, encode
from mpo_gym.verifiers.code_tests import (
    CallPlan,
    ScriptPlan,
    humaneval_plan,
    mbpp_plan,
)

CHECK = (
    "METADATA = {'author': 'x'}\nimport math\n\n\ndef check(candidate):\n"
    '    """doc"""\n    assert candidate([1, 2], k=3) == (1, 2), \'message\'\n'
    "    assert [0.5] == candidate([], k=0)\n    assert abs(candidate(2) - 0.25) < 1e-6\n"
    "    assert True\n"
)


def test_humaneval_asserts_become_call_cases_without_expected_values_in_the_call():
    plan = humaneval_plan(CHECK, "f")
    assert isinstance(plan, CallPlan)
    first, second, third = plan.cases
    assert (first.name, first.args, first.kwargs, first.expected) == (
        "f",
        ([1, 2],),
        {"k": 3},
        (1, 2),
    )
    assert second.expected == [0.5] and second.args == ([],)
    assert third.abs_tol == 1e-6 and third.expected == 0.25
    assert "f([1, 2], k=3)" in first.source


@pytest.mark.parametrize(
    "body",
    [
        "    for x in range(3):\n        assert candidate(x) == x\n",
        "    assert candidate(1)\n",
        "    assert sorted(candidate(1)) == [1]\n",
        "    y = 2\n    assert candidate(y) == 2\n",
        "    assert candidate(1) != 2\n",
    ],
)
def test_humaneval_shapes_the_rewrite_cannot_express_fall_back_to_a_script(body):
    plan = humaneval_plan("def check(candidate):\n" + body, "f")
    assert isinstance(plan, ScriptPlan)
    assert plan.tests == ("check(f)",) and plan.proxies == ("f",)


def test_humaneval_script_plan_gets_the_prompt_as_trusted_prelude():
    test = "def check(candidate):\n    assert helper(candidate(1)) == 2\n"
    plan = humaneval_plan(test, "f", 'def helper(x):\n    return x\n\ndef f(x):\n    """doc"""\n')
    assert isinstance(plan, ScriptPlan) and "def helper" in plan.prelude


def test_mbpp_asserts_become_call_cases():
    plan = mbpp_plan(("assert f(1, 'a') == [1]", "assert (2, 3) == g(x=1)"), "")
    assert isinstance(plan, CallPlan)
    assert [(c.name, c.expected) for c in plan.cases] == [("f", [1]), ("g", (2, 3))]


def test_mbpp_with_setup_or_helpers_falls_back_and_imports_used_modules():
    plan = mbpp_plan(
        ("assert f(1) == sys.maxsize", "assert math.isclose(h(2), 1.0)"), "import math"
    )
    assert isinstance(plan, ScriptPlan)
    assert plan.proxies == ("f", "h")
    assert "import sys" in plan.prelude and "import math" not in plan.prelude


def test_values_equal_is_pythons_double_equals():
    assert values_equal(240, 240.0) and not values_equal(0.3, 0.1 + 0.2)
    assert not values_equal(0, 1e-10) and not values_equal(5, 5.000000004)
    assert values_equal(1, True) and values_equal(False, 0) and values_equal(1.0, 1 + 0j)
    assert not values_equal((1, 2), [1, 2]) and not values_equal("1", 1)
    assert not values_equal(float("nan"), float("nan"))
    assert values_equal({1: [1.0], "a": (2,)}, {"a": (2,), 1: [1]})
    assert values_equal({1: 1}, {True: 1}) and values_equal({1: "a"}, {1.0: "a"})
    assert values_equal({1, 2}, {2, 1}) and values_equal({1}, frozenset({1.0}))
    assert not values_equal(1.5, 10**400)


def test_values_equal_with_tolerance_is_the_tests_own_expression():
    assert values_equal(0.25, 0.2500001, abs_tol=1e-6)
    assert not values_equal(0.25, float("nan"), abs_tol=1e-6)
    assert not values_equal(0.25, "0.25", abs_tol=1e-6)
    assert not values_equal(0.25, 0.3, abs_tol=1e-6)
    assert not values_equal(0.25, 0.75, abs_tol=0.5) and values_equal(0.25, 0.75, 0.5, True)
    assert not values_equal(1.5, 10**400, abs_tol=1e-6)  # OverflowError: a failed test
    assert values_equal(1.0, 1 + 0j, abs_tol=1e-6)


@given(st.integers(0, 3), st.sampled_from(["set", "dict", "list"]))
def test_bounded_decode_refuses_more_nodes_than_the_expected_value_before_building(n, kind):
    expected = {"set": set(range(n)), "dict": dict.fromkeys(range(n)), "list": list(range(n))}
    big = {"set": set(range(n + 1)), "dict": dict.fromkeys(range(n + 1)), "list": [0] * (n + 1)}
    assert result_equal(encode(expected[kind]), expected[kind])[0]
    with pytest.raises(Unequal):
        decode_bounded(encode(big[kind]), budget_for(expected[kind]))


def test_bounded_decode_limits_text_and_int_width_by_the_expected_value():
    budget = budget_for(["abc", 7])
    assert (budget.nodes, budget.text) == (3, 3)
    with pytest.raises(Unequal):
        decode_bounded(encode("abcd"), Budget(1, 3, 260))
    with pytest.raises(Unequal):
        decode_bounded(encode(1 << 2000), budget_for(1.5))
    assert decode_bounded(encode(1 << 1000), budget_for(1.5)) == 1 << 1000  # may equal a float
    assert decode_bounded(encode(7**3000), budget_for(7**3000)) == 7**3000
    equal, shown = result_equal(encode(list(range(10_000))), [1])
    assert not equal and repr(shown) == "<list of 10000 items>"


def test_colliding_ints_cost_nothing_when_the_expected_set_is_small():
    import time

    colliding = {"t": "set", "v": [encode(i * (2**61 - 1)) for i in range(1, 200_000)]}
    start = time.perf_counter()
    equal, shown = result_equal(colliding, {1, 2})
    assert time.perf_counter() - start < 0.5
    assert not equal and repr(shown) == "<set of 199999 items>"


@pytest.mark.parametrize(
    "bad",
    [{"t": "float", "v": "0x1." + "0" * 100 + "p0"}, {"t": "evil", "v": []}, {"t": "int", "v": 3}],
)
def test_bounded_decode_rejects_malformed_values(bad):
    with pytest.raises(ValueError):
        decode_bounded(bad, Budget(10, 10, 10))


primitives = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.integers() | st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=20,
)


@given(primitives)
def test_codec_round_trips_primitives_with_their_types(value):
    back = decode(encode(value))
    assert type(back) is type(value) and values_equal(value, back)


def test_codec_handles_huge_ints_nan_and_surrogates():
    big = 7**20000
    assert decode(encode(big)) == big
    assert math.isnan(decode(encode(float("nan"))))
    assert decode(encode("\udcff")) == "\udcff"


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [
        type("I", (int,), {})(3),
        type("S", (str,), {})("x"),
        type("L", (list,), {})(),
        object(),
        (i for i in range(2)),
        _nested(150),
    ],
)
def test_codec_rejects_subclasses_objects_and_deep_nesting(value):
    with pytest.raises(EncodeError):
        encode(value)


def test_codec_sends_stdlib_counters_as_plain_dicts():
    from collections import Counter, OrderedDict

    assert decode(encode(Counter("aab"))) == {"a": 2, "b": 1}
    assert type(decode(encode(OrderedDict(a=1)))) is dict


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"t": "int", "v": 3},
        {"t": "list", "v": "x"},
        {"t": "dict", "v": [[{"t": "none"}]]},
        {"t": "evil", "v": []},
    ],
)
def test_decode_rejects_malformed_values(bad):
    with pytest.raises((ValueError, TypeError)):
        decode(bad)


def test_runner_json_writer_matches_json():
    import json

    message = {"i": 0, "ok": encode(["\x1b", "é", None, True, 3]), "exc": ["E", "m\n", None]}
    assert json.loads(dumps(message)) == message


@given(primitives)
@example("\U0001f600" * 1000)  # 12 bytes per character in the channel's ASCII JSON
@example("\x00" * 1000)
@example(b"\xff" * 1000)
@example(7**3000)
@example([-1.5e300] * 100)
@example({"k" * 50: [None, True, 1 + 2j]})
def test_encoded_size_limit_bounds_every_encoding_of_an_equal_value(value):
    from mpo_gym.verifiers.code_compare import encoded_size_limit

    line = dumps({"i": 0, "ok": encode(value)}).encode()
    assert len(line) <= encoded_size_limit(value)
    if type(value) is float:  # an int equal to a float is longer than the float
        assert len(dumps({"i": 0, "ok": encode(int(value))})) <= encoded_size_limit(value)


def test_a_result_line_longer_than_any_equal_value_is_not_parsed():
    from mpo_gym.verifiers.code_judge import Judge
    from mpo_gym.verifiers.code_tests import CallCase

    plan = CallPlan((CallCase("f", (), {}, 5, "f() == 5"),))
    huge = b'{"i": 0, "ok": {"t": "list", "v": [' + b'{"t": "none"}, ' * 20000 + b'{"t": "none"}]}}'
    done = b'{"status": "done", "n": 1}'
    messages = Judge._call_messages(plan, huge + b"\n" + done + b"\n")
    assert messages == [{"i": 0, "too_large": len(huge)}, {"status": "done", "n": 1}]
    small = b'{"i": 0, "ok": {"t": "int", "v": "5"}}'
    assert Judge._call_messages(plan, small + b"\n" + done + b"\n")[0]["ok"] == {"t": "int", "v": "5"}
    assert Judge._call_messages(plan, small + b"\r" + done + b"\n") is None  # \r is no break
