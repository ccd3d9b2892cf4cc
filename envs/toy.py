"""``mpo_gym/Toy-v0``: a trivially learnable env for "it learns" tests.

The prompt names a letter; the response should repeat it. The reward is the fraction of the
response's characters that are the named letter, so a random tiny model gets a dense,
non-zero signal and a learner visibly improves within a few dozen updates. Use the ``"char"``
tokenizer and a tiny model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mpo_gym.env import ReasoningEnv
from mpo_gym.task import Task
from mpo_gym.verifiers.base import Verdict, _check_lengths, register_verifier

from .procedural import ProceduralTasks

__all__ = ["RepeatLetterVerifier", "ToyEnv"]


class RepeatLetterVerifier:
    """Reward = share of the response's characters equal to ``reference`` (a single letter)."""

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s

    def verify(self, response: str, reference: Any) -> Verdict:
        if not response:
            return Verdict(0.0, "no_answer", None, "empty response")
        share = sum(c == reference for c in response) / len(response)
        return Verdict(share, "correct" if share == 1.0 else "incorrect", response, f"{share:.2f} match")

    def verify_batch(self, responses: Sequence[str], references: Sequence[Any]) -> list[Verdict]:
        _check_lengths(responses, references)
        return [self.verify(r, ref) for r, ref in zip(responses, references)]


register_verifier("repeat-letter", RepeatLetterVerifier)


def make_toy_tasks(letters: str = "abcd", **kwargs: Any) -> ProceduralTasks:
    def generate(rng: np.random.Generator) -> Task:
        letter = letters[int(rng.integers(len(letters)))]
        return Task(f"Say {letter}", letter, "", letter * 4, {})

    kwargs.setdefault("test_size", len(letters))
    kwargs.setdefault("disjoint", False)
    return ProceduralTasks(generate, name="toy", **kwargs)


class ToyEnv(ReasoningEnv):
    """Repeat the named letter (see module doc). Defaults: char tokenizer, 8 tokens, K=4."""

    def __init__(self, letters: str = "abcd", split: str = "train", seed: int = 0, **kwargs: Any):
        kwargs.setdefault("tokenizer", "char")
        kwargs.setdefault("max_new_tokens", 8)
        kwargs.setdefault("block_size", 4)
        kwargs.setdefault("max_prompt_tokens", 64)
        super().__init__(make_toy_tasks(letters, split=split, seed=seed), verifier="repeat-letter", **kwargs)
        self.split = split  # the split served (trainers check it)
