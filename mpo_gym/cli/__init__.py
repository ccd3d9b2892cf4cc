"""The ``mpo-gym`` command line: list, check, train, eval, compare, export, env, audit-math.

``train``, ``eval`` and ``compare`` generate their flags from their configs
(:mod:`mpo_gym.configs`; the wiring is in ``mpo_gym.cli.train``, ``.eval`` and ``.compare``),
so shared options have the same names and help. Every ``--import MODULE`` on the command line
(repeatable, or comma-separated) and the installed ``mpo_gym.envs`` / ``mpo_gym.agents`` entry
points are imported before any option is checked, so user envs and agents are known to
``--env`` and ``--agent``.

User errors (:class:`~mpo_gym.errors.MpoGymError`) print a short message and exit with code 2
(a run stopped by SIGINT/SIGTERM: 130/143) without a traceback; ``--debug`` anywhere on the
command line, or ``MPO_GYM_DEBUG=1``, shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from ..errors import DEBUG_ENV, MpoGymError


def _cmd_list(args: argparse.Namespace) -> int:
    from ..envs import list_envs
    from ..plugins import import_modules, load_entry_points

    import_modules(args.imports)
    load_entry_points()
    items = _agent_lines() if args.agents else list_envs()
    width = max(len(k) for k in items)
    for name, description in items.items():
        print(f"{name:<{width}}  {description}")
    if not args.agents:
        print("(agents: mpo-gym list --agents)")
    return 0


def _agent_lines() -> dict[str, str]:
    """``name -> one line`` for every registered agent: the first line of its module's docstring
    (the built-in agents), else of its class's."""
    from ..agents import AGENTS

    out = {}
    for name, (agent_cls, _) in sorted(AGENTS.items()):
        module = sys.modules.get(agent_cls.__module__)
        ours = agent_cls.__module__.startswith("mpo_gym.agents.") and module is not None
        doc = ((module.__doc__ if ours and module is not None else None) or agent_cls.__doc__ or "").strip()
        out[name] = doc.splitlines()[0].rstrip(".") if doc else agent_cls.__name__
    return out


def _cmd_check(args: argparse.Namespace) -> int:
    import gymnasium as gym
    import numpy as np

    from ..plugins import check_env_id, import_modules
    from ..testing import check_reasoning_env

    import_modules(args.imports)
    check_env_id(args.env_id, flag="env id")
    kwargs = {} if args.tokenizer is None else {"tokenizer": args.tokenizer}
    try:
        env = gym.make(args.env_id, **kwargs)
    except (TypeError, ValueError, FileNotFoundError, OSError) as exc:
        raise MpoGymError(f"could not make {args.env_id}: {type(exc).__name__}: {exc}") from exc
    check_reasoning_env(env, seed=args.seed)
    print(f"{args.env_id}: check_env and check_reasoning_env passed")
    obs, info = env.reset(seed=args.seed)
    base: Any = env.unwrapped
    print(f"task {info['task_id']}: {base.task.prompt!r}")
    env.action_space.seed(args.seed)
    steps, done = 0, False
    while not done:
        block = env.action_space.sample()
        obs, reward, terminated, truncated, info = env.step(np.asarray(block))
        steps, done = steps + 1, terminated or truncated
    verdict = info["verdict"]
    print(f"random rollout: {steps} blocks, {int(obs['response_length'])} tokens, reward {reward}")
    print(f"verdict: status={verdict.status} extracted={verdict.extracted!r} detail={verdict.detail!r}")
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    from ..envinfo import environment_report

    print(environment_report())
    return 0


_OPTIONAL = {
    "train": ("mpo_gym.cli.train", "train one agent on one env"),
    "eval": ("mpo_gym.cli.eval", "evaluate models on GSM8K, MATH-500, HumanEval, MBPP"),
    "compare": ("mpo_gym.cli.compare", "train several agents side by side and report"),
    "export": ("mpo_gym.cli.export", "write a run's policy as a Hugging Face model folder"),
    "audit-math": ("mpo_gym.verifiers.math_audit", "compare math verdicts with math-verify"),
}


def _add_imports(p: argparse.ArgumentParser) -> None:
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it registers user envs and agents); repeatable")


def import_plugins(argv: Sequence[str]) -> None:
    """Import every ``--import`` module of ``argv`` and the installed entry points (env and
    agent plug-ins), before the parser checks ``--env`` or ``--agent``."""
    from .. import plugins
    from ..options import pre_scan_all

    plugins.load_entry_points()
    plugins.import_modules(pre_scan_all(list(argv), "import"))


def build_parser(command: str | None = None, argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (so ``list`` never imports torch)."""
    from .. import __version__

    parser = argparse.ArgumentParser(prog="mpo-gym", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"mpo-gym {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the registered mpo_gym/ env ids (--agents: the agents)")
    p.add_argument("--agents", action="store_true", help="list the registered agents instead (imports torch)")
    _add_imports(p)
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("check", help="run the env checkers and a random rollout")
    p.add_argument("env_id")
    p.add_argument("--tokenizer", default=None, help="override the env's tokenizer (e.g. 'char')")
    p.add_argument("--seed", type=int, default=0)
    _add_imports(p)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("env", help="versions, device and sandbox layers (for bug reports)")
    p.set_defaults(func=_cmd_env)

    for name, (module, help_text) in _OPTIONAL.items():
        if name == command:
            _add_optional(sub, name, module, help_text, list(argv))
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _add_optional(sub: Any, name: str, module: str, help_text: str, argv: list[str]) -> None:
    """Add a subcommand whose module defines ``add_arguments(parser)`` and ``run(args)``."""
    import importlib
    import inspect

    p = sub.add_parser(name, help=help_text, description=help_text)
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        message = f"`mpo-gym {name}` is unavailable: {exc}"
        p.set_defaults(func=lambda args: _fail(message))
        return
    if hasattr(mod, "add_arguments"):
        if "argv" in inspect.signature(mod.add_arguments).parameters:
            mod.add_arguments(p, argv=argv[argv.index(name) + 1:] if name in argv else argv)
        else:
            mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    else:  # a module with its own ``main(argv)``
        p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the subcommand")
        p.set_defaults(func=lambda args: mod.main(args.args))


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        if command in ("list", "check", "train", "eval", "compare", "export"):
            import_plugins(argv)
        args = build_parser(command, argv).parse_args(argv)
        return int(args.func(args) or 0)
    except MpoGymError as exc:
        if debug:
            traceback.print_exc()
        if _prints(exc):
            print(f"mpo-gym{_rank_tag()}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # outside a run (a run handles its own signals and saves)
        if debug:
            traceback.print_exc()
        if _prints(None):
            print("mpo-gym: interrupted", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:
            from .. import distributed

            distributed.close()


def _prints(exc: MpoGymError | None) -> bool:
    """Under torchrun, the errors every rank raises alike (bad options, a signal) are printed by
    rank 0 alone; any other error by the rank that raised it."""
    from ..errors import ConfigError, RunInterrupted

    return os.environ.get("RANK", "0") == "0" or (exc is not None and not isinstance(exc, (ConfigError, RunInterrupted)))


def _rank_tag() -> str:
    rank = os.environ.get("RANK", "0")
    return f" [rank {rank}]" if rank != "0" else ""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
