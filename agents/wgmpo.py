"""Windowed GMPO: GMPO's log-space token clip, combined over a K-token window per position.

GMPO (``gmpo.py``) clips every token's log-ratio and takes one geometric mean over the whole
response; MPO's backbone ratio (``ratio_source="backbone"``) takes a weighted geometric mean of
the next K token ratios and clips the result. This agent sits between them: at every position
t it clips each of the window's K token log-ratios ``l_{t..t+K−1}`` in log space on the side PPO
clips (``min(l, ε_high)`` for ``A ≥ 0``, ``max(l, −ε_low)`` for ``A < 0``), then combines them
into ``log R_t = mean_n l̃_{t,n}`` (the geometric mean of the clipped window ratios; windows
near the end average their remaining tokens), and the loss is ``−agg(A_t · R_t)``.

``wgmpo_k = 1`` is token-level GMPO: each token is its own geometric mean, so the loss is PPO's
clipped surrogate with ratio bounds ``(e^−ε_low, e^ε_high)`` (tested against GRPO with those
bounds, loss and gradients). Every other default is GMPO's, so a comparison moves the window
alone. What it does not do: weights other than a plain mean (MPO's β) or MTP modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import functional as F
from .base import RolloutBatch
from .gmpo import GMPOConfig
from .group import GroupAgent

__all__ = ["WGMPOAgent", "WGMPOConfig"]


@dataclass(frozen=True)
class WGMPOConfig(GMPOConfig):
    """Windowed GMPO settings: GMPO's, plus the window.

    Attributes:
        wgmpo_k: window length K (1: token-level GMPO; MPO's paper uses K = 5).
    """

    wgmpo_k: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.wgmpo_k, bool) or not isinstance(self.wgmpo_k, int) or self.wgmpo_k < 1:
            raise ValueError(f"wgmpo_k must be an int >= 1; got {self.wgmpo_k!r}")


class WGMPOAgent(GroupAgent):
    """Critic-free policy optimisation on windowed geometric means of log-clipped token ratios."""

    name = "wgmpo"
    config: WGMPOConfig
    config_cls = WGMPOConfig

    # the policy term: A_t times the geometric mean of the window's clipped ratios --------
    def policy_loss(self, mb: RolloutBatch, log_ratio: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.config
        assert mb.advantages is not None
        return F.wgmpo_policy_loss(log_ratio, mb.advantages, mb.mask, cfg.wgmpo_k, cfg.clip_low, cfg.clip_high,
                                   aggregation=self.aggregation, max_len=mb.max_len or mb.mask.shape[1])
