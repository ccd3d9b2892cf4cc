"""What the subcommands' parsers share: ``--config FILE``, ``--resume [RUN_DIR]``, the ``--import``
flag and the exit on a bad option."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..options import load_config_file, pre_scan, split_items

CONFIG_HELP = ("YAML or JSON file of options (keys: the flag names, with dashes or underscores{extra}); "
               "flags given override it")
RESUME_HELP = ("continue the {what} in RUN_DIR (default: --out-dir) with its stored config; only the budget "
               "and logging options may change")


def add_config_flags(parser: argparse.ArgumentParser, what: str, extra: str = "", resume: bool = True) -> None:
    """``--config FILE`` and, for apps that write a resumable folder, ``--resume [RUN_DIR]``."""
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP.format(extra=extra))
    if resume:
        parser.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_DIR",
                            help=RESUME_HELP.format(what=what))


def resume_dir(argv: list[str], out_default: str = "") -> str | None:
    """The folder ``--resume [RUN_DIR]`` names in ``argv`` (RUN_DIR, else ``--out-dir``/``--out``,
    else ``out_default``), or None without ``--resume``."""
    found = pre_scan(argv, "resume", "out-dir", "out_dir", "out")
    if "resume" not in found:
        return None
    folder = found.get("resume") or found.get("out-dir") or found.get("out_dir") or found.get("out") or out_default
    if not folder:
        raise ConfigError("--resume needs the folder: --resume RUN_DIR, or --out-dir RUN_DIR --resume")
    return str(folder)


def config_file(argv: list[str]) -> tuple[dict[str, Any], str] | None:
    """The mapping of ``--config FILE`` in ``argv`` and the file's name, or None."""
    found = pre_scan(argv, "config")
    if "config" not in found:
        return None
    if not found["config"]:
        raise ConfigError("--config needs a file name")
    return load_config_file(str(found["config"])), str(found["config"])


def stored_config(folder: str, name: str, what: str) -> dict[str, Any]:
    """The stored ``name`` (``config.json``, ``compare.json``) of the folder ``--resume`` names."""
    path = Path(folder) / name
    if not path.is_file():
        raise ConfigError(f"--resume: {folder} holds no {what} (no {name}); give its folder")
    return load_config_file(path, flag="--resume")


def import_listed(value: Any) -> None:
    """Import the modules a config file or stored run lists under ``imports`` (before its
    ``agent`` or ``env`` is checked)."""
    from ..plugins import import_modules

    if value:
        import_modules(split_items(value), flag="imports")
