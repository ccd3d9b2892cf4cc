"""DAPO: Decoupled Clip and Dynamic sAmpling Policy Optimization (Yu et al. 2025, arXiv 2503.14476).

GRPO's group advantages with three of the paper's four changes:

1. **Clip-higher**: asymmetric clip, ε_low = 0.2 and ε_high = 0.28.
2. **Token-level loss**: one token mean over the mini-batch (``1/Σ|o_i|``), not a mean of means.
3. **Dynamic sampling** (the selection hook, :meth:`DAPOAgent.select_episodes`): a group whose
   rewards are all equal has zero advantage, so it is dropped; more batches are sampled to
   refill the batch, at most ``max_sample_rounds`` rounds in all (the first included), and the
   kept groups are cut to the batch's number of groups. A shortfall trains on the groups found
   (the batch re-sharded over ranks, see :meth:`BaseAgent.select_episodes`); none found skips
   the update (``select/skipped = 1``, no optimizer step), never a hang. Logged: ``select/rounds``,
   ``select/kept_groups``, ``select/sampled_episodes``, ``select/skipped``.

The fourth, **overlong reward shaping**, changes the reward, so it is an env wrapper any agent
can use: :class:`mpo_gym.agents.shaping.OverlongPenalty`. No KL term (``kl_coef = 0``).
The paper filters groups on accuracy; ``filter_on="reward"`` (default) filters on the episode
reward (what the advantage sees), ``"correct"`` on the verdicts (use it with overlong shaping,
whose penalties make otherwise equal rewards differ). What it does not do: the paper's
over-sampled generation batch (each round samples one batch of ``len(envs)`` episodes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mpo_gym.policy import LMPolicy
from mpo_gym.rollout import Episode

from . import functional as F
from .base import Selection
from .group import GroupAgent, GroupConfig

__all__ = ["DAPOAgent", "DAPOConfig"]


@dataclass(frozen=True)
class DAPOConfig(GroupConfig):
    """DAPO settings; the paper's values where it gives them.

    Attributes:
        group_size: G, responses per task (divides 8 and 16 envs; the paper uses 16).
        clip_low: ε_low, 0.2.
        clip_high: ε_high, 0.28 (clip-higher).
        loss_aggregation: ``"token-mean"`` (token-level policy gradient loss).
        dynamic_sampling: drop groups whose rewards are all equal and refill.
        max_sample_rounds: sampling rounds per update at most, the first included (verl's DAPO
            recipe allows 10; each round is a whole rollout, so 3 here).
        filter_on: ``"reward"`` (episode rewards) or ``"correct"`` (verdict status) for the test.
    """

    clip_low: float = 0.2
    clip_high: float = 0.28
    loss_aggregation: str = "token-mean"
    dynamic_sampling: bool = True
    max_sample_rounds: int = 3
    filter_on: str = "reward"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_sample_rounds < 1:
            raise ValueError(f"max_sample_rounds must be >= 1; got {self.max_sample_rounds}")
        if self.filter_on not in ("reward", "correct"):
            raise ValueError(f"filter_on must be 'reward' or 'correct'; got {self.filter_on!r}")


class DAPOAgent(GroupAgent):
    """GRPO with clip-higher, a token-mean loss and dynamic sampling."""

    name = "dapo"
    config: DAPOConfig
    config_cls = DAPOConfig

    # 0. dynamic sampling: keep the groups whose rewards differ, refill -------------------
    def select_episodes(self, episodes: list[Episode], envs: Any, policy: LMPolicy) -> Selection:
        cfg, g = self.config, self.group_size
        if not cfg.dynamic_sampling:
            return super().select_episodes(episodes, envs, policy)
        target = len(episodes)  # the batch's size: whole groups
        sampled, kept, rounds = list(episodes), self.informative(episodes), 1
        while len(kept) < target and rounds < cfg.max_sample_rounds:
            more = self.sample(envs, policy)  # every rank: same decision, new tasks and seed
            sampled += more
            kept += self.informative(more)
            rounds += 1
        kept = kept[:target]
        metrics = {"select/rounds": float(rounds), "select/kept_groups": float(len(kept) // g),
                   "select/sampled_episodes": float(len(sampled)), "select/skipped": float(not kept)}
        return Selection(episodes=kept, sampled=sampled, metrics=metrics)

    def informative(self, episodes: list[Episode]) -> list[Episode]:
        """The episodes of the groups whose rewards (or correctness) are not all equal."""
        g = self.group_size
        if self.config.filter_on == "correct":
            values = [float(e.verdict is not None and e.verdict.status == "correct") for e in episodes]
        else:
            values = [float(e.reward) for e in episodes]
        keep = F.varied_groups(torch.tensor(values, dtype=torch.float64), g).tolist()  # [N/G]
        return [e for i, e in enumerate(episodes) if keep[i // g]]
