"""Seeded procedural task sources with disjoint train/test splits."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import numpy as np

from mpo_gym.task import Task

__all__ = ["ProceduralTasks"]

_SPLITS = {"train": 0, "test": 1}


class ProceduralTasks:
    """Tasks made by ``generate(rng)`` from a per-index random stream.

    Task ``i`` of a split is always the same for a given ``seed``. The ``test`` split is the
    first ``test_size`` tasks of its own stream; ``train`` tasks whose prompt also appears in
    the test split are redrawn, so held-out evaluation never sees a training prompt (this
    matters for small problem spaces such as two-digit sums).

    Args:
        generate: ``rng -> Task`` (the ``id`` is overwritten with ``"{name}/{split}/{i}"``).
        name: prefix of task ids.
        split: ``"train"`` or ``"test"``.
        seed: the base seed of both streams.
        size: number of tasks in this split (``test_size`` for ``"test"``).
        test_size: size of the test split (also used to exclude test prompts from train).
        examples: few-shot ``(user, assistant)`` turns.
        system_prompt: optional system message.
        disjoint: redraw train tasks that collide with test prompts (turn off for spaces so
            small that every prompt is also a test prompt).
    """

    def __init__(
        self,
        generate: Callable[[np.random.Generator], Task],
        name: str,
        split: str = "train",
        seed: int = 0,
        size: int = 100_000,
        test_size: int = 500,
        examples: tuple[tuple[str, str], ...] = (),
        system_prompt: str | None = None,
        disjoint: bool = True,
    ):
        if split not in _SPLITS:
            raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
        self.generate, self.name, self.split, self.seed = generate, name, split, int(seed)
        self.test_size = int(test_size)
        self.size = self.test_size if split == "test" else int(size)
        self.examples = examples
        self.system_prompt = system_prompt
        self.disjoint = disjoint

    def __len__(self) -> int:
        return self.size

    def _draw(self, split: str, index: int, attempt: int = 0) -> Task:
        rng = np.random.default_rng([self.seed, _SPLITS[split], index, attempt])
        task = self.generate(rng)
        return Task(task.prompt, task.reference, f"{self.name}/{split}/{index}", task.solution, task.metadata)

    @cached_property
    def _test_prompts(self) -> frozenset[str]:
        return frozenset(self._draw("test", i).prompt for i in range(self.test_size))

    def __getitem__(self, index: int) -> Task:
        index = int(index)
        if not 0 <= index < self.size:
            raise IndexError(f"task index {index} out of range for {self.size} tasks")
        if self.split == "test" or not self.disjoint:
            return self._draw(self.split, index)
        for attempt in range(100):
            task = self._draw("train", index, attempt)
            if task.prompt not in self._test_prompts:
                return task
        raise RuntimeError(
            f"{self.name}: could not draw a train task outside the test split; "
            "the problem space is too small for test_size"
        )
