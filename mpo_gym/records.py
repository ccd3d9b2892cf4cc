"""The one per-episode record, from rollout to report: :class:`SampleRecord`.

``samples.jsonl`` (evaluation), ``completions.jsonl`` (training) and the rows of
``eval_tasks.jsonl`` (a projection: task, ``when``, status, ``correct``, reward) come from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["SampleRecord", "episode_record"]

_NO_VERDICT = "the episode ended (a wrapper truncated it) before the env verified it"


@dataclass(frozen=True)
class SampleRecord:
    """One response and its verdict (one line of ``samples.jsonl``)."""

    suite: str
    model: str
    task_id: str
    task_index: int
    sample: int  # 0..n_samples-1 for this task
    prompt: str  # the task's user prompt (before the chat template)
    reference: Any
    response: str
    status: str
    extracted: str | None
    detail: str
    reward: float
    response_tokens: int
    truncated: bool


def episode_record(ep: Any, env: Any, *, suite: str = "", model: str = "", sample: int = 0) -> SampleRecord:
    """The one per-episode record (``samples.jsonl``, ``completions.jsonl``; ``eval_tasks.jsonl``
    rows are a projection of it) of a rollout episode of ``env``'s tasks."""
    base = getattr(env, "unwrapped", env)
    task = base.tasks[int(ep.task_index)]
    verdict = ep.verdict
    return SampleRecord(
        suite=suite, model=model, task_id=task.id, task_index=int(ep.task_index),
        sample=sample, prompt=task.prompt, reference=task.reference, response=ep.text,
        status=verdict.status if verdict is not None else "no_answer",
        extracted=verdict.extracted if verdict is not None else None,
        detail=verdict.detail if verdict is not None else _NO_VERDICT,
        reward=float(ep.reward), response_tokens=len(ep.response_ids),
        truncated=bool(ep.truncated),
    )  # fmt: skip
