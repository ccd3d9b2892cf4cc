"""The critic-free agents with group baselines: what GRPO, GSPO, GMPO, RLOO, DAPO, CISPO and
windowed GMPO share.

Each batch samples G responses for each of ``len(envs) / G`` tasks. :class:`GroupAgent` gives a
response the advantage of :meth:`GroupAgent.sequence_advantages` (reward minus the group mean,
over the group std unless ``normalize_std=False``), broadcast to its tokens, and its loss is
``policy_loss(mb, log_ratio)`` (the PPO clipped surrogate unless a subclass changes that one
hook) plus the optional KL and entropy terms. A new critic-free agent subclasses it and
overrides one or two named hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mpo_gym.policy import LMPolicy

from . import functional as F
from .base import AgentConfig, BaseAgent, RolloutBatch

__all__ = ["GroupAgent", "GroupConfig"]


@dataclass(frozen=True)
class GroupConfig(AgentConfig):
    """Settings of a critic-free agent with groups.

    Attributes:
        group_size: G, responses per task (``len(envs)``, and each rank's share of it, must be a
            multiple of G).
        normalize_std: divide the group advantage by the group std (GRPO's Eq.).
        whiten_advantages: off: the group baseline already centres the advantages.
    """

    group_size: int = 8
    normalize_std: bool = True
    whiten_advantages: bool = False

    min_group_size: ClassVar[int] = 2  # GRPO needs two responses to compare
    fixed_aggregation: ClassVar[tuple[str, str] | None] = None  # (aggregation, why), e.g. GSPO's mean over responses

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < self.min_group_size:
            raise ValueError(f"group_size must be >= {self.min_group_size}; got {self.group_size}")
        if self.fixed_aggregation is not None and self.loss_aggregation != self.fixed_aggregation[0]:
            aggregation, why = self.fixed_aggregation
            raise ValueError(f"{why}: loss_aggregation must be {aggregation!r}; got {self.loss_aggregation!r}")

    def batch_group_size(self) -> int:
        return self.group_size


class GroupAgent(BaseAgent):
    """Critic-free policy optimisation with group baselines (see module docstring)."""

    name = "group"
    config: GroupConfig
    config_cls: ClassVar[type[GroupConfig]] = GroupConfig

    def __init__(self, config: GroupConfig | None = None, policy: LMPolicy | None = None):
        super().__init__(config or self.config_cls(), policy)

    # 1. advantages: one per response, broadcast to its tokens --------------------------
    def compute_advantages(self, batch: RolloutBatch) -> None:
        adv = self.sequence_advantages(batch)  # [B]
        batch.advantages = adv[:, None].float() * batch.mask  # [B, T]

    def sequence_advantages(self, batch: RolloutBatch) -> torch.Tensor:
        """``[B]`` reward minus the group mean (over the group std with ``normalize_std``)."""
        return F.group_advantages(batch.scores, batch.group_ids, normalize_std=self.config.normalize_std)

    # 2. loss: the policy term on the token log-ratio (+ KL, entropy) -------------------
    def loss(self, mb: RolloutBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        out = self.score_current(mb)
        assert mb.advantages is not None and mb.old_logprobs is not None, "collect() fills these"
        log_ratio = out.logprobs - mb.old_logprobs  # [B, T]
        pg_loss, metrics = self.policy_loss(mb, log_ratio)
        reg, reg_metrics = self.regularizers(mb, out)
        return pg_loss + reg, {
            "losses/policy": pg_loss.detach(),
            **{k if "/" in k else "losses/" + k: v for k, v in metrics.items()},
            **reg_metrics,
        }

    @property
    def aggregation(self) -> str:
        """How per-token losses are reduced (:func:`functional.aggregate_loss`)."""
        return self.config.loss_aggregation

    def policy_loss(self, mb: RolloutBatch, log_ratio: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """The policy term: PPO's clipped surrogate on the token ratio (GRPO, RLOO, DAPO)."""
        cfg = self.config
        assert mb.advantages is not None
        return F.clipped_policy_loss(
            log_ratio, mb.advantages, mb.mask, cfg.clip_low, cfg.clip_high,
            aggregation=self.aggregation, max_len=mb.max_len or mb.mask.shape[1],
        )

    @staticmethod
    def response_advantages(mb: RolloutBatch) -> torch.Tensor:
        """``[B]`` each response's advantage (the broadcast value of its tokens)."""
        assert mb.advantages is not None
        return F.masked_mean(mb.advantages, mb.mask, dim=-1)
