"""``ReasoningVectorEnv``: a Gymnasium vector env of reasoning envs with batched verification.

Verifying one response at a time is what makes code rewards expensive, so this vector env
verifies in batches, where Gymnasium puts batching: in :meth:`ReasoningVectorEnv.step`, every
episode that ends in that step is verified with one ``verify_batch`` call per distinct verifier,
and the rewards come back in that same step.

How per-env wrappers still see the verdict: before stepping, the vector env asks each base
env what the action would do (:meth:`ReasoningEnv.preview`: the final text when the block ends
the episode), verifies those texts together, and hands every verdict to its base env
(:meth:`ReasoningEnv.provide_verdict`). Then each sub-env is stepped through its own wrappers as
usual; the base env's final step returns the provided verdict and its reward, so a
``TransformReward`` or ``RecordEpisodeStatistics`` around a sub-env sees exactly what it would
see without batching. If a wrapper changes the action, the final text differs from the preview
and the base env verifies itself (same verdict, one call).

Autoreset: none (``AutoresetMode.DISABLED``). A sub-env whose episode ended is *idle* until it
is reset (``reset()``, or ``reset(options={"reset_mask": mask})``): its action is ignored and it
reports reward 0, not terminated, not truncated, its last observation and no info. So a batch
of episodes that end at different steps runs to the end without starting episodes nobody asked
for, and vector wrappers (``gymnasium.wrappers.vector.RecordEpisodeStatistics``) count exactly
the episodes played.

What it does not do: no subprocesses (sub-envs step in this process; only verifiers fan out to
their worker pools).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from copy import deepcopy
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import concatenate

from . import timing
from .env import ReasoningEnv

__all__ = ["ReasoningVectorEnv", "make_vec"]


class ReasoningVectorEnv(SyncVectorEnv):
    """Sub-envs (each possibly wrapped) stepped together; endings verified in one batch.

    Args:
        env_fns: callables that build the sub-envs (like ``SyncVectorEnv``), or
        envs: already built sub-envs (the vector env steps them; it does not copy them).
        copy: return copies of the batched observations (as ``SyncVectorEnv``).

    Sub-env ``j`` learns its position (``env.unwrapped.vector_index = j``), so
    ``reset(options={"task_index": [i_0, ..., i_{n-1}]})`` gives sub-env ``j`` task ``i_j``.
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]] | None = None, *,
                 envs: Sequence[gym.Env] | None = None, copy: bool = True):
        if (env_fns is None) == (envs is None):
            raise TypeError("give either env_fns or envs")
        if envs is not None:
            env_fns = [_given(e) for e in envs]
        assert env_fns is not None
        if not env_fns:
            raise ValueError("a vector env needs at least one sub-env")
        super().__init__(env_fns, copy=copy, autoreset_mode=AutoresetMode.DISABLED)
        self.bases: list[ReasoningEnv] = []
        for j, env in enumerate(self.envs):
            base = env.unwrapped
            if not isinstance(base, ReasoningEnv):
                raise TypeError(f"sub-env {j} is a {type(base).__name__}, not a ReasoningEnv")
            base.vector_index = j
            self.bases.append(base)
        self.spec = getattr(self.envs[0], "spec", None)
        self.verify_calls = 0  # verify_batch calls made by step (for tests and benchmarks)

    @property
    def running(self) -> np.ndarray:
        """``[num_envs]`` bool: sub-envs whose episode has not ended since their last reset."""
        return ~self._autoreset_envs

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every running sub-env; verify the episodes that end now in one batch."""
        actions = list(actions)
        if len(actions) != self.num_envs:
            raise ValueError(f"need {self.num_envs} actions (one per sub-env); got {len(actions)}")
        live = np.flatnonzero(~self._autoreset_envs)
        self._verify_endings(live, actions)
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminations = np.zeros(self.num_envs, dtype=np.bool_)
        truncations = np.zeros(self.num_envs, dtype=np.bool_)
        infos: dict[str, Any] = {}
        for i in live:
            obs, reward, terminated, truncated, info = self.envs[i].step(actions[i])
            self._env_obs[i] = obs
            rewards[i], terminations[i], truncations[i] = reward, terminated, truncated
            infos = self._add_info(infos, info, int(i))
        self._observations = concatenate(self.single_observation_space, self._env_obs, self._observations)
        self._terminations, self._truncations = terminations, truncations
        self._autoreset_envs = self._autoreset_envs | terminations | truncations
        observations = deepcopy(self._observations) if self.copy else self._observations
        return observations, rewards, terminations.copy(), truncations.copy(), infos

    def _verify_endings(self, live: np.ndarray, actions: list[Any]) -> None:
        groups: dict[int, list[tuple[int, str, Any]]] = {}
        for i in live:
            pending = self.bases[i].preview(actions[i])
            if pending is not None:
                groups.setdefault(id(self.bases[i].verifier), []).append((int(i), *pending))
        for rows in groups.values():
            verifier = self.bases[rows[0][0]].verifier
            with timing.phase("verify"):
                verdicts = verifier.verify_batch([text for _, text, _ in rows], [ref for _, _, ref in rows])
            self.verify_calls += 1
            for (i, text, _), verdict in zip(rows, verdicts):
                self.bases[i].provide_verdict(text, verdict)


def _given(env: gym.Env) -> Callable[[], gym.Env]:
    return lambda: env


def make_vec(env_id: str, num_envs: int, *, wrappers: Sequence[Callable[[gym.Env], gym.Env]] = (),
             **kwargs: Any) -> ReasoningVectorEnv:
    """A :class:`ReasoningVectorEnv` of ``num_envs`` copies of ``gymnasium.make(env_id, **kwargs)``.

    ``wrappers`` wrap each sub-env (after the wrappers the env id was registered with).
    """

    def build() -> gym.Env:
        env = gym.make(env_id, **kwargs)
        for wrapper in wrappers:
            env = wrapper(env)
        return env

    return ReasoningVectorEnv([build for _ in range(int(num_envs))])
