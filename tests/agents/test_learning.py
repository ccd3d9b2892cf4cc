""""It learns": a fast check in the default run, and each agent on the toy env (slow; ~1 min each)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from mpo_gym.env import ReasoningEnv
from mpo_gym.trainer import TrainConfig, train


def two_letters(split: str = "train", **kwargs):
    """Two tasks: a prompt of 16 a's asks for "a", one of 16 b's for "b" (reward: share of
    the response's characters that are the letter). Both splits hold the same two tasks."""
    import mpo_gym.envs.toy  # noqa: F401  (registers the repeat-letter verifier)

    kwargs = {"tokenizer": "char", "max_new_tokens": 2, "block_size": 2, "max_prompt_tokens": 64, **kwargs}
    tasks = [{"prompt": c * 16, "reference": c, "id": c} for c in "ab"]
    return ReasoningEnv(tasks, verifier="repeat-letter", **kwargs)


gym.register(id="learn_test/TwoLetters-v0", entry_point=two_letters, disable_env_checker=True)


def test_grpo_learns_to_read_the_prompt(tmp_path):
    """Held-out greedy reward >= 0.75 after 40 GRPO updates (~5 s of training on 2 cores).

    A policy that ignores the prompt writes the same response r for both tasks and scores
    share_a(r) + share_b(r) <= 1 over the two, i.e. a mean reward of at most 0.5: it cannot
    pass. Measured with seeds 0-3: every one ended at 1.0 (seed 1 from update ~28).
    """
    cfg = TrainConfig(
        env="learn_test/TwoLetters-v0", model="tiny", agent="grpo", dtype="float32", num_envs=32,
        updates=40, eval_tasks=2, eval_batch=2, out_dir=str(tmp_path / "run"), threads=1, seed=1,
        agent_kwargs={"lr": 5e-3, "group_size": 4, "minibatch_size": 32, "micro_batch_size": 32},
    )
    result = train(cfg, progress=False)
    assert result.eval_before["reward"] <= 0.5
    assert result.eval_after["reward"] >= 0.75, (result.eval_after, [r["charts/reward"] for r in result.history])

EXTRA = {
    "ppo": {},
    "mpo": {"mpo_k": 3, "warmup_steps": 10, "warmup_batch_size": 8},
    "grpo": {"group_size": 8},
}


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["ppo", "mpo", "grpo"])
def test_agent_learns_the_toy_env(tmp_path, agent):
    cfg = TrainConfig(
        env="mpo_gym/Toy-v0", model="tiny", agent=agent, dtype="float32", num_envs=32, updates=40,
        eval_tasks=0, out_dir=str(tmp_path), threads=1, seed=0,
        agent_kwargs={"lr": 3e-3, "minibatch_size": 16, "micro_batch_size": 16, **EXTRA[agent]},
    )
    rewards = [row["charts/reward"] for row in train(cfg, progress=False).history]
    first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
    # a random tiny model writes the named letter ~1% of the time; measured: 0.19-0.29 after 40 updates
    assert first < 0.05 and last > 0.12, (first, last)
