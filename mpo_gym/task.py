"""``Task``: one problem (prompt, reference, id), and task sources."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Task", "TaskSource", "ListTaskSource"]


@dataclass(frozen=True)
class Task:
    """One problem.

    Attributes:
        prompt: the user message (plain text; the env renders it with the chat template).
        reference: what the verifier checks against (a gold answer string for math, a test
            dict for code).
        id: a stable identifier (``"gsm8k/test/17"``, ``"arithmetic/train/42"``).
        solution: an optional worked reference solution (used for MTP warm-up and SFT).
        metadata: anything else (difficulty, source row).
    """

    prompt: str
    reference: Any
    id: str
    solution: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class TaskSource(Protocol):
    """A finite, indexable collection of tasks. ``source[i]`` must be deterministic."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Task: ...


class ListTaskSource:
    """Tasks held in a list (also accepts dicts with ``prompt``/``reference`` keys).

    Args:
        tasks: ``Task`` objects or dicts with ``prompt``, ``reference`` and optional ``id``,
            ``solution``, ``metadata``.
        examples: optional few-shot ``(user, assistant)`` turns rendered before each prompt.
        system_prompt: optional system message.
    """

    def __init__(
        self,
        tasks: Sequence[Task | dict[str, Any]],
        examples: Sequence[tuple[str, str]] = (),
        system_prompt: str | None = None,
    ):
        self.tasks = [self._coerce(t, i) for i, t in enumerate(tasks)]
        if not self.tasks:
            raise ValueError("a task source needs at least one task")
        self.examples = list(examples)
        self.system_prompt = system_prompt

    @staticmethod
    def _coerce(task: Task | dict[str, Any], index: int) -> Task:
        if isinstance(task, Task):
            return task
        if not isinstance(task, dict) or "prompt" not in task or "reference" not in task:
            raise ValueError(
                f"task {index} must be a Task or a dict with 'prompt' and 'reference'; got {task!r:.80}"
            )
        return Task(
            prompt=str(task["prompt"]),
            reference=task["reference"],
            id=str(task.get("id", index)),
            solution=task.get("solution"),
            metadata=dict(task.get("metadata", {})),
        )

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> Task:
        return self.tasks[index]
