"""``mpo-gym train``: one agent, one env, a budget; metrics, checkpoints, exact resume.

A run folder holds ``config.json`` (the resolved config, with ``train_split`` and
``eval_split``), ``metrics.jsonl`` (one line per update with namespaced names:
``charts/reward``, ``losses/policy``, ``verdicts/correct``, ``mpo/clipfrac_united``, ...),
``eval.json`` (held-out greedy accuracy before and after), ``completions.jsonl`` (sampled
prompts, responses, verdicts and rewards every ``completions_every`` updates) and
``checkpoint/`` + ``checkpoint.prev/`` (policy with value head and MTP modules, optimizer, RNG
states, step; the last two, written atomically every ``checkpoint_every`` updates and every
``checkpoint_every_s`` seconds).

Training uses the env's ``train`` split and held-out evaluation its ``test`` split; an env
without a train split is refused unless ``allow_test_split`` (then the metrics' first line
says so). Re-running the same config into its folder resumes it exactly where it stopped
(bit-exact on CPU; budget and logging fields may change); another config is refused before
anything is written. SIGINT/SIGTERM finish the current update, save a checkpoint and the
metrics, and stop with :class:`~mpo_gym.errors.RunInterrupted`. A non-finite loss or gradient
stops the run (:class:`TrainingDiverged`) and leaves the last good checkpoint in place.

Under ``torchrun`` (:mod:`mpo_gym.distributed`) the same run is data-parallel: each rank plays
``num_envs / world_size`` of the batch's episodes, held-out evaluation is sharded by task, the
budget clock and signals are agreed on by all ranks after every update, and rank 0 alone writes
the run folder (which every rank must see to resume: a shared filesystem across nodes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from . import distributed, runs
from .agents import make_agent
from .configs import TrainConfig
from .errors import ConfigError, MpoGymError, RunInterrupted, check_model_spec
from .loading import LoadedRun, build_policy, is_run_folder, load_run, make_policy

__all__ = ["LoadedRun", "TrainConfig", "TrainResult", "TrainingDiverged", "evaluate_held_out", "load_run",
           "make_policy", "train"]


@dataclass
class TrainResult:
    """What a run produced (also on disk in ``out_dir``)."""

    out_dir: Path
    updates: int
    train_seconds: float
    eval_before: dict[str, float] | None
    eval_after: dict[str, float] | None
    history: list[dict[str, Any]]
    peak_rss_mb: float
    warmup_seconds: float = 0.0


def make_envs(cfg: TrainConfig, n: int, split: str | None = None) -> list[Any]:
    kwargs = cfg.resolved_env_kwargs()
    if split is not None:
        kwargs["split"] = split
    return [gym.make(cfg.env, **kwargs) for _ in range(n)]


def evaluate_held_out(cfg: TrainConfig, policy: Any, envs: list[Any] | None = None, *,
                      when: str | int = "after", rows_path: Path | None = None,
                      dist: distributed.Dist = distributed.SINGLE) -> dict[str, Any]:
    """Greedy accuracy and mean reward on the first ``eval_tasks`` tasks of the test split.

    Runs :func:`mpo_gym.evaluation.evaluate_envs` (the one evaluation path; sharded by task over
    the ranks of ``dist``) and records one row per task in ``rows_path`` (default
    ``<out_dir>/eval_tasks.jsonl``; rank 0 writes) under ``when`` (``"before"``, ``"after"`` or
    the update number).
    """
    from .evaluation import evaluate_envs, held_out_summary, write_task_rows
    from .rollout import task_count

    envs = envs or make_envs(cfg, min(cfg.eval_batch, cfg.eval_tasks), split="test")
    n_tasks = min(cfg.eval_tasks, task_count(envs)[1])
    policy.eval()
    with torch.no_grad(), dist.gathered(policy):
        samples = evaluate_envs(envs, policy, range(n_tasks), temperature=0.0, suite=cfg.env,
                                model_name=cfg.agent, dist=dist)
    if dist.is_main:
        write_task_rows(rows_path or Path(cfg.out_dir) / "eval_tasks.jsonl", samples, when)
    return held_out_summary(samples)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TrainingDiverged(MpoGymError):
    """A non-finite loss, gradient or metric stopped the run (the last good checkpoint is kept)."""

    exit_code = 1


def resolve_splits(cfg: TrainConfig) -> tuple[str | None, str]:
    """``(train split, eval split)`` of ``cfg.env``; refuses training on a test-only env.

    ``None`` as the train split means the env's splits are unknown (a user env): its default
    tasks are used and the run says so.
    """
    from .envs import available_splits

    splits = available_splits(cfg.env)
    asked = cfg.env_kwargs.get("split")
    if splits is None:
        return (str(asked) if asked is not None else None), "test"
    eval_split = "test" if "test" in splits else splits[-1]
    train_split = str(asked) if asked is not None else ("train" if "train" in splits else eval_split)
    if train_split == eval_split and not cfg.allow_test_split:
        why = f"has no train split (splits: {', '.join(splits)})" if asked is None else f"was given split={asked!r}"
        raise ConfigError(
            f"{cfg.env} {why}: training would use its {eval_split!r} split, the one held-out evaluation "
            "reports; pass --allow-test-split to do that on purpose"
        )
    return train_split, eval_split


def test_split_warning(cfg: TrainConfig, train_split: str | None, eval_split: str) -> str | None:
    """The first-line warning of a run that trains on its evaluation split, else None."""
    if train_split is not None and train_split == eval_split:
        return (f"WARNING: trained on the {eval_split!r} split of {cfg.env} (--allow-test-split): "
                "held-out numbers are measured on training tasks")
    return None


def preflight(cfg: TrainConfig) -> tuple[str | None, str]:
    """Every check that needs no model: user modules, env id, model path, splits, data dir."""
    from .plugins import check_env_id, import_modules

    if cfg.imports:
        import_modules(cfg.imports)
    check_env_id(cfg.env)
    check_model_spec(cfg.model)
    if is_run_folder(cfg.model):
        raise ConfigError(
            f"--model {cfg.model} is a training run folder; training starts from a model. To start from that "
            f"run's final weights, write them as a model folder first (mpo-gym export {cfg.model} OUT_DIR) and "
            "pass --model OUT_DIR"
        )
    if cfg.data_dir and not Path(cfg.data_dir).exists():
        raise ConfigError(f"--data-dir {cfg.data_dir}: no such file or directory")
    if cfg.lora:
        import importlib.util

        if importlib.util.find_spec("peft") is None:
            raise ConfigError("--lora needs peft: pip install 'mpo-gym[peft]'")
    from .tracking import check_report_to

    check_report_to(cfg.report_to)
    return resolve_splits(cfg)


def _make_envs_checked(cfg: TrainConfig, n: int, split: str | None) -> list[Any]:
    """:func:`make_envs`, with a failure to build the env (bad kwargs, bad data) as a user error."""
    try:
        return make_envs(cfg, n, split)
    except MpoGymError:
        raise
    except (TypeError, ValueError, FileNotFoundError, KeyError, OSError) as exc:
        kwargs = {k: v for k, v in cfg.resolved_env_kwargs().items() if k != "tokenizer"}
        where = f" (split {split!r})" if split else ""
        raise ConfigError(
            f"could not make {cfg.env}{where} with env kwargs {kwargs}: {type(exc).__name__}: {exc}"
        ) from exc


def _differences(cfg: TrainConfig, record: dict[str, Any]) -> Any:
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "agent_kwargs"]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}

    def differences(stored: dict[str, Any]) -> list[str]:
        out = runs.config_differences(stored, record, names, defaults)
        old_agent, new_agent = stored.get("resolved_agent_config"), record["resolved_agent_config"]
        if old_agent is None:
            out += runs.config_differences(stored, record, ["agent_kwargs"])
        elif stored.get("agent") == record["agent"]:
            keys = sorted(set(old_agent) | set(new_agent))
            out += runs.config_differences(old_agent, new_agent, keys)
        return out

    return differences


def _budget_text(cfg: TrainConfig) -> str:
    if cfg.updates:
        return str(cfg.updates)
    return f"a {cfg.time_budget_s:g} s budget"


def train(cfg: TrainConfig, *, progress: bool = True, resume: bool = True, label: str | None = None) -> TrainResult:
    """Run (or resume) one training run; see the module docstring for the run folder.

    ``resume=False`` refuses a folder that already holds a run. User errors (unknown env id,
    missing model folder, a folder holding another config, a test-only env) are raised as
    :class:`~mpo_gym.errors.MpoGymError` before a model is loaded or anything is written.
    """
    train_split, eval_split = preflight(cfg)
    dist = distributed.init(cfg.resolved_device)
    check_shards(cfg, dist)
    record = _config_json(cfg, train_split, eval_split)
    out = Path(cfg.out_dir)
    stored = runs.check_run_folder(out, _differences(cfg, record), resume=resume)
    dist.barrier()  # every rank has read the folder before rank 0 writes to it
    envs = _make_envs_checked(cfg, cfg.num_envs // dist.world_size, train_split)
    eval_count = min(cfg.eval_batch, -(-cfg.eval_tasks // dist.world_size))
    eval_envs = _make_envs_checked(cfg, eval_count, eval_split) if cfg.eval_tasks else None
    warning = test_split_warning(cfg, train_split, eval_split)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.reuse_memory:
        from .policy import reuse_freed_memory

        reuse_freed_memory()
    lock: Any = runs.RunLock(out) if dist.is_main else contextlib.nullcontext()
    record = {**record, "resolved_world_size": dist.world_size}
    if dist.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            lock.__enter__()  # one training per folder (released when train returns or the process ends)
            runs.write_json(out / "config.json", record)
        except OSError as exc:
            raise runs.folder_error(exc, out) or exc from exc
        if warning:
            print(warning, file=sys.stderr)
        if train_split is None:
            print(f"note: mpo-gym cannot tell the splits of {cfg.env}; training uses its default tasks and "
                  f"held-out evaluation passes split={eval_split!r}", file=sys.stderr)
    with lock, runs.StopSignals() as stop:  # rank 0 holds the lock (entered above); the others none
        try:
            return _train(cfg, out, envs, eval_envs, stop, warning, progress, label, resumed=stored is not None,
                          dist=dist, record=record)
        except OSError as exc:  # a full disk or a folder that turned read-only: one line, work kept
            error = runs.folder_error(exc, out)
            if error is None:
                raise
            raise error from exc
        except runs.Abandon as exc:
            raise RunInterrupted(
                f"{runs.signal_name(exc.signum)}: stopped at once; the last checkpoint in {out} is kept. "
                f"Resume with: {runs.resume_command('train', out)}", exc.signum,
            ) from None


def check_shards(cfg: TrainConfig, dist: distributed.Dist) -> None:
    """Under several ranks, the batch must split into equal shards of whole groups; ``fsdp``
    needs several ranks and supports neither a KL reference nor LoRA yet."""
    if cfg.fsdp and not dist.active:
        raise ConfigError("--fsdp shards the model over ranks: start 2 or more with torchrun, or leave --fsdp off")
    from .agents import AGENTS

    agent_cfg = cfg.agent_config()
    group = int(AGENTS[cfg.agent][0](agent_cfg).group_size)
    if not dist.active:
        if cfg.num_envs % group:
            raise ConfigError(f"--num-envs {cfg.num_envs} is not a whole number of groups of {group} "
                              f"(--group-size): use a multiple of {group}")
        return
    if cfg.fsdp and (getattr(agent_cfg, "kl_coef", 0.0) > 0 or cfg.lora):
        raise ConfigError("--fsdp does not support a KL reference (--kl-coef > 0) or --lora yet: "
                          "leave them off, or run without --fsdp")
    share, left = divmod(cfg.num_envs, dist.world_size)
    if left or share % group:
        raise ConfigError(
            f"--num-envs {cfg.num_envs} does not split over {dist.world_size} ranks into equal shares of whole "
            f"groups of {group}: use a multiple of {dist.world_size * group}"
        )


def _train(cfg: TrainConfig, out: Path, envs: list[Any], eval_envs: list[Any] | None, stop: runs.StopSignals,
           warning: str | None, progress: bool, label: str | None, resumed: bool,
           dist: distributed.Dist = distributed.SINGLE, record: dict[str, Any] | None = None) -> TrainResult:
    from .tracking import Progress, Tracker, make_tracker, write_completions

    main = dist.is_main
    policy = build_policy(cfg)
    metrics_path, eval_path = out / "metrics.jsonl", out / "eval.json"
    step, train_seconds = 0, 0.0
    loaded = runs.load_checkpoint(out, ("policy.pt", "state.pt"))
    evals = _read_evals(eval_path, loaded) if main else {}
    seen = dist.all_gather_objects(int(loaded[0]["state.pt"]["step"]) if loaded is not None else 0)
    if len(set(seen)) > 1:
        raise ConfigError(f"the ranks found checkpoints of different updates in {out} ({seen}): every rank must "
                          "see the same run folder (on several nodes, put --out-dir on a shared filesystem)")
    # the agent binds the policy before the checkpoint's weights are loaded (a KL reference is a
    # copy of the initial weights); sharded (no KL reference), after sharding, so that its
    # optimizer holds the sharded parameters
    def new_agent() -> Any:
        return make_agent(cfg.agent, policy, **{"seed": cfg.seed, **cfg.agent_kwargs})

    agent: Any = None if cfg.fsdp else new_agent()
    if loaded is not None:
        policy.load_state_dict(loaded[0]["policy.pt"])
    dist.broadcast_module(policy)  # every rank starts from rank 0's weights, as DDP does
    if cfg.fsdp:
        dist = distributed.shard_policy(policy, dist)
        agent = new_agent()
    agent.dist = dist
    if loaded is not None:
        step, train_seconds = _restore(loaded[0], agent)
    if main:
        _keep_rows_up_to(out, step)
        if step == 0 and warning:
            _append(metrics_path, {"step": 0, "warning": warning})
        if step and step >= _max_updates(cfg) and "after" in evals and evals.get("updates") == step:
            print(f"the run in {out} is already finished ({step} updates of {_budget_text(cfg)}); "
                  "raise --updates to train it further", flush=True)
        elif resumed or step:
            print(f"resuming from update {step} of {_budget_text(cfg)} in {out}", flush=True)
    # the "before" evaluation is of the initial weights: it can only be measured at update 0
    evals = dist.broadcast_object(evals)
    if cfg.eval_tasks and "before" not in evals and step == 0:
        evals["before"] = evaluate_held_out(cfg, policy, eval_envs, when="before", dist=dist)
        if main:
            runs.write_json(eval_path, evals)
    elif cfg.eval_tasks and "before" not in evals and main:
        print(f"warning: {eval_path} holds no 'before' evaluation and the run is at update {step}: the initial "
              "weights are gone, so only 'after' is measured", file=sys.stderr)

    history: list[dict[str, Any]] = []
    bar = Progress(cfg, step, label, progress and main)
    tracker = make_tracker(cfg, out, step) if main else Tracker()
    warmup_seconds = float(evals.get("warmup_seconds", 0.0))
    if step == 0:
        t0 = time.perf_counter()
        try:
            warm = agent.warmup(envs, policy)
        except FloatingPointError as exc:
            raise TrainingDiverged(f"the warm-up stopped: {exc}; lower the warm-up learning rate or use float32") from exc
        warmup_seconds = time.perf_counter() - t0
        if warm and main:
            _append(metrics_path, {"step": 0, "time": 0.0, "warmup/seconds": warmup_seconds, "warmup/steps": len(warm),
                                   "warmup/loss_first": warm[0]["warmup/loss"], **warm[-1]})
    last_good, last_save = step, time.monotonic()
    stop.deferred = True
    while step < _max_updates(cfg) and not (cfg.time_budget_s and train_seconds >= cfg.time_budget_s):
        t0 = time.perf_counter()
        try:
            # no region spans the update: the policy opens one per forward, and each optimizer
            # step drops the copies made from the old weights (LMPolicy.autocast, weights_changed)
            batch = agent.collect(envs, policy)
            metrics = agent.update(batch)
            _check_finite(metrics)
        except FloatingPointError as exc:
            bar.close()
            tracker.close()
            saved = f"update {last_good} in {out / runs.LATEST}" if (out / runs.LATEST).exists() else "none saved yet"
            raise TrainingDiverged(
                f"stopped at update {step + 1}: {exc}. The last good checkpoint is {saved}; "
                "lower the learning rate or use float32."
            ) from exc
        # the ranks agree on the clock (the slowest rank's), on a signal any of them received and
        # on whether a checkpoint is due by time (saving is a collective when the policy is sharded);
        # the peak memory logged is the largest rank's
        late = float(bool(cfg.checkpoint_every_s) and time.monotonic() - last_save >= cfg.checkpoint_every_s)
        seconds, signum, late, peak = dist.all_reduce(
            [time.perf_counter() - t0, stop.received or 0, late, _peak_rss_mb()], op="max")
        received = int(signum) or None
        train_seconds += seconds
        step += 1
        row = {"step": step, "time": round(train_seconds, 3), **{k: _num(v) for k, v in metrics.items()},
               "perf/peak_rss_mb": round(peak, 1)}
        if cfg.eval_every and step % cfg.eval_every == 0:
            held_out = evaluate_held_out(cfg, policy, eval_envs, when=step, dist=dist)
            row.update({f"eval/{k}": v for k, v in held_out.items() if k not in ("n", "outcomes")})
        history.append(row)
        if main:
            _append(metrics_path, row)
            tracker.log(row, step)
            if cfg.completions_every and step % cfg.completions_every == 0:
                table = write_completions(out / "completions.jsonl", step, batch, envs)
                tracker.log_completions(table, step)
            bar.update(step, train_seconds, row)
        due = (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or bool(late)
        if due or received is not None:
            _checkpoint(out, policy, agent, step, train_seconds, dist, {"config": record, "evals": evals})
            last_good, last_save = step, time.monotonic()
        if received is not None:
            bar.close()
            tracker.close()
            dist.barrier()  # the checkpoint is in place before any rank exits
            raise RunInterrupted(
                f"{runs.signal_name(received)}: stopped after update {step} of {_budget_text(cfg)}; "
                f"checkpoint and metrics saved in {out}. Resume with: {runs.resume_command('train', out)}",
                received,
            )
    stop.deferred = False
    bar.close()
    tracker.close()
    if last_good != step or not dist.broadcast_object((out / runs.LATEST).exists()):
        _checkpoint(out, policy, agent, step, train_seconds, dist, {"config": record, "evals": evals})
    if cfg.eval_tasks and not ("after" in evals and evals.get("updates") == step):
        evals["after"] = evaluate_held_out(cfg, policy, eval_envs, when="after", dist=dist)
        evals["train_seconds"], evals["updates"], evals["warmup_seconds"] = train_seconds, step, warmup_seconds
        if main:
            runs.write_json(eval_path, evals)
    dist.barrier()  # rank 0's files are complete when train() returns on any rank
    return TrainResult(
        out, step, train_seconds, evals.get("before"), evals.get("after"), history, _peak_rss_mb(), warmup_seconds
    )


def _checkpoint(out: Path, policy: Any, agent: Any, step: int, train_seconds: float,
                dist: distributed.Dist = distributed.SINGLE, meta: dict[str, Any] | None = None) -> None:
    """Every rank calls it (sharded state is gathered); rank 0 writes. ``meta`` (the config and
    the evaluations so far) goes into the manifest, to rebuild a torn config.json or eval.json."""
    weights, state = dist.model_state(policy), {"agent": agent.state_dict(), "step": step,
                                                "train_seconds": train_seconds, "torch_rng": torch.get_rng_state()}
    if dist.is_main:
        runs.save_checkpoint(out, {"policy.pt": weights, "state.pt": state}, {"step": step, **(meta or {})})


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


def _restore(files: dict[str, Any], agent: Any) -> tuple[int, float]:
    """The agent's state and the clock of a checkpoint (the weights are loaded before)."""
    state = files["state.pt"]
    agent.load_state_dict(state["agent"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), float(state["train_seconds"])


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


def _max_updates(cfg: TrainConfig) -> int:
    return cfg.updates if cfg.updates or not cfg.time_budget_s else 10**9


def _check_finite(metrics: dict[str, Any]) -> None:
    bad = [k for k, v in metrics.items() if not np.isfinite(_num(v))]
    if bad:
        raise FloatingPointError(f"non-finite metrics {bad}")


def _num(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _config_json(cfg: TrainConfig, train_split: str | None = None, eval_split: str = "test") -> dict[str, Any]:
    from . import __version__
    from .policy import compute_dtype

    data = dataclasses.asdict(cfg)
    data["train_split"], data["eval_split"] = train_split, eval_split
    data["resolved_agent_config"] = cfg.agent_config().to_dict()
    data["resolved_env_kwargs"] = cfg.resolved_env_kwargs()
    data["resolved_dtype"] = compute_dtype(cfg.dtype, cfg.resolved_device)
    data["mpo_gym_version"] = __version__
    return data


def summary_text(cfg: TrainConfig, result: TrainResult) -> str:
    """A short human summary of a finished run."""
    split = json.loads((result.out_dir / "config.json").read_text()).get("train_split")
    lines = [f"trained {cfg.agent} on {cfg.env}" + (f" ({split} split)" if split else "")
             + f": {result.updates} updates in {result.train_seconds:.1f} s"
             + (f" (+ {result.warmup_seconds:.1f} s warm-up)" if result.warmup_seconds else "")]
    if result.history:
        first, last = result.history[0], result.history[-1]
        if "charts/reward" in last:
            lines.append(f"train reward: {first['charts/reward']:.3f} at update {first['step']} -> "
                         f"{last['charts/reward']:.3f} at update {last['step']}")
    if result.eval_before and result.eval_after:
        n = int(result.eval_after.get("n", 0))
        lines.append(f"held-out greedy accuracy ({n} test tasks): {result.eval_before['accuracy']:.3f} before -> "
                     f"{result.eval_after['accuracy']:.3f} after")
    lines.append(f"run folder: {result.out_dir} (config.json, metrics.jsonl, eval.json, checkpoint/)")
    return "\n".join(lines)
