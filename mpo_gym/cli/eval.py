"""``mpo-gym eval``: flags generated from :class:`~mpo_gym.configs.EvalConfig`."""

from __future__ import annotations

import argparse
import dataclasses

from ..configs import EvalConfig
from ..errors import ConfigError, flagify
from ..options import add_dataclass_arguments, file_defaults
from .common import add_config_flags, config_file, import_listed

__all__ = ["add_arguments", "config_from_args", "run"]


def add_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Options of ``mpo-gym eval`` (the same names as ``train`` and ``compare`` where shared)."""
    argv = list(argv or [])
    add_config_flags(parser, "evaluation", resume=False)
    group = parser.add_argument_group("evaluation options")
    dests = add_dataclass_arguments(group, EvalConfig, flags={"out_dir": ("--out",)}, primary={"imports": "--import"},
                                    repeatable=("imports",))
    group.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    found = config_file(argv)
    if found is not None:
        data, source = found
        import_listed(data.get("imports"))
        parser.set_defaults(**file_defaults(data, dests, parser, source))


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    names = [f.name for f in dataclasses.fields(EvalConfig)]
    try:
        return EvalConfig(**{name: getattr(args, name) for name in names})
    except ConfigError as exc:  # "n_samples must be ..." -> "--n-samples must be ..."
        head, sep, rest = str(exc).partition(" ")
        raise ConfigError(flagify(head, names) + sep + rest) from exc


def run(args: argparse.Namespace) -> int:
    """Every model on every suite, then the reports and a comparison table."""
    from .. import distributed
    from ..apps.evaluation import comparison_table, run_evaluation

    cfg = config_from_args(args)
    rows, out = run_evaluation(cfg)
    if distributed.current().is_main:
        print(f"\n{comparison_table(rows, k=min(cfg.ks))}\nwrote {out}/results.json, results.md, samples.jsonl")
    return 0
