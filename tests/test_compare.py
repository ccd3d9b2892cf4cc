"""``mpo-gym compare`` end to end on a tiny model and the toy env."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mpo_gym.compare import PRESETS, CompareConfig
from mpo_gym.evaluation import write_task_rows
from mpo_gym.report import paired_gain, wilson_interval, write_report


def test_compare_end_to_end(tmp_path, capsys):
    """In this process (its runs in processes of their own; ``python -m mpo_gym compare`` in a
    fresh interpreter: test_distributed's two-rank comparison)."""
    from mpo_gym.cli import main

    out = tmp_path / "cmp"
    code = main(["compare", "--preset", "tiny", "--eval-every", "1", "--out", str(out)])
    proc = capsys.readouterr()
    assert code == 0, proc.err[-3000:]
    report = (out / "report.md").read_text()
    for section in ("## Held-out greedy accuracy before and after", "## Held-out greedy accuracy during training", "## MPO diagnostics", "## Cost", "## Reproduce", "curves.png"):
        assert section in report
    for agent in ("ppo", "mpo", "grpo"):
        assert f"| {agent} | 0 |" in report
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {(r["agent"], r["seed"]) for r in rows} == {(a, 0) for a in ("ppo", "mpo", "grpo")}
    assert any("mpo/clipfrac_united" in r for r in rows if r["agent"] == "mpo")
    assert [r["step"] for r in rows if r["agent"] == "ppo" and "eval/accuracy" in r] == [1, 2]
    tasks = [json.loads(line) for line in (out / "eval_tasks.jsonl").read_text().splitlines()]
    assert {r["when"] for r in tasks if r["agent"] == "ppo"} == {"before", 1, 2, "after"}
    assert len([r for r in tasks if (r["agent"], r["when"]) == ("mpo", "after")]) == 4  # one row per task
    assert "report:" in proc.out

    # resume: a finished comparison is kept as is and the report rewritten
    (out / "report.md").unlink()
    capsys.readouterr()
    code = main(["compare", "--resume", str(out)])
    again = capsys.readouterr()
    assert code == 0, again.err[-3000:]
    assert again.out.count("finished earlier, kept") == 3
    assert (out / "report.md").exists()


def test_report_over_seeds(tmp_path):
    """Several seeds: per-seed rows, a mean row with the seed spread, paired intervals."""
    cfg = CompareConfig.from_options({**PRESETS["tiny"], "seeds": (0, 1), "out_dir": str(tmp_path)})
    summaries = {}
    for i, key in enumerate((a, s) for s in (0, 1) for a in cfg.agents):
        run = Path(cfg.run_config(*key).out_dir)
        run.mkdir(parents=True)
        for when, outcomes in (("before", [1, 0, 0, 0]), ("after", [1, 1, i % 2, 0])):
            rows = [SimpleNamespace(task_id=f"t{t}", task_index=t, sample=0, reward=float(c),
                                    status="correct" if c else "incorrect") for t, c in enumerate(outcomes)]
            write_task_rows(run / "eval_tasks.jsonl", rows, when)
        summaries[key] = {"updates": 2, "train_seconds": 1.0, "peak_rss_mb": 1.0}
    write_report(cfg, tmp_path, summaries, None, "mpo-gym compare --preset tiny --seeds 0,1")
    report = (tmp_path / "report.md").read_text()
    assert "| **mpo mean** | 2 seeds |" in report and "seed sd" in report
    assert "mpo-gym compare --preset tiny --seeds 0,1" in report
    assert (tmp_path / "curves.png").exists()


def test_interval_helpers():
    lo, hi = wilson_interval(29, 100)
    assert 0.21 < lo < 0.29 < hi < 0.39
    gain, half = paired_gain([0, 0, 1, 1], [1, 1, 1, 1])
    assert gain == 0.5 and 0 < half < 1


def test_runs_see_the_callers_environment_and_folder_not_the_fork_servers(tmp_path, monkeypatch):
    """The fork server outlives one comparison; each run's process must still get the caller's
    environment and working directory of the moment it starts."""
    from mpo_gym import compare as compare_module

    compare_module._child_context()  # the fork server runs with the environment of now
    (tmp_path / "probe_env.py").write_text(
        "import os, pathlib\n"
        "with open('probe.txt', 'a') as f:\n"
        "    f.write(os.environ.get('MPO_GYM_PROBE', 'unset') + ' ' + str(pathlib.Path.cwd()) + '\\n')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPO_GYM_PROBE", "after-start")
    cfg = CompareConfig.from_options({**PRESETS["tiny"], "agents": ("ppo",), "agent_kwargs": {}, "updates": 1, "eval_tasks": 0,
                           "out_dir": str(tmp_path / "cmp"), "imports": ("probe_env",)})
    compare_module.compare(cfg)
    lines = (tmp_path / "probe.txt").read_text().splitlines()
    assert len(lines) >= 2  # imported by the caller (checks) and by the run's process
    assert set(lines) == {f"after-start {tmp_path}"}


def test_a_batch_of_partial_groups_is_refused_for_every_arm_before_a_model_loads(tmp_path, capsys, monkeypatch):
    from mpo_gym import compare, trainer
    from mpo_gym.cli import main

    monkeypatch.setattr(trainer, "build_policy", lambda cfg: pytest.fail("a model was loaded"))
    monkeypatch.setattr(compare, "_shared_before", lambda cfg, out: pytest.fail("the shared evaluation ran"))
    code = main(["compare", "--env", "mpo_gym/Toy-v0", "--model", "tiny", "--agents", "ppo,grpo", "--num-envs", "6",
                 "--updates", "1", "--eval-tasks", "2", "--dtype", "float32", "--out-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "--num-envs 6 is not a whole number of groups of 8" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()
