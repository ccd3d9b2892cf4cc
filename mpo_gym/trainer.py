"""``mpo-gym train``: one agent, one env, a budget; metrics, checkpoints, exact resume.

A run folder holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one line per
update with namespaced names: ``charts/reward``, ``losses/policy``, ``verdicts/correct``,
``mpo/clipfrac_united``, ...), ``eval.json`` (held-out greedy accuracy before and after) and
``checkpoint/`` (policy with value head and MTP modules, optimizer, RNG states, step). A run
resumed from its folder continues exactly where it stopped (bit-exact on CPU). A non-finite
loss stops the run with a clear message and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from .agents import AGENTS, make_agent
from .rollout import rollout

__all__ = ["TrainConfig", "TrainResult", "evaluate_held_out", "make_policy", "train"]


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
        eval_batch: episodes per evaluation rollout.
        seed: seeds the agent (task choice, sampling) and torch.
        out_dir: run folder.
        checkpoint_every: save a checkpoint every N updates (0: only at the end).
        value_head: critic form for agents that use one (``"head"`` or ``"separate"``).
        threads: torch CPU threads (0: torch's default).
        reuse_memory: keep freed memory in the process for reuse instead of returning large
            blocks to the kernel (glibc; see :func:`mpo_gym.policy.reuse_freed_memory`).
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
    eval_batch: int = 16
    seed: int = 0
    out_dir: str = "runs/train"
    checkpoint_every: int = 0
    value_head: str = "head"
    threads: int = 0
    reuse_memory: bool = True

    def __post_init__(self) -> None:
        if self.agent not in AGENTS:
            raise ValueError(f"unknown agent {self.agent!r}; known: {sorted(AGENTS)}")
        from .policy.models import check_run_dtype

        check_run_dtype(self.dtype)
        if self.num_envs < 1 or self.updates < 0 or self.eval_tasks < 0 or self.time_budget_s < 0:
            raise ValueError("need num_envs >= 1, updates >= 0, eval_tasks >= 0, time_budget_s >= 0")
        if self.eval_every < 0 or (self.eval_every and not self.eval_tasks):
            raise ValueError("eval_every must be >= 0 and needs eval_tasks > 0")
        self.agent_config()  # validates agent_kwargs against the agent's config class

    def agent_config(self) -> Any:
        _, config_cls = AGENTS[self.agent]
        names = {f.name for f in dataclasses.fields(config_cls)}
        unknown = set(self.agent_kwargs) - names
        if unknown:
            raise ValueError(f"{config_cls.__name__} has no field(s) {sorted(unknown)}; fields: {sorted(names)}")
        return config_cls(**{"seed": self.seed, **self.agent_kwargs})

    @property
    def resolved_device(self) -> str:
        """``device`` with ``"auto"`` resolved (CUDA when present)."""
        if self.device != "auto":
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_env_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.env_kwargs)
        kwargs.setdefault("tokenizer", "char" if self.model == "tiny" else self.model)
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


def make_policy(cfg: TrainConfig) -> Any:
    """Build the ``LMPolicy`` the agent needs (value head, MTP modules) on the right device."""
    from .policy import LMPolicy, tiny_model

    agent_cfg = cfg.agent_config()
    agent_cls, _ = AGENTS[cfg.agent]
    uses_critic = getattr(agent_cfg, "advantage", "gae") == "gae" and agent_cls.uses_critic
    kwargs: dict[str, Any] = {
        "value_head": cfg.value_head if uses_critic else False,
        "num_mtp_modules": getattr(agent_cfg, "num_mtp_modules", 0),
        "share_lm_head": getattr(agent_cfg, "share_lm_head", False),
    }
    torch.manual_seed(cfg.seed)
    if cfg.model == "tiny":
        model, tokenizer = tiny_model(seed=cfg.seed)
        policy = LMPolicy(model, tokenizer, **kwargs)
    else:
        policy = LMPolicy.from_pretrained(cfg.model, dtype="float32", **kwargs)
    return policy.to(cfg.resolved_device)


def autocast(cfg: TrainConfig, policy: Any) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast over fp32 master weights, or plain fp32 (``cfg.dtype``, "auto" resolved)."""
    from .policy import compute_dtype

    device = next(policy.parameters()).device.type
    if compute_dtype(cfg.dtype, device) != "bfloat16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


def make_envs(cfg: TrainConfig, n: int, split: str | None = None) -> list[Any]:
    kwargs = cfg.resolved_env_kwargs()
    if split is not None:
        kwargs["split"] = split
    return [gym.make(cfg.env, **kwargs) for _ in range(n)]


def evaluate_held_out(cfg: TrainConfig, policy: Any, envs: list[Any] | None = None) -> dict[str, Any]:
    """Greedy accuracy and mean reward on the first ``eval_tasks`` tasks of the test split."""
    envs = envs or make_envs(cfg, min(cfg.eval_batch, cfg.eval_tasks), split="test")
    n_tasks = min(cfg.eval_tasks, len(envs[0].unwrapped.tasks))
    episodes = []
    policy.eval()
    with autocast(cfg, policy), torch.no_grad():
        for start in range(0, n_tasks, len(envs)):
            indices = list(range(start, min(start + len(envs), n_tasks)))
            episodes += rollout(envs[: len(indices)], policy, task_indices=indices, greedy=True)
    statuses = [e.verdict.status if e.verdict is not None else "error" for e in episodes]
    result: dict[str, Any] = {
        "accuracy": float(np.mean([s == "correct" for s in statuses])),
        "reward": float(np.mean([e.reward for e in episodes])),
        "n": float(len(episodes)),
        "outcomes": [int(s == "correct") for s in statuses],
        **{f"status/{s}": float(np.mean([x == s for x in statuses])) for s in sorted(set(statuses))},
    }
    return result


def _checkpoint(path: Path, policy: Any, agent: Any, step: int, train_seconds: float) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(policy.state_dict(), tmp / "policy.pt")
    torch.save(
        {"agent": agent.state_dict(), "step": step, "train_seconds": train_seconds,
         "torch_rng": torch.get_rng_state()},
        tmp / "state.pt",
    )
    if path.exists():
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    tmp.rename(path)


def _restore(path: Path, policy: Any, agent: Any) -> tuple[int, float]:
    policy.load_state_dict(torch.load(path / "policy.pt", map_location="cpu"))
    state = torch.load(path / "state.pt", weights_only=False)
    agent.load_state_dict(state["agent"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), float(state["train_seconds"])


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(cfg: TrainConfig, *, progress: bool = True, resume: bool = True, label: str | None = None) -> TrainResult:
    """Run (or resume) one training run; see the module docstring for the run folder."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.reuse_memory:
        from .policy import reuse_freed_memory

        reuse_freed_memory()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(_config_json(cfg), indent=2))
    policy = make_policy(cfg)
    agent = make_agent(cfg.agent, policy, **{"seed": cfg.seed, **cfg.agent_kwargs})
    envs = make_envs(cfg, cfg.num_envs)
    ckpt, metrics_path, eval_path = out / "checkpoint", out / "metrics.jsonl", out / "eval.json"
    step, train_seconds = 0, 0.0
    evals: dict[str, Any] = json.loads(eval_path.read_text()) if eval_path.exists() and resume else {}
    if resume and ckpt.exists():
        step, train_seconds = _restore(ckpt, policy, agent)
        _truncate_metrics(metrics_path, step)
    elif metrics_path.exists():
        metrics_path.unlink()
    eval_envs = make_envs(cfg, min(cfg.eval_batch, cfg.eval_tasks), split="test") if cfg.eval_tasks else None
    if cfg.eval_tasks and "before" not in evals:
        evals["before"] = evaluate_held_out(cfg, policy, eval_envs)
        eval_path.write_text(json.dumps(evals, indent=2))

    history: list[dict[str, Any]] = []
    bar = _progress(cfg, step, label, progress)
    warmup_seconds = float(evals.get("warmup_seconds", 0.0))
    if step == 0 and hasattr(agent, "warmup"):
        t0 = time.perf_counter()
        with autocast(cfg, policy):
            warm = agent.warmup(envs, policy)
        warmup_seconds = time.perf_counter() - t0
        if warm:
            _append(metrics_path, {"step": 0, "time": 0.0, "warmup/seconds": warmup_seconds, "warmup/steps": len(warm), **warm[-1]})
    last_good = step
    while step < _max_updates(cfg) and not (cfg.time_budget_s and train_seconds >= cfg.time_budget_s):
        t0 = time.perf_counter()
        try:
            with autocast(cfg, policy):
                batch = agent.collect(envs, policy)
                metrics = agent.update(batch)
            _check_finite(metrics)
        except FloatingPointError as exc:
            raise SystemExit(
                f"stopped at update {step + 1}: {exc}. The last good checkpoint (update {last_good}) is "
                f"in {ckpt if ckpt.exists() else '(none saved yet)'}; lower the learning rate or use float32."
            ) from exc
        train_seconds += time.perf_counter() - t0
        step += 1
        row = {"step": step, "time": round(train_seconds, 3), **{k: _num(v) for k, v in metrics.items()}}
        if cfg.eval_every and step % cfg.eval_every == 0:
            held_out = evaluate_held_out(cfg, policy, eval_envs)
            row.update({f"eval/{k}": v for k, v in held_out.items() if k not in ("n", "outcomes")})
        _append(metrics_path, row)
        history.append(row)
        bar.update(step, train_seconds, row)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            _checkpoint(ckpt, policy, agent, step, train_seconds)
            last_good = step
    bar.close()
    _checkpoint(ckpt, policy, agent, step, train_seconds)
    if cfg.eval_tasks:
        evals["after"] = evaluate_held_out(cfg, policy, eval_envs)
        evals["train_seconds"], evals["updates"], evals["warmup_seconds"] = train_seconds, step, warmup_seconds
        eval_path.write_text(json.dumps(evals, indent=2))
    return TrainResult(
        out, step, train_seconds, evals.get("before"), evals.get("after"), history, _peak_rss_mb(), warmup_seconds
    )


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


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(r + "\n" for r in rows))


def _config_json(cfg: TrainConfig) -> dict[str, Any]:
    from .policy import compute_dtype

    data = dataclasses.asdict(cfg)
    data["resolved_agent_config"] = cfg.agent_config().to_dict()
    data["resolved_env_kwargs"] = cfg.resolved_env_kwargs()
    data["resolved_dtype"] = compute_dtype(cfg.dtype, cfg.resolved_device)
    return data


class _progress:
    """A tqdm bar with live reward (silent when disabled)."""

    def __init__(self, cfg: TrainConfig, start: int, label: str | None, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            total = cfg.updates if cfg.updates else None
            self.bar = tqdm(total=total, initial=start, desc=label or cfg.agent, unit="upd", dynamic_ncols=True)
        self.budget = cfg.time_budget_s

    def update(self, step: int, seconds: float, row: dict[str, Any]) -> None:
        if self.bar is None:
            return
        self.bar.n = step
        left = f"{max(self.budget - seconds, 0):.0f}s left" if self.budget else ""
        self.bar.set_postfix_str(f"reward {row.get('charts/reward', 0):.3f} {left}".strip())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments generated from ``TrainConfig`` and the agent config classes."""
    add_dataclass_arguments(parser, TrainConfig, skip=("env_kwargs", "agent_kwargs"))
    parser.add_argument("--env-kwargs", type=json.loads, default={}, help="JSON dict of env kwargs")
    seen: set[str] = set()
    group = parser.add_argument_group("agent options (any registered agent's config fields)")
    for _, config_cls in AGENTS.values():
        for f in dataclasses.fields(config_cls):
            if f.name in seen or f.name == "seed":
                continue
            seen.add(f.name)
            group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"agent__{f.name}", type=_parser_for(f), default=None, help=f"(agent) default {f.default!r}")
    parser.add_argument("--no-resume", action="store_true", help="start over even if out_dir has a checkpoint")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: Any, skip: tuple[str, ...] = ()) -> None:
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=_parser_for(f), default=default, help=f"default {default!r}")


def _parser_for(f: dataclasses.Field[Any]) -> Any:
    kind = type(f.default) if f.default is not dataclasses.MISSING else str
    if kind is bool:
        return lambda s: s.lower() in ("1", "true", "yes", "on")
    return kind if kind in (int, float, str) else str


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"env_kwargs", "agent_kwargs"}
    agent_cls = AGENTS[args.agent][1]
    allowed = {f.name for f in dataclasses.fields(agent_cls)}
    agent_kwargs = {}
    for key, value in vars(args).items():
        if key.startswith("agent__") and value is not None:
            name = key[len("agent__"):]
            if name not in allowed:
                raise SystemExit(f"--{name.replace('_', '-')} is not an option of the {args.agent!r} agent")
            agent_kwargs[name] = value
    return TrainConfig(
        env_kwargs=args.env_kwargs, agent_kwargs=agent_kwargs, **{k: getattr(args, k) for k in fields}
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    result = train(cfg, resume=not args.no_resume)
    summary = {"out_dir": str(result.out_dir), "updates": result.updates, "train_seconds": round(result.train_seconds, 1),
               "eval_before": result.eval_before, "eval_after": result.eval_after}
    print(json.dumps(summary, indent=2))
    return 0
