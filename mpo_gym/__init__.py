"""mpo-gym: a verifier-and-environment RL gym for reasoning with language models.

``import mpo_gym`` is light (no torch, no transformers): it registers the built-in envs
(``mpo_gym/Arithmetic-v0``, ...) and exposes the core types. The policy and agents live in
``mpo_gym.policy`` and ``mpo_gym.agents`` and import torch when used.

The layers: the CLI imports the apps and the apps the rest; nothing outside the apps and the
CLI imports them, and no module imports itself back (a test checks the module graph):

- **the CLI**, ``mpo_gym.cli``: ``mpo-gym`` and its subcommands' flags;
- **the apps**, ``mpo_gym.apps``: ``trainer`` and ``training_run``, ``evaluation``, ``compare``
  and ``report``, ``export`` (also importable as ``mpo_gym.trainer``, ``mpo_gym.evaluation``,
  ...);
- **the infrastructure**: ``configs`` (the apps' configs), ``loading`` (building a policy,
  reading a run back), ``runs`` (run folders, checkpoints, JSONL), ``records`` (the
  per-episode record), ``distributed``, ``options`` (flags from configs), ``tracking``,
  ``plugins``, ``errors``;
- **the contract**: ``env`` (``ReasoningEnv``), ``spaces``, ``task``, ``vector``, ``rollout``,
  ``tokenizers``, ``policy``, ``envs``, ``verifiers``, ``agents``.
"""

from __future__ import annotations

from typing import Any

from .env import ReasoningEnv
from .envs import list_envs  # noqa: E402  (registers the built-in ids)
from .spaces import TokenBlock
from .task import ListTaskSource, Task, TaskSource
from .verifiers import Verdict, Verifier, make_verifier, register_verifier

__version__ = "0.1.0"

__all__ = [
    "ListTaskSource",
    "ReasoningEnv",
    "Task",
    "TaskSource",
    "TokenBlock",
    "Verdict",
    "Verifier",
    "list_envs",
    "make_vec",
    "make_verifier",
    "register_verifier",
]


def make_vec(env_id: str, num_envs: int, **kwargs: Any) -> Any:
    """A :class:`mpo_gym.vector.ReasoningVectorEnv` of ``num_envs`` copies of ``env_id``.

    Sub-envs know their position, so ``envs.reset(options={"task_index": [i_0, ..., i_{n-1}]})``
    gives sub-env j task ``i_j`` (e.g. G copies of one task for grouped sampling); episodes that
    end in one step are verified in one batch; a finished sub-env idles until it is reset.
    ``wrappers=[...]`` wraps each sub-env; other kwargs go to ``gymnasium.make``.
    """
    from .vector import make_vec as _make_vec

    return _make_vec(env_id, num_envs, **kwargs)
