"""PPO: token-level ratio, learned critic, GAE (Schulman et al. 2017), for LM policies.

Reads top to bottom: :meth:`PPOAgent.compute_advantages` (GAE on the critic's values) and
:meth:`PPOAgent.loss` (clipped surrogate + clipped value loss + optional KL/entropy). Collection,
mini-batching and the optimizer step are shared with the other agents (``agents/base.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mpo_gym.policy import LMPolicy, ScoreOutput

from . import functional as F
from .base import AgentConfig, BaseAgent, PolicySpec, RolloutBatch, required

__all__ = ["PPOAgent", "PPOConfig"]


@dataclass(frozen=True)
class PPOConfig(AgentConfig):
    """PPO settings (verl-style defaults for LM RL; see ``AgentConfig`` for the shared ones).

    Attributes:
        critic_lr: learning rate of the value head.
        gamma: discount (1.0 for terminal-reward LM tasks).
        gae_lambda: GAE λ (1.0: Â_t = R − V(s_t) for a terminal 0/1 reward).
        vf_coef: weight of the value loss.
        value_clip: clip range of the value loss around the old values.
    """

    critic_lr: float = 1e-4
    gamma: float = 1.0
    gae_lambda: float = 1.0
    vf_coef: float = 0.5
    value_clip: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise ValueError("gamma and gae_lambda must be in [0, 1]")
        if self.critic_lr <= 0 or self.vf_coef < 0 or self.value_clip <= 0:
            raise ValueError("need critic_lr > 0, vf_coef >= 0, value_clip > 0")

    def policy_spec(self) -> PolicySpec:
        return PolicySpec(critic=True)


class PPOAgent(BaseAgent):
    """PPO with a value head on the policy (``LMPolicy(value_head=True)``)."""

    name = "ppo"
    config: PPOConfig

    def __init__(self, config: PPOConfig | None = None, policy: LMPolicy | None = None):
        super().__init__(config or PPOConfig(), policy)

    def param_groups(self, policy: LMPolicy) -> list[dict[str, Any]]:
        groups = super().param_groups(policy)
        if self.uses_critic:
            groups.append({"params": list(policy.value_parameters()), "lr": self.config.critic_lr})
        return groups

    # 1. advantages -------------------------------------------------------------------
    def compute_advantages(self, batch: RolloutBatch) -> None:
        assert batch.old_values is not None
        adv, ret = F.gae(
            batch.rewards, batch.old_values, batch.mask, self.config.gamma, self.config.gae_lambda,
            last_values=batch.last_values, truncated=batch.truncated,
        )  # [B, T], [B, T]
        if self.config.whiten_advantages:
            adv = F.masked_whiten(adv, batch.mask)  # [B, T]
        batch.advantages, batch.returns = adv, ret

    # 2. log-ratio: the only line MPO changes ----------------------------------------
    def log_ratio(self, mb: RolloutBatch, out: ScoreOutput) -> tuple[torch.Tensor, dict[str, Any]]:
        return out.logprobs - required(mb.old_logprobs), {}  # [B, T]

    # 3. loss ---------------------------------------------------------------------------
    def loss(self, mb: RolloutBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.config
        out = self.score_current(mb, values=self.uses_critic, mtp=self.needs_mtp)
        assert mb.advantages is not None and mb.old_logprobs is not None, "collect() fills these"
        log_ratio, extra = self.log_ratio(mb, out)  # [B, T]
        pg_loss, metrics = F.clipped_policy_loss(
            log_ratio, mb.advantages, mb.mask, cfg.clip_low, cfg.clip_high,
            aggregation=cfg.loss_aggregation, max_len=mb.max_len or mb.mask.shape[1],
        )
        loss = pg_loss
        v_metrics: dict[str, Any] = {}
        if self.uses_critic:
            assert mb.old_values is not None and mb.returns is not None
            v_loss, v_metrics = F.clipped_value_loss(required(out.values), mb.old_values, mb.returns, mb.mask, cfg.value_clip)
            loss = loss + cfg.vf_coef * v_loss
            v_metrics["value"] = v_loss.detach()
        reg, reg_metrics = self.regularizers(mb, out)
        loss = loss + reg
        return loss, {
            "losses/policy": pg_loss.detach(),
            **_prefix(metrics, "losses/"),
            **_prefix(v_metrics, "losses/"),
            **reg_metrics,
            **extra,
        }


def _prefix(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k if "/" in k else prefix + k: v for k, v in metrics.items()}
