"""GRPO: group-relative advantages, no critic (Shao et al. 2024), with Dr. GRPO as an option.

Each batch samples G responses for each of ``len(envs) / G`` tasks (grouped vector envs). A
response's advantage is its reward minus the group mean (divided by the group std unless
``normalize_std=False``), broadcast to all its tokens; the loss is the token-level clipped
surrogate plus an optional k3 KL to the initial policy. Everything but the two options is
:class:`~mpo_gym.agents.group.GroupAgent`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import functional as F
from .base import RolloutBatch
from .group import GroupAgent, GroupConfig

__all__ = ["GRPOAgent", "GRPOConfig"]


@dataclass(frozen=True)
class GRPOConfig(GroupConfig):
    """GRPO settings.

    Attributes:
        group_size: G, responses per task (``len(envs)`` must be a multiple of G).
        normalize_std: divide by the group std (GRPO); False gives Dr. GRPO's advantage.
        baseline: ``"mean"`` (GRPO) or ``"loo"`` (leave-one-out; the ``rloo`` agent is RLOO proper).
        dr_grpo: Dr. GRPO: no std normalisation and ``seq-mean-token-sum-norm`` aggregation.
    """

    baseline: str = "mean"
    dr_grpo: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.baseline not in ("mean", "loo"):
            raise ValueError(f"baseline must be 'mean' or 'loo'; got {self.baseline!r}")


class GRPOAgent(GroupAgent):
    """Critic-free policy optimisation with group baselines."""

    name = "grpo"
    config: GRPOConfig
    config_cls = GRPOConfig

    # 1. advantages: reward minus the group's baseline ---------------------------------
    def sequence_advantages(self, batch: RolloutBatch) -> torch.Tensor:
        cfg = self.config
        normalize = cfg.normalize_std and not cfg.dr_grpo
        return F.group_advantages(batch.scores, batch.group_ids, normalize_std=normalize, baseline=cfg.baseline)  # [B]

    # 2. loss: token-level clipped surrogate, Dr. GRPO's constant normaliser as an option --
    @property
    def aggregation(self) -> str:
        return "seq-mean-token-sum-norm" if self.config.dr_grpo else self.config.loss_aggregation
