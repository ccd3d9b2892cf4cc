"""The command line: user errors, generated options, config files, version/env, --import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mpo_gym.cli import main

TINY = ["--env", "mpo_gym/Toy-v0", "--model", "tiny", "--dtype", "float32", "--num-envs", "4",
        "--eval-tasks", "0", "--threads", "1", "--lr", "0.001", "--minibatch-size", "4", "--micro-batch-size", "2"]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: user errors must come before it."""
    import mpo_gym.evaluation
    import mpo_gym.loading

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the user error was reported")

    monkeypatch.setattr(mpo_gym.loading, "make_policy", forbidden)
    monkeypatch.setattr(mpo_gym.evaluation, "load_policy", forbidden)
    monkeypatch.setattr(mpo_gym.loading, "tiny_policy", forbidden)


def run_main(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def bad_data_dir(tmp_path):
    root = tmp_path / "data"
    (root / "gsm8k").mkdir(parents=True)
    good = json.dumps({"question": "1+1?", "answer": "2\n#### 2"})
    (root / "gsm8k" / "test.jsonl").write_text(good + "\n{not json\n")
    return root


USER_ERRORS = [
    (["train", "--agent", "mop"], "unknown agent 'mop'; did you mean 'mpo'?"),
    (["train", "--env", "mpo_gym/Toy-v9", "--model", "tiny"], "did you mean 'mpo_gym/Toy-v0'"),
    (["train", "--agent", "ppo", *TINY, "--lr", "-1"], "--lr must be > 0; got -1.0"),
    (["train", "--model", "runs/missing/checkpoint", "--env", "mpo_gym/Toy-v0"], "no such directory"),
    (["train", "--model", "./nothere", "--env", "mpo_gym/Toy-v0"], "no such directory"),
    (["train", "--num-envs", "0", *TINY[:4]], "--num-envs and --eval-batch must be >= 1"),
    (["train", "--env", "mpo_gym/MATH500-v0", "--model", "tiny"], "--allow-test-split"),
    (["train", "--report-to", "nosuch"], "invalid choice"),
    (["eval", "--suite", "gsm9k", "--model", "tiny"], "unknown suite 'gsm9k'; did you mean 'gsm8k'?"),
    (["eval", "--suite", "gsm8k", "--model", "tiny", "--data-dir", "no/such/dir"], "no such file or directory"),
    (["eval", "--suite", "gsm8k", "--model", "no/such/model"], "no such directory"),
    (["eval", "--suite", "gsm8k", "--model", "tiny", "--n-samples", "2"], "greedy decoding"),
    (["compare", "--preset", "tiny", "--agents", "ppo,mop"], "did you mean 'mpo'?"),
    (["compare", "--preset", "tiny", "--budget", "ten"], "--budget must look like"),
    (["check", "mpo_gym/Arithmetic-v9"], "did you mean 'mpo_gym/Arithmetic-v0'"),
    (["train", "--import", "no_such_module_xyz", *TINY[:4]], "no module named 'no_such_module_xyz'"),
]


@pytest.mark.parametrize("argv, expected", USER_ERRORS, ids=[" ".join(a[:3]) for a, _ in USER_ERRORS])
def test_user_errors_are_short_exit_2_and_come_before_any_model(argv, expected, capsys, no_model_loads, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code, err = run_main(argv, capsys)
    except SystemExit as exc:  # argparse's own errors (invalid choice): usage + one line, exit 2
        code, err = exc.code, capsys.readouterr().err
    assert code == 2, err
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3 or "usage:" in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_malformed_data_file_is_named_with_its_line(tmp_path, capsys, no_model_loads):
    root = bad_data_dir(tmp_path)
    code, err = run_main(["eval", "--suite", "gsm8k", "--model", "tiny", "--data-dir", str(root)], capsys)
    assert code == 2 and "Traceback" not in err
    assert "test.jsonl" in err and "line 2" in err


def test_debug_shows_the_traceback(capsys):
    code, err = run_main(["train", "--agent", "mop", "--debug"], capsys)
    assert code == 2 and "Traceback" in err and "did you mean" in err


def test_strict_booleans(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--whiten-advantages", "maybe"])
    assert exc.value.code == 2 and "expected true or false, got 'maybe'" in capsys.readouterr().err
    from mpo_gym.options import parse_bool

    assert [parse_bool(x) for x in ("true", "False", "1", "no", "ON")] == [True, False, True, False, True]


def help_text(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_per_agent_shows_that_agents_defaults_and_docstrings(capsys):
    grpo = help_text(["train", "--agent", "grpo"], capsys)
    assert "--group-size N G, responses per task" in grpo and "(default: 8)" in grpo
    # the group agents' own line for the field (their base class documents it), not PPO's
    assert "--whiten-advantages [{true,false}] off: the group baseline already centres the advantages (default: False)" in grpo
    assert "--mpo-k" not in grpo
    mpo = help_text(["train", "--agent", "mpo"], capsys)
    assert "--mpo-k N window length K (K−1 MTP modules) (default: 5)" in mpo
    assert "--group-size N G for advantage=\"group\" (default: 1)" in mpo
    assert "--dtype {auto,bfloat16,float32}" in mpo and "--report-to {none,tensorboard,wandb,trackio}" in mpo
    assert "--allow-test-split" in mpo and "--out-dir" in mpo and "--resume" in mpo and "--config FILE" in mpo
    for command in ("eval", "compare"):
        text = help_text([command], capsys)
        assert "--out-dir" in text and "--data-dir" in text and "--model" in text


def test_config_file_keys_with_dashes_or_underscores_and_flags_override(tmp_path, capsys):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(textwrap.dedent(f"""\
        agent: grpo
        env: mpo_gym/Toy-v0
        model: tiny
        dtype: float32
        num-envs: 4
        group_size: 2
        updates: 1
        eval_tasks: 0
        lr: 0.002
        minibatch-size: 4
        micro_batch_size: 4
        out-dir: {tmp_path / 'a'}
        """))
    assert main(["train", "--config", str(run_yaml), "--lr", "0.001"]) == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["agent"] == "grpo" and config["num_envs"] == 4
    assert config["resolved_agent_config"]["group_size"] == 2 and config["resolved_agent_config"]["lr"] == 0.001
    # a run's config.json is accepted back as --config: the same resolved run in another folder
    assert main(["train", "--config", str(tmp_path / "a" / "config.json"), "--out-dir", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "config.json").read_text())
    strip = lambda c: {k: v for k, v in c.items() if k != "out_dir"}  # noqa: E731
    assert strip(again) == strip(config)
    capsys.readouterr()
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_env: 4\n")
    code, err = run_main(["train", "--config", str(bad)], capsys)
    assert code == 2 and "unknown option 'num_env'; did you mean 'num-envs'" in err
    bad.write_text("whiten_advantages: maybe\n")
    code, err = run_main(["train", "--config", str(bad)], capsys)
    assert code == 2 and "expected true or false" in err


def test_version_and_env(capsys):
    from mpo_gym import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"mpo-gym {__version__}"
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for key in ("python", "torch", "transformers", "gymnasium", "device", "dtype auto", "sandbox"):
        assert key in out


def test_eval_accepts_the_tiny_model(tmp_path, capsys):
    code = main(["eval", "--suite", "mpo_gym/Toy-v0", "--model", "tiny", "--limit", "2", "--no-progress",
                 "--out-dir", str(tmp_path / "ev")])
    assert code == 0 and (tmp_path / "ev" / "results.json").exists()


USER_ENV = textwrap.dedent("""\
    import gymnasium as gym

    gym.register(id="my_envs/Echo-v0", entry_point="mpo_gym.envs.toy:ToyEnv", kwargs={"letters": "xy"})
    """)


def test_import_makes_a_user_env_visible_to_check_and_train(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_envs.py").write_text(USER_ENV)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mpo_gym"]
    # without --import the id is unknown (a refusal: checked in this process, where my_envs is not imported)
    monkeypatch.chdir(tmp_path)
    assert "my_envs" not in sys.modules
    code, err = run_main(["check", "my_envs/Echo-v0"], capsys)
    assert code == 2 and "--import MODULE" in err and "Traceback" not in err
    out = subprocess.run([*cmd, "check", "my_envs/Echo-v0", "--import", "my_envs"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0 and "passed" in out.stdout, out.stderr[-2000:]
    out = subprocess.run([*cmd, "train", "--import", "my_envs", "--agent", "ppo", *TINY[2:], "--env", "my_envs/Echo-v0",
                          "--updates", "1", "--out-dir", "run"], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "cannot tell the splits of my_envs/Echo-v0" in out.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train_split"] is None


def test_entry_point_group_registers_user_envs(tmp_path, monkeypatch):
    import importlib.metadata

    import gymnasium as gym

    import mpo_gym.plugins as plugins

    (tmp_path / "ep_envs.py").write_text(USER_ENV.replace("my_envs/Echo", "ep_envs/Echo"))
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint("ep", "ep_envs", plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [ep] if group == plugins.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(plugins, "_loaded_entry_points", False)
    try:
        assert plugins.check_env_id("ep_envs/Echo-v0") == "ep_envs/Echo-v0"
    finally:
        gym.registry.pop("ep_envs/Echo-v0", None)


def test_field_docs_parse_multiline_attributes():
    from mpo_gym.options import field_docs
    from mpo_gym.trainer import TrainConfig

    docs = field_docs(TrainConfig)
    assert docs["report_to"].startswith("also log metrics to none, tensorboard")
    assert "timed separately" in docs["time_budget_s"]
    assert set(docs) >= {f for f in TrainConfig.__dataclass_fields__}


def test_resume_of_compare_refuses_another_config(tmp_path, capsys):
    from mpo_gym.compare import PRESETS, CompareConfig

    out = tmp_path / "cmp"
    out.mkdir()
    stored = CompareConfig.from_options({**PRESETS["tiny"], "out_dir": str(out)})

    (out / "compare.json").write_text(json.dumps({"config": stored.options(), "command": "x"}))
    before = (out / "compare.json").read_bytes()
    code, err = run_main(["compare", "--preset", "tiny", "--num-envs", "4", "--out-dir", str(out)], capsys)
    assert code == 2 and "num_envs (stored: 8, now: 4)" in err and "--resume" in err
    assert sorted(p.name for p in out.iterdir()) == ["compare.json"] and (out / "compare.json").read_bytes() == before


def test_readme_mentions_every_subcommand():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for command in ("mpo-gym export", "mpo-gym env", "--import", "--config", "--report-to", "--resume"):
        assert command in readme, command
