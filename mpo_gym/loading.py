"""Building a run's policy and reading a run back: the one path ``train``, ``eval``,
``export`` and ``compare`` share.

- :func:`make_policy` / :func:`build_policy`: the ``LMPolicy`` a ``TrainConfig`` declares
  (heads, MTP modules, LoRA adapters, numerics);
- :func:`load_run`: a run folder's config, policy and step, from its newest checkpoint that
  loads (``checkpoint/``, else ``checkpoint.prev/``, announced);
- :func:`load_policy`: a policy from any model spec (``default``, ``tiny``, a model folder, an
  exported or saved policy, a run folder or one of its checkpoint folders).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import runs
from .configs import TrainConfig
from .errors import ConfigError

__all__ = ["LoadedRun", "build_policy", "is_run_folder", "load_policy", "load_run", "make_envs", "make_policy",
           "tiny_policy"]


def make_policy(cfg: TrainConfig, spec: Any = None) -> Any:
    """Build the ``LMPolicy`` the agent declares (``agent_config().policy_spec()``: value head,
    MTP modules) on the right device, computing in the run's dtype (``cfg.dtype`` resolved:
    bf16 autocast over fp32 master weights, or fp32); ``spec`` overrides the declared policy
    (``PolicySpec()``: a bare LM)."""
    from .policy import LMPolicy, compute_dtype, tiny_model

    spec = cfg.agent_config().policy_spec() if spec is None else spec
    kwargs: dict[str, Any] = spec.policy_kwargs(cfg.value_head)
    import torch

    torch.manual_seed(cfg.seed)
    if cfg.model == "tiny":
        model, tokenizer = tiny_model(seed=cfg.seed)
        policy = LMPolicy(model, tokenizer, **kwargs)
    else:
        policy = LMPolicy.from_pretrained(cfg.model, dtype="float32", **kwargs)
    return policy.to(cfg.resolved_device).set_compute_dtype(compute_dtype(cfg.dtype, cfg.resolved_device))



def build_policy(cfg: TrainConfig) -> Any:
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
    """The one way to read a run back (``eval``, ``export``, :func:`load_policy`): its config,
    its policy and step.

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
    policy = build_policy(cfg)
    policy.set_compute_dtype(record.get("resolved_dtype") or compute_dtype(cfg.dtype, cfg.resolved_device))
    policy.load_state_dict(files["policy.pt"])
    return LoadedRun(cfg, policy, int(files["state.pt"]["step"]), folder, record)


def make_envs(cfg: TrainConfig, n: int, split: str | None = None) -> list[Any]:
    """``n`` copies of the run's env (its resolved kwargs; ``split`` overrides the env's)."""
    import gymnasium as gym

    kwargs = cfg.resolved_env_kwargs()
    if split is not None:
        kwargs["split"] = split
    return [gym.make(cfg.env, **kwargs) for _ in range(n)]


def tiny_policy(seed: int, dtype: str | None = None, device: str = "cpu") -> Any:
    """The small random test model with the char tokenizer (``--model tiny``, as in ``train``)."""
    from .policy import LMPolicy, compute_dtype, tiny_model

    model, tokenizer = tiny_model(seed=seed)
    return LMPolicy(model, tokenizer, compute_dtype=compute_dtype(dtype or "auto", device)).to(device)


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` is a training run folder (``config.json`` and a checkpoint folder)."""
    path = Path(path)
    return (path / "config.json").is_file() and any((path / sub).is_dir() for sub in (runs.LATEST, runs.PREVIOUS))


def load_policy(spec: str, dtype: str | None = None, *, seed: int = 0, device: str | None = None) -> Any:
    """An :class:`~mpo_gym.policy.LMPolicy` from a model spec, with fp32 master weights.

    ``spec`` is ``"default"`` (the embedded model), ``"tiny"`` (the random test model, seeded by
    ``seed``), a hub id or model folder, a folder written by ``LMPolicy.save_pretrained`` (has
    ``policy.json``), a training run (:func:`load_run`, with the fallback to
    ``checkpoint.prev/``) or one checkpoint folder of a run.

    ``dtype`` is what the products run in, with the meaning it has in ``train``: ``"auto"``
    (bf16 autocast where the device has native bf16, else fp32), ``"bfloat16"`` or
    ``"float32"``. ``None`` (or ``""``): a run's own numerics (its ``resolved_dtype``), the
    dtype a saved policy was saved with, else ``"auto"``.
    """
    from .policy import LMPolicy, compute_dtype

    dtype = dtype or None
    path = Path(spec)
    if spec == "tiny":
        policy = tiny_policy(seed, dtype or "auto", device or "cpu")
    elif (path / "policy.json").is_file():
        policy = LMPolicy.load_checkpoint(path, dtype="float32")
    elif is_run_folder(path):
        policy = load_run(path, device=device).policy
    elif (path / "policy.pt").is_file() and (path.parent / "config.json").is_file():
        policy = load_run(path.parent, checkpoint=path, device=device).policy
    else:
        policy = LMPolicy.from_pretrained(spec, dtype="float32")
        if dtype is None:
            dtype = "auto"
    if device is not None and spec != "tiny":
        policy.to(device)
    if dtype is not None:
        policy.set_compute_dtype(compute_dtype(dtype, policy.device))
    return policy
