"""Run folders: resume or refuse, signals, atomic checkpoints, the NaN guard, splits."""

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

from mpo_gym.errors import ConfigError, MpoGymError
from mpo_gym.trainer import TrainConfig, TrainingDiverged, train

from .conftest import tiny_train_config

REPO = Path(__file__).resolve().parents[1]


tiny_cfg = tiny_train_config


def steps(out):
    return [json.loads(line)["step"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def weights(folder):
    return torch.load(Path(folder) / "policy.pt", map_location="cpu")


# ---------------------------------------------------------------------- resume or refuse
def test_same_config_resumes_and_the_budget_may_change(tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_cfg(out, updates=2), progress=False)
    capsys.readouterr()
    train(tiny_cfg(out, updates=3), progress=False)
    assert "resuming from update 2 of 3" in capsys.readouterr().out
    assert steps(out) == [1, 2, 3]
    assert json.loads((out / "config.json").read_text())["updates"] == 3  # the record says what ran


def test_another_config_is_refused_and_the_folder_left_byte_identical(tmp_path, capsys):
    from mpo_gym.cli import main

    out = tmp_path / "run"
    train(tiny_cfg(out), progress=False)
    before = snapshot(out)
    with pytest.raises(MpoGymError) as err:
        train(tiny_cfg(out, agent_kwargs={"lr": 1e-2, "minibatch_size": 4, "micro_batch_size": 2}), progress=False)
    message = str(err.value)
    assert "lr (stored: 0.001, now: 0.01)" in message and "--out-dir" in message and "--resume" in message
    assert "\n" not in message
    code = main(["train", "--agent", "grpo", "--env", "mpo_gym/Toy-v0", "--model", "tiny", "--out-dir", str(out)])
    captured = capsys.readouterr()
    assert code == 2 and "agent (stored: \"ppo\", now: \"grpo\")" in captured.err and "Traceback" not in captured.err
    assert snapshot(out) == before


def test_resume_flag_continues_with_the_stored_config(tmp_path, capsys):
    from mpo_gym.cli import main

    out = tmp_path / "run"
    train(tiny_cfg(out), progress=False)
    capsys.readouterr()
    assert main(["train", "--out-dir", str(out), "--resume", "--updates", "3"]) == 0
    assert "resuming from update 2 of 3" in capsys.readouterr().out
    assert steps(out) == [1, 2, 3]
    with pytest.raises(ConfigError, match="holds no run"):
        from mpo_gym.cli.train import add_arguments

        add_arguments(__import__("argparse").ArgumentParser(), ["--out-dir", str(tmp_path / "none"), "--resume"])


def test_resume_false_refuses_a_folder_with_a_run(tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(out), progress=False)
    with pytest.raises(MpoGymError, match="already holds a run"):
        train(tiny_cfg(out), progress=False, resume=False)


# ---------------------------------------------------------------------- checkpoints
def test_checkpoints_are_periodic_atomic_and_the_last_two_kept(tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(out, updates=3, checkpoint_every=1), progress=False)
    names = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint"))
    assert names == ["checkpoint", "checkpoint.prev"]
    state = lambda sub: torch.load(out / sub / "state.pt", weights_only=False)["step"]  # noqa: E731
    assert (state("checkpoint"), state("checkpoint.prev")) == (3, 2)


def test_time_based_checkpoints_by_default(tmp_path):
    assert TrainConfig().checkpoint_every_s > 0 and TrainConfig().checkpoint_every == 0
    out = tmp_path / "run"
    train(tiny_cfg(out, updates=3, checkpoint_every_s=1e-9), progress=False)
    state = torch.load(out / "checkpoint.prev" / "state.pt", weights_only=False)
    assert state["step"] == 2


def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
    straight = tmp_path / "straight"
    train(tiny_cfg(straight, updates=4), progress=False)
    out = tmp_path / "run"
    train(tiny_cfg(out, updates=3, checkpoint_every=1), progress=False)
    (out / "checkpoint" / "policy.pt").write_bytes(b"not a checkpoint")
    capsys.readouterr()
    train(tiny_cfg(out, updates=4, checkpoint_every=1), progress=False)
    captured = capsys.readouterr()
    assert "warning: checkpoint" in captured.err and "failed to load" in captured.err
    assert "resuming from update 2 of 4" in captured.out
    assert steps(out) == [1, 2, 3, 4]  # update 3 re-done once, not logged twice
    a, b = weights(straight / "checkpoint"), weights(out / "checkpoint")
    assert all(torch.equal(a[k], b[k]) for k in a)  # and the same as never interrupted


def test_checkpoints_that_all_fail_to_load_are_an_error_not_a_restart(tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(out), progress=False)
    (out / "checkpoint" / "state.pt").write_bytes(b"garbage")
    with pytest.raises(MpoGymError, match="could be loaded"):
        train(tiny_cfg(out, updates=3), progress=False)


def _train_cmd(out, updates, env_id="mpo_gym/Toy-v0"):
    return [sys.executable, "-m", "mpo_gym", "train", "--agent", "ppo", "--env", env_id, "--model", "tiny",
            "--dtype", "float32", "--num-envs", "4", "--eval-tasks", "0", "--threads", "1", "--lr", "0.001",
            "--minibatch-size", "4", "--micro-batch-size", "2", "--log-every", "1", "--updates", str(updates),
            "--out-dir", str(out)]


def _wait_for_rows(path, n, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"{path} did not reach {n} rows")


# Ctrl-C in a terminal signals the whole process group (the verifier's worker processes too)
# (a SIGTERM from `kill PID` reaches the trainer only)
@pytest.mark.parametrize("env_id, sig, group", [("mpo_gym/Arithmetic-v0", signal.SIGINT, True),
                                                ("mpo_gym/Toy-v0", signal.SIGTERM, False)])
def test_a_signal_mid_run_saves_and_the_same_command_resumes_each_update_once(tmp_path, env_id, sig, group,
                                                                           monkeypatch, capsys):
    from mpo_gym.cli import main

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_train_cmd(out, 100000, env_id), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path, start_new_session=True)
    _wait_for_rows(out / "metrics.jsonl", 3, proc)
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr[-2000:]
    assert "Traceback" not in stderr and "mpo-gym train --out-dir" in stderr and "--resume" in stderr
    stopped = torch.load(out / "checkpoint" / "state.pt", weights_only=False)["step"]
    assert stopped >= 3 and steps(out) == list(range(1, stopped + 1))  # checkpoint and metrics agree
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["verdicts/error"] == 0 and last["verdicts/timeout"] == 0  # the update was finished, not broken
    # the same command line, resumed in this process (the signal needed a process of its own)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code = main(_train_cmd(out, stopped + 2, env_id)[3:])
    again = capsys.readouterr()
    assert code == 0, again.err[-2000:]
    assert f"resuming from update {stopped} of {stopped + 2}" in again.out
    assert steps(out) == list(range(1, stopped + 3))
    # stdout is not a terminal here: plain progress lines (--log-every 1), no progress bar
    lines = [line.split(" | ")[0] for line in again.out.splitlines() if "s/update" in line]
    assert lines == [f"ppo update {stopped + 1}/{stopped + 2}", f"ppo update {stopped + 2}/{stopped + 2}"]
    assert "\r" not in again.out


@pytest.mark.slow
def test_a_signal_stops_compare_and_the_resume_finishes_each_update_once(tmp_path):
    out = tmp_path / "cmp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mpo_gym", "compare", "--preset", "tiny", "--agents", "ppo", "--eval-tasks", "0",
           "--checkpoint-every", "1000", "--out-dir", str(out)]
    proc = subprocess.Popen([*cmd, "--updates", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    _wait_for_rows(out / "ppo-s0" / "metrics.jsonl", 3, proc)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and f"mpo-gym compare --out-dir {out} --resume" in stderr
    stopped = torch.load(out / "ppo-s0" / "checkpoint" / "state.pt", weights_only=False)["step"]
    again = subprocess.run([*cmd, "--updates", str(stopped + 1)], capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming comparison" in again.stdout and f"resuming from update {stopped} of {stopped + 1}" in again.stdout
    assert steps(out / "ppo-s0") == list(range(1, stopped + 2))
    # a larger budget continues the finished run instead of keeping it
    more = subprocess.run([*cmd, "--updates", str(stopped + 2)], capture_output=True, text=True, timeout=300, env=env)
    assert more.returncode == 0 and "continuing to the new one" in more.stdout, more.stderr[-2000:]
    assert steps(out / "ppo-s0") == list(range(1, stopped + 3))


# ---------------------------------------------------------------------- the NaN guard
def test_non_finite_gradients_never_reach_the_optimizer_and_the_last_good_checkpoint_stays(tmp_path, monkeypatch):
    from mpo_gym.agents import PPOAgent

    class NanGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("nan")

    calls = {"loss": 0, "bad_steps": 0}
    original_loss = PPOAgent.loss

    def loss_with_nan_grads_from_update_2(self, mb):
        loss, metrics = original_loss(self, mb)
        calls["loss"] += 1
        return (NanGrad.apply(loss) if calls["loss"] > 2 else loss), metrics  # 2 micro-batches per update

    original_step = torch.optim.AdamW.step

    def checked_step(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        calls["bad_steps"] += any(not torch.isfinite(g).all() for g in grads)
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(PPOAgent, "loss", loss_with_nan_grads_from_update_2)
    monkeypatch.setattr(torch.optim.AdamW, "step", checked_step)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="non-finite gradient") as err:
        train(tiny_cfg(out, updates=4, checkpoint_every=1), progress=False)
    assert "update 1" in str(err.value)
    assert calls["bad_steps"] == 0
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 1
    assert all(torch.isfinite(v).all() for v in weights(out / "checkpoint").values() if v.is_floating_point())


# ---------------------------------------------------------------------- splits
def test_training_on_a_test_only_suite_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as err:
        train(tiny_cfg(out, env="mpo_gym/HumanEval-v0"), progress=False)
    assert "'test' split" in str(err.value) and "--allow-test-split" in str(err.value)
    assert not out.exists()
    with pytest.raises(ConfigError, match="--allow-test-split"):
        train(tiny_cfg(out, env="mpo_gym/GSM8K-v0", env_kwargs={"split": "test"}), progress=False)


def test_allowed_test_split_is_recorded_and_labelled_in_the_first_line(tmp_path, monkeypatch):
    import mpo_gym.envs

    monkeypatch.setattr(mpo_gym.envs, "available_splits", lambda env_id: ("test",))
    out = tmp_path / "run"
    with pytest.raises(ConfigError):
        train(tiny_cfg(out), progress=False)
    train(tiny_cfg(out, allow_test_split=True), progress=False)
    config = json.loads((out / "config.json").read_text())
    assert (config["train_split"], config["eval_split"]) == ("test", "test")
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and "trained on the 'test' split" in first["warning"]


def test_mpo_warmup_draws_only_training_tasks(tmp_path, monkeypatch):
    from mpo_gym.agents import MPOAgent

    seen: list[str] = []
    original = MPOAgent._solution_batch

    class Recording:
        def __init__(self, tasks):
            self.tasks = tasks

        def __len__(self):
            return len(self.tasks)

        def __getitem__(self, i):
            task = self.tasks[i]
            seen.append(task.id)
            return task

    def recording_batch(self, env, policy):
        tasks, env.tasks = env.tasks, Recording(env.tasks)
        try:
            return original(self, env, policy)
        finally:
            env.tasks = tasks

    monkeypatch.setattr(MPOAgent, "_solution_batch", recording_batch)
    kwargs = {"lr": 1e-3, "minibatch_size": 4, "micro_batch_size": 2, "mpo_k": 3, "warmup_steps": 3,
              "warmup_batch_size": 4}
    train(tiny_cfg(tmp_path / "run", agent="mpo", updates=1, eval_tasks=2, agent_kwargs=kwargs), progress=False)
    assert len(seen) >= 12 and all(t.startswith("toy/train/") for t in seen), seen


def test_compare_on_a_test_only_suite_says_so_in_the_first_line_of_the_report(tmp_path):
    from mpo_gym.compare import CompareConfig, compare

    kwargs = dict(agents=("grpo",), env="mpo_gym/MATH500-v0", env_kwargs={"max_new_tokens": 8}, model="tiny",
                  updates=1, num_envs=2, eval_tasks=2, dtype="float32", threads=1, out_dir=str(tmp_path / "cmp"),
                  agent_kwargs={"grpo": {"group_size": 2, "minibatch_size": 2, "micro_batch_size": 2}})
    with pytest.raises(ConfigError, match="--allow-test-split"):
        compare(CompareConfig.from_options(kwargs))
    assert not (tmp_path / "cmp").exists()
    out = compare(CompareConfig.from_options({**kwargs, "allow_test_split": True}))
    first = (out / "report.md").read_text().splitlines()[0]
    assert "trained on the 'test' split of mpo_gym/MATH500-v0" in first
    assert json.loads((out / "grpo-s0" / "config.json").read_text())["train_split"] == "test"


def test_torn_trailing_lines_and_a_torn_eval_json_are_repaired_on_resume(tmp_path, capsys):
    cfg = tiny_train_config(tmp_path / "run", updates=2, eval_tasks=2, eval_batch=2, completions_every=1)
    train(cfg, progress=False)
    out = tmp_path / "run"
    for name in ("metrics.jsonl", "completions.jsonl"):
        with (out / name).open("a") as f:
            f.write('{"step": 3, "charts/rew')  # a write cut short by a full disk
    before = json.loads((out / "eval.json").read_text())["before"]
    (out / "eval.json").write_text('{"before": {"accuracy"')
    train(dataclasses.replace(cfg, updates=3), progress=False)
    err = capsys.readouterr().err
    assert err.count("torn line") == 2 and "eval.json: it was empty or torn; rebuilt from the checkpoint" in err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    evals = json.loads((out / "eval.json").read_text())
    assert {"before", "after"} <= set(evals) and evals["updates"] == 3
    assert evals["before"] == before  # the initial weights' evaluation, not one of trained weights


def test_an_empty_config_json_is_rebuilt_from_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_cfg(out, updates=2), progress=False)
    stored = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text("")
    capsys.readouterr()
    train(tiny_cfg(out, updates=3), progress=False)
    captured = capsys.readouterr()
    assert "config.json: it was empty or torn; rebuilt from" in captured.err
    assert "resuming from update 2 of 3" in captured.out and steps(out) == [1, 2, 3]
    assert json.loads((out / "config.json").read_text()) == {**stored, "updates": 3}


def test_a_flipped_byte_in_a_checkpoint_is_caught_by_its_checksum(tmp_path, capsys):
    from mpo_gym import runs

    out = tmp_path / "run"
    train(tiny_cfg(out, updates=3, checkpoint_every=1), progress=False)
    manifest = json.loads((out / "checkpoint" / "manifest.json").read_text())
    assert set(manifest["sha256"]) == {"policy.pt", "state.pt"} and manifest["step"] == 3
    path = out / "checkpoint" / "policy.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside a tensor: torch.load alone reads it without complaint
    path.write_bytes(bytes(data))
    torch.load(path, map_location="cpu")
    with pytest.raises(ValueError, match="checksum mismatch"):
        runs.read_checkpoint(out / "checkpoint", ["policy.pt"])
    capsys.readouterr()
    train(tiny_cfg(out, updates=4, checkpoint_every=1), progress=False)
    captured = capsys.readouterr()
    assert "policy.pt: checksum mismatch" in captured.err and "loaded the previous checkpoint" in captured.err
    assert "resuming from update 2 of 4" in captured.out and steps(out) == [1, 2, 3, 4]


def test_a_full_disk_ends_in_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    import errno

    from mpo_gym import runs
    from mpo_gym.cli import main

    out = tmp_path / "run"
    train(tiny_cfg(out, updates=1), progress=False)
    good = snapshot(out / "checkpoint")
    real = runs._save_file

    def full(obj, path):
        real(obj, path)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(runs, "_save_file", full)
    capsys.readouterr()
    code = main(["train", "--resume", "--out-dir", str(out), "--updates", "2", "--checkpoint-every", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "last good checkpoint" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert snapshot(out / "checkpoint") == good and not (out / "checkpoint.tmp").exists()


def test_a_read_only_folder_ends_in_one_line(tmp_path, monkeypatch, capsys):
    import errno

    from mpo_gym import runs
    from mpo_gym.cli import main

    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(runs, "write_json", read_only)
    code = main(["train", "--env", "mpo_gym/Toy-v0", "--model", "tiny", "--updates", "1", "--num-envs", "2",
                 "--eval-tasks", "0", "--dtype", "float32", "--threads", "1", "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "Read-only file system" in err and "Traceback" not in err


def test_an_out_dir_under_a_file_ends_in_one_line(tmp_path, capsys):
    from mpo_gym.cli import main

    (tmp_path / "afile").write_text("")
    code = main(["train", "--env", "mpo_gym/Toy-v0", "--model", "tiny", "--updates", "1", "--num-envs", "2",
                 "--eval-tasks", "0", "--out-dir", str(tmp_path / "afile" / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "Not a directory" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_second_training_on_one_folder_is_refused_naming_the_holder(tmp_path):
    from mpo_gym import runs

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                               "from mpo_gym.runs import RunLock\nwith RunLock(Path(sys.argv[1])):\n"
                               "    print('held', flush=True); time.sleep(60)\n", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MpoGymError, match=rf"in use by another training \(pid {holder.pid}\)"):
            train(tiny_train_config(out, updates=1), progress=False)
        assert not (out / "config.json").exists()  # refused before anything was written
    finally:
        holder.kill()
        holder.wait()
    lock = runs.RunLock(out)
    with lock, lock:  # its holder may enter it again; it is released after
        pass
    train(tiny_train_config(out, updates=1), progress=False)  # the holder is gone: it trains


def test_rerunning_a_finished_run_says_it_is_finished(tmp_path, capsys):
    cfg = tiny_train_config(tmp_path / "run", updates=1, eval_tasks=2, eval_batch=2)
    train(cfg, progress=False)
    capsys.readouterr()
    train(cfg, progress=False)
    assert "is already finished (1 updates of 1)" in capsys.readouterr().out


def test_a_lost_before_evaluation_is_never_measured_again_on_trained_weights(tmp_path, capsys):
    cfg = tiny_train_config(tmp_path / "run", updates=1, eval_tasks=2, eval_batch=2)
    train(cfg, progress=False)
    out = tmp_path / "run"
    (out / "eval.json").unlink()
    manifest = json.loads((out / "checkpoint" / "manifest.json").read_text())
    manifest.pop("evals")  # as a checkpoint written without the evaluations
    (out / "checkpoint" / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    train(dataclasses.replace(cfg, updates=2), progress=False)
    assert "holds no 'before' evaluation and the run is at update 1" in capsys.readouterr().err
    evals = json.loads((out / "eval.json").read_text())
    assert "before" not in evals and evals["updates"] == 2


def test_torch_reporting_a_full_disk_as_a_runtime_error_is_told_apart_from_a_bug(tmp_path, monkeypatch):
    """torch's writer turns ENOSPC into a RuntimeError ("unexpected pos"): a probe write decides."""
    import errno

    from mpo_gym import runs

    def torn(obj, path):
        path.write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos 574784 vs 574672")

    monkeypatch.setattr(runs, "_save_file", torn)
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(RuntimeError, match="unexpected pos"):  # the disk has room: a bug stays a bug
        runs.save_checkpoint(out, {"policy.pt": {}})
    monkeypatch.setattr(runs, "_probe_write", lambda out: OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(runs.RunFolderError, match="No space left on device"):
        runs.save_checkpoint(out, {"policy.pt": {}})
    assert not (out / runs.TEMP).exists() and not (out / runs.LATEST).exists()
