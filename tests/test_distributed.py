"""Data parallel under torchrun: 2 gloo ranks compute what 1 process computes.

Each 2-rank job is a real ``torchrun --standalone --nproc_per_node 2 -m mpo_gym ...`` in its own
network namespace (``tests/loopback.py``): loopback only. The 1-process reference is the same
command line without torchrun, run by ``mpo_gym.cli.main`` in the test process.

Start-up (the launcher's and each rank's interpreter and imports, about 10 s on 2 cores) is most of
a job's time, so the command lines the tests read are run together, once per module: every run the
tests only read goes in one job of several command lines (``tests/dist_jobs.py``: each rank runs
them in turn in one process group); the signal test's run is a plain ``-m mpo_gym`` job; the
second halves of the resume tests and the signalled run's resume are a third job, a fresh pair
of processes that restores each from disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from mpo_gym.distributed import SINGLE, shard

from .dist_jobs import split_runs
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


def one_process(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``mpo-gym ARGS`` in this process, its output captured: what the command line without
    torchrun prints and returns (``OMP_NUM_THREADS=1`` here too, see conftest)."""
    from mpo_gym.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return subprocess.CompletedProcess(["mpo-gym", *args], code, out.getvalue(), err.getvalue())


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


def cached_run(tmp_path_factory: pytest.TempPathFactory, agent: str, *extra: str) -> Path:
    """A 3-update run of ``train_args(agent, ...)`` in 1 process, made once per test session
    (tests only read it)."""
    key = (agent, *extra)
    if key not in _RUNS:
        run = tmp_path_factory.mktemp("run") / "run"
        proc = ok(one_process(train_args(agent, run, 3, *extra)))
        assert proc.stdout.count("trained ") == 1 and "view tensor" not in proc.stderr
        _RUNS[key] = run
    return _RUNS[key]


# mpo: MTP decoder layers are units of their own, the MTP heads and the value head in the root,
# the warm-up's backward reaches only the MTP units. grpo with mini-batches of 3 rows and
# micro-batches of 1: the ranks' shares of a mini-batch differ (2 and 1), so rank 1 runs
# zero-weight micro-batches to keep the backwards in lock-step.
FSDP_CASES = {"mpo": (), "grpo": ("--minibatch-size", "3", "--micro-batch-size", "1")}
EVAL_ARGS = ["eval", "--model", "tiny", "--import", "tests.dist_envs", "--suite", "dist_test/Letters-v0", "--limit", "5",
             "--batch-size", "2", "--n-samples", "2", "--k", "1,2", "--temperature", "0.9", "--threads", "1",
             "--no-progress"]
COMPARE_ARGS = ["compare", "--preset", "tiny", "--agents", "ppo,grpo", "--threads", "1"]
SIGNAL_ARGS = ("--eval-tasks", "0")  # the signal test reads no held-out evaluation
# what rank 0 alone prints once per command line (a rank 1 that printed it too shows in the counts)
ONCE = ("trained ", "resuming from update", "wrote ", "report: ")


@dataclasses.dataclass
class Job:
    """One torchrun job of several command lines (``tests/dist_jobs.py``), keyed by name: each
    one's out-dir and what rank 0 printed while it ran."""

    dirs: dict[str, Path]
    proc: subprocess.CompletedProcess[str]
    runs: dict[str, tuple[int | None, str]]

    def out(self, name: str) -> str:
        """What ``name`` printed; it ended with exit code 0."""
        code, out = self.runs[name]
        assert code == 0, (name, code, self.proc.returncode, self.proc.stderr[-3000:] + out[-2000:])
        return out


def run_job(dirs: dict[str, Path], lines: dict[str, list[str]], timeout: float) -> Job:
    proc = torchrun([json.dumps(list(lines.values()))], cwd=REPO, timeout=timeout, module="tests.dist_jobs")
    job = Job(dirs, proc, dict(zip(lines, split_runs(proc.stdout, len(lines)))))
    assert "view tensor" not in proc.stderr, proc.stderr[-3000:]
    for text in ONCE:  # none printed outside a command line's bracket (by rank 1, after rank 0's)
        assert proc.stdout.count(text) == sum(out.count(text) for _, out in job.runs.values()), text
    return job


@pytest.fixture(scope="module")
def first_job(tmp_path_factory: pytest.TempPathFactory) -> Job:
    """Every 2-rank run the tests read, in one job: 3-update runs of each agent, with and without
    a sharded policy, the first 2 updates of the resume tests' runs, an eval and a compare."""
    root = tmp_path_factory.mktemp("two_ranks")
    names = ["grpo", "ppo", "mpo", "mpo-fsdp", "grpo-fsdp", "grpo-resumed", "mpo-fsdp-resumed", "eval", "compare"]
    dirs = {name: root / name for name in names}
    # grpo first: the straight run the exact resume test compares with is computed by processes that
    # ran nothing before it, like its resumed half (the first line of resume_job); a process's
    # history may move a metric in its last bits
    lines = {agent: train_args(agent, dirs[agent]) for agent in ("grpo", "ppo", "mpo")}
    for agent in sorted(FSDP_CASES):
        lines[f"{agent}-fsdp"] = train_args(agent, dirs[f"{agent}-fsdp"], 3, *FSDP_CASES[agent], "--fsdp", "true")
    lines["grpo-resumed"] = train_args("grpo", dirs["grpo-resumed"], 2)
    lines["mpo-fsdp-resumed"] = train_args("mpo", dirs["mpo-fsdp-resumed"], 2, "--fsdp", "true")
    lines["eval"] = [*EVAL_ARGS, "--out-dir", str(dirs["eval"])]
    lines["compare"] = [*COMPARE_ARGS, "--out-dir", str(dirs["compare"])]
    return run_job(dirs, lines, timeout=900)


@pytest.fixture(scope="module")
def resume_job(first_job: Job, signalled: dict) -> Job:
    """The resume tests' runs continued to update 3, and the signalled run by one update: a fresh
    pair of processes, their state from disk."""
    first_job.out("grpo-resumed"), first_job.out("mpo-fsdp-resumed")
    dirs = {name: first_job.dirs[name] for name in ("grpo-resumed", "mpo-fsdp-resumed")}
    lines = {"grpo-resumed": train_args("grpo", dirs["grpo-resumed"], 3),
             "mpo-fsdp-resumed": train_args("mpo", dirs["mpo-fsdp-resumed"], 3, "--fsdp", "true")}
    if signalled["saved"] is not None:  # (if not, the signal test fails on its own)
        dirs["signalled"] = signalled["run"]
        lines["signalled"] = train_args("ppo", signalled["run"], signalled["saved"] + 1, *SIGNAL_ARGS)
    return run_job(dirs, lines, timeout=300)


def two_rank_run(job: Job, name: str) -> Path:
    """The out-dir of a finished 2-rank training in ``job``; rank 0 alone printed its summary."""
    out = job.out(name)
    assert out.count("trained ") == 1, out
    return job.dirs[name]


@pytest.mark.parametrize("agent", ["ppo", "mpo", "grpo"])
def test_two_ranks_compute_the_updates_of_one_process(tmp_path_factory, first_job, agent):
    single, double = cached_run(tmp_path_factory, agent), two_rank_run(first_job, agent)
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


@pytest.mark.parametrize("agent", sorted(FSDP_CASES))
def test_sharded_policy_computes_the_updates_of_one_process(tmp_path_factory, first_job, agent):
    single = cached_run(tmp_path_factory, agent, *FSDP_CASES[agent])
    sharded = two_rank_run(first_job, f"{agent}-fsdp")
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


def test_sharded_resume_is_exact(first_job, resume_job):
    straight, resumed = two_rank_run(first_job, "mpo-fsdp"), two_rank_run(first_job, "mpo-fsdp-resumed")
    out = resume_job.out("mpo-fsdp-resumed")
    assert out.count("resuming from update 2 of 3") == 1, out
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


def test_resume_under_two_ranks_is_exact(first_job, resume_job):
    straight, resumed = two_rank_run(first_job, "grpo"), two_rank_run(first_job, "grpo-resumed")
    out = resume_job.out("grpo-resumed")
    assert out.count("resuming from update 2 of 3") == 1, out
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

    monkeypatch.setattr(trainer, "build_policy", lambda cfg: pytest.fail("a model was loaded"))
    code = main(["train", "--env", "mpo_gym/Toy-v0", "--model", "tiny", "--agent", "grpo", "--num-envs", "6",
                 "--group-size", "4", "--out-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "--num-envs 6 is not a whole number of groups of 4" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_sharded_eval_equals_unsharded(tmp_path, first_job):
    ok(one_process([*EVAL_ARGS, "--out-dir", str(tmp_path / "one")]))
    assert first_job.out("eval").count("wrote ") == 1

    def samples(folder: Path) -> list[dict]:
        out = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
        return [{k: v for k, v in s.items() if k not in ("wall_seconds",)} for s in out]

    one, two = samples(tmp_path / "one"), samples(first_job.dirs["eval"])
    assert len(one) == 10 and one == two
    assert len({s["response"] for s in one}) > 1  # sampled, not all alike


@pytest.fixture(scope="module")
def signalled(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A plain ``-m mpo_gym`` 2-rank ppo run whose rank 1 gets SIGTERM once an update is logged,
    and what it left (its resume runs in ``resume_job``)."""
    run = tmp_path_factory.mktemp("signal") / "run"
    proc = popen_torchrun(cwd=REPO, args=train_args("ppo", run, 400, *SIGNAL_ARGS))
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
    state = run / "checkpoint" / "state.pt"
    saved = int(torch.load(state, weights_only=False)["step"]) if state.exists() else None
    return {"run": run, "returncode": proc.returncode, "err": err, "steps": [r["step"] for r in rows(run)],
            "saved": saved}


def test_sigterm_on_one_rank_stops_both_with_a_checkpoint_and_resume_continues(signalled, resume_job):
    run, err, saved = signalled["run"], signalled["err"], signalled["saved"]
    assert signalled["returncode"] != 0
    assert err.count("Resume with:") == 1, err[-3000:]  # rank 0 reports it once; rank 1 stays quiet
    assert "Traceback" not in err.split("Resume with:")[0][-2000:]
    assert saved is not None and signalled["steps"] == list(range(1, saved + 1))
    more = resume_job.out("signalled")
    assert f"resuming from update {saved} of {saved + 1}" in more
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


def test_compare_under_two_ranks_reports_what_one_process_reports(tmp_path, first_job):
    ok(one_process([*COMPARE_ARGS, "--out-dir", str(tmp_path / "one")]))
    out = first_job.out("compare")
    assert out.count("report: ") == 1, out
    two = first_job.dirs["compare"]
    for agent in ("ppo", "grpo"):
        a, b = (json.loads(next(d.glob(f"{agent}*/summary.json")).read_text()) for d in (tmp_path / "one", two))
        assert a["updates"] == b["updates"]
        assert a["eval_after"]["outcomes"] == b["eval_after"]["outcomes"]
        assert abs(a["eval_after"]["reward"] - b["eval_after"]["reward"]) < 1e-6
    assert (two / "report.md").exists()
