"""``mpo-gym train``: flags generated from :class:`~mpo_gym.configs.TrainConfig` and the chosen
agent's config class."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..configs import TrainConfig
from ..errors import ConfigError, did_you_mean
from ..options import add_dataclass_arguments, file_defaults, pre_scan
from .common import add_config_flags, config_file, import_listed, resume_dir, stored_config

__all__ = ["add_arguments", "config_from_args", "run"]

# keys of a run's config.json that record what was resolved, not options to set
_RECORD_KEYS = ("__source__", "train_split", "eval_split", "mpo_gym_version")


def add_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Options generated from ``TrainConfig`` and the chosen agent's config class.

    The agent is read from ``argv`` first (``--agent``, else ``--config``'s ``agent``, else the
    stored run that ``--resume`` names), so ``--help`` shows that agent's options and defaults.
    A config file's values (or the stored run's) become defaults; flags given override them.
    """
    from ..agents import AGENTS

    argv = list(argv or [])
    base = _baseline(argv)
    agent = str(pre_scan(argv, "agent").get("agent") or base.get("agent") or TrainConfig.agent)
    if agent not in AGENTS:
        raise ConfigError(f"--agent: unknown agent {agent!r}{did_you_mean(agent, AGENTS)} "
                          f"(allowed: {', '.join(sorted(AGENTS))}; a user agent needs --import MODULE)")
    add_config_flags(parser, "run", extra="; a run's config.json works")
    group = parser.add_argument_group("run options")
    dests = add_dataclass_arguments(group, TrainConfig, skip=("agent_kwargs",), primary={"imports": "--import"},
                                    choices={"agent": sorted(AGENTS)}, repeatable=("imports",))
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
        parser.set_defaults(**file_defaults(_flatten(base), {**dests, **agent_dests}, parser, base["__source__"],
                                            ignore=_RECORD_KEYS))


class _WrongAgent(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, agent: str = "", owners: list[str] | None = None, **kw: Any):
        super().__init__(option_strings, dest, **kw)
        self.agent, self.owners = agent, owners or []

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        raise ConfigError(f"{option_string} is not an option of the {self.agent!r} agent "
                          f"(it is one of {', '.join(self.owners)}'s; see mpo-gym train --agent {self.agent} --help)")


def _baseline(argv: list[str]) -> dict[str, Any]:
    """Options from the stored run that ``--resume`` names, then ``--config FILE`` over them."""
    data: dict[str, Any] = {}
    folder = resume_dir(argv, TrainConfig.out_dir)
    if folder is not None:
        data = {**stored_config(folder, "config.json", "run"), "out_dir": folder, "__source__": f"{folder}/config.json"}
    found = config_file(argv)
    if found is not None:
        data = {**data, **found[0], "__source__": found[1]}
    import_listed(data.get("imports"))
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
    from .. import distributed
    from ..agents import AGENTS
    from ..apps.trainer import summary_text, train
    from ..errors import flagify

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
