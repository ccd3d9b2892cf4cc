"""``mpo_gym/Arithmetic-v0``: multi-step integer or fraction arithmetic, answer in ``\\boxed{}``."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np

from mpo_gym.env import ReasoningEnv
from mpo_gym.task import Task

from .procedural import ProceduralTasks

__all__ = ["ArithmeticEnv", "make_arithmetic_tasks"]

EXAMPLE = ("Compute 3 + 4.", "3 + 4 = 7. The final answer is \\boxed{7}.")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _latex(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _operand(rng: np.random.Generator, digits: int, fractions: bool) -> Fraction:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    if fractions and rng.random() < 0.5:
        return Fraction(int(rng.integers(1, 10)), int(rng.integers(2, 10)))
    return Fraction(int(rng.integers(low, 10**digits)))


def make_arithmetic_tasks(
    digits: int = 2, terms: int = 2, ops: str = "+", fractions: bool = False, **kwargs: Any
) -> ProceduralTasks:
    """A task source of ``terms``-operand expressions over ``digits``-digit integers.

    ``ops`` lists the operators drawn from (``"+"``, ``"+-"``, ``"+-*"``); ``*`` binds tighter,
    as usual. With ``fractions`` about half the operands are simple fractions ``p/q``.
    """
    if not 1 <= digits <= 9 or terms < 2 or not ops or set(ops) - set(_OPS):
        raise ValueError("need 1 <= digits <= 9, terms >= 2, and ops made of '+', '-', '*'")

    def generate(rng: np.random.Generator) -> Task:
        values = [_operand(rng, digits, fractions) for _ in range(terms)]
        chosen = [ops[int(rng.integers(len(ops)))] for _ in range(terms - 1)]
        text = _latex(values[0])
        for op, value in zip(chosen, values[1:]):
            text += f" {op} {_latex(value)}" if value >= 0 else f" {op} ({_latex(value)})"
        answer = _evaluate(values, chosen)
        solution = f"{text} = {_latex(answer)}. The final answer is \\boxed{{{_latex(answer)}}}."
        return Task(f"Compute {text}.", _latex(answer), "", solution, {"digits": digits, "terms": terms})

    return ProceduralTasks(generate, name="arithmetic", examples=(EXAMPLE,), **kwargs)


def _evaluate(values: list[Fraction], ops: list[str]) -> Fraction:
    """Left-to-right with ``*`` first."""
    stack = [values[0]]
    pending: list[str] = []
    for op, value in zip(ops, values[1:]):
        if op == "*":
            stack[-1] = stack[-1] * value
        else:
            pending.append(op)
            stack.append(value)
    total = stack[0]
    for op, value in zip(pending, stack[1:]):
        total = _OPS[op](total, value)
    return total


class ArithmeticEnv(ReasoningEnv):
    """Arithmetic with a difficulty knob; the math verifier grades the boxed answer.

    Args:
        digits, terms, ops, fractions: difficulty (see :func:`make_arithmetic_tasks`).
        split: ``"train"`` or ``"test"`` (disjoint prompts).
        seed: base seed of the task streams (not the episode seed).
        test_size: number of held-out tasks.
        **kwargs: passed to :class:`~mpo_gym.env.ReasoningEnv`.
    """

    def __init__(
        self,
        digits: int = 2,
        terms: int = 2,
        ops: str = "+",
        fractions: bool = False,
        split: str = "train",
        seed: int = 0,
        test_size: int = 500,
        verifier: str = "math",
        **kwargs: Any,
    ):
        tasks = make_arithmetic_tasks(digits, terms, ops, fractions, split=split, seed=seed, test_size=test_size)
        super().__init__(tasks, verifier=verifier, **kwargs)
        self.split = split  # the split served (trainers check it)
