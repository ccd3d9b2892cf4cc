"""Episode rollouts of an :class:`~mpo_gym.policy.LMPolicy` through ``ReasoningEnv`` s.

:func:`rollout` resets every env, prefills all prompts as one left-padded batch, then in each
round samples one block of up to ``K = env.block_size`` tokens per live env with the KV cache
kept across env steps (:class:`~mpo_gym.policy.BlockSampler`), steps each env with its block,
and prunes finished rows from the cache. Verification is batched: envs run with
``defer_verdict=True`` and each distinct verifier's ``verify_batch`` is called once on the
pending ``(text, reference)`` pairs at the end of a chunk.

What it does not do: no autoreset (one episode per env per call), no multiprocessing of envs
(they are stepped in this process; only the verifiers fan out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .env import ReasoningEnv
from .verifiers.base import Verdict

__all__ = ["Episode", "rollout", "unwrap_envs"]


@dataclass
class Episode:
    """One finished episode.

    Attributes:
        task_index, task_id: the task played.
        prompt_ids: rendered prompt token ids.
        response_ids: every accepted response token id.
        logprobs: per response token, ``log softmax(logits / temperature)`` of the drawn token
            (before top-p truncation; temperature 1 when greedy), as recorded while sampling.
        block_lengths: tokens accepted at each env step.
        step_rewards: env reward per step (the last one includes the verdict's reward).
        reward: ``sum(step_rewards)``.
        verdict: the verifier's verdict on the final text.
        text: decoded response.
        terminated, truncated: as returned by the env's last step.
    """

    task_index: int
    task_id: str
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    block_lengths: list[int] = field(default_factory=list)
    step_rewards: list[float] = field(default_factory=list)
    reward: float = 0.0
    verdict: Verdict | None = None
    text: str = ""
    terminated: bool = False
    truncated: bool = False


def unwrap_envs(envs: Any) -> list[ReasoningEnv]:
    """A list of ``ReasoningEnv`` from a list of (wrapped) envs or a sync vector env."""
    items = getattr(envs, "envs", envs)
    out = [getattr(e, "unwrapped", e) for e in items]
    for e in out:
        if not isinstance(e, ReasoningEnv):
            raise TypeError(f"rollout needs ReasoningEnv instances; got {type(e).__name__}")
    return out


def rollout(envs: Any, policy: Any, *, task_indices: Sequence[int] | None = None,
            seed: int | None = None, temperature: float = 1.0, top_p: float = 1.0,
            greedy: bool = False, max_batch: int | None = None,
            progress: bool = False) -> list[Episode]:
    """Play one episode in each env with ``policy``; returns episodes in env order.

    Args:
        envs: ``ReasoningEnv`` s (or wrappers), or a gymnasium ``SyncVectorEnv`` of them.
        policy: an :class:`~mpo_gym.policy.LMPolicy`.
        task_indices: the task of each env; otherwise env ``i`` draws one from its own
            ``np_random`` reset with seed ``seed + i`` (or unseeded if ``seed`` is None).
        seed: seeds the env resets and the sampler's ``torch.Generator`` (never global RNG).
        temperature, top_p, greedy: the sampling distribution (see ``BlockSampler``).
        max_batch: most envs generated together; more are processed in chunks.
        progress: show a tqdm bar over chunks.
    """
    env_list = unwrap_envs(envs)
    if task_indices is not None and len(task_indices) != len(env_list):
        raise ValueError(f"task_indices has {len(task_indices)} entries for {len(env_list)} envs")
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()  # non-deterministic, without touching the global RNG
    else:
        generator.manual_seed(int(seed))
    size = max_batch or len(env_list)
    starts = range(0, len(env_list), size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="rollout", unit="chunk")
    episodes: list[Episode] = []
    for start in starts:
        idx = list(range(start, min(start + size, len(env_list))))
        episodes += _rollout_chunk(
            [env_list[i] for i in idx],
            [None if task_indices is None else int(task_indices[i]) for i in idx],
            [None if seed is None else seed + i for i in idx],
            policy, dict(generator=generator, temperature=temperature, top_p=top_p, greedy=greedy),
        )
    return episodes


def _rollout_chunk(envs: list[ReasoningEnv], tasks: list[int | None], seeds: list[int | None],
                   policy: Any, sampler_kwargs: dict[str, Any]) -> list[Episode]:
    from .policy import BlockSampler

    flags = [e.defer_verdict for e in envs]
    pending: dict[int, tuple[str, Any]] = {}
    try:
        for e in envs:
            e.defer_verdict = True
        episodes = [_reset(e, t, s) for e, t, s in zip(envs, tasks, seeds)]
        sampler = BlockSampler(policy, [ep.prompt_ids for ep in episodes], **sampler_kwargs)
        while not sampler.finished.all():
            room = [e.max_new_tokens - len(ep.response_ids) for e, ep in zip(envs, episodes)]
            blocks, logps = sampler.sample([min(e.block_size, r) for e, r in zip(envs, room)])
            done = [int(i) for i in np.flatnonzero(~sampler.finished)
                    if _step(envs[i], episodes[i], blocks[i], logps[i], pending, int(i))]
            sampler.finish(done)
    finally:
        for e, flag in zip(envs, flags):
            e.defer_verdict = flag
    _verify(envs, episodes, pending)
    return episodes


def _reset(env: ReasoningEnv, task: int | None, seed: int | None) -> Episode:
    options = None if task is None else {"task_index": task}
    _, info = env.reset(seed=seed, options=options)
    return Episode(task_index=int(info["task_index"]), task_id=str(info["task_id"]),
                   prompt_ids=[int(t) for t in env.prompt_ids(env.task_index)])


def _step(env: ReasoningEnv, ep: Episode, block: list[int], logps: list[float],
          pending: dict[int, tuple[str, Any]], i: int) -> bool:
    """Step ``env`` with ``block``; record it in ``ep``; True when the episode ended."""
    _, reward, terminated, truncated, info = env.step(np.asarray(block, dtype=np.int64))
    accepted = int(info["accepted"])
    ep.response_ids += block[:accepted]
    ep.logprobs += logps[:accepted]
    ep.block_lengths.append(accepted)
    ep.step_rewards.append(float(reward))
    ep.text = info["text"]
    done = terminated or truncated
    if accepted != len(block) and not done:
        raise RuntimeError(f"env {i} accepted {accepted} of {len(block)} tokens without ending")
    if done:
        ep.terminated, ep.truncated = bool(terminated), bool(truncated)
        pending[i] = info["pending"]
    return done


def _verify(envs: list[ReasoningEnv], episodes: list[Episode],
            pending: dict[int, tuple[str, Any]]) -> None:
    """One ``verify_batch`` call per distinct verifier; fills verdicts and rewards."""
    groups: dict[int, list[int]] = {}
    for i in pending:
        groups.setdefault(id(envs[i].verifier), []).append(i)
    for rows in groups.values():
        verifier = envs[rows[0]].verifier
        verdicts = verifier.verify_batch([pending[i][0] for i in rows], [pending[i][1] for i in rows])
        for i, verdict in zip(rows, verdicts):
            ep = episodes[i]
            ep.verdict = verdict
            ep.step_rewards[-1] += float(verdict.reward)
            ep.reward = float(sum(ep.step_rewards))
