"""``mpo_gym/LinearEquation-v0``: solve ``a x + b = c x + d`` for x (rational answers)."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np

from mpo_gym.env import ReasoningEnv
from mpo_gym.task import Task

from .arithmetic import _latex
from .procedural import ProceduralTasks

__all__ = ["LinearEquationEnv", "make_linear_tasks"]

EXAMPLE = (
    "Solve for x: 2x + 3 = 11.",
    "Subtract 3: 2x = 8. Divide by 2: x = 4. The final answer is \\boxed{4}.",
)


def _side(coef: int, const: int) -> str:
    parts = []
    if coef:
        parts.append("x" if coef == 1 else "-x" if coef == -1 else f"{coef}x")
    if const or not parts:
        if parts:
            parts.append(f"+ {const}" if const >= 0 else f"- {-const}")
        else:
            parts.append(str(const))
    return " ".join(parts)


def make_linear_tasks(max_coef: int = 9, both_sides: bool = False, integer_answers: bool = False, **kwargs: Any) -> ProceduralTasks:
    """Equations with coefficients in ``[-max_coef, max_coef]``.

    ``both_sides`` puts an x term on the right too; ``integer_answers`` picks equations whose
    solution is an integer, otherwise answers are reduced fractions (``\\frac{p}{q}``).
    """
    if max_coef < 2:
        raise ValueError("max_coef must be >= 2")

    def nonzero(rng: np.random.Generator) -> int:
        value = 0
        while value == 0:
            value = int(rng.integers(-max_coef, max_coef + 1))
        return value

    def generate(rng: np.random.Generator) -> Task:
        while True:
            a, c = nonzero(rng), (nonzero(rng) if both_sides else 0)
            if a != c:
                break
        b = int(rng.integers(-max_coef * 3, max_coef * 3 + 1))
        if integer_answers:
            x = int(rng.integers(-max_coef, max_coef + 1))
            d = (a - c) * x + b
        else:
            d = int(rng.integers(-max_coef * 3, max_coef * 3 + 1))
        answer = Fraction(d - b, a - c)
        eq = f"{_side(a, b)} = {_side(c, d)}"
        solution = f"Move terms: {a - c}x = {d - b}, so x = {_latex(answer)}. The final answer is \\boxed{{{_latex(answer)}}}."
        return Task(f"Solve for x: {eq}.", _latex(answer), "", solution, {"a": a, "b": b, "c": c, "d": d})

    return ProceduralTasks(generate, name="linear", examples=(EXAMPLE,), **kwargs)


class LinearEquationEnv(ReasoningEnv):
    """Linear equations in one unknown; the math verifier accepts ``x = 3/4``, ``0.75``, ``\\frac34``."""

    def __init__(
        self,
        max_coef: int = 9,
        both_sides: bool = False,
        integer_answers: bool = False,
        split: str = "train",
        seed: int = 0,
        test_size: int = 500,
        verifier: str = "math",
        **kwargs: Any,
    ):
        tasks = make_linear_tasks(max_coef, both_sides, integer_answers, split=split, seed=seed, test_size=test_size)
        super().__init__(tasks, verifier=verifier, **kwargs)
        self.split = split  # the split served (trainers check it)
