"""``mpo-gym compare``: several agents, identical env/verifier/seeds/prompts/budget, one report.

Each (agent, seed) run trains in its own process (so its peak memory is its own) with the same
wall-clock or update budget, and is evaluated greedily on the same held-out tasks before and
after. The run folder gets ``report.md``, ``curves.png``, ``metrics.jsonl`` (every update of
every run, tagged with agent and seed), ``compare.json`` (the resolved settings and the command),
and one sub-folder per run (config, metrics, eval, checkpoint). Re-running the same command
(or ``--resume``, or ``--resume RUN_DIR``) finishes an interrupted comparison: finished runs are
kept, unfinished ones continue from their last checkpoint. The budget (``--updates``,
``--time-budget-s``) may change on resume; any other difference is refused before anything is
written. SIGINT/SIGTERM stop the current run cleanly (it saves a checkpoint) and print the
resume command.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..configs import CompareConfig

__all__ = ["PRESETS", "CompareConfig", "compare"]

BEFORE_TASKS = "eval_before_tasks.jsonl"  # per-task rows of the shared "before" evaluation


# Sized by measurement on 2 CPU cores; see the README for what the numbers mean.
_CPU_COMMON = {"lr": 2e-6, "temperature": 0.7, "minibatch_size": 8, "micro_batch_size": 8}
_CPU_AGENTS = {"grpo": {"group_size": 4}, "mpo": {"mpo_k": 5, "warmup_steps": 10}}

PRESETS: dict[str, dict[str, Any]] = {
    # The README's first command: ~15 min on 2 CPU cores (see the README for measured numbers).
    "quickstart": {
        "agents": ("ppo", "mpo", "grpo"),
        "env": "mpo_gym/Arithmetic-v0",
        "env_kwargs": {"digits": 2, "terms": 2, "max_new_tokens": 40},
        "model": "default",
        "seeds": (0,),
        "time_budget_s": 180.0,
        "updates": 0,
        "num_envs": 16,
        "eval_tasks": 200,
        "eval_batch": 200,  # one batch: the shared prompt head is encoded once for all 200
        "common_kwargs": _CPU_COMMON,
        "agent_kwargs": _CPU_AGENTS,
    },
    "tiny": {
        "agents": ("ppo", "mpo", "grpo"),
        "env": "mpo_gym/Toy-v0",
        "model": "tiny",
        "seeds": (0,),
        "updates": 2,
        "num_envs": 8,
        "eval_tasks": 4,
        "dtype": "float32",
        "threads": 1,
        "agent_kwargs": {"grpo": {"group_size": 4}, "mpo": {"mpo_k": 3, "warmup_steps": 2}},
        "common_kwargs": {"lr": 1e-3, "minibatch_size": 8, "micro_batch_size": 8},
    },
}


# Equal wall-clock with TRL's GRPOTrainer reference run (12 min per run), three seeds: ~2 h.
PRESETS["trl-parity"] = {**PRESETS["quickstart"], "seeds": (0, 1, 2), "time_budget_s": 720.0}

# Where ratios matter: 2 epochs of 4 mini-batches per rollout batch (8 optimizer steps, 7 of them
# off-policy), so token (PPO, GRPO), window (MPO) and sequence (GSPO, GMPO) ratios move apart and
# the report's diagnostics table (the MPO paper's Fig. 4 numbers) tells them apart. Each agent
# keeps its own paper's clip range (GSPO 3e-4/4e-4, GMPO e^±0.4 per token).
PRESETS["offpolicy"] = {
    **PRESETS["quickstart"],
    "agents": ("ppo", "mpo", "grpo", "gspo", "gmpo"),
    "common_kwargs": {**_CPU_COMMON, "minibatch_size": 4, "micro_batch_size": 4, "ppo_epochs": 2},
    "agent_kwargs": {**_CPU_AGENTS, "gspo": {"group_size": 4}, "gmpo": {"group_size": 4}},
}


def _run_one(cfg_json: str, result_path: str) -> None:
    """Child process: train one run and write its summary (with peak RSS) as JSON.

    A user error or a signal ends the child with the error's exit code and a one-line message
    (no traceback); the parent turns that into its own message.
    """
    from ..configs import TrainConfig
    from ..errors import MpoGymError
    from .trainer import train

    data = json.loads(cfg_json)
    label = data.pop("_label")
    os.environ.clear()
    os.environ.update(data.pop("_environ"))
    os.chdir(data.pop("_cwd"))
    cfg = TrainConfig(**data)
    try:
        result = train(cfg, label=label)
    except MpoGymError as exc:
        print(f"mpo-gym: {label}: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    Path(result_path).write_text(json.dumps(_summary(result)))


def _summary(result: Any) -> dict[str, Any]:
    """What a comparison keeps of one finished run (``summary.json``)."""
    return {
        "updates": result.updates, "train_seconds": result.train_seconds, "warmup_seconds": result.warmup_seconds,
        "eval_before": result.eval_before, "eval_after": result.eval_after, "peak_rss_mb": result.peak_rss_mb,
    }


def _shared_before(cfg: CompareConfig, out: Path) -> dict[str, Any]:
    """Held-out accuracy of the untrained model, computed once (every agent starts from it)."""
    import gc

    import torch

    from ..agents import PolicySpec
    from ..loading import make_policy
    from .trainer import evaluate_held_out

    path = out / "eval_before.json"
    if path.exists() and (out / BEFORE_TASKS).exists():
        return json.loads(path.read_text())
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    train_cfg = cfg.run_config(cfg.arms[0], cfg.seeds[0])
    policy = make_policy(train_cfg, spec=PolicySpec())  # the untrained LM: no heads needed
    from .. import distributed, runs

    dist = distributed.current()
    before = evaluate_held_out(train_cfg, policy, when="before", rows_path=out / BEFORE_TASKS, dist=dist)
    del policy
    gc.collect()
    if dist.is_main:
        runs.write_json(path, before)
    dist.barrier()
    return before


def _train_dict(train_cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(train_cfg)


def _differences(cfg: CompareConfig) -> Any:
    from .. import runs
    from ..errors import ConfigError

    new = cfg.options()

    def differences(stored: dict[str, Any]) -> list[str]:
        old = stored.get("config", {})
        try:  # the stored options in today's names and with today's defaults
            old = CompareConfig.from_options(old, source="compare.json").options()
        except ConfigError:
            pass
        return runs.config_differences(old, new, sorted(set(new) | set(old)))

    return differences


def compare(cfg: CompareConfig, command: str = "") -> Path:
    """Run every (agent, seed) and write the report; returns the run folder.

    A folder holding a comparison with another config is refused (nothing written); the same
    config resumes it.
    """
    from .. import distributed, runs
    from .report import write_report
    from .trainer import check_shards, preflight

    out = Path(cfg.out_dir)
    for agent in cfg.arms:  # env id, model, splits, trackers: checked before anything is written
        preflight(cfg.run_config(agent, cfg.seeds[0]))
    dist = distributed.init(cfg.run_config(cfg.arms[0], cfg.seeds[0]).resolved_device)
    for agent in cfg.arms:  # and each run's batch against its groups and the ranks, before any model loads
        check_shards(cfg.run_config(agent, cfg.seeds[0]), dist)
    main = dist.is_main
    stored = runs.check_run_folder(out, _differences(cfg), what="comparison", config_name="compare.json")
    dist.barrier()  # every rank has read the folder before rank 0 writes to it
    if stored is not None:
        done = sum((Path(cfg.run_config(a, s).out_dir) / "summary.json").exists() for s in cfg.seeds for a in cfg.arms)
        if main:
            print(f"resuming comparison in {out}: {done} of {len(cfg.arms) * len(cfg.seeds)} runs finished", flush=True)
        command = stored.get("command") or command
    if main:
        out.mkdir(parents=True, exist_ok=True)
        settings = {"config": cfg.options(), "command": command}
        runs.write_json(out / "compare.json", settings)
    dist.barrier()
    ctx = _child_context() if not dist.active else None
    before = _shared_before(cfg, out) if cfg.train.eval_tasks else None
    if main:
        print(f"untrained model, held-out greedy accuracy: {before['accuracy']:.3f} on {int(before['n'])} tasks" if before else "")
    summaries: dict[tuple[str, int], dict[str, Any]] = {}
    for seed in cfg.seeds:
        for agent in cfg.arms:
            summaries[(agent, seed)] = _run(cfg, agent, seed, before, ctx)
    if main:
        write_report(cfg, out, summaries, before, command)
        if cfg.train.allow_test_split:
            _label_test_split(cfg, out)
    dist.barrier()
    return out


# what every run's process imports anyway (about 10 s on 2 cores): the fork server imports it once
_PRELOAD = ["torch", "transformers", "transformers.models.llama.modeling_llama", "mpo_gym.apps.trainer",
            "mpo_gym.agents", "mpo_gym.policy", "mpo_gym.envs"]


def _child_context() -> Any:
    """Where each run's process comes from: a fork server that has imported torch,
    ``transformers`` and the trainer (:data:`_PRELOAD`) once, started here so that its imports
    overlap the shared "before" evaluation; ``spawn`` where there is no fork server. A run's
    process gets the environment and working directory of the moment it starts (:func:`_run_one`
    sets them), not the fork server's."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    from multiprocessing import forkserver

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    forkserver.ensure_running()
    return ctx


def _label_test_split(cfg: CompareConfig, out: Path) -> None:
    """Put the trained-on-the-test-split warning in the first line of ``report.md``."""
    from .trainer import test_split_warning

    record = json.loads((Path(cfg.run_config(cfg.arms[0], cfg.seeds[0]).out_dir) / "config.json").read_text())
    warning = test_split_warning(cfg.run_config(cfg.arms[0], cfg.seeds[0]), record.get("train_split"),
                                 record.get("eval_split", "test"))
    if warning:
        report = out / "report.md"
        report.write_text(f"**{warning}**\n\n" + report.read_text())


def _wait_for_child(proc: Any) -> int | None:
    """Start and join ``proc``; SIGINT/SIGTERM reach it (and are recorded here, not raised)."""
    received: list[int] = []

    def handle(signum: int, frame: Any) -> None:
        if signum == signal.SIGTERM or received:  # a SIGTERM to the parent alone, or a second signal
            proc.terminate() if not received else proc.kill()
        received.append(signum)

    main_thread = threading.current_thread() is threading.main_thread()
    old = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        proc.start()
        proc.join()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return received[0] if received else None


def _same_budget(train_cfg: Any, run_dir: Path) -> bool:
    """Whether the finished run in ``run_dir`` ran to the budget ``train_cfg`` asks for."""
    try:
        stored = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return True  # nothing to compare with: keep what finished
    return (stored.get("updates"), stored.get("time_budget_s")) == (train_cfg.updates, train_cfg.time_budget_s)


def _run(cfg: CompareConfig, agent: str, seed: int, before: dict[str, Any] | None, ctx: Any) -> dict[str, Any]:
    from .. import distributed, runs
    from ..errors import MpoGymError, RunInterrupted

    train_cfg = cfg.run_config(agent, seed)
    run_dir = Path(train_cfg.out_dir)
    result_path = run_dir / "summary.json"
    dist = distributed.current()
    main = dist.is_main
    if result_path.exists():
        if _same_budget(train_cfg, run_dir):
            if main:
                print(f"{agent} seed {seed}: finished earlier, kept")
            return json.loads(result_path.read_text())
        dist.barrier()  # every rank saw the old summary before rank 0 removes it
        if main:
            print(f"{agent} seed {seed}: finished with another budget; continuing to the new one", flush=True)
            result_path.unlink()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        eval_path = run_dir / "eval.json"
        if before is not None and not eval_path.exists():
            runs.write_json(eval_path, {"before": before})
            shutil.copyfile(Path(cfg.out_dir) / BEFORE_TASKS, run_dir / "eval_tasks.jsonl")  # shared rows
    dist.barrier()
    if dist.active:  # under torchrun every rank is already a process of its own: train here, together
        return _run_here(train_cfg, agent, seed, result_path)
    data = {**_train_dict(train_cfg), "_label": f"{agent} s{seed}", "_environ": dict(os.environ),
            "_cwd": os.getcwd()}
    proc = ctx.Process(target=_run_one, args=(json.dumps(data), str(result_path)))
    t0 = time.perf_counter()
    received = _wait_for_child(proc)
    resume = runs.resume_command("compare", cfg.out_dir)
    if received is not None or proc.exitcode in (130, 143, -signal.SIGINT, -signal.SIGTERM):
        signum = received or (signal.SIGINT if proc.exitcode in (130, -signal.SIGINT) else signal.SIGTERM)
        raise RunInterrupted(
            f"{runs.signal_name(signum)}: comparison stopped during {agent} seed {seed} (its last checkpoint is "
            f"kept in {run_dir}). Resume with: {resume}", signum,
        )
    if proc.exitcode != 0 or not result_path.exists():
        raise MpoGymError(
            f"run {agent} seed {seed} failed (exit code {proc.exitcode}); its folder {run_dir} keeps the last "
            f"checkpoint; fix the cause and resume with: {resume}"
        )
    summary = json.loads(result_path.read_text())
    summary["wall_seconds"] = time.perf_counter() - t0
    result_path.write_text(json.dumps(summary))
    after = summary.get("eval_after") or {}
    print(f"{agent} seed {seed}: {summary['updates']} updates in {summary['train_seconds']:.0f}s, "
          f"held-out accuracy {after.get('accuracy', float('nan')):.3f}")
    return summary


def _run_here(train_cfg: Any, agent: str, seed: int, result_path: Path) -> dict[str, Any]:
    """One run of a comparison under torchrun: every rank trains it in its own process, rank 0
    writes the summary (peak RSS is then the process's peak over the runs so far)."""
    from .. import distributed
    from .trainer import train

    t0 = time.perf_counter()
    result = train(train_cfg, label=f"{agent} s{seed}")
    summary = {**_summary(result), "wall_seconds": time.perf_counter() - t0}
    dist = distributed.current()
    if dist.is_main:
        result_path.write_text(json.dumps(summary))
        after = summary.get("eval_after") or {}
        print(f"{agent} seed {seed}: {summary['updates']} updates in {summary['train_seconds']:.0f}s, "
              f"held-out accuracy {after.get('accuracy', float('nan')):.3f}", flush=True)
    dist.barrier()
    return summary
