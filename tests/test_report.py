"""The compare report's numbers, recomputed from small hand-made ``eval_tasks.jsonl`` rows.

Expected values are worked out by hand (Wilson bounds as the roots of
``(p̂ - p)² = z² p (1 - p) / n`` with z = 1.96), not by calling the functions under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpo_gym.compare import PRESETS, CompareConfig
from mpo_gym.evaluation import read_task_rows
from mpo_gym.report import (
    accuracy_cell,
    paired_gain,
    paired_outcomes,
    seed_summary,
    wilson_interval,
    write_report,
)

TASKS = ("t0", "t1", "t2", "t3")


def rows(when, correct, order=TASKS):
    by_task = dict(zip(TASKS, correct))
    return [{"task_id": t, "task_index": TASKS.index(t), "sample": 0, "when": when,
             "status": "correct" if by_task[t] else "incorrect", "correct": by_task[t], "reward": 0.0}
            for t in order]


def test_wilson_interval_hand_computed():
    assert wilson_interval(1, 4) == pytest.approx((0.045586, 0.699364), abs=1e-6)
    assert wilson_interval(3, 4) == pytest.approx((0.300636, 0.954414), abs=1e-6)
    assert wilson_interval(0, 5) == pytest.approx((0.0, 0.434491), abs=1e-6)
    assert wilson_interval(2, 4) == pytest.approx((0.150036, 0.849964), abs=1e-6)


def test_accuracy_cell_format():
    assert accuracy_cell(rows("after", [1, 0, 0, 0])) == "0.250 [0.046, 0.699]"
    assert accuracy_cell(rows("after", [1, 1, 0, 0])) == "0.500 [0.150, 0.850]"
    assert accuracy_cell([]) == "-"


def test_paired_gain_hand_computed():
    # differences 0, 1, 1, 0: mean 0.5, sd sqrt(1/3), half-width 1.96 sd / 2
    assert paired_gain([1, 0, 0, 0], [1, 1, 1, 0]) == pytest.approx((0.5, 0.565803), abs=1e-6)
    # differences -1, 0, 1, 0: mean 0, sd sqrt(2/3)
    assert paired_gain([1, 0, 0, 0], [0, 0, 1, 0]) == pytest.approx((0.0, 0.800167), abs=1e-6)


def test_paired_outcomes_match_tasks_not_row_order():
    before = rows("before", [1, 0, 0, 0])
    after = rows("after", [1, 1, 1, 0], order=("t3", "t2", "t1", "t0"))[:3]  # t0 missing after
    b, a = paired_outcomes(before, after)
    assert (b, a) == ([0, 0, 0], [0, 1, 1])


def test_seed_summary_hand_computed():
    assert seed_summary([0.5, 0.0]) == pytest.approx((0.25, 0.353553), abs=1e-6)


def _write_run(cfg, agent, seed, tasks):
    run = Path(cfg.run_config(agent, seed).out_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "eval_tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tasks))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "time": float(s), "charts/reward": 0.1 * s}) + "\n"
                                               for s in (1, 2)))


def test_report_numbers_come_from_the_rows(tmp_path):
    cfg = CompareConfig.from_options({**PRESETS["tiny"], "agents": ("ppo",), "seeds": (0, 1), "agent_kwargs": {},
                           "out_dir": str(tmp_path)})
    before = rows("before", [1, 0, 0, 0])
    _write_run(cfg, "ppo", 0, before + rows(1, [1, 1, 0, 0]) + rows("after", [1, 1, 1, 0], order=TASKS[::-1]))
    _write_run(cfg, "ppo", 1, before + rows("after", [0, 0, 1, 0]))
    summaries = {("ppo", s): {"updates": 2, "train_seconds": 1.0, "peak_rss_mb": 1.0} for s in (0, 1)}
    write_report(cfg, tmp_path, summaries, None, "mpo-gym compare")
    report = (tmp_path / "report.md").read_text().splitlines()
    assert "| ppo | 0 | 2 | 0.250 [0.046, 0.699] | 0.750 [0.301, 0.954] | +0.500 ± 0.566 |" in report
    assert "| ppo | 1 | 2 | 0.250 [0.046, 0.699] | 0.250 [0.046, 0.699] | +0.000 ± 0.800 |" in report
    # t(0.975, 1) = 12.706: 12.706 * 0.354 / sqrt(2)
    assert "| **ppo mean** | 2 seeds | | | | **+0.250** ± 3.176 over seeds (seed sd 0.354) |" in report
    assert ("- **ppo** beat the untrained model on average (+0.250); "
            "0 of 2 seeds improved by more than their 95% interval.") in report
    assert "| ppo | 0 | 0.250 | 0.500 | 0.750 |" in report  # during training: before, update 1, after
    assert any(line.startswith("How to recompute:") for line in report)
    combined = read_task_rows(tmp_path / "eval_tasks.jsonl")
    assert len(combined) == 12 + 8 and {(r["agent"], r["seed"]) for r in combined} == {("ppo", 0), ("ppo", 1)}


def test_gap_table_shows_each_runs_mean_and_largest_sampler_gap():
    from mpo_gym.report import _gap_table

    runs = {("ppo", 0): [{"step": 0, "warmup/loss": 1.0},
                         {"step": 1, "checks/sample_logprob_gap_mean": 1e-3, "checks/sample_logprob_gap_max": 0.01},
                         {"step": 2, "checks/sample_logprob_gap_mean": 3e-3, "checks/sample_logprob_gap_max": 0.2}],
            ("grpo", 1): [{"step": 1}]}
    rows = _gap_table(runs)
    assert rows[2] == "| ppo | 0 | 2 | 2.00e-03 | 0.2 |"  # mean of the means, max of the maxima
    assert len([r for r in rows if r.startswith("| grpo")]) == 0
    assert _gap_table({("ppo", 0): [{"step": 1}]}) == ["No run logged the sampler's log-prob gap."]


def test_clip_range_column_names_each_agents_own_clip(tmp_path):
    from mpo_gym.report import _clip_range

    cfg = CompareConfig.from_options({**PRESETS["tiny"], "agents": ("ppo", "gmpo", "wgmpo", "cispo"), "agent_kwargs": {},
                                      "out_dir": str(tmp_path)})
    assert _clip_range(cfg, "ppo", 0, "token") == "[0.8, 1.2]"
    assert _clip_range(cfg, "gmpo", 0, "sequence (GMPO)") == "log r in [-0.4, 0.4] per token"
    assert _clip_range(cfg, "wgmpo", 0, "token").startswith("log r in [")  # log space, though it logs token ratios
    assert "gradient stopped" in _clip_range(cfg, "cispo", 0, "token")
