"""GSPO and GMPO agents: registry and paper defaults, agent-level equivalences, training runs.

The math is golden-tested in ``test_functional.py``; here the agents are checked to wire it up:
on-policy both equal GRPO with ``seq-mean-token-mean`` (the ratio is 1), GSPO-token equals GSPO
off-policy with group advantages, and each trains through ``train``, the CLI and ``compare``.
"""

from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from mpo_gym.agents import (
    AGENTS,
    GMPOAgent,
    GMPOConfig,
    GRPOAgent,
    GRPOConfig,
    GSPOAgent,
    GSPOConfig,
    make_agent,
)
from mpo_gym.policy import LMPolicy, tiny_model
from mpo_gym.trainer import TrainConfig, train

COMMON = {"lr": 1e-3, "minibatch_size": 8, "micro_batch_size": 4, "seed": 0, "group_size": 4}
SCORES = torch.tensor([1.0, 0, 0, 0, 0, 0, 0.5, 0])  # groups that differ (a random tiny model scores 0)
DIAGNOSTICS = ("clipfrac_seq", "clipfrac_token", "ratio_var_seq", "ratio_var_token", "clip_disagreement",
               "abs_log_ratio_gap")


def make_policy(seed=0):
    torch.manual_seed(seed)
    model, tok = tiny_model(seed=seed)
    return LMPolicy(model, tok, value_head=False)


def make_envs(n=8):
    return [gym.make("mpo_gym/Toy-v0") for _ in range(n)]


def collect(agent, policy):
    batch = agent.collect(make_envs(), policy)
    batch.scores = SCORES.clone()
    agent.compute_advantages(batch)
    return batch


def loss_and_grads(agent, batch):
    agent.policy.zero_grad(set_to_none=True)
    loss, metrics = agent.loss(batch.select(range(batch.size)))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in agent.policy.named_parameters() if p.grad is not None}
    return loss.detach(), grads, metrics


def perturb(policy, scale=0.02, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def assert_same(a, b, atol=1e-6):
    torch.testing.assert_close(a[0], b[0], atol=atol, rtol=1e-5)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], atol=atol, rtol=1e-4)


def test_registered_with_paper_defaults():
    assert AGENTS["gspo"] == (GSPOAgent, GSPOConfig) and AGENTS["gmpo"] == (GMPOAgent, GMPOConfig)
    gspo, gmpo = GSPOConfig(), GMPOConfig()
    assert (gspo.clip_low, gspo.clip_high) == (3e-4, 4e-4)  # GSPO §5.1, not PPO's 0.2
    assert (gmpo.clip_low, gmpo.clip_high) == (0.4, 0.4)  # GMPO: (e^-0.4, e^0.4) in log space
    assert gmpo.lr == 1e-6 and not gspo.gspo_token
    num_envs = TrainConfig().num_envs
    assert num_envs == 8
    for cfg in (gspo, gmpo):  # the defaults train with --num-envs 8, off-policy after the first step
        assert num_envs % cfg.group_size == 0 and cfg.minibatch_size < num_envs
        assert cfg.kl_coef == 0 and not cfg.whiten_advantages and cfg.normalize_std
    assert num_envs // gspo.minibatch_size == 4  # GSPO: four mini-batches per rollout batch
    assert num_envs // gmpo.minibatch_size == 8  # GMPO scripts: 8 optimizer steps per rollout


def test_config_validation_messages():
    with pytest.raises(ValueError, match="group_size"):
        GSPOConfig(group_size=1)
    with pytest.raises(ValueError, match="seq-mean-token-mean"):
        GMPOConfig(loss_aggregation="token-mean")
    with pytest.raises(ValueError, match="micro_batch_size"):
        GSPOConfig(minibatch_size=1)
    policy = make_policy()
    with pytest.raises(ValueError, match="multiple of the group size"):
        GSPOAgent(GSPOConfig(), policy).collect(make_envs(6), policy)


@pytest.mark.parametrize("name", ["gspo", "gmpo"])
def test_on_policy_gradient_equals_grpo_sequence_mean(name):
    """Right after the rollout every ratio is 1 (no clip), so the loss and gradient are GRPO's."""
    policy = make_policy()
    agent = make_agent(name, policy, **COMMON)
    batch = collect(agent, policy)
    grpo = GRPOAgent(GRPOConfig(**COMMON, loss_aggregation="seq-mean-token-mean"), policy)
    torch.testing.assert_close(batch.advantages, collect_advantages(grpo, batch))
    mine, theirs = loss_and_grads(agent, batch), loss_and_grads(grpo, batch)
    assert_same(mine, theirs)
    assert float(mine[2]["losses/clipfrac"]) == 0.0
    assert float(mine[2][f"{name}/ratio_var_seq"]) < 1e-10


def collect_advantages(agent, batch):
    agent.compute_advantages(batch)
    return batch.advantages.clone()


def test_gspo_token_equals_gspo_off_policy():
    policy = make_policy()
    gspo = GSPOAgent(GSPOConfig(**COMMON), policy)
    batch = collect(gspo, policy)
    perturb(policy, scale=0.002)  # small enough that some responses stay inside 1 ± 4e-4
    token = GSPOAgent(GSPOConfig(**COMMON, gspo_token=True), policy)
    a, b = loss_and_grads(gspo, batch), loss_and_grads(token, batch)
    assert_same(a, b)
    assert float(a[2]["gspo/ratio_var_seq"]) > 0


def test_gmpo_agent_clips_tokens_in_log_space():
    policy = make_policy()
    agent = GMPOAgent(GMPOConfig(**COMMON), policy)
    batch = collect(agent, policy)
    perturb(policy, scale=0.2)
    _, _, m = loss_and_grads(agent, batch)
    mb = batch.select(range(batch.size))
    with torch.no_grad():
        lr = policy.score(mb.input_ids, mb.attention_mask, mb.prompt_len).logprobs - mb.old_logprobs
    adv = mb.advantages[:, :1].expand_as(lr)
    clipped = mb.mask & (((adv > 0) & (lr > 0.4)) | ((adv < 0) & (lr < -0.4)))
    expected = float(clipped.sum() / mb.mask.sum())
    assert expected > 0
    assert float(m["losses/clipfrac"]) == pytest.approx(expected, abs=1e-6)
    assert float(m["gmpo/clipfrac_token"]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("name", ["gspo", "gmpo"])
def test_update_changes_parameters_and_logs_diagnostics(name):
    policy = make_policy()
    agent = make_agent(name, policy, **{**COMMON, "minibatch_size": 2, "micro_batch_size": 2, "ppo_epochs": 2})
    batch = collect(agent, policy)
    before = [p.clone() for p in policy.backbone_parameters()]
    metrics = agent.update(batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.backbone_parameters()))
    for key in ("losses/policy", "losses/clipfrac", "losses/ratio_var", *(f"{name}/{k}" for k in DIAGNOSTICS)):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics[f"{name}/ratio_var_seq"] > 0  # 8 off-policy steps: ratios moved


@pytest.mark.parametrize("name,extra", [("gspo", {}), ("gspo", {"gspo_token": True}), ("gmpo", {})])
def test_trains_through_train(tmp_path, name, extra):
    cfg = TrainConfig(
        env="mpo_gym/Toy-v0", model="tiny", agent=name, dtype="float32", num_envs=8, updates=2, eval_tasks=2,
        eval_batch=2, out_dir=str(tmp_path / "run"), agent_kwargs={"lr": 1e-3, "group_size": 4, **extra},
    )
    result = train(cfg, progress=False)
    assert result.updates == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert np.isfinite(row["losses/policy"]) and f"{name}/clipfrac_seq" in row
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved_agent_config"]["clip_high"] == (4e-4 if name == "gspo" else 0.4)


def test_train_cli_gspo_token(tmp_path, capsys):
    from mpo_gym.cli import main

    code = main(["train", "--agent", "gspo", "--gspo-token", "true", "--env", "mpo_gym/Toy-v0",
                 "--model", "tiny", "--dtype", "float32", "--updates", "1", "--eval-tasks", "2", "--lr", "0.001",
                 "--out-dir", str(tmp_path / "cli")])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    assert ": 1 updates in " in out.out  # the human summary of a finished run
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert config["num_envs"] == 8 and config["resolved_agent_config"]["gspo_token"] is True


def test_compare_with_the_tiny_preset(tmp_path):
    from mpo_gym.compare import PRESETS, CompareConfig, compare

    cfg = CompareConfig.from_options({**PRESETS["tiny"], "agents": ("gspo", "gmpo"), "updates": 1, "eval_tasks": 2,
                           "agent_kwargs": {}, "out_dir": str(tmp_path / "cmp")})
    out = compare(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["agent"] for r in rows} == {"gspo", "gmpo"}
    for row in rows:
        assert np.isfinite(row["losses/policy"]) and f"{row['agent']}/ratio_var_seq" in row
    report = (out / "report.md").read_text()
    assert "| gspo | 0 | sequence (GSPO) | [0.9997, 1.0004] |" in report
    assert "| gmpo | 0 | sequence (GMPO) | log r in [-0.4, 0.4] per token |" in report


def test_report_diagnostics_table_by_kind_of_ratio(tmp_path):
    """One row per run: the Fig. 4 numbers of its own ratio next to the token ratio's."""
    from mpo_gym.compare import PRESETS, CompareConfig
    from mpo_gym.report import _diagnostics_table

    cfg = CompareConfig.from_options({**PRESETS["offpolicy"], "out_dir": str(tmp_path)})
    token = [{"losses/clipfrac": c, "losses/ratio_var": v} for c, v in ((0.1, 0.02), (0.3, 0.04))]
    seq = [{"losses/clipfrac": 0.5, "losses/ratio_var": 9.0, "gspo/ratio_var_seq": 0.001, "gspo/ratio_var_token": 0.03,
            "gspo/clipfrac_token": 0.7, "gspo/clip_disagreement": 0.2}]
    window = [{"mpo/clipfrac_united": 0.05, "mpo/ratio_var_united": 0.01, "mpo/ratio_var_token": 0.02,
               "mpo/clipfrac_token": 0.08, "mpo/clip_disagreement": 0.03, "losses/ratio_var": 0.01}]
    rows = _diagnostics_table(cfg, {("ppo", 0): token, ("gspo", 0): seq, ("mpo", 0): window, ("grpo", 0): []})
    assert "| ppo | 0 | token | [0.8, 1.2] | 0.2 | 0.03 | 0.03 | 0.2 | (same) |" in rows
    assert "| gspo | 0 | sequence (GSPO) | [0.9997, 1.0004] | 0.5 | 0.001 | 0.03 | 0.7 | 0.2 |" in rows
    assert "| mpo | 0 | window (MPO) | [0.8, 1.2] | 0.05 | 0.01 | 0.02 | 0.08 | 0.03 |" in rows
    assert not any(r.startswith("| grpo") for r in rows)  # nothing logged
