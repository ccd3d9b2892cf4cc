"""Judge a value returned from the sandbox: bounded decoding, then Python's own ``==``.

The equality rule is the official harness's: a test ``assert f(x) == y`` passes exactly when
Python's ``==`` on the returned value and ``y`` is true (``1 == True``, ``{1} == {1.0}``,
``1 + 0j == 1.0`` hold; ``0 == 1e-10`` and ``0.1 + 0.2 == 0.3`` do not). There is no
tolerance of our own; a test that has one (``abs(f(x) - y) < tol``) keeps exactly it, and an
exception in that expression (``OverflowError`` for ``10 ** 400 - 1.5``, ``TypeError`` for a
string) fails the test, as it would officially.

The returned value arrives as untrusted typed JSON (see ``code_runner.encode``). Rebuilding
it can cost the caller a lot (CPython's int hashes are not randomised: a set of multiples of
``2**61 - 1`` takes quadratic time to build), so it is rebuilt under a :class:`Budget` taken
from the *expected* value (trusted dataset literal): a value equal to ``y`` has as many
nodes as ``y``, strings and bytes no longer than the longest in ``y``, and ints no wider than
the widest int in ``y`` (or than a float's range). Anything larger is unequal, decided
before it is built; a result line longer than :func:`encoded_size_limit` is not even parsed.
So the caller's work per test is bounded by the size of the test itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 100  # as code_runner.MAX_DEPTH
FLOAT_HEX_DIGITS = 260  # any int equal to a finite float has at most 256 hex digits
MAX_FLOAT_TEXT = 64  # float.hex() is at most ~24 characters


class Unequal(Exception):
    """The raw value cannot equal the expected one (decided without rebuilding it)."""


@dataclass
class Budget:
    """What a value equal to the expected one can need.

    Attributes:
        nodes: scalars + containers left to rebuild.
        text: longest ``str`` (characters) or ``bytes`` (bytes).
        digits: widest ``int``, in hex digits.
    """

    nodes: int
    text: int
    digits: int


def budget_for(expected: Any) -> Budget:
    """The :class:`Budget` of an expected value (a trusted literal)."""
    budget = Budget(0, 0, FLOAT_HEX_DIGITS)
    for value in _nodes(expected):
        budget.nodes += 1
        kind = type(value)
        if kind is str or kind is bytes:
            budget.text = max(budget.text, len(value))
        elif kind is int:
            budget.digits = max(budget.digits, (value.bit_length() + 3) // 4 + 1)
    return budget


def encoded_size_limit(expected: Any) -> int:
    """Most bytes the typed JSON of a value equal to ``expected`` can take (a result line
    longer than this is unequal, and is not even parsed). Per node: the tag and punctuation
    (< 100 bytes), the int's hex digits (an int equal to a float has at most 256), and for
    text its escaped form (at most 12 bytes per character, ``\\ud83d\\ude00``)."""
    size = 1024
    for value in _nodes(expected):
        kind = type(value)
        size += 100
        if kind is str:
            size += 12 * len(value)
        elif kind is bytes:
            size += 2 * len(value)
        elif kind is int:
            size += max(FLOAT_HEX_DIGITS, (value.bit_length() + 3) // 4 + 1)
        elif kind in (float, complex, bool):
            size += 2 * FLOAT_HEX_DIGITS
    return size


def _nodes(expected: Any) -> Any:
    stack = [(expected, 0)]
    while stack:
        value, depth = stack.pop()
        yield value
        kind = type(value)
        if depth < MAX_DEPTH and kind is dict:
            stack.extend((item, depth + 1) for pair in value.items() for item in pair)
        elif depth < MAX_DEPTH and kind in (list, tuple, set, frozenset):
            stack.extend((item, depth + 1) for item in value)


_BUILDERS: dict[str, Any] = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


def decode_bounded(obj: Any, budget: Budget, _depth: int = 0) -> Any:
    """Rebuild a typed-JSON value within ``budget``.

    Raises:
        Unequal: the value needs more than the budget, so it cannot equal the expected one.
        ValueError: the value is malformed (no honest runner writes it).
    """
    if _depth > MAX_DEPTH or type(obj) is not dict:
        raise ValueError("malformed typed value")
    tag, raw = obj.get("t"), obj.get("v")
    budget.nodes -= 1
    if budget.nodes < 0:
        raise Unequal
    if tag == "none":
        return None
    if tag == "bool" and type(raw) is bool:
        return raw
    if tag == "int" and type(raw) is str:
        if len(raw) > budget.digits:
            raise Unequal
        return int(raw, 16)
    if tag == "float" and type(raw) is str and len(raw) <= MAX_FLOAT_TEXT:
        return float.fromhex(raw)
    if tag == "complex" and type(raw) is list and len(raw) == 2:
        if not all(type(p) is str and len(p) <= MAX_FLOAT_TEXT for p in raw):
            raise ValueError("malformed complex")
        return complex(float.fromhex(raw[0]), float.fromhex(raw[1]))
    if tag == "str" and type(raw) is str:
        if len(raw) > budget.text:
            raise Unequal
        return raw
    if tag == "bytes" and type(raw) is str:
        if len(raw) > 2 * budget.text:
            raise Unequal
        return bytes.fromhex(raw)
    if type(raw) is not list or (tag != "dict" and tag not in _BUILDERS):
        raise ValueError(f"malformed typed value with tag {str(tag)[:20]!r}")
    if len(raw) * (2 if tag == "dict" else 1) > budget.nodes:
        raise Unequal  # checked before any item is rebuilt or hashed
    if tag == "dict":
        if not all(type(p) is list and len(p) == 2 for p in raw):
            raise ValueError("malformed dict")
        return dict(
            (decode_bounded(k, budget, _depth + 1), decode_bounded(v, budget, _depth + 1))
            for k, v in raw
        )
    return _BUILDERS[tag](decode_bounded(v, budget, _depth + 1) for v in raw)


def values_equal(
    expected: Any, got: Any, abs_tol: float | None = None, inclusive: bool = False
) -> bool:
    """The test's verdict on two rebuilt values: ``got == expected``, or, for a test with a
    tolerance, ``abs(got - expected) < abs_tol`` (``<=`` when ``inclusive``). An exception
    while evaluating it (as in the original test) is a failed test."""
    try:
        if abs_tol is None:
            return bool(got == expected)
        diff = abs(got - expected)
        return bool(diff <= abs_tol if inclusive else diff < abs_tol)
    except (ArithmeticError, TypeError, ValueError, RecursionError):
        return False


def result_equal(
    raw: Any, expected: Any, abs_tol: float | None = None, inclusive: bool = False
) -> tuple[bool, Any]:
    """Decode ``raw`` within the expected value's budget and compare.

    Returns ``(equal, got)``; when the value was over budget, ``got`` is a small preview of
    it (or a :class:`Summary` of its type and size) and ``equal`` is false.

    Raises:
        ValueError: malformed value.
    """
    try:
        try:
            got = decode_bounded(raw, budget_for(expected))
        except Unequal:
            return False, preview(raw)
    except RecursionError as exc:
        raise ValueError("malformed typed value (too deep)") from exc
    return values_equal(expected, got, abs_tol, inclusive), got


PREVIEW = Budget(nodes=200, text=1000, digits=1100)


class Summary:
    """Stands in, in a verdict detail, for a value too large to rebuild."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def preview(raw: Any) -> Any:
    """``raw`` rebuilt within :data:`PREVIEW`, else a :class:`Summary` of its type and size."""
    try:
        return decode_bounded(raw, Budget(PREVIEW.nodes, PREVIEW.text, PREVIEW.digits))
    except (Unequal, ValueError, RecursionError):
        pass
    if type(raw) is not dict:
        return Summary("<malformed>")
    tag, value = str(raw.get("t"))[:20], raw.get("v")
    if type(value) is list:
        return Summary(f"<{tag} of {len(value)} items>")
    if type(value) is str:
        return Summary(f"<{tag} of {len(value)} characters>")
    return Summary(f"<{tag}>")



# ---------------------------------------------------------------------------- MBPP+ (EvalPlus)
def _plus_budget(expected: Any, rule: Any) -> Budget:
    """The rebuild budget of an MBPP+ test. ``==`` needs no more than the expected value; the
    special oracles accept values of other sizes (``set`` one with duplicates, ``not_none`` any
    value) and ``numpy.allclose`` broadcasts, so those get a wider bound, still fixed by the
    test."""
    budget = budget_for(expected)
    if rule.oracle == "eq" and not rule.atol:
        return budget
    if rule.alt is not None:
        alt = budget_for(rule.alt)
        budget = Budget(budget.nodes + alt.nodes, max(budget.text, alt.text), max(budget.digits, alt.digits))
    return Budget(4 * budget.nodes + 1000, max(budget.text, 1 << 16), max(budget.digits, 1100))


def _plus_exact(got: Any, expected: Any, rule: Any) -> bool:
    """EvalPlus's ``exact_match`` for one result, with its special oracle."""
    oracle = rule.oracle
    if oracle == "set":
        return bool(set(got) == set(expected))
    if oracle == "not_none":
        return bool(got == expected) if type(got) is bool else bool(expected == (got is not None))
    if oracle == "any":
        return True
    exact = bool(got == expected)
    if oracle == "or_zero":
        return exact or bool(got == 0)
    if oracle == "alt":
        return exact or bool(got == rule.alt)
    if oracle == "alt_tol":
        return exact or bool(abs(got - rule.alt) <= rule.atol)
    return exact


def plus_values_equal(got: Any, expected: Any, rule: Any) -> bool:
    """EvalPlus's verdict on one MBPP+ input, on rebuilt primitives.

    ``exact_match`` first (``==``, or the task's special oracle); when it fails and a tolerance
    is in force (``rule.atol``: the task's ``atol``, or ``1e-6`` after a float expected value),
    the result passes if it has the expected value's type (and length, for a list or tuple) and
    ``numpy.allclose(got, expected, rtol=1e-7, atol=atol)`` holds. An exception while comparing
    (``set()`` of a list of lists, ``abs`` of a string) fails the input, as there.
    """
    try:
        exact = _plus_exact(got, expected, rule)
    except (ArithmeticError, TypeError, ValueError, RecursionError):
        return False
    if exact or not rule.atol:
        return exact
    if type(got) is not type(expected):
        return False
    if type(expected) in (list, tuple) and len(got) != len(expected):
        return False
    import numpy as np

    try:
        with np.errstate(all="ignore"):
            return bool(np.allclose(got, expected, rtol=1e-07, atol=rule.atol))
    except (ArithmeticError, TypeError, ValueError, RecursionError, OverflowError):
        return False


def plus_result_equal(message: dict, expected: Any, rule: Any) -> tuple[bool, Any]:
    """Judge one calls-mode result message (``ok``, ``bad`` or ``too_large``) of an MBPP+ test.

    A value the protocol does not rebuild (not a plain primitive, or longer than any value the
    test could accept) is some object other than ``None``: it passes only the ``any`` oracle,
    and ``not_none`` when the expected answer is "not None".

    Raises:
        ValueError: malformed value.
    """
    if "ok" not in message:
        got = Summary("<a value that is not a plain primitive>" if "bad" in message else "<a value too large to rebuild>")
        return (rule.oracle == "any" or (rule.oracle == "not_none" and expected is True)), got
    try:
        try:
            got = decode_bounded(message["ok"], _plus_budget(expected, rule))
        except Unequal:
            got = preview(message["ok"])
            return (rule.oracle == "any" or (rule.oracle == "not_none" and expected is True)), got
    except RecursionError as exc:
        raise ValueError("malformed typed value (too deep)") from exc
    return plus_values_equal(got, expected, rule), got
