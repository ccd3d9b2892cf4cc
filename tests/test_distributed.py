"""Data parallel under torchrun: 2 gloo ranks compute what 1 process computes.

Each 2-rank job is a real ``torchrun --standalone --nproc_per_node 2 -m mpo_gym ...`` in its own
network namespace (``tests/loopback.py``): loopback only. The 1-process reference is the same
command line without torchrun.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mpo_gym.distributed import SINGLE, shard

from .loopback import descendants, kill_tree, needs_namespace, popen_torchrun, torchrun

pytestmark = needs_namespace

AGENT_ARGS = {
    "ppo": ["--ppo-epochs", "2"],
    "mpo": ["--mpo-k", "3", "--warmup-steps", "2", "--warmup-batch-size", "4"],
    "grpo": ["--group-size", "2"],
}


def train_args(agent: str, out: Path, updates: int = 3, *extra: str) -> list[str]:
    return ["train", "--agent", agent, "--import", "tests.dist_envs", "--env", "dist_test/Letters-v0", "--model", "tiny",
            "--dtype", "float32", "--temperature", "1.5",
            "--threads", "1", "--num-envs", "8", "--updates", str(updates), "--eval-tasks", "6",
            "--eval-batch", "2", "--minibatch-size", "4", "--micro-batch-size", "2", "--lr", "1e-3",
            "--seed", "3", "--completions-every", "0", "--out-dir", str(out), *AGENT_ARGS[agent], *extra]


REPO = Path(__file__).resolve().parents[1]


def one_process(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mpo_gym", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    return proc


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def params(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint" / "policy.pt", map_location="cpu")


def assert_same_run(a: Path, b: Path, loss_tol: float = 1e-4, param_tol: float = 1e-5, tie_tol: float = 0.0) -> None:
    """Same metrics (rewards and verdicts equal, the rest within ``loss_tol``), parameters within
    ``param_tol`` and held-out outcomes equal. ``tie_tol``: how far clip fractions may differ
    beyond ``loss_tol``; they count threshold tests that are exact ties on the first, on-policy
    mini-batch (ratio 1, value equal to the old value), decided there by rounding."""
    ra, rb = rows(a), rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        x, y = ({k: v for k, v in r.items() if not k.startswith("perf/")} for r in (x, y))
        assert set(x) == set(y)
        for key in x:
            if key in ("time", "warmup/seconds"):
                continue
            if key.startswith(("charts/", "verdicts/", "eval/")):
                assert x[key] == y[key], (x["step"], key, x[key], y[key])  # same episodes, same rewards
            elif key.endswith("clipfrac"):
                assert abs(x[key] - y[key]) <= loss_tol + tie_tol, (x["step"], key, x[key], y[key])
            else:
                assert abs(x[key] - y[key]) <= loss_tol * max(1.0, abs(x[key])), (x["step"], key, x[key], y[key])
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    worst = max(float((pa[k].float() - pb[k].float()).abs().max()) for k in pa)
    assert worst <= param_tol, worst
    ea, eb = (json.loads((r / "eval.json").read_text()) for r in (a, b))
    assert ea["before"]["outcomes"] == eb["before"]["outcomes"]
    assert ea["after"]["outcomes"] == eb["after"]["outcomes"]


def test_shards_are_contiguous_equal_and_cover_the_batch():
    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            parts = [shard(n, r, world) for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert SINGLE.shard(7) == range(7) and SINGLE.all_gather_objects(5) == [5]
    assert SINGLE.all_reduce([1.5, 2.0]) == [1.5, 2.0]


_RUNS: dict[tuple[str, ...], Path] = {}


def cached_run(tmp_path_factory: pytest.TempPathFactory, ranks: int, agent: str, *extra: str) -> Path:
    """A 3-update run of ``train_args(agent, ...)`` in 1 process or under 2 ranks, made once per
    test session (tests only read it)."""
    key = (str(ranks), agent, *extra)
    if key not in _RUNS:
        run = tmp_path_factory.mktemp("run") / "run"
        args = train_args(agent, run, 3, *extra)
        proc = ok(one_process(args) if ranks == 1 else torchrun(cwd=REPO, args=args, timeout=180))
        assert proc.stdout.count("trained ") == 1 and "view tensor" not in proc.stderr  # rank 0 alone prints
        _RUNS[key] = run
    return _RUNS[key]


@pytest.mark.parametrize("agent", ["ppo", "mpo", "grpo"])
def test_two_ranks_compute_the_updates_of_one_process(tmp_path, tmp_path_factory, agent):
    single, double = cached_run(tmp_path_factory, 1, agent), tmp_path / "two"
    proc = ok(torchrun(cwd=REPO, args=train_args(agent, double)))
    assert proc.stdout.count("trained ") == 1, proc.stdout  # rank 0 alone prints the summary
    assert_same_run(single, double)
    config = json.loads((double / "config.json").read_text())
    assert config["resolved_world_size"] == 2
    n_params = sum(t.numel() for k, t in params(double).items())
    # ppo_epochs x mini-batches gradient all-reduces per update, each of every trained parameter (fp32)
    steps = {"ppo": 4, "mpo": 2, "grpo": 2}[agent]
    reduced = rows(double)[-1]["perf/allreduce_bytes"]
    assert reduced % (4 * steps) == 0 and 0.5 * n_params <= reduced / (4 * steps) <= n_params, (reduced, n_params)
    if agent == "mpo":  # the warm-up is data-parallel too: its logged loss is the whole batch's
        warm_a, warm_b = rows(single)[0], rows(double)[0]
        assert warm_a["step"] == 0 and abs(warm_a["warmup/loss"] - warm_b["warmup/loss"]) < 1e-4


# mpo: MTP decoder layers are units of their own, the MTP heads and the value head in the root,
# the warm-up's backward reaches only the MTP units. grpo with mini-batches of 3 rows and
# micro-batches of 1: the ranks' shares of a mini-batch differ (2 and 1), so rank 1 runs
# zero-weight micro-batches to keep the backwards in lock-step.
FSDP_CASES = {"mpo": (), "grpo": ("--minibatch-size", "3", "--micro-batch-size", "1")}


@pytest.mark.parametrize("agent", sorted(FSDP_CASES))
def test_sharded_policy_computes_the_updates_of_one_process(tmp_path_factory, agent):
    single = cached_run(tmp_path_factory, 1, agent, *FSDP_CASES[agent])
    sharded = cached_run(tmp_path_factory, 2, agent, *FSDP_CASES[agent], "--fsdp", "true")
    assert_same_run(single, sharded, tie_tol=0.05)
    assert json.loads((sharded / "config.json").read_text())["fsdp"] is True
    # each rank holds half of the trained parameters, their gradients and the optimizer state
    held = [rows(run)[-1]["perf/train_state_mb"] for run in (single, sharded)]
    assert 0.45 <= held[1] / held[0] <= 0.55, held
    # each optimizer step reduce-scatters every trained parameter once (the last micro-batch syncs)
    n_params = sum(t.numel() for k, t in params(sharded).items())
    reduced = rows(sharded)[-1]["perf/allreduce_bytes"]
    steps = {"mpo": 2, "grpo": 3}[agent]
    assert reduced % (4 * steps) == 0 and 0.5 * n_params <= reduced / (4 * steps) <= n_params, (reduced, n_params)


def test_sharded_resume_is_exact(tmp_path, tmp_path_factory):
    args = ("--fsdp", "true")
    straight, resumed = cached_run(tmp_path_factory, 2, "mpo", *args), tmp_path / "resumed"
    ok(torchrun(cwd=REPO, args=train_args("mpo", resumed, 2, *args), timeout=180))
    proc = ok(torchrun(cwd=REPO, args=train_args("mpo", resumed, 3, *args), timeout=180))
    assert proc.stdout.count("resuming from update 2 of 3") == 1, proc.stdout
    assert_same_run(straight, resumed, loss_tol=0.0, param_tol=0.0)


def test_micro_batches_of_a_sharded_policy_are_padded_to_the_same_count():
    from agents import make_agent
    from mpo_gym.distributed import Dist

    agent = make_agent("grpo", micro_batch_size=2)
    batch = type("B", (), {"mask": torch.ones(8, 3, dtype=torch.bool)})()
    rows = [5, 1, 7, 2, 0]  # shares of 3 and 2 rows: 2 and 1 micro-batches
    per_rank = {}
    for rank in (0, 1):
        for fsdp in (False, True):
            agent.dist = Dist(rank, 2, fsdp=fsdp)
            per_rank[rank, fsdp] = agent._micro_weights(batch, rows)  # type: ignore[arg-type]
    assert [len(per_rank[r, False]) for r in (0, 1)] == [2, 1]
    assert [len(per_rank[r, True]) for r in (0, 1)] == [2, 2]
    assert per_rank[1, True][-1][1] == 0.0 and per_rank[1, True][:1] == per_rank[1, False]
    for fsdp in (False, True):  # the weights over both ranks still add up to the mini-batch
        assert abs(sum(w for r in (0, 1) for _, w in per_rank[r, fsdp]) - 1.0) < 1e-12


def test_fsdp_needs_several_ranks(tmp_path):
    proc = one_process(train_args("grpo", tmp_path / "r", 1, "--fsdp", "true"))
    assert proc.returncode == 2 and "start 2 or more with torchrun" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


def test_resume_under_two_ranks_is_exact(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    ok(torchrun(cwd=REPO, args=train_args("grpo", straight, 3)))
    ok(torchrun(cwd=REPO, args=train_args("grpo", resumed, 2)))
    proc = ok(torchrun(cwd=REPO, args=train_args("grpo", resumed, 3)))
    assert proc.stdout.count("resuming from update 2 of 3") == 1, proc.stdout
    assert [r["step"] for r in rows(resumed)] == [1, 2, 3]
    assert_same_run(straight, resumed, loss_tol=0.0, param_tol=0.0)


def test_batch_that_does_not_split_over_ranks_is_refused(tmp_path, monkeypatch):
    """Checked in one process with the second rank's view (the refusal needs no job): a config
    error every rank raises alike is printed by rank 0 alone."""
    from mpo_gym import cli
    from mpo_gym.distributed import Dist
    from mpo_gym.errors import ConfigError
    from mpo_gym.trainer import TrainConfig, check_shards

    cfg = TrainConfig(env="mpo_gym/Toy-v0", model="tiny", agent="grpo", num_envs=6, out_dir=str(tmp_path / "r"),
                      agent_kwargs={"group_size": 4})
    for rank in (0, 1):
        with pytest.raises(ConfigError, match="does not split over 2 ranks.*use a multiple of 8$"):
            check_shards(cfg, Dist(rank=rank, world_size=2))
    check_shards(dataclasses.replace(cfg, num_envs=8), Dist(rank=1, world_size=2))
    monkeypatch.setenv("RANK", "1")
    assert not cli._prints(ConfigError("x")) and cli._prints(RuntimeError("a bug")) is True
    monkeypatch.setenv("RANK", "0")
    assert cli._prints(ConfigError("x"))
    assert not (tmp_path / "r").exists()


def test_a_batch_of_partial_groups_is_refused_in_one_process_before_a_model_loads(tmp_path, capsys, monkeypatch):
    from mpo_gym import trainer
    from mpo_gym.cli import main

    monkeypatch.setattr(trainer, "_build_policy", lambda cfg: pytest.fail("a model was loaded"))
    code = main(["train", "--env", "mpo_gym/Toy-v0", "--model", "tiny", "--agent", "grpo", "--num-envs", "6",
                 "--group-size", "4", "--out-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "--num-envs 6 is not a whole number of groups of 4" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_sharded_eval_equals_unsharded(tmp_path):
    args = ["eval", "--model", "tiny", "--import", "tests.dist_envs", "--suite", "dist_test/Letters-v0", "--limit", "5",
            "--batch-size", "2",
            "--n-samples", "2", "--k", "1,2", "--temperature", "0.9", "--threads", "1", "--no-progress"]
    ok(one_process([*args, "--out-dir", str(tmp_path / "one")]))
    proc = ok(torchrun([*args, "--out-dir", str(tmp_path / "two")], cwd=REPO))
    assert proc.stdout.count("wrote ") == 1

    def samples(folder: str) -> list[dict]:
        out = [json.loads(line) for line in (tmp_path / folder / "samples.jsonl").read_text().splitlines()]
        return [{k: v for k, v in s.items() if k not in ("wall_seconds",)} for s in out]

    one, two = samples("one"), samples("two")
    assert len(one) == 10 and one == two
    assert len({s["response"] for s in one}) > 1  # sampled, not all alike


def test_sigterm_on_one_rank_stops_both_with_a_checkpoint_and_resume_continues(tmp_path):
    run = tmp_path / "run"
    proc = popen_torchrun(cwd=REPO, args=train_args("ppo", run, 400))
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (run / "metrics.jsonl").exists():
            time.sleep(0.5)
        assert (run / "metrics.jsonl").exists(), proc.stderr.read() if proc.poll() is not None else "no metrics yet"
        worker = _rank_pid(proc.pid, rank=1)
        os.kill(worker, signal.SIGTERM)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    assert proc.returncode != 0
    assert err.count("Resume with:") == 1, err[-3000:]  # rank 0 reports it once; rank 1 stays quiet
    assert "Traceback" not in err.split("Resume with:")[0][-2000:]
    steps = [r["step"] for r in rows(run)]
    saved = int(torch.load(run / "checkpoint" / "state.pt", weights_only=False)["step"])
    assert steps == list(range(1, saved + 1))
    more = ok(torchrun(cwd=REPO, args=train_args("ppo", run, saved + 1)))
    assert f"resuming from update {saved} of {saved + 1}" in more.stdout
    assert [r["step"] for r in rows(run)] == list(range(1, saved + 2))


def _rank_pid(root: int, rank: int, timeout: float = 60) -> int:
    """The pid of the worker process with ``RANK=rank`` under ``root`` (unshare -> torchrun -> workers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = []
        for pid in descendants(root):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                found.append(pid)
        if found:
            return min(found)  # the worker itself, not the verifier processes it forked later
        time.sleep(0.2)
    raise AssertionError(f"no rank {rank} worker under {root}")


def test_compare_under_two_ranks_reports_what_one_process_reports(tmp_path):
    args = ["compare", "--preset", "tiny", "--agents", "ppo,grpo", "--threads", "1"]
    ok(one_process([*args, "--out-dir", str(tmp_path / "one")]))
    proc = ok(torchrun([*args, "--out-dir", str(tmp_path / "two")], cwd=REPO))
    assert proc.stdout.count("report: ") == 1, proc.stdout
    for agent in ("ppo", "grpo"):
        a, b = (json.loads(next((tmp_path / d).glob(f"{agent}*/summary.json")).read_text()) for d in ("one", "two"))
        assert a["updates"] == b["updates"]
        assert a["eval_after"]["outcomes"] == b["eval_after"]["outcomes"]
        assert abs(a["eval_after"]["reward"] - b["eval_after"]["reward"]) < 1e-6
    assert (tmp_path / "two" / "report.md").exists()
