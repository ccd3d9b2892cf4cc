"""Reward shaping as Gymnasium wrappers, usable with any agent.

:class:`OverlongPenalty` is DAPO's soft overlong punishment (Yu et al. 2025, §3.4, Eq. 13): a
response longer than ``max_length − cache_length`` tokens loses reward linearly, down to −1
(times ``factor``) at ``max_length``. It wraps one env; give it to a vector env per sub-env
(``mpo_gym.make_vec(env_id, n, wrappers=[OverlongPenalty])``) or register an env id with it
(``gymnasium.register(..., additional_wrappers=(WrapperSpec("OverlongPenalty",
"mpo_gym.agents.shaping:OverlongPenalty", {"cache_length": 64}),))``).

What it does not do: it counts the response's tokens as the env reports them
(``obs["response_length"]``, env-inserted tokens of multi-turn envs included), and the env's
own token budget truncates first, so with the default ``max_length`` (the env's
``max_new_tokens``) the −1 branch never applies.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym

from .functional import overlong_penalty

__all__ = ["OverlongPenalty"]


class OverlongPenalty(gym.Wrapper):
    """Adds DAPO's overlong penalty to the reward of an episode's last step.

    Args:
        env: a :class:`~mpo_gym.env.ReasoningEnv` (possibly wrapped).
        cache_length: L_cache, the punished stretch before ``max_length``; default a fifth of
            ``max_length`` (the paper's 4096 of 20480).
        max_length: L_max; default the env's ``max_new_tokens``.
        factor: scale of the penalty (the paper's 1.0).

    ``info["overlong_penalty"]`` holds the penalty on the last step.
    """

    def __init__(self, env: gym.Env, cache_length: int | None = None, max_length: int | None = None,
                 factor: float = 1.0):
        super().__init__(env)
        self.max_length = int(max_length if max_length is not None else env.unwrapped.max_new_tokens)  # type: ignore[attr-defined]
        self.cache_length = int(cache_length if cache_length is not None else max(1, self.max_length // 5))
        self.factor = float(factor)
        overlong_penalty(0, self.max_length, self.cache_length, self.factor)  # validates the lengths
        if self.factor < 0:
            raise ValueError(f"factor must be >= 0; got {factor}")

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            penalty = overlong_penalty(int(obs["response_length"]), self.max_length, self.cache_length, self.factor)
            info = {**info, "overlong_penalty": penalty}
            reward = float(reward) + penalty
        return obs, reward, terminated, truncated, info
