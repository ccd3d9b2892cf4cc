"""MBPP+ (EvalPlus) extra tests as call cases: the value codec and the per-task test object.

EvalPlus's MBPP+ (v0.2.0) gives, for 378 MBPP tasks, a reference solution and many more inputs
than MBPP's three asserts (edge cases such as empty lists), but no expected outputs: those
are the reference solution's results. The package ships them precomputed
(``mpo_gym/envs/data/mbppplus/``, made in the sandbox by
``benchmarks/make_mbppplus_expected.py``); this module reads that data into
:class:`~.code_tests.CallCase` objects that :class:`~.code.CodeVerifier` runs like MBPP's
asserts: the arguments go into the sandbox, the expected values stay out here, and each result
is judged by EvalPlus's rule (:func:`.code_compare.plus_values_equal`).

An MBPP reference carries them as ``reference["plus"]``, a :class:`PlusTests`.

Value encoding (:func:`encode_value` / :func:`decode_value`): ``repr`` text read back with
``ast.literal_eval`` where that gives back exactly the same value (same types all the way
down, the same float bits), else the typed JSON of ``code_runner.encode`` (float infinities
and NaN, ``set()``, ints beyond the string-conversion limit, ``-0.0`` inside a set...). So
tuples, lists, sets, dicts, floats, complex numbers, bytes, big ints and ``None`` round-trip.
"""

from __future__ import annotations

import ast
import functools
import json
from dataclasses import dataclass, field
from typing import Any

from .code_runner import EncodeError, decode, encode
from .code_tests import PLUS_ORACLES, CallCase, PlusRule

__all__ = ["PlusTests", "decode_value", "encode_value", "identical"]

ARGS_SHOWN = 150  # characters of the arguments in a test's description


def identical(a: Any, b: Any) -> bool:
    """Same value *and* same types at every level (``1`` is not ``True`` nor ``1.0``; a NaN is
    identical to a NaN with the same bits); False for anything that is not a plain primitive."""
    try:
        return encode(a) == encode(b)
    except (EncodeError, RecursionError, ValueError):
        return False


def encode_value(value: Any) -> str | dict:
    """``repr(value)`` when ``ast.literal_eval`` rebuilds it exactly, else its typed JSON.

    Raises:
        EncodeError: the value is not a plain primitive (or too large or deep to encode).
    """
    try:
        text = repr(value)
        if identical(ast.literal_eval(text), value):
            return text
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    return encode(value)


def decode_value(obj: str | dict) -> Any:
    """Inverse of :func:`encode_value` (the text is trusted package data, read as a literal)."""
    if type(obj) is str:
        return ast.literal_eval(obj)
    return decode(obj)


@dataclass(frozen=True)
class PlusTests:
    """The MBPP+ tests of one task, decoded into call cases on first use (then cached).

    Attributes:
        task_id: EvalPlus's id (``"Mbpp/2"``).
        entry_point: the function the tests call.
        n_base: how many of the tests come from ``base_input`` (MBPP's own inputs, with the
            reference solution's outputs); the rest come from ``plus_input``.
        n: number of tests.
        record: the task's line of the shipped data file (JSON text).

    Its ``repr`` is short, so a reference holding it stays readable in logs and sample files.
    """

    task_id: str
    entry_point: str
    n_base: int
    n: int
    record: str = field(repr=False, compare=False)

    @classmethod
    def from_record(cls, record: str) -> PlusTests:
        """Build from one line of the data file (checked when its cases are first needed)."""
        row = json.loads(record)
        return cls(str(row["task_id"]), str(row["entry_point"]), int(row["n_base"]),
                   len(row["tests"]), record)

    def cases(self) -> tuple[CallCase, ...]:
        """The tests as call cases, in file order (base inputs first)."""
        return _decode_record(self.record)

    def __str__(self) -> str:
        return f"<MBPP+ {self.task_id}: {self.n} tests ({self.n_base} base, {self.n - self.n_base} plus)>"


@functools.lru_cache(maxsize=512)
def _decode_record(record: str) -> tuple[CallCase, ...]:
    row = json.loads(record)
    name, oracle, n_base = str(row["entry_point"]), str(row.get("oracle", "eq")), int(row["n_base"])
    if oracle not in PLUS_ORACLES:
        raise ValueError(f"{row['task_id']}: unknown oracle {oracle!r}")
    tests = row["tests"]
    atols = row.get("atol") or [0.0] * len(tests)
    alts = row.get("alt") or [None] * len(tests)
    if not (len(atols) == len(alts) == len(tests)):
        raise ValueError(f"{row['task_id']}: atol/alt lists do not match the tests")
    cases = []
    for index, ((args_raw, expected_raw), atol, alt) in enumerate(zip(tests, atols, alts)):
        args = decode_value(args_raw)
        if type(args) is not list:
            raise ValueError(f"{row['task_id']}: test {index} arguments are not a list")
        group, number, count = ("base", index + 1, n_base) if index < n_base else ("plus", index - n_base + 1, len(tests) - n_base)
        try:
            shown = repr(args)[1:-1]
        except ValueError:  # an int beyond the string-conversion limit
            shown = "<arguments too large to show>"
        shown = shown if len(shown) <= ARGS_SHOWN else shown[: ARGS_SHOWN - 3] + "..."
        rule = PlusRule(float(atol), oracle, None if alt is None else decode_value(alt))
        cases.append(CallCase(name, tuple(args), {}, decode_value(expected_raw),
                              f"MBPP+ {group} input {number}/{count}: {name}({shown})", plus=rule))
    return tuple(cases)
