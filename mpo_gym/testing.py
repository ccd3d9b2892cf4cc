"""``check_reasoning_env``: Gymnasium's ``check_env`` plus the invariants of a reasoning env.

Shipped as library code (like ``gymnasium.utils.env_checker.check_env``) so that users can
check their own envs.
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env

from .env import ReasoningEnv
from .spaces import TokenBlock
from .verifiers.base import Verdict

__all__ = ["check_reasoning_env"]


def check_reasoning_env(env: gym.Env, *, seed: int = 0, episodes: int = 2, skip_check_env: bool = False) -> None:
    """Raise ``AssertionError`` naming the first broken invariant.

    Checks, on random-block rollouts:

    - ``gymnasium.utils.env_checker.check_env`` passes (unless ``skip_check_env``);
    - the action space is a :class:`TokenBlock` and an over-long or out-of-vocab block raises
      ``ValueError``;
    - each observation extends the previous response by exactly the accepted block;
    - without a per-block reward hook, the reward is 0 on every step but the last;
    - ``info["verdict"]`` is a :class:`Verdict` exactly on the final step, and the final reward
      equals the verdict's reward (plus shaping, if a hook is set);
    - ``reset(options={"task_index": i})`` picks the same task every time, and seeded resets are
      deterministic.
    """
    base = env.unwrapped
    if not isinstance(base, ReasoningEnv):
        raise AssertionError(f"expected a ReasoningEnv, got {type(base).__name__}")
    if not skip_check_env:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_env(base, skip_render_check=True)
    _check_action_space(base)
    for episode in range(episodes):
        _check_episode(base, seed + episode)
    _check_determinism(base, seed)


def _check_action_space(env: ReasoningEnv) -> None:
    space = env.action_space
    assert isinstance(space, TokenBlock), f"action_space must be TokenBlock, got {space!r}"
    env.reset(seed=0)
    for bad in (np.zeros(space.block_size + 1, dtype=np.int64), np.array([space.vocab_size])):
        try:
            env.step(bad)
        except ValueError:
            continue
        raise AssertionError(f"step() accepted an invalid block {bad.tolist()[:10]}")


def _check_episode(env: ReasoningEnv, seed: int) -> None:
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    prompt = obs["prompt_ids"][: obs["prompt_length"]].copy()
    previous = obs["response_ids"][: obs["response_length"]].copy()
    assert previous.size == 0, "a new episode must start with an empty response"
    for step in range(env.max_new_tokens + 1):
        block = env.action_space.sample()
        obs, reward, terminated, truncated, info = env.step(block)
        n = int(info["accepted"])
        current = obs["response_ids"][: obs["response_length"]]
        assert np.array_equal(obs["prompt_ids"][: obs["prompt_length"]], prompt), "prompt changed mid-episode"
        assert 1 <= n <= block.size and current.size == previous.size + n, "response must grow by the accepted block"
        assert np.array_equal(current[: previous.size], previous), "response prefix changed"
        assert np.array_equal(current[previous.size :], block[:n]), "appended tokens differ from the block"
        done = terminated or truncated
        assert ("verdict" in info) == done, f"verdict presence wrong at step {step}"
        if done:
            verdict: Any = info.get("verdict")
            assert verdict is None or isinstance(verdict, Verdict), "info['verdict'] must be a Verdict"
            if env.block_reward_fn is None and verdict is not None:
                assert reward == verdict.reward, "final reward must equal the verdict's reward"
            return
        if env.block_reward_fn is None:
            assert reward == 0.0, "reward must be 0 before the final step"
        previous = current.copy()
    raise AssertionError(f"episode did not end within max_new_tokens={env.max_new_tokens} tokens")


def _check_determinism(env: ReasoningEnv, seed: int) -> None:
    index = min(3, len(env.tasks) - 1)
    a, _ = env.reset(options={"task_index": index})
    b, _ = env.reset(seed=seed + 99, options={"task_index": index})
    assert np.array_equal(a["prompt_ids"], b["prompt_ids"]), "task_index must pick the same task"
    first = [env.reset(seed=seed)[1]["task_index"] for _ in range(2)]
    assert first[0] == first[1], "reset(seed=s) must pick the same task every time"
