"""Trainer: run folder contents, exact resume, NaN guard, generated CLI."""

from __future__ import annotations

import json

import pytest
import torch

from mpo_gym.trainer import TrainConfig, TrainingDiverged, train


def tiny_cfg(tmp_path, **kwargs):
    base = dict(
        env="mpo_gym/Toy-v0", model="tiny", agent="ppo", dtype="float32", num_envs=4, updates=2,
        eval_tasks=4, eval_batch=4, out_dir=str(tmp_path / "run"),
        agent_kwargs={"lr": 1e-3, "minibatch_size": 4, "micro_batch_size": 2},
    )
    base.update(kwargs)
    return TrainConfig(**base)


def test_run_folder_contents(tmp_path):
    result = train(tiny_cfg(tmp_path), progress=False)
    out = result.out_dir
    config = json.loads((out / "config.json").read_text())
    assert config["resolved_agent_config"]["lr"] == 1e-3 and config["resolved_env_kwargs"]["tokenizer"] == "char"
    assert config["resolved_dtype"] == "float32"
    assert (config["train_split"], config["eval_split"]) == ("train", "test")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("charts/reward", "losses/policy", "losses/value", "losses/clipfrac", "losses/approx_kl", "verdicts/correct"):
        assert key in rows[0]
    evals = json.loads((out / "eval.json").read_text())
    assert set(evals) >= {"before", "after"} and evals["after"]["n"] == 4
    assert (out / "checkpoint" / "policy.pt").exists() and (out / "checkpoint" / "state.pt").exists()
    assert not (out / "checkpoint.tmp").exists()


@pytest.mark.parametrize("agent", ["ppo", "mpo"])
def test_resume_is_bit_exact(tmp_path, agent):
    extra = {"mpo_k": 3, "warmup_steps": 1, "warmup_batch_size": 2} if agent == "mpo" else {}
    kwargs = {"lr": 1e-3, "minibatch_size": 4, "micro_batch_size": 2, **extra}
    straight = tiny_cfg(tmp_path / "a", agent=agent, updates=3, eval_tasks=0, agent_kwargs=kwargs)
    train(straight, progress=False)
    first = tiny_cfg(tmp_path / "b", agent=agent, updates=1, eval_tasks=0, agent_kwargs=kwargs)
    train(first, progress=False)
    resumed = tiny_cfg(tmp_path / "b", agent=agent, updates=3, eval_tasks=0, agent_kwargs=kwargs)
    train(resumed, progress=False)
    a = torch.load(tmp_path / "a" / "run" / "checkpoint" / "policy.pt")
    b = torch.load(tmp_path / "b" / "run" / "checkpoint" / "policy.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows_a = (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()
    def results(row):  # wall-clock measurements are not results (phase seconds, rates); token counts are
        return {k: v for k, v in json.loads(row).items() if k not in ("time", "warmup/seconds", "perf/peak_rss_mb")
                and not (k.startswith("perf/") and k.endswith(("_s", "_per_s")))}

    strip = [results(r) for r in rows_a]
    assert strip == [results(r) for r in rows_b]
    assert all("perf/rollout_tokens" in r for r in strip[-2:])


def test_eval_every_logs_held_out_accuracy_without_changing_training(tmp_path):
    plain = train(tiny_cfg(tmp_path / "a", updates=3), progress=False)
    periodic = train(tiny_cfg(tmp_path / "b", updates=3, eval_every=2), progress=False)
    rows = [json.loads(line) for line in (periodic.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert ["eval/accuracy" in r for r in rows] == [False, True, False]
    tasks = [json.loads(line) for line in (periodic.out_dir / "eval_tasks.jsonl").read_text().splitlines()]
    at_2 = [t for t in tasks if t["when"] == 2]
    assert len(at_2) == 4 and [t["when"] for t in tasks].count("after") == 4
    assert rows[1]["eval/accuracy"] == sum(t["correct"] for t in at_2) / 4  # recomputable from the rows
    assert rows[1]["eval/reward"] == pytest.approx(sum(t["reward"] for t in at_2) / 4)
    assert any(k.startswith("eval/status/") for k in rows[1])
    a = torch.load(plain.out_dir / "checkpoint" / "policy.pt")
    b = torch.load(periodic.out_dir / "checkpoint" / "policy.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # evaluating draws no randomness from training
    assert periodic.eval_after == plain.eval_after
    with pytest.raises(ValueError, match="eval_every"):
        tiny_cfg(tmp_path, eval_every=1, eval_tasks=0)


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, monkeypatch):
    from mpo_gym.agents import PPOAgent

    def broken(self, mb):
        loss, metrics = original(self, mb)
        return loss * float("nan"), metrics

    original = PPOAgent.loss
    monkeypatch.setattr(PPOAgent, "loss", broken)
    with pytest.raises(TrainingDiverged, match="non-finite loss"):
        train(tiny_cfg(tmp_path, eval_tasks=0), progress=False)


def test_config_validation():
    with pytest.raises(ValueError, match="no field"):
        TrainConfig(agent="grpo", agent_kwargs={"mpo_k": 3})
    with pytest.raises(ValueError, match="unknown agent"):
        TrainConfig(agent="dqn")


def test_train_cli(tmp_path, capsys):
    """In this process (``python -m mpo_gym train`` in a fresh one: test_cli's user-env test)."""
    from mpo_gym.cli import main

    code = main(["train", "--agent", "grpo", "--env", "mpo_gym/Toy-v0", "--model", "tiny",
                 "--dtype", "float32", "--num-envs", "4", "--group-size", "2", "--updates", "1", "--eval-tasks", "2",
                 "--lr", "0.001", "--minibatch-size", "4", "--micro-batch-size", "4", "--out-dir", str(tmp_path / "cli")])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    assert "trained grpo on mpo_gym/Toy-v0 (train split): 1 updates" in out.out
    assert "held-out greedy accuracy (2 test tasks)" in out.out and "{" not in out.out
    rows = (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1]


def test_train_cli_rejects_another_agents_option(capsys):
    from mpo_gym.cli import main

    assert main(["train", "--agent", "grpo", "--mpo-k", "3", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "--mpo-k is not an option of the 'grpo' agent" in err and "Traceback" not in err
