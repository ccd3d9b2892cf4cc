"""How ``mpo-gym`` finds a user's envs and agents: ``--import MODULE`` and entry points.

A user's env is registered by importing the module that calls ``gymnasium.register``; a user's
agent, by importing the module that calls :func:`mpo_gym.agents.register_agent`. Two ways make
``mpo-gym check`` / ``train`` / ``eval`` / ``compare`` see them:

- ``--import my_module`` (repeatable, or comma-separated): the module is imported before any
  option is checked (it must be importable: installed, or on ``PYTHONPATH``, or in the current
  folder);
- an installed package declares an entry point in the group ``mpo_gym.envs`` or
  ``mpo_gym.agents``; its target is imported (and called, if it is a function) whenever
  ``mpo-gym`` starts, and when Python code asks for an agent name not registered yet::

      [project.entry-points."mpo_gym.envs"]
      my_envs = "my_package.envs"          # or "my_package.envs:register"

      [project.entry-points."mpo_gym.agents"]
      my_agent = "my_package.agents"       # calls register_agent on import
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Iterable

from .errors import MpoGymError, did_you_mean

__all__ = ["AGENT_ENTRY_POINT_GROUP", "ENTRY_POINT_GROUP", "check_env_id", "import_modules", "load_entry_points"]

ENTRY_POINT_GROUP = "mpo_gym.envs"
AGENT_ENTRY_POINT_GROUP = "mpo_gym.agents"
_loaded_entry_points = False


def split_modules(modules: str | Iterable[str]) -> list[str]:
    items = [modules] if isinstance(modules, str) else list(modules)
    return [m.strip() for item in items for m in item.split(",") if m.strip()]


def import_modules(modules: str | Iterable[str], flag: str = "--import") -> None:
    """Import each module (they register envs); a failure is a user error naming the module."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: modules in the current folder are found
    for name in split_modules(modules):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                raise MpoGymError(
                    f"{flag} {name}: no module named {exc.name!r} (is it installed, on PYTHONPATH, "
                    "or in the current folder?)"
                ) from exc
            raise MpoGymError(f"{flag} {name}: importing it failed: {exc}") from exc
        except Exception as exc:
            raise MpoGymError(f"{flag} {name}: importing it failed: {type(exc).__name__}: {exc}") from exc


def load_entry_points() -> None:
    """Import (and call, if callable) every ``mpo_gym.envs`` and ``mpo_gym.agents`` entry point,
    once per process."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for group in (ENTRY_POINT_GROUP, AGENT_ENTRY_POINT_GROUP):
        for ep in importlib.metadata.entry_points(group=group):
            try:
                target = ep.load()
                if callable(target):
                    target()
            except Exception as exc:  # a broken plug-in must not stop mpo-gym: say so and go on
                print(f"warning: entry point {ep.name} = {ep.value} ({group}) failed: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr)


def check_env_id(env_id: str, flag: str = "--env") -> str:
    """``env_id`` if it is registered, else a user error with close matches."""
    import gymnasium as gym

    import mpo_gym.envs  # noqa: F401  (registers the built-in ids)

    load_entry_points()
    if env_id in gym.registry:
        return env_id
    ours = sorted(k for k in gym.registry if k.startswith("mpo_gym/")) or sorted(gym.registry)
    hint = did_you_mean(env_id, ours) or did_you_mean(env_id, sorted(gym.registry))
    raise MpoGymError(
        f"{flag}: unknown env id {env_id!r}{hint} (`mpo-gym list` shows the registered ids; "
        "a user env needs --import MODULE)"
    )
