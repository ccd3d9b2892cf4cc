"""Envs for the selection-hook tests (imported by torchrun ranks with ``--import tests.agents.select_envs``).

``select_test/HalfParity-v0``: eight tasks; on the four "parity" tasks the reward is the share
of the response's characters with the task's parity (varied even for the tiny random model),
on the four "never" tasks it is always 0. DAPO's dynamic sampling drops the groups of "never"
tasks, so the number of kept groups varies from round to round. ``select_test/Zero-v0`` pays 0
on every task: no group is ever informative.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym

from mpo_gym.env import ReasoningEnv
from mpo_gym.verifiers.base import Verdict, register_verifier


class HalfParityVerifier:
    def verify(self, response: str, reference: Any) -> Verdict:
        if reference == "never" or not response:
            return Verdict(0.0, "incorrect", response, "never pays")
        share = sum(ord(c) % 2 == int(reference) for c in response) / len(response)
        return Verdict(share, "correct" if share == 1.0 else "incorrect", response, f"{share:.2f}")

    def verify_batch(self, responses: Sequence[str], references: Sequence[Any]) -> list[Verdict]:
        return [self.verify(r, ref) for r, ref in zip(responses, references)]


register_verifier("select-test-half-parity", HalfParityVerifier)


def half_parity(split: str = "train", zero: bool = False, **kwargs: Any) -> ReasoningEnv:
    kwargs = {"tokenizer": "char", "max_new_tokens": 6, "block_size": 2, "max_prompt_tokens": 64, **kwargs}
    tasks = [{"prompt": c * 12, "reference": "never" if zero or i >= 4 else str(i % 2), "id": f"{split}/{c}"}
             for i, c in enumerate("abcdefgh")]
    return ReasoningEnv(tasks, verifier="select-test-half-parity", **kwargs)


def zero(split: str = "train", **kwargs: Any) -> ReasoningEnv:
    return half_parity(split, zero=True, **kwargs)


for _id, _entry in (("select_test/HalfParity-v0", half_parity), ("select_test/Zero-v0", zero)):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry, disable_env_checker=True)
