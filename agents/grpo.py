"""GRPO: group-relative advantages, no critic (Shao et al. 2024), with Dr. GRPO as an option.

Each batch samples G responses for each of ``len(envs) / G`` tasks (grouped vector envs). A
response's advantage is its reward minus the group mean (divided by the group std unless
``normalize_std=False``), broadcast to all its tokens; the loss is the token-level clipped
surrogate plus an optional k3 KL to the initial policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mpo_gym.policy import LMPolicy

from . import functional as F
from .base import AgentConfig, BaseAgent, RolloutBatch

__all__ = ["GRPOAgent", "GRPOConfig"]


@dataclass(frozen=True)
class GRPOConfig(AgentConfig):
    """GRPO settings.

    Attributes:
        group_size: G, responses per task (``len(envs)`` must be a multiple of G).
        normalize_std: divide by the group std (GRPO); False gives Dr. GRPO's advantage.
        baseline: ``"mean"`` (GRPO) or ``"loo"`` (leave-one-out, RLOO).
        dr_grpo: Dr. GRPO: no std normalisation and ``seq-mean-token-sum-norm`` aggregation.
    """

    group_size: int = 8
    normalize_std: bool = True
    baseline: str = "mean"
    dr_grpo: bool = False
    whiten_advantages: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2; got {self.group_size}")
        if self.baseline not in ("mean", "loo"):
            raise ValueError(f"baseline must be 'mean' or 'loo'; got {self.baseline!r}")


class GRPOAgent(BaseAgent):
    """Critic-free policy optimisation with group baselines."""

    name = "grpo"
    config: GRPOConfig

    def __init__(self, config: GRPOConfig | None = None, policy: LMPolicy | None = None):
        super().__init__(config or GRPOConfig(), policy)

    @property
    def group_size(self) -> int:
        return self.config.group_size

    # 1. advantages: reward minus the group's baseline ---------------------------------
    def compute_advantages(self, batch: RolloutBatch) -> None:
        cfg = self.config
        normalize = cfg.normalize_std and not cfg.dr_grpo
        adv = F.group_advantages(batch.scores, batch.group_ids, normalize_std=normalize, baseline=cfg.baseline)  # [B]
        batch.advantages = adv[:, None].float() * batch.mask  # [B, T]

    # 2. loss: token-level clipped surrogate (+ KL, entropy) ---------------------------
    def loss(self, mb: RolloutBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.config
        out = self.score_current(mb)
        assert mb.advantages is not None and mb.old_logprobs is not None, "collect() fills these"
        log_ratio = out.logprobs - mb.old_logprobs  # [B, T]
        aggregation = "seq-mean-token-sum-norm" if cfg.dr_grpo else cfg.loss_aggregation
        pg_loss, metrics = F.clipped_policy_loss(
            log_ratio, mb.advantages, mb.mask, cfg.clip_low, cfg.clip_high,
            aggregation=aggregation, max_len=mb.max_len or mb.mask.shape[1],
        )
        reg, reg_metrics = self.regularizers(mb, out)
        return pg_loss + reg, {
            "losses/policy": pg_loss.detach(),
            **{k if "/" in k else "losses/" + k: v for k, v in metrics.items()},
            **reg_metrics,
        }
