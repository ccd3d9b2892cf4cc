from __future__ import annotations

from pathlib import Path

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
