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

import torch

from .. import distributed, runs
from ..agents import make_agent
from ..configs import TrainConfig
from ..errors import ConfigError, MpoGymError, RunInterrupted, check_model_spec
from ..loading import LoadedRun, build_policy, is_run_folder, load_run, make_envs, make_policy
from .evaluation import evaluate_held_out
from .training_run import TrainingDiverged, TrainingRun, check_finite, peak_rss_mb

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


def resolve_splits(cfg: TrainConfig) -> tuple[str | None, str]:
    """``(train split, eval split)`` of ``cfg.env``; refuses training on a test-only env.

    ``None`` as the train split means the env's splits are unknown (a user env): its default
    tasks are used and the run says so.
    """
    from ..envs import available_splits

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
    from ..plugins import check_env_id, import_modules

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
    from ..tracking import check_report_to

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
        from ..policy import reuse_freed_memory

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
    agent_cfg = cfg.agent_config()  # what the agent declares: its group size, whether it needs a reference
    group = int(agent_cfg.batch_group_size())
    if not dist.active:
        if cfg.num_envs % group:
            raise ConfigError(f"--num-envs {cfg.num_envs} is not a whole number of groups of {group} "
                              f"(--group-size): use a multiple of {group}")
        return
    if cfg.fsdp and (agent_cfg.needs_reference_model() or cfg.lora):
        raise ConfigError(f"--fsdp does not support a reference model (the {cfg.agent} agent's KL term) or --lora yet: "
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
    """The training loop; the run's bookkeeping is :class:`~mpo_gym.training_run.TrainingRun`'s."""
    run = TrainingRun(cfg, out, dist, stop, record, eval_envs)
    policy = build_policy(cfg)
    agent = run.resume(policy, lambda: make_agent(cfg.agent, policy, **{"seed": cfg.seed, **cfg.agent_kwargs}),
                       warning, resumed)
    run.evaluate_before(policy)
    run.open_logs(progress, label)
    run.warmup(agent, envs, policy)
    stop.deferred = True  # a signal ends the current update, then the run saves and stops
    while run.budget_left():
        t0 = run.start_update()
        with run.guarded():
            # no region spans the update: the policy opens one per forward, and each optimizer
            # step drops the copies made from the old weights (LMPolicy.autocast, weights_changed)
            batch = agent.collect(envs, policy)
            metrics = agent.update(batch)
            check_finite(metrics)
        row = run.agree(time.perf_counter() - t0, metrics)
        run.evaluate_every(policy, row)
        run.log(row, batch, envs)
        run.checkpoint_if_due(policy, agent)
    stop.deferred = False
    run.finish(policy, agent)
    return TrainResult(out, run.step, run.train_seconds, run.evals.get("before"), run.evals.get("after"),
                       run.history, peak_rss_mb(), run.warmup_seconds)


def _config_json(cfg: TrainConfig, train_split: str | None = None, eval_split: str = "test") -> dict[str, Any]:
    from .. import __version__
    from ..policy import compute_dtype

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
