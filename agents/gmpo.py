"""GMPO: Geometric-Mean Policy Optimization (Zhao et al. 2025, arXiv 2507.20673).

GRPO maximises the *arithmetic* mean of its token terms ``r_t A_i``; GMPO maximises their
*geometric* mean, which an outlier token ratio moves much less:

    J_i = { Π_t | min(r_t A_i, clip(r_t, e^-ε_low, e^ε_high) A_i) | }^(1/|o_i|) · sgn(A_i)
        = A_i · exp( mean_t l̃_t ),

where ``l̃_t`` is the token log-ratio ``log r_t`` clipped *in log space, per token*, on the side
PPO clips (above for ``A >= 0``, below for ``A < 0``). The paper's range is ``(e^-0.4, e^0.4)``,
so ``clip_low = clip_high = 0.4`` here are log units, not PPO's ratio ε. The loss is
``-mean_i J_i``; advantages are group-relative per response (mean and std, as GRPO).

Its diagnostics use the names of GSPO's (``gmpo/clipfrac_seq``, ``gmpo/clipfrac_token``, ...):
``clipfrac_token`` is the clip GMPO applies, ``clipfrac_seq`` what a sequence clip of the
unclipped geometric mean at the same range would do. On-policy the ratio is 1 and the gradient
is GRPO's with ``seq-mean-token-mean``; the clip acts only on off-policy mini-batches, so the
default keeps the reference scripts' 8 optimizer steps per rollout batch (``minibatch_size=1``
of the default 8 envs; their 128 prompts x 8 samples with a step every 128 responses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from . import functional as F
from .base import RolloutBatch
from .group import GroupAgent, GroupConfig

__all__ = ["GMPOAgent", "GMPOConfig"]


@dataclass(frozen=True)
class GMPOConfig(GroupConfig):
    """GMPO settings; the paper's and its reference scripts' values (Zhao et al. 2025).

    Attributes:
        group_size: G, responses per task (paper 8; divides the default 8 envs).
        normalize_std: divide the group advantage by the group std (paper: GRPO's advantage).
        clip_low: ε_low in *log* units: ``log r`` is clipped below at ``-clip_low`` (paper 0.4).
        clip_high: ε_high in log units: ``log r`` is clipped above at ``clip_high`` (paper 0.4).
        lr: paper 1e-6 (constant schedule).
        minibatch_size: 1 of the default 8 envs: 8 optimizer steps per rollout batch.
        micro_batch_size: episodes per forward/backward pass (<= minibatch_size).
        loss_aggregation: fixed ``"seq-mean-token-mean"`` (a mean over responses).
    """

    clip_low: float = 0.4
    clip_high: float = 0.4
    lr: float = 1e-6
    minibatch_size: int = 1
    micro_batch_size: int = 1
    loss_aggregation: str = "seq-mean-token-mean"

    fixed_aggregation: ClassVar[tuple[str, str] | None] = ("seq-mean-token-mean", "GMPO averages over responses")


class GMPOAgent(GroupAgent):
    """Critic-free policy optimisation on the geometric mean of log-clipped token ratios."""

    name = "gmpo"
    config: GMPOConfig
    config_cls = GMPOConfig

    # the policy term: A_i times the geometric mean of the log-clipped token ratios -------
    def policy_loss(self, mb: RolloutBatch, log_ratio: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.config
        seq_adv = self.response_advantages(mb)  # [B]
        pg_loss, metrics = F.gmpo_policy_loss(log_ratio, seq_adv, mb.mask, cfg.clip_low, cfg.clip_high)
        token_lr = log_ratio.detach()  # [B, T]
        diagnostics = F.sequence_clip_diagnostics(  # ratio bounds e^±ε: the token decision is GMPO's clip
            token_lr, F.sequence_log_ratio(token_lr, mb.mask), seq_adv, mb.mask,
            1.0 - math.exp(-cfg.clip_low), math.exp(cfg.clip_high) - 1.0, prefix="gmpo",
        )
        return pg_loss, {**metrics, **diagnostics}
