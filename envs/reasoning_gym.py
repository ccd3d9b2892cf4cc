"""``ReasoningGymEnv``: the 100+ procedural tasks of the ``reasoning-gym`` package as envs.

Needs the optional extra (``pip install "mpo-gym[reasoning-gym]"``). Tasks come from
``reasoning_gym.create_dataset(name, size=..., seed=...)``; the answer is read from the last
``<answer>...</answer>`` or ``\\boxed{...}`` of the response (otherwise ``no_answer``) and scored by
the dataset's own ``score_answer``. Some of those scorers call ``eval`` on the answer, so scoring
runs in a separate worker process with a wall-clock limit and a memory cap (the shared
``verifiers.pool`` pool), never in the caller's process. That worker is *not* a sandbox like the
code verifier's: it shares the caller's user and filesystem.

Example::

    env = gym.make("mpo_gym/ReasoningGym-v0", dataset="basic_arithmetic", tokenizer="default")
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from typing import Any

from mpo_gym.env import ReasoningEnv
from mpo_gym.task import Task
from mpo_gym.verifiers.base import Verdict, _check_lengths, register_verifier
from mpo_gym.verifiers.math_extract import last_boxed
from mpo_gym.verifiers.pool import shared_pool

__all__ = ["ReasoningGymEnv", "ReasoningGymTasks", "ReasoningGymVerifier"]

INSTRUCTION = "Think step by step, then give only the final answer inside <answer></answer>."
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _require() -> Any:
    try:
        import reasoning_gym
    except ImportError as exc:
        raise ImportError(
            "ReasoningGymEnv needs the reasoning-gym package: pip install 'mpo-gym[reasoning-gym]'"
        ) from exc
    return reasoning_gym


@functools.lru_cache(maxsize=16)
def _dataset(name: str, size: int, seed: int, config_json: str) -> Any:
    return _require().create_dataset(name, size=size, seed=seed, **json.loads(config_json))


def _score(spec: tuple[str, int, int, str], index: int, answer: str) -> float:
    """Runs in a worker: rebuild the (cached) dataset and score ``answer`` for entry ``index``."""
    dataset = _dataset(*spec)
    return float(dataset.score_answer(answer=answer, entry=dataset[index]))


def extract_answer(response: str) -> str | None:
    """The last ``<answer>`` block, else the last ``\\boxed{}``; ``None`` when neither exists."""
    found = _ANSWER.findall(response)
    if found:
        return found[-1].strip()
    boxed, _ = last_boxed(response)
    return boxed.strip() if boxed is not None else None


class ReasoningGymVerifier:
    """Scores with the dataset's ``score_answer`` in an isolated worker; reward = its score.

    ``reference`` is ``{"spec": [name, size, seed, config_json], "index": i}`` (what
    :class:`ReasoningGymTasks` puts in ``Task.reference``).
    """

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self.pool = shared_pool("reasoning-gym", size=2)

    def _args(self, response: str, reference: Any) -> tuple[Any, ...] | Verdict:
        answer = extract_answer(response)
        if answer is None:
            return Verdict(0.0, "no_answer", None, "no <answer></answer> or \\boxed{} found")
        return (tuple(reference["spec"]), int(reference["index"]), answer)

    def _verdict(self, args: tuple[Any, ...], result: Any) -> Verdict:
        answer = args[2]
        if result.status != "ok":
            return Verdict(0.0, result.status, answer, result.detail[-300:])
        score = max(0.0, min(1.0, float(result.value)))
        return Verdict(score, "correct" if score >= 1.0 else "incorrect", answer, f"score {score:g}")

    def verify(self, response: str, reference: Any) -> Verdict:
        return self.verify_batch([response], [reference])[0]

    def verify_batch(self, responses: Sequence[str], references: Sequence[Any]) -> list[Verdict]:
        _check_lengths(responses, references)
        prepared = [self._args(r, ref) for r, ref in zip(responses, references)]
        todo = [p for p in prepared if not isinstance(p, Verdict)]
        results = iter(self.pool.map(_score, todo, timeout_s=self.timeout_s))
        return [p if isinstance(p, Verdict) else self._verdict(p, next(results)) for p in prepared]


register_verifier("reasoning-gym", ReasoningGymVerifier)


class ReasoningGymTasks:
    """A reasoning-gym dataset as a task source (deterministic in ``seed``)."""

    def __init__(self, dataset: str, size: int = 1000, seed: int = 0, config: dict[str, Any] | None = None):
        self.spec = (dataset, int(size), int(seed), json.dumps(config or {}, sort_keys=True))
        self.data = _dataset(*self.spec)
        self.name = dataset

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Task:
        entry = self.data[int(index)]
        reference = {"spec": list(self.spec), "index": int(index)}
        prompt = f"{entry['question']}\n\n{INSTRUCTION}"
        solution = f"<answer>{entry['answer']}</answer>"
        return Task(prompt, reference, f"{self.name}/{self.spec[2]}/{index}", solution, {"answer": entry["answer"]})


class ReasoningGymEnv(ReasoningEnv):
    """Any reasoning-gym dataset as a reasoning env (see the module docstring).

    Args:
        dataset: a reasoning-gym dataset name (``reasoning_gym.factory.DATASETS``).
        size: number of tasks; ``seed``: the dataset seed (use another seed for held-out tasks).
        config: dataset options (plain data), passed to ``create_dataset``.
        split: ``"train"`` uses ``seed``, ``"test"`` uses ``seed + 1`` (disjoint draws are the
            dataset's business; reasoning-gym generates independently per seed).
        **kwargs: passed to :class:`~mpo_gym.env.ReasoningEnv`.
    """

    def __init__(
        self,
        dataset: str = "basic_arithmetic",
        size: int = 1000,
        seed: int = 0,
        config: dict[str, Any] | None = None,
        split: str = "train",
        **kwargs: Any,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
        tasks = ReasoningGymTasks(dataset, size, seed + (split == "test"), config)
        kwargs.setdefault("verifier", "reasoning-gym")
        super().__init__(tasks, **kwargs)
        self.split = split  # the split served (trainers check it)
