"""The ``mpo-gym`` command line: list, check, train, eval, compare, audit-math."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def _cmd_list(args: argparse.Namespace) -> int:
    from .envs import list_envs

    envs = list_envs()
    width = max(len(k) for k in envs)
    for env_id, description in envs.items():
        print(f"{env_id:<{width}}  {description}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    import gymnasium as gym
    import numpy as np

    from .testing import check_reasoning_env

    kwargs = {} if args.tokenizer is None else {"tokenizer": args.tokenizer}
    env = gym.make(args.env_id, **kwargs)
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


_OPTIONAL = {
    "train": ("mpo_gym.trainer", "train one agent on one env"),
    "eval": ("mpo_gym.evaluation", "evaluate models on GSM8K, MATH-500, HumanEval, MBPP"),
    "compare": ("mpo_gym.compare", "train several agents side by side and report"),
    "audit-math": ("mpo_gym.verifiers.math_audit", "compare math verdicts with math-verify"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (so ``list`` never imports torch)."""
    parser = argparse.ArgumentParser(prog="mpo-gym", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the registered mpo_gym/ env ids")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("check", help="run the env checkers and a random rollout")
    p.add_argument("env_id")
    p.add_argument("--tokenizer", default=None, help="override the env's tokenizer (e.g. 'char')")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_check)

    for name, (module, help_text) in _OPTIONAL.items():
        if name == command:
            _add_optional(sub, name, module, help_text)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _add_optional(sub: argparse._SubParsersAction, name: str, module: str, help_text: str) -> None:
    """Add a subcommand whose module defines ``add_arguments(parser)`` and ``run(args)``."""
    import importlib

    p = sub.add_parser(name, help=help_text)
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        message = f"`mpo-gym {name}` is unavailable: {exc}"
        p.set_defaults(func=lambda args: _fail(message))
        return
    if hasattr(mod, "add_arguments"):
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
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
