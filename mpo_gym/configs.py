"""The configs of the apps: :class:`TrainConfig` (``mpo-gym train``), :class:`EvalConfig`
(``mpo-gym eval``) and :class:`CompareConfig` (``mpo-gym compare``, which composes a
``TrainConfig``).

They are plain frozen dataclasses that check themselves when built (a bad value raises
:class:`~mpo_gym.errors.ConfigError` before any model loads). The command line generates its
flags from their fields (:mod:`mpo_gym.options`): the help text is each field's line of the
``Attributes:`` section, and the allowed values of a field are :data:`mpo_gym.options.CHOICES`,
defined once and used both for validation here and for ``--help``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, did_you_mean
from .options import CHOICES
from .options import split_items as _items

__all__ = ["COMPARE_PER_RUN", "SUITE_IDS", "arm_agent", "arm_settings", "CompareConfig", "EvalConfig", "TrainConfig", "check_sampling"]

# the benchmark suites `mpo-gym eval --suite` names, and their envs
SUITE_IDS = {
    "gsm8k": "mpo_gym/GSM8K-v0",
    "math500": "mpo_gym/MATH500-v0",
    "humaneval": "mpo_gym/HumanEval-v0",
    "mbpp": "mpo_gym/MBPP-v0",
    "mbppplus": "mpo_gym/MBPPPlus-v0",
}


def _check_choice(cfg: Any, name: str, choices: tuple[str, ...] | None = None) -> None:
    allowed = CHOICES[name] if choices is None else choices
    value = getattr(cfg, name)
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(a or repr(a) for a in allowed)}; got {value!r}"
                          f"{did_you_mean(str(value), allowed)}")


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
        imports: comma-separated modules to import first (they register user envs and agents).
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
        from .agents import AGENTS

        if self.imports:  # user modules first: they may register the env and the agent checked here
            from .plugins import import_modules

            import_modules(self.imports, flag="imports")
        if self.agent not in AGENTS:  # an installed plug-in may register it
            from .plugins import load_entry_points

            load_entry_points()
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
        for name in ("device", "value_head", "report_to"):
            _check_choice(self, name)
        self.agent_config()  # validates agent_kwargs against the agent's config class

    def agent_config(self) -> Any:
        """The agent's config: its class's defaults, the run's seed, then ``agent_kwargs``."""
        from .agents import AGENTS

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
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_env_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.env_kwargs)
        kwargs.setdefault("tokenizer", "char" if self.model == "tiny" else self.model)
        if self.data_dir:
            kwargs.setdefault("data_path", self.data_dir)
        return kwargs


@dataclass(frozen=True)
class EvalConfig:
    """An evaluation: every model on every suite, pass@k through the training envs' verifiers.

    Attributes:
        suite: comma-separated suites (gsm8k, math500, humaneval, mbpp, mbppplus), ``all``, or env ids.
        model: models to evaluate, side by side: ``default``, ``tiny``, a model folder, a folder
            written by ``mpo-gym export`` or a training run folder (its newest checkpoint that
            loads); repeat the flag or comma-separate.
        n_samples: responses per task (the n of pass@k).
        k: comma-separated k values for pass@k (each <= n_samples).
        temperature: sampling temperature (0: greedy).
        top_p: nucleus sampling mass (1: off).
        limit: only the first N tasks of each suite (0: all).
        out_dir: output folder (empty: ``runs/eval-<time>``).
        data_dir: local data laid out like ``<dir>/gsm8k/test.jsonl`` (empty:
            ``MPO_GYM_DATA_DIR``, else the embedded data).
        split: the dataset split to evaluate.
        env_kwargs: extra env kwargs (plain data), e.g. ``{"style": "completion"}`` for HumanEval.
        batch_size: episodes generated together (speed and memory only).
        max_new_tokens: the response budget (0: the env's own).
        block_size: the env's K (0: the env's own).
        seed: seeds sampling (and the ``tiny`` model's weights).
        dtype: what the products run in, as in train (``auto``, ``bfloat16``: autocast over fp32
            weights, ``float32``); empty: a training run's own numerics, else ``auto``.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        threads: torch CPU threads (0: torch's default; 1 avoids thrashing on a busy machine).
        imports: comma-separated modules to import first (they register user envs and agents).
        progress: show a progress bar.
    """

    suite: str = "gsm8k"
    model: tuple[str, ...] = ("default",)
    n_samples: int = 1
    k: str = "1"
    temperature: float = 0.0
    top_p: float = 1.0
    limit: int = 0
    out_dir: str = ""
    data_dir: str = ""
    split: str = "test"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 8
    max_new_tokens: int = 0
    block_size: int = 0
    seed: int = 0
    dtype: str = ""
    device: str = "auto"
    threads: int = 0
    imports: str = ""
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", tuple(_items(self.model)) or ("default",))
        _check_choice(self, "dtype", ("", *CHOICES["dtype"]))
        _check_choice(self, "device")
        for name in ("limit", "max_new_tokens", "block_size", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1; got {self.batch_size}")
        if not isinstance(self.env_kwargs, dict):
            raise ConfigError(f"env_kwargs must be a mapping; got {self.env_kwargs!r}")
        try:
            check_sampling(self.n_samples, self.ks, self.temperature)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        for suite in self.suites:
            if suite not in SUITE_IDS and "/" not in suite:
                raise ConfigError(f"suite: unknown suite {suite!r}{did_you_mean(suite, SUITE_IDS)} "
                                  f"(allowed: {', '.join(SUITE_IDS)}, all, or an env id)")

    @property
    def suites(self) -> list[str]:
        return list(SUITE_IDS) if self.suite.strip() == "all" else _items(self.suite)

    @property
    def ks(self) -> list[int]:
        try:
            return [int(k) for k in _items(self.k)]
        except ValueError as exc:
            raise ConfigError(f"k: expected comma-separated integers, got {self.k!r}") from exc

    def resolved_env_kwargs(self) -> dict[str, Any]:
        """The kwargs every suite env is made with (before its tokenizer and data path)."""
        kwargs: dict[str, Any] = {"split": self.split, **self.env_kwargs}
        if self.max_new_tokens:
            kwargs["max_new_tokens"] = self.max_new_tokens
        if self.block_size:
            kwargs["block_size"] = self.block_size
        return kwargs

    def resolved_out_dir(self) -> str:
        return self.out_dir or f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}"


# Fields of a TrainConfig that a comparison sets per run, not from its options.
COMPARE_PER_RUN = ("agent", "agent_kwargs", "seed", "out_dir")


def _compare_train_default() -> TrainConfig:
    return TrainConfig(checkpoint_every=10)  # every 10 updates, so that a comparison resumes close by


@dataclass(frozen=True)
class CompareConfig:
    """A comparison: several agents trained alike (env, verifier, model, seeds, held-out tasks,
    budget), then one report.

    Attributes:
        agents: the arms, in report order (comma-separated on the command line): agent names,
            or an agent with settings of its own, ``mpo@mpo_k=3`` (``@`` between settings).
        seeds: one run per arm per seed (comma-separated on the command line).
        sweep: agent options to sweep, ``{"mpo_k": [1, 3, 5]}``: every arm whose agent has the
            option runs once per value (``mpo@mpo_k=1``, ...); several options give every
            combination. Arms whose agent lacks the option run once.
        agent_kwargs: per-agent (or per-arm) config overrides, ``{"mpo": {"mpo_k": 3}}``.
        common_kwargs: agent config overrides applied to every agent that has the field
            (an agent option given as a flag, such as ``--lr``, lands here).
        out_dir: the comparison folder (empty: ``runs/compare-<time>``); each run trains in
            ``<out_dir>/<arm>-s<seed>``.
        train: what every run shares: a :class:`TrainConfig` whose ``agent``, ``seed``,
            ``agent_kwargs`` and ``out_dir`` are set per run from the fields above.
    """

    agents: tuple[str, ...] = ("ppo", "mpo", "grpo")
    seeds: tuple[int, ...] = (0,)
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    agent_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    common_kwargs: dict[str, Any] = field(default_factory=dict)
    out_dir: str = ""
    train: TrainConfig = field(default_factory=_compare_train_default)

    def __post_init__(self) -> None:
        from .agents import AGENTS

        object.__setattr__(self, "agents", tuple(_items(self.agents)))
        try:
            object.__setattr__(self, "seeds", tuple(int(s) for s in _items([str(s) for s in self.seeds])))
        except ValueError as exc:
            raise ConfigError(f"seeds: expected comma-separated integers, got {self.seeds!r}") from exc
        if not self.out_dir:
            object.__setattr__(self, "out_dir", f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}")
        unknown = [a for a in self.agents if arm_agent(a) not in AGENTS]
        if unknown or not self.agents:
            hint = did_you_mean(arm_agent(unknown[0]), AGENTS) if unknown else ""
            raise ConfigError(f"unknown agents {unknown}{hint}; known: {', '.join(sorted(AGENTS))}")
        if not self.seeds:
            raise ConfigError("give at least one seed")
        if self.train.time_budget_s <= 0 and self.train.updates <= 0:
            raise ConfigError("set a budget: --time-budget-s > 0 or --updates > 0")
        if not isinstance(self.sweep, dict) or any(not isinstance(v, list) or not v for v in self.sweep.values()):
            raise ConfigError(f"sweep: expected option -> list of values, e.g. {{\"mpo_k\": [1, 3, 5]}}; got {self.sweep!r}")
        for name in self.sweep:
            if not any(name in _agent_fields(arm_agent(a)) for a in self.agents):
                raise ConfigError(f"sweep: no agent of {self.agents} has the option {name!r}")
        bases = {arm_agent(a) for a in self.agents}
        for name in self.agent_kwargs:
            if name not in bases and name not in self.arms:
                raise ConfigError(f"agent_kwargs names {name!r}, which is not in agents {self.agents}")
        for name in self.common_kwargs:
            if not any(name in _agent_fields(a) for a in bases):
                raise ConfigError(f"common_kwargs: no agent of {self.agents} has the option {name!r}")
        if len(set(self.arms)) != len(self.arms):
            raise ConfigError(f"the arms {list(self.arms)} name one arm twice")
        for arm in self.arms:  # TrainConfig validates the rest (agent kwargs, dtype, ...)
            self.run_config(arm, self.seeds[0])

    @property
    def arms(self) -> tuple[str, ...]:
        """The arms the comparison trains, in report order: ``agents`` with ``sweep`` expanded."""
        import itertools

        out: list[str] = []
        for arm in self.agents:
            keys = [k for k in self.sweep if k in _agent_fields(arm_agent(arm))]
            for values in itertools.product(*(self.sweep[k] for k in keys)):
                out.append("@".join([arm, *(f"{k}={_setting_text(v)}" for k, v in zip(keys, values))]))
        return tuple(out)

    def run_config(self, arm: str, seed: int) -> TrainConfig:
        """The ``TrainConfig`` of one run: the arm's agent, with the common options, the agent's
        and the arm's own overrides, and the arm's settings (``mpo@mpo_k=3``)."""
        agent = arm_agent(arm)
        fields = _agent_fields(agent)
        kwargs = {k: v for k, v in self.common_kwargs.items() if k in fields}
        kwargs.update(self.agent_kwargs.get(agent, {}))
        if arm != agent:
            kwargs.update(self.agent_kwargs.get(arm, {}))
            settings = arm_settings(arm)
            unknown = sorted(set(settings) - fields)
            if unknown:
                raise ConfigError(f"arm {arm!r}: the {agent} agent has no option {unknown[0]!r}")
            _check_setting_types(arm, agent, settings)
            kwargs.update(settings)
        return dataclasses.replace(self.train, agent=agent, agent_kwargs=kwargs, seed=seed,
                                   out_dir=str(Path(self.out_dir) / f"{arm}-s{seed}"))

    def options(self) -> dict[str, Any]:
        """The comparison as flat options (the keys of ``--config`` files and ``compare.json``)."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "train"}
        shared = {k: v for k, v in dataclasses.asdict(self.train).items() if k not in COMPARE_PER_RUN}
        return {**{k: list(v) if isinstance(v, tuple) else v for k, v in own.items()}, **shared}

    @classmethod
    def from_options(cls, options: Mapping[str, Any], source: str = "options") -> CompareConfig:
        """A comparison from flat options: its own fields, the shared ``TrainConfig`` fields,
        and agent options (they go to ``common_kwargs``). Keys take dashes or underscores;
        ``budget_s`` (the earlier name of ``time_budget_s``) is accepted."""
        from .agents import AGENTS

        own_names = {f.name for f in dataclasses.fields(cls)} - {"train"}
        train_names = {f.name for f in dataclasses.fields(TrainConfig)} - set(COMPARE_PER_RUN)
        agent_names = {f.name for _, c in AGENTS.values() for f in dataclasses.fields(c)} - {"seed"}
        own: dict[str, Any] = {}
        train: dict[str, Any] = {}
        common: dict[str, Any] = {}
        for key, value in options.items():
            name = {"budget_s": "time_budget_s", "out": "out_dir"}.get(str(key).replace("-", "_"),
                                                                      str(key).replace("-", "_"))
            if name in own_names:
                own[name] = value
            elif name in train_names:
                train[name] = value
            elif name in agent_names:
                common[name] = value
            else:
                known = sorted(n.replace("_", "-") for n in own_names | train_names | agent_names)
                raise ConfigError(f"{source}: unknown option {key!r}{did_you_mean(name.replace('_', '-'), known)}")
        if common:
            own["common_kwargs"] = {**(own.get("common_kwargs") or {}), **common}
        try:
            return cls(**own, train=dataclasses.replace(_compare_train_default(), **train))
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from exc


_SETTING = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=[A-Za-z0-9_.+-]+$")


def arm_agent(arm: str) -> str:
    """The agent of an arm: ``mpo`` for ``mpo@mpo_k=3``."""
    return arm.split("@", 1)[0]


def arm_settings(arm: str) -> dict[str, Any]:
    """The settings of an arm: ``{"mpo_k": 3}`` for ``mpo@mpo_k=3`` (values read as JSON, else text)."""
    out: dict[str, Any] = {}
    for part in arm.split("@")[1:]:
        if not _SETTING.match(part):
            raise ConfigError(f"arm {arm!r}: each setting after '@' looks like name=value (letters, digits, ._+-); "
                              f"got {part!r}")
        key, _, text = part.partition("=")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def _check_setting_types(arm: str, agent: str, settings: Mapping[str, Any]) -> None:
    """An arm's setting has the kind of its option's default (a number for a number, ...)."""
    from .agents import AGENTS

    defaults = {f.name: f.default for f in dataclasses.fields(AGENTS[agent][1])}
    for key, value in settings.items():
        default = defaults.get(key)
        kinds: tuple[type, ...] = ((bool,) if isinstance(default, bool) else (int, float) if isinstance(default, (int, float))
                                   else (str,) if isinstance(default, str) else (object,))
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ConfigError(f"arm {arm!r}: {key} takes {'true/false' if bool in kinds else 'a number' if int in kinds else 'a word'}; "
                              f"got {value!r}")


def _setting_text(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", text):
        raise ConfigError(f"sweep: a value must be a number, true/false or a plain word; got {value!r}")
    return text


def _agent_fields(agent: str) -> set[str]:
    from .agents import AGENTS

    return {f.name for f in dataclasses.fields(AGENTS[agent][1])}


def check_sampling(n_samples: int, ks: Sequence[int], temperature: float) -> tuple[int, ...]:
    ks = tuple(sorted({int(k) for k in ks}))
    if n_samples < 1 or not ks or ks[0] < 1 or ks[-1] > n_samples:
        raise ValueError(
            f"need n_samples >= 1 and 1 <= k <= n_samples for every k; got n={n_samples}, ks={ks}"
        )
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0; got {temperature}")
    if temperature == 0 and n_samples > 1:
        raise ValueError(
            "greedy decoding (temperature 0) gives identical samples; use n_samples=1 or temperature > 0"
        )
    return ks
