"""GSPO: Group Sequence Policy Optimization (Zheng et al. 2025, arXiv 2507.18071).

GRPO with one change, the importance ratio: each response gets one length-normalised ratio,

    s_i = (π_θ(o_i | q) / π_old(o_i | q))^(1/|o_i|) = exp( mean_t log r_{i,t} ),

clipped at the sequence level with small ranges (the paper's 3e-4 below and 4e-4 above, not
PPO's 0.2: a geometric mean over a whole response moves far less than a token ratio), and a
group-relative advantage per response. The loss is ``-mean_i min(s_i A_i, clip(s_i) A_i)``.

``gspo_token=True`` is GSPO-token (Eq. 13): every token's ratio has the value ``s_i`` and the
gradient of its own log-prob, with per-token advantages; with the group advantage broadcast
to every token (as here) its value and gradient equal GSPO's (tested in
``tests/agents/test_functional.py``).

On-policy (the first mini-batch after a rollout) ``s_i = 1`` and the gradient is GRPO's with
``seq-mean-token-mean``; the clip only acts on later, off-policy mini-batches. So the default
follows the paper's four mini-batches per rollout batch (``minibatch_size=2`` of the default 8
envs). What this agent does not do: the paper's Routing Replay (an MoE fix; our models are dense).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from . import functional as F
from .base import RolloutBatch
from .group import GroupAgent, GroupConfig

__all__ = ["GSPOAgent", "GSPOConfig"]


@dataclass(frozen=True)
class GSPOConfig(GroupConfig):
    """GSPO settings; paper values where it gives them (Zheng et al. 2025, §5.1).

    Attributes:
        group_size: G, responses per task (``len(envs)`` must be a multiple of G; 8 divides the
            default 8 envs).
        normalize_std: divide the group advantage by the group std (the paper's Eq. 6).
        gspo_token: GSPO-token (per-token advantages, same ratio value) instead of GSPO.
        clip_low: ε_low of the *sequence* ratio, paper 3e-4.
        clip_high: ε_high of the sequence ratio, paper 4e-4.
        minibatch_size: 2 of the default 8 envs: the paper's four mini-batches per rollout batch.
        micro_batch_size: episodes per forward/backward pass (<= minibatch_size).
        loss_aggregation: fixed ``"seq-mean-token-mean"`` (a mean over responses, Eq. 5).
    """

    gspo_token: bool = False
    clip_low: float = 3e-4
    clip_high: float = 4e-4
    minibatch_size: int = 2
    micro_batch_size: int = 2
    loss_aggregation: str = "seq-mean-token-mean"

    fixed_aggregation: ClassVar[tuple[str, str] | None] = ("seq-mean-token-mean", "GSPO averages over responses")


class GSPOAgent(GroupAgent):
    """Critic-free policy optimisation with one clipped ratio per response."""

    name = "gspo"
    config: GSPOConfig
    config_cls = GSPOConfig

    # the policy term: the clipped surrogate on the sequence ratio s_i --------------------
    def policy_loss(self, mb: RolloutBatch, log_ratio: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.config
        assert mb.advantages is not None
        seq_adv = self.response_advantages(mb)  # [B]
        if cfg.gspo_token:
            pg_loss, metrics = F.gspo_token_policy_loss(log_ratio, mb.advantages, mb.mask, cfg.clip_low, cfg.clip_high)
        else:
            pg_loss, metrics = F.gspo_policy_loss(log_ratio, seq_adv, mb.mask, cfg.clip_low, cfg.clip_high)
        token_lr = log_ratio.detach()  # [B, T]
        diagnostics = F.sequence_clip_diagnostics(
            token_lr, F.sequence_log_ratio(token_lr, mb.mask), seq_adv, mb.mask, cfg.clip_low, cfg.clip_high, prefix="gspo",
        )
        return pg_loss, {**metrics, **diagnostics}
