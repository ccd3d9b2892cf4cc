from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

# Tiny test models run far faster on one thread (no OpenMP spin-waiting, and CI cores are few);
# subprocesses started by tests inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import gymnasium as gym
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (not a package) so tests share its case lists."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_train_config(out: Any, **kwargs: Any) -> Any:
    """A two-update PPO run of the tiny model on Toy-v0 into ``out``, without held-out eval."""
    from mpo_gym.trainer import TrainConfig

    base: dict[str, Any] = dict(
        env="mpo_gym/Toy-v0", model="tiny", agent="ppo", dtype="float32", num_envs=4, updates=2,
        eval_tasks=0, out_dir=str(out), threads=1,
        agent_kwargs={"lr": 1e-3, "minibatch_size": 4, "micro_batch_size": 2},
    )
    base.update(kwargs)
    return TrainConfig(**base)


@pytest.fixture
def clean_registry():
    """Remove env ids a test registers, so the global registry does not leak between tests."""
    before = set(gym.registry)
    yield
    for env_id in set(gym.registry) - before:
        del gym.registry[env_id]
