"""MPO: Multi-token Policy Optimization (Xu et al., arXiv 2602.14386, 2026).

Not to be confused with DeepMind's Maximum a-posteriori Policy Optimisation (2018).

MPO is PPO with one change, the importance ratio. At every response position t the ratio is
the "united" ratio over the window of the next K tokens,

    R̃_t = exp( Σ_{n=1..K} β_n · log r_{t+n-1} ),   β_1 = 1 − Σ_{n≥2} β_n,   β_n = β_2 · λ^(n−2),

where n = 1 is the backbone's own token ratio and n ≥ 2 come from K−1 DeepSeek-V3-style MTP
modules scored teacher-forced on the sampled rollout (``ratio_source="mtp"``, the paper), or
from the backbone's own ratios of the next tokens (``ratio_source="backbone"``, the cheap
ablation: a sliding-window geometric mean). Old log-probs of the backbone *and* the modules are
recorded right after the rollout. Before RL, :meth:`MPOAgent.warmup` trains the modules on
reference solutions with the backbone frozen (decaying per-module weights α_j = decay^(j−1)).

Resolved ambiguities (``mpo-method.md`` §4): K−1 modules (A3); masked window terms past the end
contribute 0 unless ``renormalize_tail`` (A6); ``mtp_detach_backbone`` (the modules see a
detached hidden state, so MTP gradients never reach the backbone) and ``mtp_trainable_in_rl``
(the modules are updated by the n ≥ 2 terms of the RL loss) switches (A1). Beyond the paper:
``advantage="group"`` is critic-free MPO with GRPO-style group advantages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mpo_gym.policy import LMPolicy, ScoreOutput
from mpo_gym.rollout import reasoning_env

from . import functional as F
from .base import PolicySpec, RolloutBatch, adamw, pad_sequences, required
from .ppo import PPOAgent, PPOConfig

__all__ = ["MPOAgent", "MPOConfig"]


@dataclass(frozen=True)
class MPOConfig(PPOConfig):
    """MPO settings; the paper's best: K=5, β_2=0.06, λ=0.8, ε=0.2.

    Attributes:
        mpo_k: window length K (K−1 MTP modules).
        beta2: β_2, the weight of the first MTP term.
        mpo_decay: λ, the decay of later MTP terms (not the GAE λ).
        ratio_source: ``"mtp"`` (paper) or ``"backbone"`` (ablation, no modules needed).
        renormalize_tail: divide by the β mass of valid terms near the end of a response.
        mtp_trainable_in_rl: update the MTP modules with the RL loss.
        mtp_lr: learning rate of the MTP modules in RL.
        advantage: ``"gae"`` (paper: PPO critic) or ``"group"`` (critic-free, GRPO baseline).
        group_size: G for ``advantage="group"``.
        warmup_steps: MTP warm-up optimizer steps (0 skips warm-up).
        warmup_lr: warm-up learning rate.
        warmup_batch_size: reference solutions per warm-up step.
        warmup_alpha_decay: α_j = decay^(j−1) for module j (1.0: equal weights).
        share_lm_head: the MTP modules use the backbone's LM head instead of their own copies
            (the paper copies it per module; sharing saves K−1 vocab projections of memory).
    """

    mpo_k: int = 5
    beta2: float = 0.06
    mpo_decay: float = 0.8
    ratio_source: str = "mtp"
    renormalize_tail: bool = False
    mtp_trainable_in_rl: bool = True
    mtp_lr: float = 1e-5
    advantage: str = "gae"
    group_size: int = 1
    warmup_steps: int = 20
    warmup_lr: float = 1e-4
    warmup_batch_size: int = 8
    warmup_alpha_decay: float = 0.8
    share_lm_head: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        F.mpo_betas(self.mpo_k, self.beta2, self.mpo_decay)  # validates K, β_2, λ
        if self.ratio_source not in ("mtp", "backbone"):
            raise ValueError(f"ratio_source must be 'mtp' or 'backbone'; got {self.ratio_source!r}")
        if self.advantage not in ("gae", "group"):
            raise ValueError(f"advantage must be 'gae' or 'group'; got {self.advantage!r}")
        if self.advantage == "group" and self.group_size < 2:
            raise ValueError("advantage='group' needs group_size >= 2")
        if self.warmup_steps < 0 or self.warmup_batch_size < 1:
            raise ValueError("warmup_steps must be >= 0 and warmup_batch_size >= 1")

    @property
    def num_mtp_modules(self) -> int:
        """MTP modules the policy needs (0 for ``ratio_source="backbone"``)."""
        return self.mpo_k - 1 if self.ratio_source == "mtp" else 0

    def batch_group_size(self) -> int:
        """G for ``advantage="group"``, else 1."""
        return self.group_size if self.advantage == "group" else 1

    def policy_spec(self) -> PolicySpec:
        """A critic for ``advantage="gae"``, K−1 MTP modules for ``ratio_source="mtp"``."""
        return PolicySpec(critic=self.advantage == "gae", num_mtp_modules=self.num_mtp_modules,
                          share_lm_head=self.share_lm_head)


class MPOAgent(PPOAgent):
    """PPO with the united K-token ratio (see module docstring)."""

    name = "mpo"
    config: MPOConfig

    def __init__(self, config: MPOConfig | None = None, policy: LMPolicy | None = None):
        config = config or MPOConfig()
        self.betas = F.mpo_betas(config.mpo_k, config.beta2, config.mpo_decay)  # [K]
        super().__init__(config, policy)

    def param_groups(self, policy: LMPolicy) -> list[dict[str, Any]]:
        groups = super().param_groups(policy)
        if self.needs_mtp and self.config.mtp_trainable_in_rl:
            groups.append({"params": list(policy.mtp_parameters()), "lr": self.config.mtp_lr})
        return groups

    def _score(self, policy: LMPolicy, mb: RolloutBatch, old: bool) -> ScoreOutput:
        return policy.score(
            mb.input_ids, mb.attention_mask, mb.prompt_len,
            values=self.uses_critic and old, mtp=self.needs_mtp and old, temperature=self.config.temperature,
        )

    # 1. advantages: GAE on the critic (paper) or group-relative (critic-free) ----------
    def compute_advantages(self, batch: RolloutBatch) -> None:
        if self.uses_critic:
            super().compute_advantages(batch)
            return
        adv = F.group_advantages(batch.scores, batch.group_ids, normalize_std=True)  # [B]
        batch.advantages = adv[:, None].expand_as(batch.mask).float() * batch.mask  # [B, T]

    # 2. the united ratio ---------------------------------------------------------------
    def log_ratio(self, mb: RolloutBatch, out: ScoreOutput) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.config
        assert mb.old_logprobs is not None and mb.advantages is not None, "collect() fills these"
        token_lr = out.logprobs - mb.old_logprobs  # [B, T] log r of token t
        mtp_lr = None
        if self.needs_mtp:
            assert mb.old_mtp_logprobs is not None and mb.mtp_mask is not None
            mtp = required(out.mtp_logprobs)[..., : cfg.num_mtp_modules]  # [B, T, K-1]
            if not cfg.mtp_trainable_in_rl:
                mtp = mtp.detach()
            mtp_lr = (mtp - mb.old_mtp_logprobs[..., : cfg.num_mtp_modules]) * mb.mtp_mask  # [B, T, K-1]
        window, window_mask = F.window_log_ratios(token_lr, mtp_lr, cfg.mpo_k, mb.mask)  # [B, T, K] x2
        betas = self.betas.to(window.device, window.dtype)  # [K]
        united = F.united_log_ratio(window, betas, window_mask, renormalize_tail=cfg.renormalize_tail)  # [B, T]
        diagnostics = F.clip_diagnostics(
            token_lr.detach(), united.detach(), mb.advantages, mb.mask, cfg.clip_low, cfg.clip_high
        )
        return united, diagnostics

    # 0. MTP warm-up (stage 1 of Algorithm 1) ----------------------------------------
    def warmup(self, envs: Any, policy: LMPolicy, steps: int | None = None) -> list[dict[str, float]]:
        """Supervised MTP training on the envs' reference solutions, backbone frozen.

        Uses ``Task.solution`` of the env's task source (tasks without one are skipped). Only
        the MTP modules' parameters are updated; returns per-step metrics.
        """
        self.bind(policy)
        steps = self.config.warmup_steps if steps is None else steps
        if not self.needs_mtp or steps == 0:
            return []
        env = reasoning_env(envs)  # reads the task source (solutions); nothing is stepped
        optimizer = adamw(policy.mtp_parameters(), lr=self.config.warmup_lr)
        m = self.config.num_mtp_modules
        alphas = torch.tensor([self.config.warmup_alpha_decay**j for j in range(m)])  # [K-1]
        history = []
        for _ in range(steps):
            input_ids, attention, prompt_len = self._solution_batch(env, policy)
            if self.dist.active:  # each rank scores its shard of the solutions; the loss is the whole batch's
                mine = self.dist.shard(input_ids.shape[0])
                input_ids, attention = input_ids[mine.start : mine.stop], attention[mine.start : mine.stop]

            def closure(ids: torch.Tensor = input_ids, attn: torch.Tensor = attention,
                        p: int = prompt_len) -> tuple[torch.Tensor, dict[str, Any]]:
                mtp_lp, mtp_mask = policy.score_mtp(ids, attn, p)  # backbone frozen: no grad
                counts = None
                if self.dist.active:  # this shard's log-probs over the whole batch's counts
                    counts = torch.tensor(self.dist.all_reduce(mtp_mask.sum(dim=(0, 1)).tolist()))  # [K-1]
                loss, metrics = F.mtp_warmup_loss(mtp_lp, mtp_mask, alphas.to(mtp_lp.device), valid_counts=counts)
                return loss, {"warmup/loss": loss.detach(), **metrics}

            # the shards' loss terms and metrics add up to the whole batch's (BaseAgent's DP step)
            row, norm = self.gradient_step(optimizer, [(closure, 1.0)], 1.0)
            history.append({**row, "warmup/grad_norm": norm})  # the norm of the summed gradients
        return history

    def _solution_batch(self, env: Any, policy: LMPolicy) -> tuple[torch.Tensor, torch.Tensor, int]:
        prompts, responses = [], []
        for index in self.rng.integers(len(env.tasks), size=self.config.warmup_batch_size):
            task = env.tasks[int(index)]
            if not task.solution:
                continue
            response = _encode(env.tokenizer, task.solution)[: env.max_new_tokens - 1] + [env.eos_token_id]
            prompts.append([int(i) for i in env.prompt_ids(int(index))])
            responses.append(response)
        if not prompts:
            raise ValueError("MTP warm-up needs tasks with reference solutions (Task.solution)")
        input_ids, attention, mask, p = pad_sequences(prompts, responses, env.pad_token_id)
        return input_ids, attention, p


def _encode(tokenizer: Any, text: str) -> list[int]:
    try:
        ids: Sequence[int] = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:
        ids = tokenizer.encode(text)
    return [int(i) for i in np.asarray(ids).tolist()]
