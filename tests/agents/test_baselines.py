"""RLOO, REINFORCE++, DAPO, CISPO and windowed GMPO: golden formulas, equivalences, training.

The golden values are written out by hand from the papers' formulas (each test names its
source); the equivalences are the neighbours on each axis: windowed GMPO with K=1 is PPO's clip
in log space (GMPO's token term), CISPO with an unbounded clip is REINFORCE with importance
weights and, on-policy, GRPO's token-mean gradient; DAPO is GRPO with clip-higher and a token
mean.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mpo_gym.agents import (
    AGENTS,
    CISPOAgent,
    CISPOConfig,
    DAPOAgent,
    DAPOConfig,
    GroupAgent,
    GRPOAgent,
    GRPOConfig,
    OverlongPenalty,
    ReinforcePPAgent,
    ReinforcePPConfig,
    RLOOAgent,
    RLOOConfig,
    WGMPOAgent,
    WGMPOConfig,
    make_agent,
)
from mpo_gym.agents import functional as F
from mpo_gym.agents.base import build_batch
from mpo_gym.policy import LMPolicy, tiny_model
from mpo_gym.trainer import TrainConfig, train

from .test_sequence_agents import (
    SCORES,
    assert_same,
    collect,
    loss_and_grads,
    make_envs,
    make_policy,
    perturb,
)

NEW = ("rloo", "reinforcepp", "dapo", "cispo", "wgmpo")
COMMON = {"lr": 1e-3, "minibatch_size": 8, "micro_batch_size": 4, "seed": 0, "group_size": 4}


# ------------------------------------------------------------------------- registry, configs
def test_registered_and_declare_what_the_trainer_needs():
    for name in NEW:
        agent_cls, config_cls = AGENTS[name]
        assert issubclass(agent_cls, GroupAgent) and agent_cls.name == name
        cfg = config_cls()
        assert 16 % cfg.batch_group_size() == 0  # the defaults train with --num-envs 16
        assert cfg.policy_spec().critic is False
    assert ReinforcePPConfig().needs_reference_model()  # the KL is in the reward, kl_coef stays 0
    assert ReinforcePPConfig().kl_coef == 0 and not ReinforcePPConfig(reward_kl_coef=0).needs_reference_model()
    assert ReinforcePPConfig().batch_group_size() == 1 and ReinforcePPConfig(group_size=4).batch_group_size() == 4
    assert not DAPOConfig().needs_reference_model() and GRPOConfig(kl_coef=0.1).needs_reference_model()
    dapo = DAPOConfig()
    assert (dapo.clip_low, dapo.clip_high, dapo.loss_aggregation) == (0.2, 0.28, "token-mean")  # DAPO §3.1, §3.3
    assert (CISPOConfig().clip_low, CISPOConfig().loss_aggregation) == (1.0, "token-mean")  # no lower bound
    assert RLOOConfig().normalize_std is False
    assert (WGMPOConfig().clip_low, WGMPOConfig().wgmpo_k) == (0.4, 5)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="group_baseline needs group_size"):
        ReinforcePPConfig(group_baseline=True)
    with pytest.raises(ValueError, match="max_sample_rounds"):
        DAPOConfig(max_sample_rounds=0)
    with pytest.raises(ValueError, match="filter_on"):
        DAPOConfig(filter_on="acc")
    with pytest.raises(ValueError, match="clip_low <= 1"):
        CISPOConfig(clip_low=1.5)
    with pytest.raises(ValueError, match="clip_low < 1"):
        GRPOConfig(clip_low=1.0)  # CISPO's floor of 0 is CISPO's alone
    with pytest.raises(ValueError, match="wgmpo_k"):
        WGMPOConfig(wgmpo_k=0)
    with pytest.raises(ValueError, match="seq-mean-token-mean"):
        WGMPOConfig(loss_aggregation="token-mean")
    assert CISPOConfig(clip_high=math.inf).clip_high == math.inf


# ------------------------------------------------------------------------- RLOO
class _Scores:
    def __init__(self, scores, groups):
        self.scores, self.group_ids = torch.tensor(scores), torch.tensor(groups)


def test_rloo_advantage_is_reward_minus_the_mean_of_the_others():
    # Ahmadian et al. 2024, Eq. (leave-one-out): A_i = R_i - 1/(k-1) sum_{j != i} R_j
    agent = RLOOAgent(RLOOConfig(group_size=4))
    adv = agent.sequence_advantages(_Scores([1.0, 0, 0, 0, 0.5, 0.5, 1, 0], [0, 0, 0, 0, 1, 1, 1, 1]))
    expected = [1.0, -1 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 2 / 3, -2 / 3]
    torch.testing.assert_close(adv, torch.tensor(expected), atol=1e-6, rtol=0)


def test_rloo_on_policy_gradient_is_reinforce_on_the_response_log_prob():
    """-mean_i A_i sum_t grad log pi(o_it) / max_len: the paper's sequence-level REINFORCE."""
    policy = make_policy()
    agent = RLOOAgent(RLOOConfig(**COMMON), policy)
    batch = collect(agent, policy)
    mine = loss_and_grads(agent, batch)
    policy.zero_grad(set_to_none=True)
    mb = batch.select(range(batch.size))
    logp = policy.score(mb.input_ids, mb.attention_mask, mb.prompt_len).logprobs  # [B, T]
    adv = F.group_advantages(SCORES, 4, normalize_std=False, baseline="loo")  # [B]
    seq_logp = torch.where(mb.mask, logp, torch.zeros_like(logp)).sum(1)  # [B]
    (-(adv * seq_logp).sum() / (mb.max_len * mb.size)).backward()
    for name, p in policy.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(mine[1][name], p.grad, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------- REINFORCE++
def test_reinforcepp_returns_golden():
    # Hu et al. 2025, Eq. 8-9: G_t = sum_{s >= t} gamma^(s-t) (r_s - beta * KL_s)
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, -0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    got = F.reinforcepp_returns(rewards, kl, mask, kl_coef=0.5)
    torch.testing.assert_close(got, torch.tensor([[0.7, 0.75, 0.85], [2.0, 2.25, 0.0]]))
    got = F.reinforcepp_returns(rewards, kl, mask, kl_coef=0.5, gamma=0.5)
    torch.testing.assert_close(got[0], torch.tensor([0.1125, 0.325, 0.85]))


def _hand_batch(scores, lengths, group_size=1):
    """A RolloutBatch with the given episode rewards (on the last token) and lengths, old and
    reference log-probs set by hand."""
    from types import SimpleNamespace

    eps = [SimpleNamespace(prompt_ids=[1, 2], response_ids=[3] * n, logprobs=[-1.0] * n, block_lengths=[n],
                           step_rewards=[r], reward=r, truncated=False, verdict=None)
           for r, n in zip(scores, lengths)]
    batch = build_batch(eps, pad_id=0, group_ids=[i // group_size for i in range(len(eps))])
    batch.old_logprobs = torch.full(batch.mask.shape, -1.0)
    batch.ref_logprobs = torch.full(batch.mask.shape, -1.0) - 0.1 * torch.arange(batch.mask.shape[1])  # KL_t = 0.1 t
    return batch


def _whiten(x, mask):
    v = x[mask]
    return torch.where(mask, (x - v.mean()) / v.std(), torch.zeros_like(x))


@pytest.mark.parametrize("baseline", [False, True], ids=["reinforce++", "reinforce++-baseline"])
def test_reinforcepp_advantages_are_whitened_kl_shaped_returns(baseline):
    scores, lengths = [1.0, 0.0, 0.5, 0.0], [3, 2, 1, 3]
    cfg = ReinforcePPConfig(reward_kl_coef=0.2, group_size=2 if baseline else 1, group_baseline=baseline)
    agent = ReinforcePPAgent(cfg)
    batch = _hand_batch(scores, lengths, cfg.group_size)
    agent.compute_advantages(batch)
    # by hand: the group mean off first (baseline), then r_T - 0.2 * sum_{s >= t} 0.1 s, then whitening
    means = [0.5, 0.5, 0.25, 0.25] if baseline else [0.0] * 4
    expected = torch.zeros(4, 3)
    for i, (r, n) in enumerate(zip(scores, lengths)):
        for t in range(n):
            expected[i, t] = (r - means[i]) - 0.2 * sum(0.1 * s for s in range(t, n))
    torch.testing.assert_close(batch.returns, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(batch.advantages, _whiten(expected, batch.mask), atol=1e-5, rtol=0)


def test_reinforcepp_keeps_a_frozen_reference_without_a_kl_loss():
    policy = make_policy()
    agent = ReinforcePPAgent(ReinforcePPConfig(**{**COMMON, "group_size": 1}), policy)
    assert agent.reference is not None and all(not p.requires_grad for p in agent.reference.parameters())
    batch = agent.collect(make_envs(), policy)
    torch.testing.assert_close(batch.ref_logprobs, batch.old_logprobs)  # before any step: KL 0
    metrics = agent.update(batch)
    assert "losses/kl_ref" not in metrics and metrics["reinforcepp/reward_kl"] == 0.0


# ------------------------------------------------------------------------- DAPO
def test_varied_groups_and_overlong_penalty_golden():
    rewards = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.3, 0.3])
    assert F.varied_groups(rewards, 2).tolist() == [False, True, False, False]
    assert F.varied_groups(rewards, 4).tolist() == [True, True]
    # Yu et al. 2025, Eq. 13 with L_max = 20, L_cache = 5
    assert [F.overlong_penalty(n, 20, 5) for n in (0, 15, 16, 18, 20, 21)] == [0.0, 0.0, -0.2, -0.6, -1.0, -1.0]
    assert F.overlong_penalty(16, 20, 5, factor=0.5) == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="cache_length"):
        F.overlong_penalty(3, 4, 5)


def test_overlong_penalty_wrapper_shapes_the_final_reward():
    from mpo_gym.envs.toy import ToyEnv

    base = ToyEnv(max_new_tokens=8, block_size=4)
    env = OverlongPenalty(ToyEnv(max_new_tokens=8, block_size=4), cache_length=4, max_length=10)
    rewards = {}
    for name, e in (("base", base), ("shaped", env)):
        e.reset(seed=0, options={"task_index": 0})
        total, done, info = 0.0, False, {}
        block = np.array(base.tokenizer.encode("zzzz"))  # never EOS: truncated at 8 tokens
        while not done:
            _, r, term, trunc, info = e.step(block)
            total, done = total + float(r), term or trunc
        rewards[name] = (total, info)
    penalty = (10 - 4 - 8) / 4  # (L_max - L_cache - |y|) / L_cache
    assert rewards["shaped"][1]["overlong_penalty"] == penalty == -0.5
    assert rewards["shaped"][0] == pytest.approx(rewards["base"][0] + penalty)
    assert env.cache_length == 4 and OverlongPenalty(ToyEnv(max_new_tokens=20)).cache_length == 4  # L/5


def test_dapo_loss_is_grpo_with_clip_higher_and_a_token_mean():
    policy = make_policy()
    dapo = DAPOAgent(DAPOConfig(**COMMON, dynamic_sampling=False), policy)  # the hook is tested apart
    batch = collect(dapo, policy)
    perturb(policy, scale=0.05)
    grpo = GRPOAgent(GRPOConfig(**COMMON, clip_high=0.28, loss_aggregation="token-mean"), policy)
    assert_same(loss_and_grads(dapo, batch), loss_and_grads(grpo, batch))
    plain = GRPOAgent(GRPOConfig(**COMMON), policy)  # the symmetric clip differs off-policy
    assert not torch.allclose(loss_and_grads(plain, batch)[0], loss_and_grads(dapo, batch)[0])


# ------------------------------------------------------------------------- CISPO
def test_cispo_loss_and_gradient_golden():
    # MiniMax-M1 Eq. 4: -1/N sum_t sg(clip(r_t, 1 - eps_low, 1 + eps_high)) A_t log pi(o_t)
    lr = torch.log(torch.tensor([[1.0, 1.5, 0.5, 1.1, 2.0]])).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, 2.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    loss, m = F.cispo_policy_loss(lr, adv, mask, clip_low=0.2, clip_high=0.2)
    w = torch.tensor([1.0, 1.2, 0.8, 1.1])
    expected = -(w * adv[0, :4] * lr.detach()[0, :4]).sum() / 4
    torch.testing.assert_close(loss, expected)
    loss.backward()
    # every valid token keeps a gradient, -w A / N, the clipped ones too (PPO drops token 1's);
    # the weight is a constant (stop-gradient), so token 3's is -1.1 * 2 / 4, not more
    torch.testing.assert_close(lr.grad, torch.tensor([[-0.25, -0.3, 0.2, -0.55, 0.0]]))
    assert float(m["clipfrac"]) == pytest.approx(2 / 4)
    lr2 = lr.detach().clone().requires_grad_(True)
    ppo, _ = F.clipped_policy_loss(lr2, adv, mask, 0.2, 0.2)
    ppo.backward()
    assert lr2.grad[0, 1] == 0.0 and lr.grad[0, 1] != 0.0


def test_cispo_unclipped_is_reinforce_with_importance_weights():
    policy = make_policy()
    agent = CISPOAgent(CISPOConfig(**COMMON, clip_low=1.0, clip_high=math.inf), policy)
    batch = collect(agent, policy)
    perturb(policy, scale=0.2)  # ratios far from 1: a finite clip would change them
    mine = loss_and_grads(agent, batch)
    policy.zero_grad(set_to_none=True)
    mb = batch.select(range(batch.size))
    logp = policy.score(mb.input_ids, mb.attention_mask, mb.prompt_len).logprobs  # [B, T]
    weight = (logp.detach() - mb.old_logprobs).exp()  # [B, T] plain importance weights
    per_token = -(weight * mb.advantages * logp)
    (torch.where(mb.mask, per_token, torch.zeros_like(per_token)).sum() / mb.mask.sum()).backward()
    for name, p in policy.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(mine[1][name], p.grad, atol=1e-6, rtol=1e-4)
    clipped = CISPOAgent(CISPOConfig(**COMMON, clip_high=0.01), policy)
    assert float(loss_and_grads(clipped, batch)[2]["losses/clipfrac"]) > 0


def test_cispo_on_policy_gradient_equals_grpo_token_mean():
    policy = make_policy()
    cispo = CISPOAgent(CISPOConfig(**COMMON), policy)
    batch = collect(cispo, policy)
    grpo = GRPOAgent(GRPOConfig(**COMMON, loss_aggregation="token-mean"), policy)
    a, b = loss_and_grads(cispo, batch), loss_and_grads(grpo, batch)
    for name in b[1]:
        torch.testing.assert_close(a[1][name], b[1][name], atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------- windowed GMPO
def test_wgmpo_golden_window_of_two():
    lr = torch.tensor([[0.5, -0.1, 0.3, 7.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    pos = torch.ones(1, 4)
    loss, m = F.wgmpo_policy_loss(lr, pos, mask, k=2, clip_low=0.4, clip_high=0.4)
    # A > 0: l~ = min(l, 0.4) = [0.4, -0.1, 0.3]; windows: mean(0.4, -0.1), mean(-0.1, 0.3), 0.3
    e = [math.exp(0.15), math.exp(0.1), math.exp(0.3)]
    assert float(loss.detach()) == pytest.approx(-sum(e) / 3)
    loss.backward()
    expected = [0.0, -(e[0] + e[1]) / 6, -e[1] / 6 - e[2] / 3, 0.0]  # the clipped term passes none
    torch.testing.assert_close(lr.grad, torch.tensor([expected]))
    assert float(m["clipfrac"]) == pytest.approx(1 / 5)  # 1 of 5 valid window terms
    neg, _ = F.wgmpo_policy_loss(lr.detach(), -pos, mask, k=2)  # A < 0: max(l, -0.4) changes nothing
    assert float(neg) == pytest.approx((math.exp(0.2) + math.exp(0.1) + math.exp(0.3)) / 3)


def test_wgmpo_with_k1_is_the_ppo_clip_in_log_space():
    gen = torch.Generator().manual_seed(0)
    lr = (0.6 * torch.randn(8, 7, generator=gen, dtype=torch.float64)).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0, 1.0, -1.0, 0.0, 3.0], dtype=torch.float64)[:, None].expand(8, 7)
    mask = torch.arange(7)[None, :] < torch.tensor([[7], [7], [5], [5], [3], [3], [7], [1]])
    clipped = mask & (((adv > 0) & (lr > 0.5)) | ((adv < 0) & (lr < -0.5)))
    assert clipped[adv > 0].any() and clipped[adv < 0].any()  # the clip acts on both sides
    lo, hi = 1 - math.exp(-0.4), math.exp(0.4) - 1
    for aggregation in ("seq-mean-token-mean", "token-mean"):
        lr.grad = None
        w, _ = F.wgmpo_policy_loss(lr, adv, mask, k=1, aggregation=aggregation)
        (gw,) = torch.autograd.grad(w, lr)
        p, _ = F.clipped_policy_loss(lr, adv, mask, lo, hi, aggregation=aggregation)
        (gp,) = torch.autograd.grad(p, lr)
        torch.testing.assert_close(w, p)
        torch.testing.assert_close(gw, gp)


def test_wgmpo_agent_with_k1_equals_grpo_with_log_space_bounds():
    policy = make_policy()
    kwargs = {**COMMON, "minibatch_size": 8, "micro_batch_size": 4}
    wgmpo = WGMPOAgent(WGMPOConfig(**kwargs, wgmpo_k=1), policy)
    batch = collect(wgmpo, policy)
    perturb(policy, scale=0.2)
    lo, hi = 1 - math.exp(-0.4), math.exp(0.4) - 1
    grpo = GRPOAgent(GRPOConfig(**kwargs, clip_low=lo, clip_high=hi, loss_aggregation="seq-mean-token-mean"), policy)
    a, b = loss_and_grads(wgmpo, batch), loss_and_grads(grpo, batch)
    assert_same(a, b)
    assert float(b[2]["losses/clipfrac"]) > 0  # the clip acted
    wide = WGMPOAgent(WGMPOConfig(**kwargs, wgmpo_k=3), policy)
    assert not torch.allclose(loss_and_grads(wide, batch)[0], a[0])


# ------------------------------------------------------------------------- every new agent
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", NEW)
def test_parameters_change_after_one_update(name, dtype):
    torch.manual_seed(0)
    model, tok = tiny_model(seed=0)
    policy = LMPolicy(model, tok, value_head=False, compute_dtype=dtype)
    kwargs = {**COMMON, "minibatch_size": 4, "micro_batch_size": 2}
    if name == "reinforcepp":
        kwargs["group_size"] = 1
    agent = make_agent(name, policy, **kwargs)
    envs = make_envs()
    if name == "dapo":  # a random tiny model scores (nearly) 0 everywhere: differing groups by hand
        agent.select_episodes = lambda eps, envs, policy: DAPOAgent.select_episodes(agent, _varied(eps), envs, policy)
    batch = agent.collect(envs, policy)
    batch.scores = SCORES.clone()
    batch.rewards = torch.zeros_like(batch.rewards)
    batch.rewards[torch.arange(8), batch.mask.sum(1) - 1] = SCORES
    agent.compute_advantages(batch)
    before = [p.clone() for p in policy.backbone_parameters()]
    metrics = agent.update(batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.backbone_parameters()))
    assert math.isfinite(metrics["losses/policy"]) and "charts/reward" in metrics


def _varied(episodes):
    for i, e in enumerate(episodes):
        e.reward = float(SCORES[i % 8])
    return episodes


@pytest.mark.parametrize("name", NEW)
def test_trains_with_the_tiny_model_and_16_envs(tmp_path, name):
    cfg = TrainConfig(env="mpo_gym/Toy-v0", model="tiny", agent=name, dtype="float32", num_envs=16, updates=2,
                      eval_tasks=0, out_dir=str(tmp_path / "run"), threads=1, agent_kwargs={"lr": 1e-3})
    assert train(cfg, progress=False).updates == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # one metrics row per update
    for row in rows:
        assert np.isfinite(row["charts/reward"])
        assert row.get("select/skipped") == 1.0 or np.isfinite(row["losses/policy"])
    if name == "dapo":
        assert all(r["select/rounds"] >= 1 and r["select/sampled_episodes"] >= 16 for r in rows)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved_agent_config"]["group_size"] == AGENTS[name][1]().group_size
