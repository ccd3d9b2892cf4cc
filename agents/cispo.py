"""CISPO: Clipped IS-weight Policy Optimization (MiniMax-M1, Chen et al. 2025, arXiv 2506.13585).

PPO and GRPO clip the *update*: a token whose ratio leaves ``[1−ε, 1+ε]`` on the side its
advantage pushes loses its gradient. CISPO clips the *importance weight* instead and stops its
gradient, so every token keeps a REINFORCE-style gradient whose weight is bounded:

    J = 1/Σ|o_i| · Σ_i Σ_t sg( clip(r_{i,t}, 1 − ε_low, 1 + ε_high) ) · Â_{i,t} · log π_θ(o_{i,t}),

with GRPO's group-normalised advantage and a token mean over the whole batch (the paper's
``1/Σ|o_i|``). The paper sets no lower bound ("ε_low large") and tunes only ε_high; it gives
no value, so the default ``clip_high = 5.0`` follows public reference scripts of CISPO
(SkyRL's example uses 0 and 5). ``clip_high = inf`` with ``clip_low = 1`` is REINFORCE with
plain importance weights (tested). No KL term by default (``kl_coef = 0``). What it does not
do: the paper's generalised form with a token mask ``M_{i,t}`` (its Eq. 6-7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import functional as F
from .base import RolloutBatch
from .group import GroupAgent, GroupConfig

__all__ = ["CISPOAgent", "CISPOConfig"]


@dataclass(frozen=True)
class CISPOConfig(GroupConfig):
    """CISPO settings.

    Attributes:
        group_size: G, responses per task (divides 8 and 16 envs).
        clip_low: ε_low of the IS weight in ``[0, 1]``; 1 = no lower bound (the paper).
        clip_high: ε_high of the IS weight (``inf`` allowed: no clip).
        loss_aggregation: ``"token-mean"`` over the batch's tokens (the paper's 1/Σ|o_i|).
    """

    clip_low: float = 1.0
    clip_high: float = 5.0
    loss_aggregation: str = "token-mean"

    def check_clip(self) -> None:
        if not (0 <= self.clip_low <= 1 and self.clip_high >= 0):
            raise ValueError(f"CISPO needs 0 <= clip_low <= 1 (1: no lower bound) and clip_high >= 0; "
                             f"got {self.clip_low}, {self.clip_high}")


class CISPOAgent(GroupAgent):
    """REINFORCE on every token with a clipped, gradient-stopped importance weight."""

    name = "cispo"
    config: CISPOConfig
    config_cls = CISPOConfig

    # the policy term: sg(clipped weight) · A · log π on every token ----------------------
    def policy_loss(self, mb: RolloutBatch, log_ratio: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.config
        assert mb.advantages is not None
        return F.cispo_policy_loss(log_ratio, mb.advantages, mb.mask, cfg.clip_low, cfg.clip_high,
                                   aggregation=self.aggregation, max_len=mb.max_len or mb.mask.shape[1])
