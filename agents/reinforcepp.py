"""REINFORCE++: critic-free PPO-style updates with a KL-shaped reward and global whitening
(Hu et al. 2025, arXiv 2501.03262; OpenRLHF's ``reinforce`` / ``reinforce_baseline``).

1. Token rewards: the env's reward on its token minus a per-token KL penalty to the frozen
   initial policy, ``r_t − β · (log π_old(o_t) − log π_ref(o_t))`` (the k1 estimator, in the
   reward, not in the loss).
2. Returns ``G_t = Σ_{s ≥ t} γ^(s−t) (...)`` (γ = 1).
3. Advantages: ``G`` whitened over the valid tokens of the whole (global) batch, mean 0 and
   std 1; every rank holds the whole batch, so data parallelism changes nothing.
4. Loss: PPO's clipped surrogate on the token ratio, token mean.

``group_baseline=True`` is REINFORCE++-baseline: G responses per task, and each response's
reward has its group's mean reward subtracted *before* the KL shaping and the global
whitening. (OpenRLHF's baseline variant also moves the KL from the reward into the loss; here
that is ``reward_kl_coef=0, kl_coef>0``.) What it does not do: reward clipping or a learned critic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import functional as F
from .base import RolloutBatch
from .group import GroupAgent, GroupConfig

__all__ = ["ReinforcePPAgent", "ReinforcePPConfig"]


@dataclass(frozen=True)
class ReinforcePPConfig(GroupConfig):
    """REINFORCE++ settings (OpenRLHF's defaults where the paper is silent).

    Attributes:
        group_size: responses per task: 1 for REINFORCE++, G >= 2 for the baseline variant.
        group_baseline: REINFORCE++-baseline: subtract the group's mean reward first.
        reward_kl_coef: β of the per-token KL penalty in the reward (OpenRLHF's 0.01; 0 turns it
            off and with it the reference model, unless ``kl_coef > 0``).
        gamma: discount of the returns (1 in the paper).
        whiten_advantages: whiten the returns over the global batch (the method's core; on).
    """

    group_size: int = 1
    group_baseline: bool = False
    reward_kl_coef: float = 0.01
    gamma: float = 1.0
    whiten_advantages: bool = True

    min_group_size = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_baseline and self.group_size < 2:
            raise ValueError("group_baseline needs group_size >= 2 (responses per task to average)")
        if self.reward_kl_coef < 0 or not 0 <= self.gamma <= 1:
            raise ValueError("need reward_kl_coef >= 0 and gamma in [0, 1]")

    def needs_reference_model(self) -> bool:
        """The reward's KL penalty (and any KL loss) needs the frozen initial policy."""
        return self.reward_kl_coef > 0 or super().needs_reference_model()


class ReinforcePPAgent(GroupAgent):
    """REINFORCE++ (and REINFORCE++-baseline): whitened KL-shaped returns, PPO clip."""

    name = "reinforcepp"
    config: ReinforcePPConfig
    config_cls = ReinforcePPConfig

    # 1. advantages: KL-shaped returns, whitened over the global batch -------------------
    def compute_advantages(self, batch: RolloutBatch) -> None:
        cfg = self.config
        rewards = batch.rewards.clone()  # [B, T]
        if cfg.group_baseline:  # the group's mean reward, taken off at each response's last token
            centered = F.group_advantages(batch.scores, batch.group_ids, normalize_std=False)  # [B]
            last = (batch.mask.sum(1) - 1).clamp(min=0)  # [B]
            rows = torch.arange(batch.size)
            rewards[rows, last] -= (batch.scores - centered).to(rewards.dtype)
        kl = torch.zeros_like(rewards)  # [B, T]
        if cfg.reward_kl_coef > 0:
            assert batch.ref_logprobs is not None and batch.old_logprobs is not None, "needs the reference model"
            kl = batch.old_logprobs - batch.ref_logprobs  # [B, T] k1: log π_old − log π_ref
        returns = F.reinforcepp_returns(rewards, kl, batch.mask, cfg.reward_kl_coef, cfg.gamma)  # [B, T]
        batch.returns = returns
        batch.advantages = F.masked_whiten(returns, batch.mask) if cfg.whiten_advantages else returns  # [B, T]

    def batch_metrics(self, batch: RolloutBatch) -> dict[str, float]:
        out = super().batch_metrics(batch)
        if batch.ref_logprobs is not None and batch.old_logprobs is not None:  # the KL the reward paid
            out["reinforcepp/reward_kl"] = float(F.masked_mean(batch.old_logprobs - batch.ref_logprobs, batch.mask))
        return out
