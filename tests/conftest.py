from __future__ import annotations

import os
from pathlib import Path

# Tiny test models run far faster on one thread (no OpenMP spin-waiting, and CI cores are few);
# subprocesses started by tests inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import gymnasium as gym
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def clean_registry():
    """Remove env ids a test registers, so the global registry does not leak between tests."""
    before = set(gym.registry)
    yield
    for env_id in set(gym.registry) - before:
        del gym.registry[env_id]
