"""Episode rollouts of an :class:`~mpo_gym.policy.LMPolicy`, through the Gymnasium API.

:func:`rollout` takes what a user has: one env (wrapped or not), a list of them, or a
Gymnasium vector env (:class:`~mpo_gym.vector.ReasoningVectorEnv`, ``SyncVectorEnv``,
``AsyncVectorEnv``, with vector wrappers on top). It calls ``reset()`` and ``step()`` of the
outermost object only, and an episode's rewards, ``terminated``/``truncated`` and info are what
that outermost wrapper returned. A list of envs is stepped as a
:class:`~mpo_gym.vector.ReasoningVectorEnv` over those envs (each keeps its own wrappers), so
the episodes that end in one step are verified in one ``verify_batch`` call.

Generation: the observations' token ids go to :meth:`BlockSampler.act
<mpo_gym.policy.BlockSampler.act>` (the same entry point as :meth:`LMPolicy.act
<mpo_gym.policy.LMPolicy.act>`), which prefills all prompts as one left-padded batch, keeps the
KV cache across env steps and draws one block of up to ``K`` tokens per live row. By default it
runs the static decode loop (:mod:`mpo_gym.policy.decode`: preallocated KV cache, fused weights
in the compute dtype), the fastest path, which training uses through this function too. Token ids in,
token ids out: the response is never re-tokenized.

Rows that finish early: a :class:`~mpo_gym.vector.ReasoningVectorEnv` leaves a finished sub-env
idle, so nothing else is played. Gymnasium's own vector envs autoreset instead; the new episode
a finished sub-env starts is ended at once with a one-token EOS block (the token is not the
policy's), so wrappers that count episodes there (``RecordEpisodeStatistics``) also count these
one-token episodes. Use :func:`mpo_gym.make_vec` to avoid them.

What it does not do: one episode per env per call (the first one, for autoresetting vector envs);
envs are stepped in this process unless the vector env itself runs them elsewhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

from . import timing
from .env import ReasoningEnv
from .vector import ReasoningVectorEnv
from .verifiers.base import Verdict

if TYPE_CHECKING:
    from .policy import LMPolicy

__all__ = ["Episode", "reasoning_env", "rollout", "task_count"]


@dataclass
class Episode:
    """One finished episode, as the outermost env (wrapper) reported it.

    Attributes:
        task_index, task_id: the task played.
        prompt_ids: rendered prompt token ids.
        response_ids: every accepted response token id.
        logprobs: per response token, ``log softmax(logits / temperature)`` of the drawn token
            (before top-p truncation; temperature 1 when greedy), as recorded while sampling.
        block_lengths: tokens accepted at each env step.
        step_rewards: reward returned by the outermost env at each step (the last one includes
            the verdict's reward, as any wrapper transformed it).
        reward: ``sum(step_rewards)``.
        verdict: ``info["verdict"]`` of the final step (``None`` if a wrapper ended the episode
            before the env verified it).
        text: decoded response (``info["text"]`` of the final step).
        terminated, truncated: as returned by the last step.
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


def rollout(envs: Any, policy: LMPolicy, *, task_indices: Sequence[int] | None = None,
            seed: int | None = None, temperature: float = 1.0, top_p: float = 1.0,
            greedy: bool = False, max_batch: int | None = None,
            progress: bool = False, first_index: int = 0, engine: str = "auto") -> list[Episode]:
    """Play one episode in each env with ``policy``; returns episodes in env order.

    Timed as the ``rollout`` phase (:mod:`mpo_gym.timing`), with the responses' tokens counted
    as ``rollout_tokens``.

    Args:
        envs: a ``ReasoningEnv`` (or a wrapper of one), a list of them, or a Gymnasium vector
            env of them (with any vector wrappers).
        policy: an :class:`~mpo_gym.policy.LMPolicy`.
        task_indices: the task of each env (``reset(options={"task_index": ...})``); otherwise
            env ``i`` draws one from its own ``np_random`` reset with seed ``seed + i``.
        seed: seeds the env resets (env ``i`` with ``seed + first_index + i``) and the
            sampler's per-episode streams (never global RNG); ``None``: fresh entropy.
        temperature, top_p, greedy: the sampling distribution (see ``BlockSampler``).
        max_batch: most envs of a list generated together; more are played in chunks. A vector
            env is always played whole.
        progress: show a tqdm bar over chunks.
        first_index: index of the first env's episode in a larger batch (a data-parallel
            rank's share): episode ``first_index + i`` samples from its own stream, so the
            episodes do not depend on how the batch is split.
        engine: the decode loop (``BlockSampler(engine=...)``): ``"auto"`` (the default) takes
            the static loop (preallocated KV cache, no per-step overhead) wherever the model is
            supported and the ``transformers`` forward otherwise; ``"hf"`` forces the latter.
            Both draw the same tokens.
    """
    with timing.phase("rollout"):
        episodes = _rollout(envs, policy, task_indices, seed, temperature, top_p, greedy, max_batch, progress,
                            first_index, engine)
    timing.count("rollout_tokens", float(sum(len(ep.response_ids) for ep in episodes)))
    return episodes


def _rollout(envs: Any, policy: LMPolicy, task_indices: Sequence[int] | None, seed: int | None, temperature: float,
             top_p: float, greedy: bool, max_batch: int | None, progress: bool, first_index: int,
             engine: str = "auto") -> list[Episode]:
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)  # fresh entropy, global RNG untouched
    sampling = {"temperature": temperature, "top_p": top_p, "greedy": greedy, "engine": engine}
    # one region in the policy's compute dtype for the whole call: the weights do not change
    # while it generates, so each low-precision copy is made once (the sampler's forwards nest)
    region = getattr(policy, "autocast", contextlib.nullcontext)
    if isinstance(envs, VectorEnv):
        if task_indices is not None and len(task_indices) != envs.num_envs:
            raise ValueError(f"task_indices has {len(task_indices)} entries for {envs.num_envs} envs")
        with region():
            return _play(envs, policy, task_indices, seed, first_index, sampling)
    env_list = [envs] if isinstance(envs, gym.Env) else list(envs)
    if not env_list:
        raise ValueError("rollout needs at least one env")
    if task_indices is not None and len(task_indices) != len(env_list):
        raise ValueError(f"task_indices has {len(task_indices)} entries for {len(env_list)} envs")
    size = max_batch or len(env_list)
    starts: Any = range(0, len(env_list), size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="rollout", unit="chunk")
    episodes: list[Episode] = []
    with region():
        for start in starts:
            chunk = env_list[start : start + size]
            tasks = None if task_indices is None else [int(t) for t in task_indices[start : start + size]]
            view = ReasoningVectorEnv(envs=chunk, copy=False)  # observations are read at once, never kept
            episodes += _play(view, policy, tasks, seed, first_index + start, sampling)
    return episodes


def task_count(envs: Any) -> tuple[int, int]:
    """``(number of envs, number of tasks in their split)`` for anything :func:`rollout` takes."""
    if isinstance(envs, VectorEnv):
        return envs.num_envs, int(envs.unwrapped.get_attr("num_tasks")[0])  # type: ignore[attr-defined]
    env_list = [envs] if isinstance(envs, gym.Env) else list(envs)
    return len(env_list), int(env_list[0].get_wrapper_attr("num_tasks"))


def reasoning_env(envs: Any) -> ReasoningEnv:
    """The first base ``ReasoningEnv`` (for reading its tasks and tokenizer, not for stepping)."""
    if isinstance(envs, VectorEnv):
        subs = getattr(envs.unwrapped, "envs", None)
        if not subs:
            raise TypeError(f"{type(envs.unwrapped).__name__} keeps no sub-envs in this process")
        envs = subs
    first = envs if isinstance(envs, gym.Env) else list(envs)[0]
    base = first.unwrapped
    if not isinstance(base, ReasoningEnv):
        raise TypeError(f"expected ReasoningEnv instances; got {type(base).__name__}")
    return base


def _play(vec: VectorEnv, policy: LMPolicy, tasks: Sequence[int] | None, seed: int, first_index: int,
          sampling: dict[str, Any]) -> list[Episode]:
    from .policy import BlockSampler
    from .policy.sampling import obs_rows

    n = vec.num_envs
    base_vec = vec.unwrapped
    options = None if tasks is None else {"task_index": [int(t) for t in tasks]}
    if tasks is not None and not isinstance(base_vec, ReasoningVectorEnv):
        base_vec.set_attr("vector_index", list(range(n)))  # type: ignore[attr-defined]
    obs, infos = vec.reset(seed=seed + first_index, options=options)
    rows = obs_rows(obs)
    episodes = [Episode(task_index=int(infos["task_index"][i]), task_id=str(infos["task_id"][i]),
                        prompt_ids=rows[i][0]) for i in range(n)]
    block_size = int(vec.single_action_space.block_size)  # type: ignore[attr-defined]
    same_step = vec.metadata.get("autoreset_mode") == AutoresetMode.SAME_STEP
    filler = np.asarray([policy.eos_token_id], dtype=np.int64)
    sampler = BlockSampler.from_obs(policy, obs, seed=seed, first_index=first_index, **sampling)
    done = np.zeros(n, dtype=bool)
    while not done.all():
        blocks, logps = sampler.act(obs, block_size, done=done)
        actions = tuple(filler if done[i] else blocks[i] for i in range(n))
        obs, rewards, terminations, truncations, infos = vec.step(actions)
        for i in np.flatnonzero(~done).tolist():
            ended = bool(terminations[i] or truncations[i])
            info = _row(infos["final_info"], i) if same_step and ended else _row(infos, i)
            if "accepted" not in info:
                raise KeyError(f"env {i}'s step info has no 'accepted' (a wrapper dropped it)")
            ep, accepted = episodes[i], int(info["accepted"])
            block = blocks[i].tolist()
            if accepted != len(block) and not ended:
                raise RuntimeError(f"env {i} accepted {accepted} of {len(block)} tokens without ending")
            ep.response_ids += block[:accepted]
            ep.logprobs += logps[i][:accepted]
            ep.block_lengths.append(accepted)
            ep.step_rewards.append(float(rewards[i]))
            if ended:
                done[i] = True
                ep.reward = float(sum(ep.step_rewards))
                ep.text = str(info.get("text", ""))
                ep.verdict = info.get("verdict")
                ep.terminated, ep.truncated = bool(terminations[i]), bool(truncations[i])
    return episodes


def _row(infos: dict[str, Any], i: int) -> dict[str, Any]:
    """Sub-env ``i``'s entries of a vector env's info dict."""
    return {k: _row(v, i) if isinstance(v, dict) else v[i] for k, v in infos.items()
            if not k.startswith("_") and infos.get("_" + k) is not None and infos["_" + k][i]}
