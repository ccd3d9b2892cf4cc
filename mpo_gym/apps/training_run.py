"""The bookkeeping of one training run, so that the training loop reads as collect → update →
agree → log → evaluate → checkpoint (:func:`mpo_gym.trainer.train`).

A :class:`TrainingRun` owns what is not the algorithm: resuming from the newest checkpoint (and
the ranks agreeing on it), the held-out evaluations and ``eval.json``, the rows of
``metrics.jsonl`` and ``completions.jsonl`` (rank 0 writes), the progress bar and trackers,
the budget clock, checkpoint timing, the divergence guard and stopping on a signal.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed, runs, timing
from ..configs import TrainConfig
from ..errors import ConfigError, MpoGymError, RunInterrupted

__all__ = ["TrainingDiverged", "TrainingRun"]

POLICY_FILES = ("policy.pt", "state.pt")


class TrainingDiverged(MpoGymError):
    """A non-finite loss, gradient or metric stopped the run (the last good checkpoint is kept)."""

    exit_code = 1


class TrainingRun:
    """One run's state between updates: ``step``, ``train_seconds``, ``evals``, ``history``."""

    def __init__(self, cfg: TrainConfig, out: Path, dist: distributed.Dist, stop: runs.StopSignals,
                 record: dict[str, Any] | None, eval_envs: list[Any] | None) -> None:
        self.cfg, self.out, self.dist, self.stop = cfg, out, dist, stop
        self.record, self.eval_envs = record, eval_envs
        self.main = dist.is_main
        self.metrics_path, self.eval_path = out / "metrics.jsonl", out / "eval.json"
        self.step, self.train_seconds, self.warmup_seconds = 0, 0.0, 0.0
        self.evals: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.last_good, self.last_save = 0, time.monotonic()
        self.bar: Any = None
        self.tracker: Any = None

    # ------------------------------------------------------------------ start
    def resume(self, policy: Any, new_agent: Any, warning: str | None, resumed: bool) -> Any:
        """Load the newest checkpoint that loads (every rank the same one), build the agent
        (``new_agent()``) and restore its state; returns the agent.

        The agent binds the policy before the checkpoint's weights are loaded (a KL reference is
        a copy of the initial weights); sharded (no KL reference), after sharding, so that its
        optimizer holds the sharded parameters.
        """
        cfg, out, dist = self.cfg, self.out, self.dist
        loaded = runs.load_checkpoint(out, POLICY_FILES)
        self.evals = _read_evals(self.eval_path, loaded) if self.main else {}
        seen = dist.all_gather_objects(int(loaded[0]["state.pt"]["step"]) if loaded is not None else 0)
        if len(set(seen)) > 1:
            raise ConfigError(f"the ranks found checkpoints of different updates in {out} ({seen}): every rank must "
                              "see the same run folder (on several nodes, put --out-dir on a shared filesystem)")
        agent: Any = None if cfg.fsdp else new_agent()
        if loaded is not None:
            policy.load_state_dict(loaded[0]["policy.pt"])
        dist.broadcast_module(policy)  # every rank starts from rank 0's weights, as DDP does
        if cfg.fsdp:
            self.dist = dist = distributed.shard_policy(policy, dist)
            agent = new_agent()
        agent.dist = dist
        if loaded is not None:
            state = loaded[0]["state.pt"]
            agent.load_state_dict(state["agent"])
            torch.set_rng_state(state["torch_rng"])
            self.step, self.train_seconds = int(state["step"]), float(state["train_seconds"])
        self.last_good = self.step
        if self.main:
            _keep_rows_up_to(out, self.step)
            if self.step == 0 and warning:
                runs.append_jsonl(self.metrics_path, {"step": 0, "warning": warning})
            if self.finished():
                print(f"the run in {out} is already finished ({self.step} updates of {budget_text(cfg)}); "
                      "raise --updates to train it further", flush=True)
            elif resumed or self.step:
                print(f"resuming from update {self.step} of {budget_text(cfg)} in {out}", flush=True)
        self.evals = dist.broadcast_object(self.evals)
        self.warmup_seconds = float(self.evals.get("warmup_seconds", 0.0))
        return agent

    def finished(self) -> bool:
        return bool(self.step and self.step >= max_updates(self.cfg) and "after" in self.evals
                    and self.evals.get("updates") == self.step)

    def evaluate_before(self, policy: Any) -> None:
        """The held-out evaluation of the initial weights: it can only be measured at update 0."""
        if not self.cfg.eval_tasks or "before" in self.evals:
            return
        if self.step == 0:
            self.evals["before"] = self.evaluate(policy, "before")
            if self.main:
                runs.write_json(self.eval_path, self.evals)
        elif self.main:
            print(f"warning: {self.eval_path} holds no 'before' evaluation and the run is at update {self.step}: "
                  "the initial weights are gone, so only 'after' is measured", file=sys.stderr)

    def open_logs(self, progress: bool, label: str | None) -> None:
        from ..tracking import Progress, Tracker, make_tracker

        self.bar = Progress(self.cfg, self.step, label, progress and self.main)
        self.tracker = make_tracker(self.cfg, self.out, self.step) if self.main else Tracker()

    def warmup(self, agent: Any, envs: list[Any], policy: Any) -> None:
        """The agent's warm-up stage (MPO's MTP warm-up), once, before the first update."""
        if self.step:
            self.last_save = time.monotonic()
            return
        t0 = time.perf_counter()
        try:
            warm = agent.warmup(envs, policy)
        except FloatingPointError as exc:
            raise TrainingDiverged(f"the warm-up stopped: {exc}; lower the warm-up learning rate or use float32") from exc
        self.warmup_seconds = time.perf_counter() - t0
        if warm and self.main:
            runs.append_jsonl(self.metrics_path, {
                "step": 0, "time": 0.0, "warmup/seconds": self.warmup_seconds, "warmup/steps": len(warm),
                "warmup/loss_first": warm[0]["warmup/loss"], **warm[-1]})
        self.last_save = time.monotonic()

    # ------------------------------------------------------------------ each update
    def budget_left(self) -> bool:
        budget = self.cfg.time_budget_s
        return self.step < max_updates(self.cfg) and not (budget and self.train_seconds >= budget)

    @contextlib.contextmanager
    def guarded(self) -> Iterator[None]:
        """A non-finite loss or metric stops the run with the last good checkpoint named."""
        try:
            yield
        except FloatingPointError as exc:
            self.close_logs()
            saved = (f"update {self.last_good} in {self.out / runs.LATEST}" if (self.out / runs.LATEST).exists()
                     else "none saved yet")
            raise TrainingDiverged(f"stopped at update {self.step + 1}: {exc}. The last good checkpoint is {saved}; "
                                   "lower the learning rate or use float32.") from exc

    def start_update(self) -> float:
        """The clock at the start of an update; the phase timers start from zero."""
        timing.take()
        return time.perf_counter()

    def agree(self, seconds: float, metrics: dict[str, Any]) -> dict[str, Any]:
        """After an update, the ranks agree on the clock (the slowest rank's), on a signal any of
        them received and on whether a checkpoint is due by time (saving is a collective when the
        policy is sharded); the peak memory logged is the largest rank's. Returns the row."""
        cfg = self.cfg
        late = float(bool(cfg.checkpoint_every_s) and time.monotonic() - self.last_save >= cfg.checkpoint_every_s)
        seconds, signum, late, peak = self.dist.all_reduce([seconds, self.stop.received or 0, late, peak_rss_mb()],
                                                           op="max")
        self.received, self.late = int(signum) or None, bool(late)
        self.train_seconds += seconds
        self.step += 1
        phases = timing.take()  # this rank's phases (each rank times its own share)
        if phases.get("rollout_s") and "rollout_tokens" in phases:
            phases["rollout_tokens_per_s"] = round(phases["rollout_tokens"] / phases["rollout_s"], 1)
        return {"step": self.step, "time": round(self.train_seconds, 3), **{k: num(v) for k, v in metrics.items()},
                "perf/peak_rss_mb": round(peak, 1), **{f"perf/{k}": v for k, v in phases.items()}}

    def evaluate_every(self, policy: Any, row: dict[str, Any]) -> None:
        if self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
            held_out = self.evaluate(policy, self.step)
            row.update({f"eval/{k}": v for k, v in held_out.items() if k not in ("n", "outcomes")})

    def log(self, row: dict[str, Any], batch: Any, envs: list[Any]) -> None:
        from ..tracking import write_completions

        self.history.append(row)
        if not self.main:
            return
        runs.append_jsonl(self.metrics_path, row)
        self.tracker.log(row, self.step)
        if self.cfg.completions_every and self.step % self.cfg.completions_every == 0:
            table = write_completions(self.out / "completions.jsonl", self.step, batch, envs)
            self.tracker.log_completions(table, self.step)
        self.bar.update(self.step, self.train_seconds, row)

    def checkpoint_if_due(self, policy: Any, agent: Any) -> None:
        """Save every ``checkpoint_every`` updates, every ``checkpoint_every_s`` seconds and on a
        signal; after a signal, stop with :class:`RunInterrupted` (the checkpoint in place)."""
        cfg = self.cfg
        due = (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or self.late
        if due or self.received is not None:
            self.checkpoint(policy, agent)
        if self.received is not None:
            self.close_logs()
            self.dist.barrier()  # the checkpoint is in place before any rank exits
            raise RunInterrupted(
                f"{runs.signal_name(self.received)}: stopped after update {self.step} of {budget_text(cfg)}; "
                f"checkpoint and metrics saved in {self.out}. Resume with: {runs.resume_command('train', self.out)}",
                self.received,
            )

    # ------------------------------------------------------------------ end
    def finish(self, policy: Any, agent: Any) -> None:
        """The last checkpoint (unless in place), the "after" evaluation and ``eval.json``."""
        self.close_logs()
        if self.last_good != self.step or not self.dist.broadcast_object((self.out / runs.LATEST).exists()):
            self.checkpoint(policy, agent)
        if self.cfg.eval_tasks and not ("after" in self.evals and self.evals.get("updates") == self.step):
            self.evals["after"] = self.evaluate(policy, "after")
            self.evals.update(train_seconds=self.train_seconds, updates=self.step, warmup_seconds=self.warmup_seconds)
            if self.main:
                runs.write_json(self.eval_path, self.evals)
        self.dist.barrier()  # rank 0's files are complete when train() returns on any rank

    def close_logs(self) -> None:
        for log in (self.bar, self.tracker):
            if log is not None:
                log.close()

    def checkpoint(self, policy: Any, agent: Any) -> None:
        """Every rank calls it (sharded state is gathered); rank 0 writes. The manifest holds the
        config and the evaluations so far, to rebuild a torn config.json or eval.json."""
        weights = self.dist.model_state(policy)
        state = {"agent": agent.state_dict(), "step": self.step, "train_seconds": self.train_seconds,
                 "torch_rng": torch.get_rng_state()}
        if self.main:
            runs.save_checkpoint(self.out, {"policy.pt": weights, "state.pt": state},
                                 {"step": self.step, "config": self.record, "evals": self.evals})
        self.last_good, self.last_save = self.step, time.monotonic()

    def evaluate(self, policy: Any, when: str | int) -> dict[str, Any]:
        from .evaluation import evaluate_held_out

        return evaluate_held_out(self.cfg, policy, self.eval_envs, when=when, dist=self.dist)


def _read_evals(path: Path, loaded: tuple[dict[str, Any], Path] | None) -> dict[str, Any]:
    """eval.json, or when it is missing, empty or torn the evaluations the checkpoint saved."""
    saved = (loaded[0][runs.MANIFEST].get("evals") or None) if loaded is not None else None
    found = path.exists()
    if found:
        evals = runs.read_json(path, "rebuilt from the checkpoint" if saved else "no checkpoint holds the evaluations")
        if evals is not None:
            return evals
    if loaded is None or not saved:
        return {}
    if not found:
        print(f"note: {path} is missing; rebuilt from {loaded[1] / runs.MANIFEST}", file=sys.stderr)
    runs.write_json(path, saved)
    return dict(saved)


def _keep_rows_up_to(out: Path, step: int) -> None:
    """Drop what was logged after the checkpoint we resume from (each update once, in order)."""
    if step == 0:
        for name in ("metrics.jsonl", "completions.jsonl"):
            runs.truncate_jsonl(out / name, lambda row: False)
    else:
        runs.truncate_jsonl(out / "metrics.jsonl", lambda row: int(row.get("step", 0)) <= step)
        runs.truncate_jsonl(out / "completions.jsonl", lambda row: int(row.get("step", 0)) <= step)
    # held-out rows of --eval-every evaluations after the checkpoint ("before"/"after" stay)
    runs.truncate_jsonl(out / "eval_tasks.jsonl",
                        lambda row: not isinstance(row.get("when"), int) or row["when"] <= step)


def max_updates(cfg: TrainConfig) -> int:
    return cfg.updates if cfg.updates or not cfg.time_budget_s else 10**9


def budget_text(cfg: TrainConfig) -> str:
    return str(cfg.updates) if cfg.updates else f"a {cfg.time_budget_s:g} s budget"


def check_finite(metrics: dict[str, Any]) -> None:
    bad = [k for k, v in metrics.items() if not np.isfinite(num(v))]
    if bad:
        raise FloatingPointError(f"non-finite metrics {bad}")


def num(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
