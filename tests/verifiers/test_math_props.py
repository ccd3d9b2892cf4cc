"""Property tests (hypothesis) for ``MathVerifier`` and its string layer."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpo_gym.verifiers import STATUSES, MathVerifier, Verdict
from mpo_gym.verifiers.math import check_answer
from mpo_gym.verifiers.math_extract import extract_answer, normalize

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def verifier():
    return MathVerifier(timeout_s=3.0)


ints = st.integers(min_value=-10**6, max_value=10**6)
small = st.integers(min_value=-50, max_value=50)


@st.composite
def latex_answers(draw) -> str:
    """Well-formed LaTeX answers of the kinds references use."""
    a, b = draw(small), draw(st.integers(1, 30))
    kind = draw(st.sampled_from(["int", "frac", "sqrt", "poly", "tuple", "interval", "set", "pi"]))
    return {
        "int": f"{a}",
        "frac": f"\\frac{{{a}}}{{{b}}}",
        "sqrt": f"{b}\\sqrt{{{abs(a) + 2}}}",
        "poly": f"{a}x^2 + {b}x - 1",
        "tuple": f"\\left( {a}, \\frac{{{b}}}{{2}} \\right)",
        "interval": f"[{a}, {a + b})",
        "set": f"\\{{{a}, {a + b}\\}}",
        "pi": f"\\frac{{{b}\\pi}}{{{abs(a) + 1}}}",
    }[kind]


@FAST
@given(text=st.text(max_size=300), reference=st.sampled_from(["42", "\\frac{1}{2}", "x+1", "(1,2)"]))
def test_total_on_arbitrary_text(verifier, text, reference):
    verdict = verifier.verify(text, reference)
    assert isinstance(verdict, Verdict) and verdict.status in STATUSES
    assert verdict.status != "error", verdict
    assert verdict.reward == (1.0 if verdict.status == "correct" else 0.0)


@FAST
@given(text=st.text(alphabet=st.sampled_from(list("\\{}()[]^_$,=<>0123456789xpifracsqrt ")),
                    max_size=80))
def test_total_on_latex_like_noise(verifier, text):
    verdict = verifier.verify("\\boxed{" + text + "}", "2")
    assert verdict.status in ("correct", "incorrect", "no_answer", "timeout"), verdict


@FAST
@given(a=ints, b=ints.filter(lambda b: b != 0))
def test_slash_equals_frac(verifier, a, b):
    verdict = verifier.verify(f"\\boxed{{{a}/{b}}}", f"\\frac{{{a}}}{{{b}}}")
    assert verdict.status == "correct", (a, b, verdict)


@FAST
@given(a=ints, b=ints.filter(lambda b: b != 0), c=ints.filter(lambda c: c != 0))
def test_frac_not_equal_to_a_different_fraction(verifier, a, b, c):
    if a * c == (a + 1) * b:
        return
    verdict = verifier.verify(f"\\boxed{{{a + 1}/{c}}}", f"\\frac{{{a}}}{{{b}}}")
    assert verdict.status == "incorrect", (a, b, c, verdict)


@FAST
@given(answer=latex_answers(), pads=st.lists(st.sampled_from([" ", "  ", "\n", "\t"]),
                                             min_size=1, max_size=5))
def test_whitespace_and_boxed_invariance(verifier, answer, pads):
    spaced = pads[0] + answer.replace(", ", "," + pads[-1]).replace("+", " + ") + pads[-1]
    plain = verifier.verify(answer, answer)
    assert plain.status == "correct"
    assert verifier.verify(f"\\boxed{{{spaced}}}", answer).status == "correct"
    assert verifier.verify(f"So we get $\\boxed{{{answer}}}$.", answer).status == "correct"
    assert normalize(spaced) == normalize(answer)


@FAST
@given(answer=latex_answers())
def test_gold_self_check_through_the_parser(answer):
    """A reference equals itself after parsing (not just as a string)."""
    norm = normalize(answer)
    assert check_answer(norm, norm) == ("correct", "equivalent")


@FAST
@given(answer=latex_answers())
def test_reference_parses(answer):
    status, detail = check_answer(normalize(answer), "\\text{nope}")
    assert status == "incorrect", detail


@FAST
@given(prose=st.text(alphabet=st.sampled_from(list("abcdefghij 0123456789.,")), max_size=200))
def test_prose_numbers_are_never_extracted(prose):
    text = "We tried many things " + prose + " and we are not sure"
    assert extract_answer(text) is None


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(height=st.integers(2, 6), base=st.integers(2, 99),
       wrap=st.sampled_from(["{}", "({})!", "\\sqrt{{{}}}", "{}^{{{}}}"]))
def test_bounded_time_on_hostile_towers(height, base, wrap):
    limit = 0.5
    v = MathVerifier(timeout_s=limit)
    v.verify("\\boxed{2/4}", "1/2")
    tower = str(base)
    for _ in range(height):
        tower = f"{base}^{{{tower}}}"
    answer = wrap.format(tower, tower) if wrap.count("{}") == 2 else wrap.format(tower)
    start = time.monotonic()
    verdict = v.verify(f"\\boxed{{{answer}}}", "7")
    assert time.monotonic() - start < limit + 1.0
    assert verdict.status in ("timeout", "incorrect"), verdict


@FAST
@given(text=st.text(max_size=2000))
def test_extraction_is_fast_on_long_text(text):
    long = (text + " ") * 50
    start = time.thread_time()  # this thread's CPU time: other processes' load does not count
    answer = extract_answer(long)
    if answer is not None and len(answer) < 2000:
        normalize(answer)
    assert time.thread_time() - start < 2.0  # linear work is ~10 ms; backtracking is minutes


_N = 100_000
_REGEX_KILLERS = {
    "answer-spaces": "Answer: " + " " * _N + "x",
    "hash-spaces": "####" + " " * _N + "x!",
    "open-boxes": "\\boxed{" * (_N // 7),
    "closed-boxes": "\\boxed{1} " * (_N // 10),
    "braces": "{" * _N,
    "words": "ab " * (_N // 3),
    "final": "The final answer is " * (_N // 20),
    "newlines": "\n" * _N + "answer",
    "thousands": "1,000" * (_N // 5),
    "units": "5\\text{cm}" * (_N // 10),
    "backslashes": "\\" * _N,
    "dollars": "$ a" * (_N // 3),
    "open-inline": "\\(" * (_N // 2),
    "open-display": "\\[ 1 " * (_N // 5),
    "is-chain": "Final answer: " + "x is " * (_N // 5),
}


@pytest.mark.parametrize("name", sorted(_REGEX_KILLERS))
def test_caller_side_string_code_is_linear(name):
    """Extraction and normalisation run in the caller: no regex backtracking blow-ups."""
    text = _REGEX_KILLERS[name]
    start = time.thread_time()  # this thread's CPU time: other processes' load does not count
    answer = extract_answer(text, items=3)
    normalize(text[:2000])
    if answer is not None and len(answer) <= 2000:
        normalize(answer)
    assert time.thread_time() - start < 2.0  # linear work is ~10 ms; backtracking is minutes
