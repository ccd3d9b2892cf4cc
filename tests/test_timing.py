"""Per-phase timers: each update's metrics row says where its time went."""

from __future__ import annotations

import json
import time

import pytest

from mpo_gym import timing

from .conftest import tiny_train_config


def test_phases_add_up_nest_and_reset():
    timing.take()
    with timing.phase("outer"):
        time.sleep(0.02)
        with timing.phase("inner"):
            time.sleep(0.01)
    timing.count("tokens", 3)
    timing.count("tokens", 4)
    got = timing.take()
    assert got["outer_s"] >= 0.03 and 0.01 <= got["inner_s"] < got["outer_s"] and got["tokens"] == 7
    assert timing.take() == {}


def test_every_update_row_has_rollout_verify_and_token_rate(tmp_path):
    from mpo_gym.trainer import train

    train(tiny_train_config(tmp_path / "run", updates=2), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert 0 < row["perf/verify_s"] <= row["perf/rollout_s"] <= row["time"]
        # every response token of the batch (4 episodes), counted once per update
        assert row["perf/rollout_tokens"] == pytest.approx(4 * row["charts/response_length"])
        assert row["perf/rollout_tokens_per_s"] == pytest.approx(row["perf/rollout_tokens"] / row["perf/rollout_s"],
                                                                 rel=1e-3)
