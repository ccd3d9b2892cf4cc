"""Export to a Hugging Face folder, TensorBoard event files, the completions table, LoRA."""

from __future__ import annotations

import json

import pytest
import torch

from mpo_gym.cli import main
from mpo_gym.trainer import TrainConfig, train


def tiny_cfg(out, **kwargs):
    base = dict(
        env="mpo_gym/Toy-v0", model="tiny", agent="ppo", dtype="float32", num_envs=4, updates=2,
        eval_tasks=0, out_dir=str(out), threads=1,
        agent_kwargs={"lr": 1e-3, "minibatch_size": 4, "micro_batch_size": 2},
    )
    base.update(kwargs)
    return TrainConfig(**base)


def test_export_writes_a_folder_transformers_loads(tmp_path, capsys):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    train(tiny_cfg(run, agent="mpo", agent_kwargs={"lr": 1e-3, "minibatch_size": 4, "micro_batch_size": 2,
                                                    "mpo_k": 3, "warmup_steps": 1}), progress=False)
    assert main(["export", str(run), str(tmp_path / "hf")]) == 0
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    trained = torch.load(run / "checkpoint" / "policy.pt", map_location="cpu")
    for name, value in model.state_dict().items():
        assert torch.equal(value, trained[f"model.{name}"]), name  # the trained weights, not the initial ones
    heads = load_file(str(tmp_path / "hf" / "mpo_heads.safetensors"))
    assert any(k.startswith("value_head.") for k in heads) and any(k.startswith("mtp.") for k in heads)
    meta = json.loads((tmp_path / "hf" / "mpo_policy.json").read_text())
    assert meta["policy_options"]["num_mtp_modules"] == 2 and meta["update"] == 2
    capsys.readouterr()
    assert main(["export", str(run), str(tmp_path / "hf")]) == 2  # never over a non-empty folder
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "hf2")]) == 2


def test_tensorboard_event_files_hold_the_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(tiny_cfg(run, updates=3, report_to="tensorboard", completions_every=2), progress=False)
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    rewards = acc.Scalars("charts/reward")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in rewards] == [1, 2, 3]
    assert [round(e.value, 5) for e in rewards] == [round(r["charts/reward"], 5) for r in rows]
    assert "losses/policy" in acc.Tags()["scalars"]


def test_completions_table_every_n_updates(tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(run, updates=4, completions_every=2), progress=False)
    rows = [json.loads(line) for line in (run / "completions.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == [2, 4] and len(rows) == 8
    for row in rows:
        assert row["task_id"].startswith("toy/train/") and row["prompt"].startswith("Say ")
        assert set(row) >= {"response", "status", "reward"} and row["status"] in ("correct", "incorrect", "no_answer")
    metrics = {json.loads(line)["step"]: json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()}
    for step in (2, 4):
        mean = sum(r["reward"] for r in rows if r["step"] == step) / 4
        assert mean == pytest.approx(metrics[step]["charts/reward"])  # the logged batch, not another one


def test_report_to_a_missing_tracker_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    from mpo_gym.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="--report-to wandb needs the wandb package"):
        train(tiny_cfg(tmp_path / "run", report_to="wandb"), progress=False)
    assert not (tmp_path / "run").exists()


def test_lora_trains_adapters_only(tmp_path):
    pytest.importorskip("peft")
    run = tmp_path / "run"
    train(tiny_cfg(run, lora=4, updates=1), progress=False)
    state = torch.load(run / "checkpoint" / "policy.pt", map_location="cpu")
    assert any("lora_A" in k for k in state)
    assert main(["export", str(run), str(tmp_path / "hf")]) == 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    assert not any("lora" in k for k in model.state_dict())  # merged into the weights
