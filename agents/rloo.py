"""RLOO: REINFORCE with the leave-one-out baseline (Ahmadian et al. 2024, arXiv 2402.14740).

Each task gets G responses; response i's advantage is its reward minus the mean reward of the
*other* G−1 responses of its group,

    A_i = R_i − (1/(G−1)) Σ_{j≠i} R_j  =  G/(G−1) · (R_i − mean_g R),

with no std normalisation (the paper's estimator is unbiased; dividing by a group std is not).
The paper treats a whole response as one action, so the loss sums the token log-probs of a
response (``seq-mean-token-sum-norm``: the token sum over a constant, the rollout's longest
response, so the step does not depend on the lengths). On-policy (the first mini-batch) the
gradient is REINFORCE's, ``−mean_i A_i Σ_t ∇ log π(o_{i,t}) / max_len`` (tested); later
mini-batches are importance-weighted and PPO-clipped, as the PPO-style RLOO trainers do.
What it does not do: the paper's KL penalty in the reward (use ``kl_coef`` for a KL loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import functional as F
from .base import RolloutBatch
from .group import GroupAgent, GroupConfig

__all__ = ["RLOOAgent", "RLOOConfig"]


@dataclass(frozen=True)
class RLOOConfig(GroupConfig):
    """RLOO settings.

    Attributes:
        group_size: G = k samples per prompt (the paper compares k = 2 and 4; 4 divides 8 and 16 envs).
        normalize_std: off: RLOO's advantage is the plain leave-one-out difference.
        loss_aggregation: ``"seq-mean-token-sum-norm"``: the response's log-prob sum (REINFORCE on
            the whole response), over a constant.
    """

    group_size: int = 4
    normalize_std: bool = False
    loss_aggregation: str = "seq-mean-token-sum-norm"


class RLOOAgent(GroupAgent):
    """Critic-free REINFORCE with a leave-one-out group baseline."""

    name = "rloo"
    config: RLOOConfig
    config_cls = RLOOConfig

    # 1. advantages: reward minus the mean of the other responses of the group -----------
    def sequence_advantages(self, batch: RolloutBatch) -> torch.Tensor:
        return F.group_advantages(batch.scores, batch.group_ids, normalize_std=self.config.normalize_std,
                                  baseline="loo")  # [B]
