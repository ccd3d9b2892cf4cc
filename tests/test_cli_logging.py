"""Export to a Hugging Face folder, TensorBoard event files, the completions table, LoRA."""

from __future__ import annotations

import json

import pytest
import torch

from mpo_gym.cli import main
from mpo_gym.trainer import train

from .conftest import tiny_train_config

tiny_cfg = tiny_train_config


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
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tags = acc.Tags()["scalars"]
    assert {"charts/reward", "charts/response_length", "losses/policy"} <= set(tags)
    for tag in tags:  # every scalar, at its update, equal to metrics.jsonl (float32 in the event file)
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3]
        assert [e.value for e in events] == pytest.approx([r[tag] for r in rows], rel=1e-6, abs=1e-6), tag
    assert any(abs(r["charts/response_length"]) > 0 for r in rows)


def test_completions_table_every_n_updates(tmp_path, monkeypatch):
    from mpo_gym.envs.toy import RepeatLetterVerifier
    from mpo_gym.verifiers.base import Verdict

    # rewards that differ between responses, so a table with wrong rewards cannot match the metrics
    monkeypatch.setattr(RepeatLetterVerifier, "verify",
                        lambda self, response, reference: Verdict(len(response) / 8, "incorrect", response, ""))
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
        assert mean > 0
    assert all(r["reward"] == len(r["response"]) / 8 for r in rows)


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


def test_eval_loads_a_lora_run_folder_with_its_adapters(tmp_path):
    """``mpo-gym eval --model RUN_DIR`` of a LoRA run rebuilds the adapters and loads every weight."""
    pytest.importorskip("peft")
    from mpo_gym.evaluation import load_policy

    run = tmp_path / "run"
    train(tiny_cfg(run, lora=4, updates=1), progress=False)
    policy = load_policy(str(run))
    state = torch.load(run / "checkpoint" / "policy.pt", map_location="cpu")
    mine = policy.state_dict()
    assert any("lora_A" in k for k in mine) and mine.keys() == state.keys()
    assert all(torch.equal(mine[k], state[k]) for k in state)


def test_summary_and_progress_line_show_the_numbers_they_are_given(tmp_path):
    from pathlib import Path

    from mpo_gym.tracking import Progress
    from mpo_gym.trainer import TrainResult, summary_text

    cfg = tiny_cfg(tmp_path / "run", updates=4)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"train_split": "train"}))
    history = [{"step": 1, "charts/reward": 0.125}, {"step": 4, "charts/reward": 0.625}]
    result = TrainResult(Path(cfg.out_dir), 4, 12.34, {"accuracy": 0.25, "n": 8.0}, {"accuracy": 0.75, "n": 8.0},
                         history, 1.0, 2.5)
    text = summary_text(cfg, result)
    assert "trained ppo on mpo_gym/Toy-v0 (train split): 4 updates in 12.3 s (+ 2.5 s warm-up)" in text
    assert "train reward: 0.125 at update 1 -> 0.625 at update 4" in text
    assert "held-out greedy accuracy (8 test tasks): 0.250 before -> 0.750 after" in text
    line = Progress(cfg, 0, None, enabled=False).line(2, 3.0, {"charts/reward": 0.375, "verdicts/correct": 0.5})
    assert line.startswith("ppo update 2/4 | reward 0.375 | correct 0.50 | ")
