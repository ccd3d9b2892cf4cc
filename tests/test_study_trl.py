"""``benchmarks/study_trl.py``: the summary's numbers and the command line (no training here)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "study_trl.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study_trl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def result(run, seed, before, after, updates=10, seconds=100.0):
    return {"run": run, "seed": seed, "before": sum(before) / len(before), "after": sum(after) / len(after),
            "outcomes_before": before, "outcomes_after": after, "updates": updates, "train_seconds": seconds,
            "peak_rss_mb": 1000.0 + seed, "protocol_id": "p"}


def test_summary_by_hand(study):
    before = [0, 0, 1, 1]  # 0.5
    rows = [result("ppo", 0, before, [1, 0, 1, 1]), result("ppo", 1, before, [1, 1, 1, 1]),
            result("ppo", 2, before, [0, 0, 1, 1], updates=20)]
    s = study.summarize(rows)["ppo"]
    assert s["gains"] == [0.25, 0.5, 0.0]
    assert s["mean_gain"] == pytest.approx(0.25)
    # seeds: sd of (0.25, 0.5, 0) is 0.25; t(0.975, 2 df) = 4.303: 4.303 * 0.25 / sqrt(3)
    assert s["seed_half"] == pytest.approx(4.303 * 0.25 / math.sqrt(3))
    # tasks: per-task gain averaged over seeds = (2/3, 1/3, 0, 0): mean 1/4, sd sqrt(5/54)... by hand
    per_task = [2 / 3, 1 / 3, 0.0, 0.0]
    mean = sum(per_task) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in per_task) / 3)
    assert s["task_half"] == pytest.approx(1.96 * sd / 2)
    assert s["updates"] == pytest.approx(40 / 3) and s["peak_rss_mb"] == 1002.0
    assert s["s_per_update"] == pytest.approx((10 + 10 + 5) / 3)


def test_verdict_compares_best_of_ours_with_best_trl(study):
    before = [0] * 10
    rows = [result("ppo", s, before, [1] * (6 + s) + [0] * (4 - s)) for s in range(3)]  # gains .6 .7 .8
    rows += [result("trl", s, before, [1] * (1 + s) + [0] * (9 - s)) for s in range(3)]  # gains .1 .2 .3
    text = study.verdict(study.summarize(rows))
    assert "Best of ours: ppo (+0.700)" in text and "best TRL run: trl (+0.200)" in text
    assert "above TRL's by more than the combined interval" in text
    close = [result("ppo", s, before, [1] * (1 + s) + [0] * (9 - s)) for s in range(3)] + rows[3:]
    # equal gains .1 .2 .3: sd 0.1, se 0.1/sqrt(3); combined = sqrt(2) * 4.303 * se = 0.3513; 80% power at
    # combined + 0.8416 * sqrt(2) * se = 0.4201
    text = study.verdict(study.summarize(close))
    assert "difference +0.000, combined 95% seed interval ±0.351: not resolved" in text
    assert "a true difference of 0.420 would be found with 80% power" in text
    assert "No comparison" in study.verdict(study.summarize(rows[:3]))


def test_agents_verdict_names_the_pairs_apart_and_the_power(study):
    before = [0] * 10
    rows = [result("ppo", s, before, [1] * (6 + s) + [0] * (4 - s)) for s in range(3)]  # gains .6 .7 .8
    rows += [result(run, s, before, [1] * (1 + s) + [0] * (9 - s)) for run in ("grpo", "trl") for s in range(3)]
    text = study.agents_verdict(study.summarize(rows))
    assert "ppo > grpo (+0.500, ±0.351); ppo > trl (+0.500, ±0.351); the rest do not" in text
    assert "80% power from 0.420 to 0.420" in text
    same = study.agents_verdict(study.summarize(rows[3:]))
    assert "no two runs differ" in same and "largest difference grpo - trl +0.000, ±0.351" in same
    assert "no two runs" in study.agents_verdict(study.summarize(rows[:1]))


def test_command_line(study):
    args = study.parse_args(["--seeds", "3", "--agents", "ppo,trl"])
    assert args.seed_list == [0, 1, 2] and args.agent_list == ["ppo", "trl"] and args.budget_s == 360.0
    assert study.parse_args(["--seeds", "4,7"]).seed_list == [4, 7]
    assert study.parse_args([]).agent_list == list(study.RUNS)
    with pytest.raises(SystemExit):
        study.parse_args(["--agents", "a2c"])
    with pytest.raises(SystemExit):
        study.parse_args(["--seeds", "x"])


def test_protocol_keys_the_results(study):
    a = study.protocol(study.parse_args([]))
    b = study.protocol(study.parse_args(["--budget-s", "20"]))
    assert study.protocol_id(a) != study.protocol_id(b)
    assert a["budget_s"] == 360.0 and a["eval_tasks"] == 200 and a["env_kwargs"]["digits"] == 2


def test_beta1_control_scales_only_the_actor_lr(study, tmp_path):
    args = study.parse_args([])
    ppo = study.train_config("ppo", 0, args, tmp_path / "a").agent_config()
    control = study.train_config("ppo-lr-beta1", 0, args, tmp_path / "b").agent_config()
    assert control.lr == pytest.approx(ppo.lr * 0.82288) and control.critic_lr == ppo.critic_lr
    off = study.train_config("mpo-offpolicy", 0, args, tmp_path / "c")
    assert off.agent == "mpo" and off.agent_config().ppo_epochs == 2 and off.agent_config().minibatch_size == 4
    assert off.time_budget_s == 360.0 and off.eval_tasks == 200


def finished(run, seed, seconds=370.0, updates=20, flags=("amx_bf16", "avx2"), dtype="bfloat16"):
    row = result(run, seed, [0, 1], [1, 1], updates=updates, seconds=seconds)
    row["protocol"] = {"budget_s": 360.0, "eval_tasks": 2}
    row["machine"] = {"cpu_flags": list(flags), "cores": 2, "resolved_dtype": dtype, "cpu": "x",
                      "loadavg_before": [1.0], "loadavg_after": [1.0]}
    row["curve"] = [(0.0, 0.5), (seconds, 1.0)]
    return row


def test_over_budget_and_other_machine_runs_are_invalid(study):
    ok, slow = finished("mpo", 1, seconds=469.0, updates=8), finished("mpo-offpolicy", 2, seconds=1254.0, updates=4)
    other = finished("ppo", 2, flags=("avx2",), dtype="float32")
    assert study.invalid_reason(ok, study.machine_kind(ok["machine"])) is None  # one update over: allowed
    assert "over budget: 1254 s" in study.invalid_reason(slow, None)
    assert study.invalid_reason(finished("ppo", 0, seconds=540.1), None) is not None  # just past 1.5 budgets
    assert study.invalid_reason(finished("ppo", 0, seconds=539.9), None) is None
    assert "other machine kind" in study.invalid_reason(other, study.machine_kind(ok["machine"]))
    valid, invalid = study.split_valid([ok, slow, other])
    assert valid == [ok] and [r for r, _ in invalid] == [slow, other]


def test_summary_leaves_invalid_runs_out_and_says_so(study, tmp_path, monkeypatch):
    import json

    rows = [finished("ppo", 0), finished("ppo", 1), finished("ppo", 2, seconds=1000.0)]
    rows[2]["outcomes_after"], rows[2]["after"] = [0, 0], 0.0  # a gain that would change the mean
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(study, "plot", lambda results, p: None)
    study.write_summary(path, "p")
    text = path.with_suffix(".md").read_text()
    assert "| ppo | 2 |" in text and "+0.500" in text
    assert "Excluded (invalid" in text and "ppo s2: over budget: 1000 s" in text


def test_study_reruns_invalid_runs_and_refuses_another_machine_kind(study, tmp_path, monkeypatch, capsys):
    import json

    args = study.parse_args(["--seeds", "0,1", "--agents", "ppo", "--results", str(tmp_path / "r.jsonl"),
                             "--work-dir", str(tmp_path / "w")])
    pid = study.protocol_id(study.protocol(args))
    rows = [finished("ppo", 0), finished("ppo", 1, seconds=1000.0)]
    for r in rows:
        r["protocol_id"] = pid
        r["protocol"] = study.protocol(args)
    Path(args.results).write_text("".join(json.dumps(r) + "\n" for r in rows))
    here = {**rows[0]["machine"], "python": "3", "affinity": [0]}
    monkeypatch.setattr(study, "machine", lambda: here)
    ran = []

    class Stop(Exception):
        pass

    def before(args, work):  # the first step after the plan: stop there
        ran.append("before")
        raise Stop

    monkeypatch.setattr(study, "held_out_before", before)
    with pytest.raises(Stop):
        study.run_study(args)
    out = capsys.readouterr().out
    assert "ppo seed 1 is run again" in out and "1 valid runs already" in out and "1 to go" in out
    monkeypatch.setattr(study, "machine", lambda: {**here, "cpu_flags": ["avx2"], "resolved_dtype": "float32"})
    with pytest.raises(SystemExit, match="continue on a machine of the study's kind"):
        study.run_study(args)


def test_work_lock_lets_one_stream_prepare_at_a_time(study, tmp_path):
    import threading

    entered = threading.Event()

    def second_stream():
        with study.work_lock(tmp_path / "w"):
            entered.set()

    with study.work_lock(tmp_path / "w"):
        other = threading.Thread(target=second_stream)
        other.start()
        assert not entered.wait(0.3)  # held: the second stream waits
    other.join(5)
    assert entered.is_set()


def test_readme_study_table_is_the_results_file(study):
    """Every number of the study table in docs/history.md is recomputed from the results it names."""
    repo = SCRIPT.parents[1]
    path = repo / "benchmarks" / "results" / "study_trl_avx512bf16.jsonl"
    valid, invalid = study.split_valid(study.read_results(path))
    assert len(valid) == 24 and not invalid
    history = (repo / "docs" / "history.md").read_text()
    start = history.index("## The study")
    section = history[start:history.index("\n## ", start)]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "seed 0" not in line]
    summary = study.summarize(valid)
    assert len(rows) == len(summary) == 8
    for row, (name, s) in zip(rows, summary.items()):
        cells = [c.strip() for c in row.strip("|").split("|")]
        by_seed = {r["seed"]: r for r in valid if r["run"] == name}
        assert cells[1:4] == [f"{by_seed[k]['after'] - by_seed[k]['before']:+.3f}" for k in range(3)], name
        assert cells[4:7] == [f"{s['mean_gain']:+.3f}", f"±{s['seed_half']:.3f}", f"±{s['task_half']:.3f}"], name
        assert cells[7] == "/".join(str(by_seed[k]["updates"]) for k in range(3)), name
        assert cells[8:11] == [f"{s['s_per_update']:.1f}", f"{s['warmup_s']:.0f}", f"{s['peak_rss_mb'] / 1024:.1f}"], name
    assert "0.310 before every run" in section


def test_user_errors_exit_with_one_line(study, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit, match="no results in .*: run the study first"):
        study.main(["--summary-only", "--results", str(tmp_path / "typo.jsonl")])

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "run_study", interrupted)
    assert study.main(["--results", str(tmp_path / "r.jsonl"), "--work-dir", str(tmp_path / "w")]) == 130
    err = capsys.readouterr().err
    assert "stopped: the runs that finished are in" in err and "Run the same command again" in err


def test_summary_of_only_invalid_runs_says_so_without_a_plot(study, tmp_path):
    import json

    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(finished("ppo", 0, seconds=1000.0)) + "\n")
    study.write_summary(path, "p")
    assert "ppo s0: over budget: 1000 s" in path.with_suffix(".md").read_text()
    assert not path.with_suffix(".png").exists()
