"""Agents: equivalence classes (MPO K=1 == PPO, beta=[1,0..] == PPO, backbone ratio), updates."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import pytest
import torch

from mpo_gym.agents import (
    GRPOAgent,
    GRPOConfig,
    MPOAgent,
    MPOConfig,
    PPOAgent,
    PPOConfig,
    make_agent,
)
from mpo_gym.agents import (
    functional as F,
)
from mpo_gym.policy import LMPolicy, tiny_model

COMMON = {"lr": 1e-3, "minibatch_size": 8, "micro_batch_size": 4, "seed": 0}


def make_policy(value_head=True, num_mtp_modules=0, seed=0):
    torch.manual_seed(seed)
    model, tok = tiny_model(seed=seed)
    return LMPolicy(model, tok, value_head=value_head, num_mtp_modules=num_mtp_modules)


def make_envs(n=8, **kwargs):
    return [gym.make("mpo_gym/Toy-v0", **kwargs) for _ in range(n)]


def grads(policy):
    return {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}


def loss_and_grads(agent, batch):
    agent.policy.zero_grad(set_to_none=True)
    loss, metrics = agent.loss(batch.select(range(batch.size)))
    loss.backward()
    return loss.detach(), grads(agent.policy), metrics


def test_batch_layout_matches_episodes():
    policy = make_policy()
    agent = PPOAgent(PPOConfig(**COMMON), policy)
    batch = agent.collect(make_envs(), policy)
    assert batch.size == 8 and batch.mask.shape == batch.old_logprobs.shape == batch.old_values.shape
    for i, e in enumerate(batch.episodes):
        n = len(e.response_ids)
        assert batch.mask[i].sum() == n
        resp = batch.input_ids[i, batch.prompt_len : batch.prompt_len + n].tolist()
        assert resp == e.response_ids
        assert batch.rewards[i].sum().item() == pytest.approx(e.reward)
        # teacher-forced old log-probs equal the ones recorded while sampling
        torch.testing.assert_close(batch.old_logprobs[i, :n], torch.tensor(e.logprobs), atol=1e-4, rtol=1e-4)


def test_mpo_with_k1_equals_ppo():
    policy = make_policy()
    ppo = PPOAgent(PPOConfig(**COMMON), policy)
    batch = ppo.collect(make_envs(), policy)
    mpo = MPOAgent(MPOConfig(**COMMON, mpo_k=1, warmup_steps=0), policy)
    loss_p, grads_p, _ = loss_and_grads(ppo, batch)
    loss_m, grads_m, _ = loss_and_grads(mpo, batch)
    torch.testing.assert_close(loss_m, loss_p)
    assert grads_p.keys() == grads_m.keys()
    for name in grads_p:
        torch.testing.assert_close(grads_m[name], grads_p[name])


def test_mpo_with_unit_first_beta_equals_ppo():
    policy = make_policy(num_mtp_modules=4)
    mpo = MPOAgent(MPOConfig(**COMMON, mpo_k=5, beta2=0.0, warmup_steps=0), policy)
    assert mpo.betas.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    batch = mpo.collect(make_envs(), policy)
    assert batch.old_mtp_logprobs.shape == (*batch.mask.shape, 4)
    ppo = PPOAgent(PPOConfig(**COMMON), policy)
    loss_p, grads_p, _ = loss_and_grads(ppo, batch)
    loss_m, grads_m, metrics = loss_and_grads(mpo, batch)
    torch.testing.assert_close(loss_m, loss_p)
    for name, g in grads_p.items():
        torch.testing.assert_close(grads_m[name], g)
    assert float(metrics["mpo/clip_disagreement"]) == 0.0


def test_backbone_ratio_source_matches_direct_computation():
    policy = make_policy()
    cfg = MPOConfig(**COMMON, mpo_k=3, beta2=0.2, mpo_decay=0.5, ratio_source="backbone", ppo_epochs=1)
    mpo = MPOAgent(cfg, policy)
    batch = mpo.collect(make_envs(), policy)
    with torch.no_grad():  # perturb the policy so ratios differ from 1
        for p in policy.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    mb = batch.select(range(batch.size))
    united, _ = mpo.log_ratio(mb, policy.score(mb.input_ids, mb.attention_mask, mb.prompt_len, values=True))
    out = policy.score(mb.input_ids, mb.attention_mask, mb.prompt_len)
    lr = (out.logprobs - mb.old_logprobs).detach()
    betas = [0.7, 0.2, 0.1]  # beta1 = 1 - 0.2 - 0.2*0.5
    expected = torch.zeros_like(lr)
    for b in range(lr.shape[0]):
        n = int(mb.mask[b].sum())
        for t in range(n):
            expected[b, t] = sum(betas[k] * lr[b, t + k] for k in range(3) if t + k < n)
    torch.testing.assert_close(united.detach(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["ppo", "mpo", "grpo"])
def test_parameters_change_after_one_update(name):
    kwargs = dict(COMMON)
    if name == "mpo":
        kwargs.update(mpo_k=3, warmup_steps=1, warmup_batch_size=4)
    if name == "grpo":
        kwargs["group_size"] = 4
    policy = make_policy(value_head=name != "grpo", num_mtp_modules=2 if name == "mpo" else 0)
    agent = make_agent(name, policy, **kwargs)
    envs = make_envs()
    if name == "mpo":
        before_mtp = [p.clone() for p in policy.mtp_parameters()]
        history = agent.warmup(envs, policy)
        assert len(history) == 1 and "warmup/loss" in history[0]
        assert any(not torch.equal(a, b) for a, b in zip(before_mtp, policy.mtp_parameters()))
    before = [p.clone() for p in policy.backbone_parameters()]
    batch = agent.collect(envs, policy)
    if name == "grpo":  # a random tiny model often scores 0 everywhere: make the groups differ
        batch.scores = torch.tensor([1.0, 0, 0, 0, 0, 0, 0.5, 0])
        agent.compute_advantages(batch)
    metrics = agent.update(batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.backbone_parameters()))
    assert "losses/policy" in metrics and "charts/reward" in metrics and "verdicts/correct" in metrics
    assert metrics["checks/sample_logprob_gap_max"] < 1e-4  # sampler and scorer agree (fp32)
    if name == "mpo":
        for key in ("mpo/clipfrac_united", "mpo/clipfrac_token", "mpo/ratio_var_united", "mpo/clip_disagreement"):
            assert key in metrics


def test_grpo_groups_share_a_task():
    policy = make_policy(value_head=False)
    agent = GRPOAgent(GRPOConfig(**COMMON, group_size=4), policy)
    batch = agent.collect(make_envs(), policy)
    tasks = [e.task_index for e in batch.episodes]
    assert tasks[:4] == [tasks[0]] * 4 and tasks[4:] == [tasks[4]] * 4
    assert batch.group_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    adv = batch.advantages[:, 0]
    assert abs(float(adv[:4].sum())) < 1e-5 and abs(float(adv[4:].sum())) < 1e-5


def test_kl_reference_is_frozen_copy():
    policy = make_policy(value_head=False)
    agent = GRPOAgent(GRPOConfig(**COMMON, group_size=4, kl_coef=0.1), policy)
    batch = agent.collect(make_envs(), policy)
    torch.testing.assert_close(batch.ref_logprobs, batch.old_logprobs)
    metrics = agent.update(batch)
    assert "losses/kl_ref" in metrics
    assert all(not p.requires_grad for p in agent.reference.parameters())


def test_config_validation_messages():
    with pytest.raises(ValueError, match="beta"):
        MPOConfig(mpo_k=5, beta2=0.5, mpo_decay=1.0)
    with pytest.raises(ValueError, match="ratio_source"):
        MPOConfig(ratio_source="nope")
    with pytest.raises(ValueError, match="group_size"):
        GRPOConfig(group_size=1)
    with pytest.raises(ValueError, match="unknown agent"):
        make_agent("a2c")
    with pytest.raises(ValueError, match="needs a critic"):
        PPOAgent(PPOConfig(), make_policy(value_head=False))
    with pytest.raises(ValueError, match="num_mtp_modules"):
        MPOAgent(MPOConfig(mpo_k=3), make_policy())
    assert dataclasses.is_dataclass(PPOConfig) and MPOConfig().num_mtp_modules == 4
    assert F.mpo_betas(5, 0.06, 0.8).tolist() == pytest.approx([0.82288, 0.06, 0.048, 0.0384, 0.03072])
