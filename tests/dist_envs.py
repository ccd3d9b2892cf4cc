"""An env for the data-parallel tests (imported by the ranks with ``--import tests.dist_envs``).

Eight tasks; the reward is the share of the response's characters whose code point has the
task's parity (``dist-test-parity``), so even the tiny random model earns varied, non-zero
rewards and every agent gets a real gradient. K=2, so an episode takes several steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym

from mpo_gym.env import ReasoningEnv
from mpo_gym.verifiers.base import Verdict, register_verifier


class ParityVerifier:
    def verify(self, response: str, reference: Any) -> Verdict:
        if not response:
            return Verdict(0.0, "no_answer", None, "empty response")
        share = sum(ord(c) % 2 == int(reference) for c in response) / len(response)
        return Verdict(share, "correct" if share == 1.0 else "incorrect", response, f"{share:.2f}")

    def verify_batch(self, responses: Sequence[str], references: Sequence[Any]) -> list[Verdict]:
        return [self.verify(r, ref) for r, ref in zip(responses, references)]


register_verifier("dist-test-parity", ParityVerifier)


def letters(split: str = "train", **kwargs: Any) -> ReasoningEnv:
    kwargs = {"tokenizer": "char", "max_new_tokens": 6, "block_size": 2, "max_prompt_tokens": 64, **kwargs}
    tasks = [{"prompt": c * 12, "reference": str(i % 2), "id": f"{split}/{c}", "solution": c * 4}
             for i, c in enumerate("abcdefgh")]
    return ReasoningEnv(tasks, verifier="dist-test-parity", **kwargs)


if "dist_test/Letters-v0" not in gym.registry:
    gym.register(id="dist_test/Letters-v0", entry_point=letters, disable_env_checker=True)
