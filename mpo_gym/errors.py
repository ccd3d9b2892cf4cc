"""User errors: mistakes a user can fix, reported by ``mpo-gym`` in a few lines (exit code 2).

:class:`MpoGymError` is the one exception type for them. ``mpo-gym``'s ``main`` prints its
message without a traceback and exits with ``exit_code``; ``--debug`` (or ``MPO_GYM_DEBUG=1``)
shows the traceback too. Library code raises it for bad inputs (an unknown env id, a missing
model folder, a run folder holding another config); bugs stay ordinary exceptions.

This module imports nothing heavy (no torch, no gymnasium), so the checks in it run before a
model is loaded.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "ConfigError",
    "MpoGymError",
    "RunInterrupted",
    "check_choice",
    "check_model_spec",
    "did_you_mean",
    "flagify",
]

DEBUG_ENV = "MPO_GYM_DEBUG"


class MpoGymError(Exception):
    """A user error: ``mpo-gym`` prints the message (no traceback) and exits ``exit_code``."""

    exit_code = 2


class ConfigError(MpoGymError, ValueError):
    """A bad option value (also a ``ValueError``, for callers that catch those)."""


class RunInterrupted(MpoGymError):
    """A run stopped by SIGINT/SIGTERM after saving its work; exit code ``128 + signal``."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """``"; did you mean 'a' or 'b'?"`` for close matches of ``name`` (or ``""``)."""
    choices = list(choices)
    matches = difflib.get_close_matches(name, choices, n=n, cutoff=0.6)
    if not matches:  # env ids differ in their version suffix or case: compare lower-cased stems
        low = {c.lower(): c for c in choices}
        matches = [low[m] for m in difflib.get_close_matches(name.lower(), list(low), n=n, cutoff=0.5)]
    if not matches:
        return ""
    return "; did you mean " + " or ".join(repr(m) for m in matches) + "?"


def check_choice(value: str, choices: Iterable[str], flag: str, what: str = "value") -> str:
    """``value`` if it is one of ``choices``, else a :class:`ConfigError` with close matches."""
    choices = list(choices)
    if value in choices:
        return value
    raise ConfigError(
        f"{flag}: unknown {what} {value!r}{did_you_mean(value, choices)} (allowed: {', '.join(choices)})"
    )


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_spec(spec: str, flag: str = "--model") -> str:
    """Check a model spec without loading it: ``default``, ``tiny``, a folder or a hub id.

    A spec that names a local path (starts with ``/``, ``.`` or ``~``, has more than one ``/``,
    or whose first component exists here) must be an existing directory; only a plain
    ``org/name`` whose first part is not a local folder is treated as a hub id.
    """
    if spec in ("default", "tiny"):
        return spec
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        return spec
    if path.exists():
        raise ConfigError(f"{flag} {spec}: not a directory (give a model folder, 'default' or 'tiny')")
    looks_local = (
        spec.startswith(("/", ".", "~")) or spec.count("/") != 1 or not _HUB_ID.match(spec)
        or Path(spec.split("/")[0]).exists()
    )
    if looks_local:
        raise ConfigError(
            f"{flag} {spec}: no such directory (give a model folder, a run folder, 'default' or 'tiny')"
        )
    if not _in_hub_cache(spec):
        raise ConfigError(
            f"{flag} {spec}: no such directory, and no hub model of that name in the local cache "
            f"(to use a hub model, download it first: huggingface-cli download {spec})"
        )
    return spec


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the hub library rejects is not in its cache either
        return False
    return isinstance(found, str)


def flagify(message: str, names: Iterable[str]) -> str:
    """Rewrite config field names in ``message`` as the command-line flags that set them.

    ``"PPOConfig.lr must be > 0"`` becomes ``"--lr must be > 0"``.
    """
    for name in sorted(set(names), key=len, reverse=True):
        flag = "--" + name.replace("_", "-")
        message = re.sub(rf"(?<![\w-])(?:\w+Config\.)?{re.escape(name)}(?![\w-])", flag, message)
    return message
