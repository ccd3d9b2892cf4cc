"""``mpo-gym compare``: flags generated from :class:`~mpo_gym.configs.CompareConfig` and the
``TrainConfig`` it composes (the same names as ``train``), plus every agent's options (applied
to each agent that has the option).

Where a value comes from, lowest first: the stored comparison (``--resume``), ``--preset``,
``--config FILE`` (which may itself name a ``preset``), then the flags given.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from typing import Any

from ..configs import COMPARE_PER_RUN, CompareConfig, TrainConfig
from ..errors import ConfigError, did_you_mean
from ..options import add_dataclass_arguments, split_items
from .common import add_config_flags, import_listed, stored_config

__all__ = ["add_arguments", "config_from_args", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mpo-gym compare``; only the flags given are set (over preset and file)."""
    from ..agents import AGENTS
    from ..apps.compare import PRESETS

    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="start from a preset")
    add_config_flags(parser, "comparison", extra="; also preset, agents, seeds; a comparison's compare.json works")
    parser.add_argument("--budget", help="shorthand: '300s' or '5m' (wall-clock) or '40u' (updates)")
    own = parser.add_argument_group("comparison options")
    add_dataclass_arguments(own, CompareConfig, skip=("train", "sweep"), flags={"out_dir": ("--out",)},
                            defaults_none=True)
    own.add_argument("--sweep", action="append", metavar="OPTION=V1,V2,...", type=_sweep_arg,
                     help="sweep an agent option: every arm whose agent has it runs once per value "
                          "(mpo@mpo_k=1, ...); repeat for a grid (also a mapping in --config)")
    shared = parser.add_argument_group("options every run shares (as in mpo-gym train)")
    train_dests = add_dataclass_arguments(shared, TrainConfig, skip=COMPARE_PER_RUN, defaults_none=True,
                                          primary={"imports": "--import"}, repeatable=("imports",),
                                          shown_defaults={"checkpoint_every": 10})
    agents = parser.add_argument_group("agent options (applied to every agent that has the option; "
                                       "per agent: --agent-kwargs)")
    seen = set(train_dests) | {f.name for f in dataclasses.fields(CompareConfig)}
    for _, (_, config_cls) in sorted(AGENTS.items()):
        add_dataclass_arguments(agents, config_cls, skip=seen | {"seed"}, dest_prefix="common__", defaults_none=True,
                                show_default=False)
        seen |= {f.name for f in dataclasses.fields(config_cls)}


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """Resume < preset < config file < flags, as flat options, then :meth:`CompareConfig.from_options`."""
    from ..apps.compare import PRESETS
    from ..options import load_config_file

    values: dict[str, Any] = {}
    if args.resume is not None:
        folder = args.resume or args.out_dir
        if not folder:
            raise ConfigError("--resume needs the folder: --resume RUN_DIR, or --out-dir RUN_DIR --resume")
        values = dict(stored_config(folder, "compare.json", "comparison").get("config", {}))
        values["out_dir"] = folder
    found = (load_config_file(args.config), args.config) if args.config else None
    data: dict[str, Any] = {}
    if found is not None:
        data, source = found
        data = data["config"] if isinstance(data.get("config"), dict) else data  # a compare.json
        data = {str(k).replace("-", "_"): v for k, v in data.items()}
        preset = data.pop("preset", None)
        if preset is not None and preset not in PRESETS:
            raise ConfigError(f"{source}: preset {preset!r} is not one of {', '.join(sorted(PRESETS))}"
                              f"{did_you_mean(str(preset), PRESETS)}")
        if preset is not None and args.preset is None:
            values.update(PRESETS[preset])
        import_listed(data.get("imports"))
    if args.preset:
        values.update(PRESETS[args.preset])
    values.update(data)
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("preset", "config", "resume", "budget",
                                                                               "func", "command")}
    common = {k[len("common__"):]: v for k, v in given.items() if k.startswith("common__")}
    given = {k: v for k, v in given.items() if not k.startswith("common__")}
    if "agents" in given and "agent_kwargs" not in given:  # a preset's per-agent settings, for the agents kept
        kept = set(split_items(given["agents"]))
        values["agent_kwargs"] = {k: v for k, v in (values.get("agent_kwargs") or {}).items() if k in kept}
    values.update(given)
    if common:
        values["common_kwargs"] = {**(values.get("common_kwargs") or {}), **common}
    if "sweep" in given:
        values["sweep"] = dict(given["sweep"])
    if args.budget:
        values.pop("budget_s", None)
        values.update(_parse_budget(args.budget))
    return CompareConfig.from_options(values, source=found[1] if found else "compare")


def _sweep_arg(text: str) -> tuple[str, list[Any]]:
    import json

    name, sep, values = text.partition("=")
    if not sep or not name.strip() or not values.strip():
        raise argparse.ArgumentTypeError(f"expected OPTION=V1,V2,... (e.g. mpo_k=1,3,5); got {text!r}")
    out: list[Any] = []
    for item in values.split(","):
        try:
            out.append(json.loads(item))
        except json.JSONDecodeError:
            out.append(item.strip())
    return name.strip().replace("-", "_"), out


def _parse_budget(text: str) -> dict[str, Any]:
    text = text.strip().lower()
    try:
        if text.endswith("s"):
            return {"time_budget_s": float(text[:-1]), "updates": 0}
        if text.endswith("m"):
            return {"time_budget_s": 60 * float(text[:-1]), "updates": 0}
        if text.endswith("u"):
            return {"updates": int(text[:-1]), "time_budget_s": 0.0}
    except ValueError:
        pass
    raise ConfigError(f"--budget must look like '300s', '5m' or '40u'; got {text!r}")


def run(args: argparse.Namespace) -> int:
    from ..apps.compare import compare

    cfg = config_from_args(args)
    command = "mpo-gym " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    out = compare(cfg, command=command)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        print(f"\nreport: {out / 'report.md'}\ncurves: {out / 'curves.png'}")
        print((out / "summary.txt").read_text())
    return 0
