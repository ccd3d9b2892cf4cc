"""``mpo_gym/CodeFunctions-v0``: small function-writing tasks with generated tests.

Each task asks for one Python function from a family (add a constant, reverse words, count a
character, ...) with random parameters; the reference is MBPP-shaped
(``{"test_list": [...], "test_setup_code": ""}``) with asserts generated from a trusted
reference implementation, and graded by the sandboxed code verifier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mpo_gym.env import ReasoningEnv
from mpo_gym.task import Task

from .procedural import ProceduralTasks

__all__ = ["CodeFunctionsEnv", "make_code_tasks"]

EXAMPLE = (
    "Write a Python function `double(x)` that returns x multiplied by 2.",
    "```python\ndef double(x):\n    return x * 2\n```",
)
_WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "pixel", "orbit", "maple", "quartz"]

# family -> (prompt template, solution template, reference implementation factory, input maker)
Family = tuple[str, str, Callable[[int], Callable[..., Any]], Callable[[np.random.Generator], tuple[Any, ...]]]


def _ints(rng: np.random.Generator) -> tuple[Any, ...]:
    return (int(rng.integers(-50, 51)),)


def _int_list(rng: np.random.Generator) -> tuple[Any, ...]:
    return ([int(v) for v in rng.integers(-20, 21, size=int(rng.integers(1, 7)))],)


def _sentence(rng: np.random.Generator) -> tuple[Any, ...]:
    return (" ".join(str(w) for w in rng.choice(_WORDS, size=int(rng.integers(1, 5)))),)


FAMILIES: dict[str, Family] = {
    "add_const": (
        "Write a Python function `{name}(x)` that returns x plus {k}.",
        "def {name}(x):\n    return x + {k}",
        lambda k: lambda x: x + k,
        _ints,
    ),
    "mul_const": (
        "Write a Python function `{name}(x)` that returns x multiplied by {k}.",
        "def {name}(x):\n    return x * {k}",
        lambda k: lambda x: x * k,
        _ints,
    ),
    "count_above": (
        "Write a Python function `{name}(xs)` that returns how many numbers in the list xs are greater than {k}.",
        "def {name}(xs):\n    return sum(1 for x in xs if x > {k})",
        lambda k: lambda xs: sum(1 for x in xs if x > k),
        _int_list,
    ),
    "sum_multiples": (
        "Write a Python function `{name}(xs)` that returns the sum of the numbers in the list xs that are divisible by {m}.",
        "def {name}(xs):\n    return sum(x for x in xs if x % {m} == 0)",
        lambda k: lambda xs: sum(x for x in xs if x % (k % 4 + 2) == 0),
        _int_list,
    ),
    "reverse_words": (
        "Write a Python function `{name}(s)` that returns the string s with the order of its space-separated words reversed.",
        "def {name}(s):\n    return ' '.join(s.split(' ')[::-1])",
        lambda k: lambda s: " ".join(s.split(" ")[::-1]),
        _sentence,
    ),
    "max_minus_min": (
        "Write a Python function `{name}(xs)` that returns the largest number in the non-empty list xs minus the smallest.",
        "def {name}(xs):\n    return max(xs) - min(xs)",
        lambda k: lambda xs: max(xs) - min(xs),
        _int_list,
    ),
}


def make_code_tasks(families: str = "all", n_tests: int = 4, **kwargs: Any) -> ProceduralTasks:
    """Function-writing tasks; ``families`` is ``"all"`` or a comma-separated subset of FAMILIES."""
    chosen = list(FAMILIES) if families == "all" else [f.strip() for f in families.split(",")]
    unknown = set(chosen) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown code families {sorted(unknown)}; known: {sorted(FAMILIES)}")

    def generate(rng: np.random.Generator) -> Task:
        family = chosen[int(rng.integers(len(chosen)))]
        prompt_t, solution_t, impl, make_input = FAMILIES[family]
        k = int(rng.integers(2, 20))
        name = f"{family}_{int(rng.integers(100, 1000))}"
        fmt = {"name": name, "k": k, "m": k % 4 + 2}
        fn = impl(k)
        tests = []
        for _ in range(n_tests):
            args = make_input(rng)
            tests.append(f"assert {name}({', '.join(repr(a) for a in args)}) == {fn(*args)!r}")
        solution = "```python\n" + solution_t.format(**fmt) + "\n```"
        return Task(prompt_t.format(**fmt), {"test_list": tests, "test_setup_code": ""}, "", solution, {"family": family})

    return ProceduralTasks(generate, name="code_functions", examples=(EXAMPLE,), **kwargs)


class CodeFunctionsEnv(ReasoningEnv):
    """Procedural function-writing tasks graded by the sandboxed code verifier."""

    def __init__(
        self,
        families: str = "all",
        n_tests: int = 4,
        split: str = "train",
        seed: int = 0,
        test_size: int = 200,
        verifier: str = "code",
        **kwargs: Any,
    ):
        kwargs.setdefault("max_new_tokens", 128)
        tasks = make_code_tasks(families, n_tests, split=split, seed=seed, test_size=test_size)
        super().__init__(tasks, verifier=verifier, **kwargs)
        self.split = split  # the split served (trainers check it)
