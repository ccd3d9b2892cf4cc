"""The selection hook between sampling and batch building (``BaseAgent.select_episodes``).

DAPO's dynamic sampling drops groups whose rewards are all equal, refills within its budget,
cuts to the batch's size, and skips the update (logged, no optimizer step) when nothing is
informative; charts always describe every episode sampled. A hook may also reweight.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import gymnasium as gym
import pytest
import torch

from mpo_gym.agents import DAPOAgent, DAPOConfig, GRPOAgent, GRPOConfig, Selection
from mpo_gym.trainer import TrainConfig, train

from . import select_envs  # noqa: F401  (registers select_test/*)
from .test_sequence_agents import make_policy


def fake(rewards, start=0):
    return [SimpleNamespace(reward=r, verdict=SimpleNamespace(status="correct" if r == 1 else "incorrect"), index=start + i)
            for i, r in enumerate(rewards)]


def stub_sampler(agent, rounds):
    calls = iter(rounds)
    agent.sample = lambda envs, policy: next(calls)
    return calls


def test_dynamic_sampling_drops_equal_groups_refills_and_cuts_to_the_batch():
    agent = DAPOAgent(DAPOConfig(group_size=2, max_sample_rounds=3))
    first = fake([0, 0, 1, 0, 1, 1, 0, 0])  # groups: equal, varied, equal, equal
    stub_sampler(agent, [fake([0.5, 0, 0, 0, 1, 0, 0, 1, 1, 0], 8)])  # varied, equal, varied x 3
    sel = agent.select_episodes(first, None, None)
    assert [e.index for e in sel.episodes] == [2, 3, 8, 9, 12, 13, 14, 15]  # whole groups, in order, cut to 8
    assert len(sel.sampled) == 18
    assert sel.metrics == {"select/rounds": 2.0, "select/kept_groups": 4.0, "select/sampled_episodes": 18.0,
                           "select/skipped": 0.0}
    stub_sampler(agent, [fake([1, 0] * 4, 8)])
    sel = agent.select_episodes(fake([1, 0, 0, 1, 1, 0, 0, 1]), None, None)  # full at once: no refill
    assert sel.metrics["select/rounds"] == 1.0 and len(sel.episodes) == 8


def test_dynamic_sampling_stops_at_its_budget():
    agent = DAPOAgent(DAPOConfig(group_size=2, max_sample_rounds=3))
    left = stub_sampler(agent, [fake([1, 1, 0, 0]), fake([0, 0, 0.5, 0]), fake([0, 1, 0, 1])])
    sel = agent.select_episodes(fake([0, 0, 0, 0]), None, None)
    assert sel.metrics["select/rounds"] == 3.0 and sel.metrics["select/kept_groups"] == 1.0
    assert next(left)  # the third round was never drawn
    stub_sampler(agent, [fake([0] * 4)] * 2)
    sel = agent.select_episodes(fake([0] * 4), None, None)
    assert sel.episodes == [] and sel.metrics["select/skipped"] == 1.0 and len(sel.sampled) == 12


def test_filter_on_correctness_ignores_shaping_differences():
    agent = DAPOAgent(DAPOConfig(group_size=2, filter_on="correct", max_sample_rounds=1))
    sel = agent.select_episodes(fake([-0.2, 0.0, 1.0, 0.0]), None, None)  # group 0: both wrong
    assert [e.index for e in sel.episodes] == [2, 3]


def test_an_empty_selection_skips_the_update_and_charts_what_was_sampled():
    policy = make_policy()
    agent = DAPOAgent(DAPOConfig(group_size=4, minibatch_size=4, micro_batch_size=2, max_sample_rounds=2), policy)
    envs = [gym.make("select_test/Zero-v0") for _ in range(8)]
    before = [p.clone() for p in policy.parameters()]
    batch = agent.collect(envs, policy)
    assert batch.size == 0 and len(batch.sampled) == 16 and agent.rollout_calls == 2
    metrics = agent.update(batch)
    assert metrics["select/skipped"] == 1.0 and metrics["select/rounds"] == 2.0
    assert metrics["charts/reward"] == 0.0 and metrics["verdicts/incorrect"] == 1.0
    assert not any(k.startswith("losses/") for k in metrics)
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_a_run_whose_groups_never_differ_logs_skipped_updates(tmp_path):
    """The tiny model on an env that pays 0 everywhere: every update is skipped, none hangs."""
    cfg = TrainConfig(env="select_test/Zero-v0", model="tiny", agent="dapo", dtype="float32", num_envs=16, updates=2,
                      eval_tasks=0, out_dir=str(tmp_path / "run"), threads=1, agent_kwargs={"lr": 1e-2})
    assert train(cfg, progress=False).updates == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["select/skipped"] == 1.0 and r["select/rounds"] == 3.0 for r in rows)


def test_a_kept_share_that_varies_trains_on_the_groups_found():
    policy = make_policy()
    agent = DAPOAgent(DAPOConfig(group_size=2, minibatch_size=4, micro_batch_size=2, max_sample_rounds=1), policy)
    envs = [gym.make("select_test/HalfParity-v0") for _ in range(8)]
    batch = agent.collect(envs, policy)
    kept = int(batch.selection_metrics["select/kept_groups"])
    assert 0 < kept < 4 and batch.size == 2 * kept and len(batch.sampled) == 8
    assert batch.group_ids.tolist() == [i // 2 for i in range(batch.size)]
    assert all(e.task_index < 4 for e in batch.episodes)  # the "never" tasks' groups were dropped
    before = [p.clone() for p in policy.backbone_parameters()]
    metrics = agent.update(batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.backbone_parameters()))
    assert metrics["select/skipped"] == 0.0 and metrics["charts/reward"] == pytest.approx(
        float(torch.tensor([e.reward for e in batch.sampled]).mean()))


class Reweighted(GRPOAgent):
    def select_episodes(self, episodes, envs, policy):
        return Selection(episodes=episodes, sampled=episodes, weights=[0.5 if i < 4 else 2.0 for i in range(len(episodes))])


def test_a_hook_may_reweight_and_must_keep_whole_groups():
    policy = make_policy()
    cfg = GRPOConfig(group_size=4, minibatch_size=8, micro_batch_size=4)
    envs = [gym.make("select_test/HalfParity-v0") for _ in range(8)]
    plain, weighted = GRPOAgent(cfg, policy), Reweighted(cfg, policy)
    a = plain.collect(envs, policy)
    weighted.rng.bit_generator.state = GRPOAgent(cfg).rng.bit_generator.state  # same draws as plain's
    b = weighted.collect(envs, policy)
    w = torch.tensor([0.5] * 4 + [2.0] * 4)[:, None]
    torch.testing.assert_close(b.advantages, a.advantages * w)

    class Halves(GRPOAgent):
        def select_episodes(self, episodes, envs, policy):
            return Selection(episodes=episodes[:2], sampled=episodes)

    with pytest.raises(ValueError, match="not whole groups of 4"):
        Halves(cfg, policy).collect(envs, policy)
