"""Built-in reasoning envs and their registration (imported as ``mpo_gym.envs``).

Importing this package registers every built-in id with ``gymnasium.register``; entry points
are import strings, so nothing heavy is imported until an env is made.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from mpo_gym.env import ReasoningEnv

__all__ = [
    "BUILTIN",
    "ReasoningEnv",
    "ReasoningGymEnv",
    "available_splits",
    "check_data",
    "list_envs",
    "register_builtin",
]

# id -> (entry point, default kwargs, one-line description)
BUILTIN: dict[str, tuple[str, dict[str, Any], str]] = {
    "mpo_gym/Arithmetic-v0": (
        "mpo_gym.envs.arithmetic:ArithmeticEnv",
        {"tokenizer": "default", "block_size": 8, "max_new_tokens": 64},
        "multi-step integer/fraction arithmetic (digits, terms, ops, fractions), answer in \\boxed{}",
    ),
    "mpo_gym/LinearEquation-v0": (
        "mpo_gym.envs.linear:LinearEquationEnv",
        {"tokenizer": "default", "block_size": 8, "max_new_tokens": 128},
        "solve a x + b = c x + d for x; rational answers graded by the sympy checker",
    ),
    "mpo_gym/Toy-v0": (
        "mpo_gym.envs.toy:ToyEnv",
        {},
        "repeat the named letter; dense reward, char tokenizer; for 'it learns' tests",
    ),
    "mpo_gym/CodeFunctions-v0": (
        "mpo_gym.envs.code_functions:CodeFunctionsEnv",
        {"tokenizer": "default", "block_size": 8, "max_new_tokens": 128},
        "write a small Python function; generated asserts run in the sandboxed code verifier",
    ),
    "mpo_gym/GSM8K-v0": (
        "mpo_gym.envs.suites:GSM8KEnv",
        {"tokenizer": "default", "block_size": 8, "max_new_tokens": 384},
        "GSM8K grade-school math (openai/gsm8k main; train/test), math verifier",
    ),
    "mpo_gym/MATH500-v0": (
        "mpo_gym.envs.suites:MATH500Env",
        {"tokenizer": "default", "block_size": 8, "max_new_tokens": 1024},
        "MATH-500 competition math (HuggingFaceH4/MATH-500; test), math verifier",
    ),
    "mpo_gym/HumanEval-v0": (
        "mpo_gym.envs.suites:HumanEvalEnv",
        {"tokenizer": "default", "block_size": 8, "max_new_tokens": 512},
        "HumanEval function completion (openai/openai_humaneval; test), sandboxed code verifier",
    ),
    "mpo_gym/MBPP-v0": (
        "mpo_gym.envs.suites:MBPPEnv",
        {"tokenizer": "default", "block_size": 8, "max_new_tokens": 512},
        "MBPP basic Python problems (google-research-datasets/mbpp; train/test), code verifier",
    ),
    "mpo_gym/MBPPPlus-v0": (
        "mpo_gym.envs.suites:MBPPPlusEnv",
        {"tokenizer": "default", "block_size": 8, "max_new_tokens": 512},
        "MBPP+ (EvalPlus v0.2.0; 378 tasks, test): MBPP with EvalPlus's extra inputs, code verifier",
    ),
}

# Optional: registered only when the reasoning-gym extra is installed.
OPTIONAL: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "mpo_gym/ReasoningGym-v0": (
        "mpo_gym.envs.reasoning_gym:ReasoningGymEnv",
        {"tokenizer": "default", "block_size": 8, "max_new_tokens": 256},
        "any of reasoning-gym's 100+ procedural tasks (dataset=...); scorers run in a worker process",
        "reasoning_gym",
    ),
}


def register_builtin() -> None:
    """Register every built-in id (idempotent)."""
    import importlib.util

    for env_id, (entry_point, kwargs, _) in BUILTIN.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, kwargs=dict(kwargs), disable_env_checker=True)
    for env_id, (entry_point, kwargs, _, module) in OPTIONAL.items():
        if env_id not in gym.registry and importlib.util.find_spec(module) is not None:
            gym.register(id=env_id, entry_point=entry_point, kwargs=dict(kwargs), disable_env_checker=True)


def list_envs() -> dict[str, str]:
    """Every registered ``mpo_gym/`` id with a one-line description."""
    known: dict[str, str] = {k: v[2] for k, v in BUILTIN.items()} | {k: v[2] for k, v in OPTIONAL.items()}
    out = {}
    for env_id, spec in sorted(gym.registry.items()):
        if env_id.startswith("mpo_gym/"):
            out[env_id] = known.get(env_id) or _describe(spec)
    return out


# Procedural envs: seeded generators with ``train``/``test`` streams (ProceduralTasks or, for
# reasoning-gym, two seeds). Suites take their splits from ``suites.SUITES``.
PROCEDURAL_SPLITS: tuple[str, ...] = ("train", "test")
_PROCEDURAL = (
    "mpo_gym/Arithmetic-v0",
    "mpo_gym/LinearEquation-v0",
    "mpo_gym/Toy-v0",
    "mpo_gym/CodeFunctions-v0",
    "mpo_gym/ReasoningGym-v0",
)


def available_splits(env_id: str) -> tuple[str, ...] | None:
    """The splits a built-in env id accepts as ``gym.make(env_id, split=...)``, or None.

    Cheap: reads static tables, loads no data, makes no env and imports nothing heavy, so it
    can validate a command line before a model is loaded.

    - Suites: ``mpo_gym/GSM8K-v0`` -> ``("train", "test")``; ``mpo_gym/MBPP-v0`` ->
      ``("train", "validation", "test", "prompt")``; ``mpo_gym/MATH500-v0`` and
      ``mpo_gym/HumanEval-v0`` -> ``("test",)`` (no train split: training on them uses test
      tasks).
    - Procedural envs (Arithmetic, LinearEquation, CodeFunctions) -> ``("train", "test")``,
      seeded streams whose train prompts never appear in test. ``mpo_gym/ReasoningGym-v0``
      -> ``("train", "test")``: two seeds of reasoning-gym's generator, independent draws that
      are not checked for overlap. ``mpo_gym/Toy-v0`` -> ``("train", "test")`` but its space
      is four prompts, so the two share them (a learning smoke test, not a benchmark).

    Every built-in env records the split it serves as ``env.unwrapped.split``.
    - Anything else (a user's env, an unknown id) -> None: the caller cannot tell.

    A split name is a promise about the data, not only a string the env accepts: ``"train"``
    in the result means tasks that are not in ``"test"`` (for suites, the upstream split).
    """
    if env_id in _PROCEDURAL:
        return PROCEDURAL_SPLITS
    from .suites import SUITES

    for info in SUITES.values():
        if info.env_id == env_id:
            return info.splits
    return None


def check_data(env_id: str, split: str = "test", **kwargs: Any) -> int | None:
    """Load a suite split before anything heavy; see :func:`mpo_gym.envs.suites.check_data`."""
    from .suites import check_data as check

    return check(env_id, split, **kwargs)


def _describe(spec: Any) -> str:
    entry = spec.entry_point if isinstance(spec.entry_point, str) else getattr(spec.entry_point, "__name__", "")
    return f"user env ({entry})"


def __getattr__(name: str) -> Any:
    if name == "ReasoningGymEnv":
        from .reasoning_gym import ReasoningGymEnv

        return ReasoningGymEnv
    raise AttributeError(name)


register_builtin()
