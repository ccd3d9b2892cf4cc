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

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from . import distributed, runs
from .agents import AGENTS, make_agent
from .errors import ConfigError, MpoGymError, RunInterrupted, check_model_spec, did_you_mean

__all__ = ["LoadedRun", "TrainConfig", "TrainResult", "TrainingDiverged", "evaluate_held_out", "load_run",
           "make_policy", "train"]


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Attributes:
        env: registered env id.
        env_kwargs: extra env kwargs (plain data), e.g. ``{"digits": 2}``.
        agent: agent name (``ppo``, ``mpo``, ``grpo`` or a registered one).
        agent_kwargs: agent config overrides, e.g. ``{"lr": 2e-5}``.
        model: ``"default"`` (embedded SmolLM2-135M-Instruct), ``"tiny"`` (a small random
            Llama with the char tokenizer, for tests), a local model directory, or a hub id.
        dtype: ``"auto"`` (bf16 where the device has native bf16 matmuls, else fp32),
            ``"bfloat16"`` (autocast on fp32 master weights) or ``"float32"``.
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        num_envs: episodes per rollout batch.
        updates: number of updates (the budget when ``time_budget_s`` is 0).
        time_budget_s: wall-clock budget of the RL stage (collect + update), 0 = none. A warm-up
            stage (MPO's supervised MTP warm-up) runs before it and is timed separately, as
            in the paper's cost tables.
        eval_tasks: held-out (test split) tasks for greedy accuracy before and after; 0 skips.
        eval_every: also evaluate them every N updates (0: only before and after), logged as
            ``eval/accuracy``, ``eval/reward`` and ``eval/status/<status>`` in that update's
            metrics row. Evaluation time is not counted in ``time_budget_s``.
        eval_batch: held-out episodes generated together (speed and memory only: greedy
            results do not depend on it, up to floating-point reduction order).
        seed: seeds the agent (task choice, sampling) and torch.
        out_dir: run folder (the same config run again into it resumes it).
        checkpoint_every: also save a checkpoint every N updates (0: only by time and at the end).
        checkpoint_every_s: save a checkpoint when this many seconds passed since the last one
            (0: only by update count and at the end).
        value_head: critic form for agents that use one (``"head"`` or ``"separate"``).
        threads: torch CPU threads (0: torch's default).
        reuse_memory: keep freed memory in the process for reuse instead of returning large
            blocks to the kernel (glibc; see :func:`mpo_gym.policy.reuse_freed_memory`).
        data_dir: local data for suite envs (passed as their ``data_path``; empty: the
            embedded data or ``MPO_GYM_DATA_DIR``).
        allow_test_split: train on the test split of an env that has no train split, on
            purpose (the metrics then say so in their first line).
        lora: LoRA rank of adapters on the backbone (0: train all weights; needs peft).
        report_to: also log metrics to ``none``, ``tensorboard`` (event files in
            ``<out_dir>/tensorboard``), ``wandb`` or ``trackio`` (both offline).
        log_every: print a plain progress line every N updates when stdout is not a terminal.
        completions_every: append sampled prompts, responses, verdicts and rewards to
            ``completions.jsonl`` every N updates (0: never).
        imports: comma-separated modules to import first (they register user envs).
        fsdp: under torchrun, shard parameters, gradients and optimizer state over the ranks
            (FSDP2) instead of replicating them; for models whose training state does not fit
            one device. Same updates as replicated, up to reduction order.
    """

    env: str = "mpo_gym/Arithmetic-v0"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    agent: str = "mpo"
    agent_kwargs: dict[str, Any] = field(default_factory=dict)
    model: str = "default"
    dtype: str = "auto"
    device: str = "auto"
    num_envs: int = 8
    updates: int = 20
    time_budget_s: float = 0.0
    eval_tasks: int = 100
    eval_every: int = 0
    eval_batch: int = 64
    seed: int = 0
    out_dir: str = "runs/train"
    checkpoint_every: int = 0
    checkpoint_every_s: float = 300.0
    value_head: str = "head"
    threads: int = 0
    reuse_memory: bool = True
    data_dir: str = ""
    allow_test_split: bool = False
    lora: int = 0
    report_to: str = "none"
    log_every: int = 10
    completions_every: int = 10
    imports: str = ""
    fsdp: bool = False

    def __post_init__(self) -> None:
        if self.agent not in AGENTS:
            raise ConfigError(
                f"unknown agent {self.agent!r}{did_you_mean(self.agent, AGENTS)}; known: {', '.join(sorted(AGENTS))}"
            )
        from .policy.models import check_run_dtype

        try:
            check_run_dtype(self.dtype)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        for name in ("updates", "eval_tasks", "time_budget_s", "checkpoint_every", "checkpoint_every_s",
                     "threads", "lora", "log_every", "completions_every", "eval_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.num_envs < 1 or self.eval_batch < 1:
            raise ConfigError(f"num_envs and eval_batch must be >= 1; got {self.num_envs}, {self.eval_batch}")
        if self.eval_every and not self.eval_tasks:
            raise ConfigError("eval_every needs eval_tasks > 0")
        for name, allowed in (("device", ("auto", "cpu", "cuda")), ("value_head", ("head", "separate")),
                              ("report_to", ("none", "tensorboard", "wandb", "trackio"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        self.agent_config()  # validates agent_kwargs against the agent's config class

    def agent_config(self) -> Any:
        _, config_cls = AGENTS[self.agent]
        names = {f.name for f in dataclasses.fields(config_cls)}
        unknown = set(self.agent_kwargs) - names
        if unknown:
            raise ConfigError(f"{config_cls.__name__} has no field(s) {sorted(unknown)}; fields: {sorted(names)}")
        try:
            return config_cls(**{"seed": self.seed, **self.agent_kwargs})
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:  # the agent config's own checks
            raise ConfigError(str(exc)) from exc

    @property
    def resolved_device(self) -> str:
        """``device`` with ``"auto"`` resolved (CUDA when present)."""
        if self.device != "auto":
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_env_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.env_kwargs)
        kwargs.setdefault("tokenizer", "char" if self.model == "tiny" else self.model)
        if self.data_dir:
            kwargs.setdefault("data_path", self.data_dir)
        return kwargs


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


def make_policy(cfg: TrainConfig, spec: Any = None) -> Any:
    """Build the ``LMPolicy`` the agent declares (``agent_config().policy_spec()``: value head,
    MTP modules) on the right device, computing in the run's dtype (``cfg.dtype`` resolved:
    bf16 autocast over fp32 master weights, or fp32); ``spec`` overrides the declared policy
    (``PolicySpec()``: a bare LM)."""
    from .policy import LMPolicy, compute_dtype, tiny_model

    spec = cfg.agent_config().policy_spec() if spec is None else spec
    kwargs: dict[str, Any] = spec.policy_kwargs(cfg.value_head)
    torch.manual_seed(cfg.seed)
    if cfg.model == "tiny":
        model, tokenizer = tiny_model(seed=cfg.seed)
        policy = LMPolicy(model, tokenizer, **kwargs)
    else:
        policy = LMPolicy.from_pretrained(cfg.model, dtype="float32", **kwargs)
    return policy.to(cfg.resolved_device).set_compute_dtype(compute_dtype(cfg.dtype, cfg.resolved_device))


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


def _build_policy(cfg: TrainConfig) -> Any:
    """The run's policy as trained: heads, MTP modules, LoRA adapters, numerics."""
    policy = make_policy(cfg)
    if cfg.lora:
        policy.apply_lora(r=cfg.lora, lora_alpha=2 * cfg.lora, target_modules="all-linear")
        policy.to(cfg.resolved_device)
    return policy


@dataclass
class LoadedRun:
    """A training run read back from its folder (:func:`load_run`)."""

    config: TrainConfig
    policy: Any  # the LMPolicy as trained, in the numerics the run used
    step: int  # the update its checkpoint holds
    checkpoint: Path  # the checkpoint folder it came from (``checkpoint`` or ``checkpoint.prev``)
    record: dict[str, Any]  # config.json as stored (``resolved_dtype``, splits, ...)


def load_run(run_dir: str | Path, *, device: str | None = None, checkpoint: str | Path | None = None) -> LoadedRun:
    """The one way to read a run back (``eval``, ``export``): its config, its policy and step.

    The policy is rebuilt from the stored config (heads, MTP modules, LoRA adapters), computes
    in the run's ``resolved_dtype`` (the numerics it was trained and evaluated with, whatever
    this machine would pick for ``auto``) and holds the newest checkpoint that loads:
    ``checkpoint/``, else ``checkpoint.prev/`` with a warning. ``checkpoint``: read that folder
    of the run instead (no fallback). ``device`` overrides the stored device.
    """
    from .policy import compute_dtype

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir}: not a training run folder (no config.json)")
    try:
        record = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        saved = runs.checkpoint_manifest(run_dir)
        if saved is None or not isinstance(saved[0].get("config"), dict):
            raise ConfigError(f"{config_path} is not valid JSON ({exc}) and no checkpoint of the run holds its "
                              "config") from exc
        record = saved[0]["config"]
        print(f"note: {config_path} is empty or torn; read the config from {saved[1]}", file=sys.stderr)
    if record.get("imports"):
        from .plugins import import_modules

        import_modules(record["imports"])
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in record.items() if k in names})
    if device is not None:
        cfg = dataclasses.replace(cfg, device=device)
    if checkpoint is not None:
        folder = Path(checkpoint)
        try:
            files = runs.read_checkpoint(folder, ("policy.pt", "state.pt"))
        except (OSError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"{folder}: cannot load this checkpoint ({' '.join(str(exc).split())[:200]})") from exc
    else:
        loaded = runs.load_checkpoint(run_dir, ("policy.pt", "state.pt"))
        if loaded is None:
            raise ConfigError(f"{run_dir}: no checkpoint yet (train first, or resume it)")
        files, folder = loaded
    policy = _build_policy(cfg)
    policy.set_compute_dtype(record.get("resolved_dtype") or compute_dtype(cfg.dtype, cfg.resolved_device))
    policy.load_state_dict(files["policy.pt"])
    return LoadedRun(cfg, policy, int(files["state.pt"]["step"]), folder, record)


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
    policy = _build_policy(cfg)
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


# ---------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Options generated from ``TrainConfig`` and the chosen agent's config class.

    The agent is read from ``argv`` first (``--agent``, else ``--config``'s ``agent``, else the
    stored run of ``--out-dir`` with ``--resume``), so ``--help`` shows that agent's options and
    defaults. A config file's values become defaults; flags given override them.
    """
    from .options import add_dataclass_arguments, pre_scan

    argv = list(argv or [])
    base = _baseline(argv)
    agent = str(pre_scan(argv, "agent").get("agent") or base.get("agent") or TrainConfig.agent)
    if agent not in AGENTS:
        raise ConfigError(f"--agent: unknown agent {agent!r}{did_you_mean(agent, AGENTS)} (allowed: {', '.join(sorted(AGENTS))})")
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of options (keys: flag names, "
                        "dashes or underscores; a run's config.json works); flags given override it")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out-dir with its stored config (budget flags may change)")
    group = parser.add_argument_group("run options")
    dests = add_dataclass_arguments(group, TrainConfig, skip=("agent_kwargs",), flags={"imports": ("--import",)},
                                    choices={"agent": sorted(AGENTS)})
    config_cls = AGENTS[agent][1]
    agroup = parser.add_argument_group(f"{agent} agent options ({config_cls.__name__})")
    agent_dests = add_dataclass_arguments(agroup, config_cls, skip=("seed",), dest_prefix="agent__", defaults_none=True)
    mine = set(agent_dests)
    for _, other_cls in AGENTS.values():
        for f in dataclasses.fields(other_cls):
            if f.name not in mine and f.name not in dests:
                mine.add(f.name)
                owners = sorted(a for a, (_, c) in AGENTS.items() if f.name in {x.name for x in dataclasses.fields(c)})
                parser.add_argument("--" + f.name.replace("_", "-"), nargs="?", help=argparse.SUPPRESS,
                                    action=_WrongAgent, agent=agent, owners=owners)
    if base:
        from .options import file_defaults

        parser.set_defaults(**file_defaults(_flatten(base), {**dests, **agent_dests}, parser, base["__source__"],
                                            ignore=("__source__", "train_split", "eval_split", "mpo_gym_version")))


class _WrongAgent(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, agent: str = "", owners: list[str] | None = None, **kw: Any):
        super().__init__(option_strings, dest, **kw)
        self.agent, self.owners = agent, owners or []

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        raise ConfigError(f"{option_string} is not an option of the {self.agent!r} agent "
                          f"(it is one of {', '.join(self.owners)}'s; see mpo-gym train --agent {self.agent} --help)")


def _baseline(argv: list[str]) -> dict[str, Any]:
    """Options from ``--config FILE`` or, with ``--resume``, the stored run's config.json."""
    from .options import load_config_file, pre_scan

    found = pre_scan(argv, "config", "out-dir", "out_dir")
    data: dict[str, Any] = {}
    if "--resume" in argv:
        out_dir = found.get("out-dir") or found.get("out_dir") or TrainConfig.out_dir
        path = Path(out_dir) / "config.json"
        if not path.is_file():
            raise ConfigError(f"--resume: {out_dir} holds no run (no config.json); give its folder with --out-dir")
        data = {**load_config_file(path, flag="--resume"), "__source__": str(path)}
    if found.get("config"):
        data = {**data, **load_config_file(str(found["config"])), "__source__": str(found["config"])}
    elif "config" in found:
        raise ConfigError("--config needs a file name")
    return data


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    """A config mapping with nested ``agent_kwargs`` (config.json's shape) as flat options."""
    flat = {k: v for k, v in data.items() if k != "agent_kwargs"}
    nested = data.get("agent_kwargs") or {}
    if not isinstance(nested, dict):
        raise ConfigError(f"{data.get('__source__')}: agent_kwargs must be a mapping")
    return {**flat, **nested}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"agent_kwargs"}
    agent_kwargs = {k[len("agent__"):]: v for k, v in vars(args).items() if k.startswith("agent__") and v is not None}
    return TrainConfig(agent_kwargs=agent_kwargs, **{k: getattr(args, k) for k in fields})


def run(args: argparse.Namespace) -> int:
    from .errors import flagify

    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        names = [f.name for f in dataclasses.fields(TrainConfig)]
        names += [f.name for _, c in AGENTS.values() for f in dataclasses.fields(c)]
        raise ConfigError(flagify(str(exc), names)) from exc
    result = train(cfg)
    if distributed.current().is_main:
        print(summary_text(cfg, result))
    return 0


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
