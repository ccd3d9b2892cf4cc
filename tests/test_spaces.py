"""TokenBlock: Gymnasium's space invariants, checked the way Gymnasium checks its own spaces."""

from __future__ import annotations

import copy
import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from mpo_gym.spaces import TokenBlock

SPACES = [TokenBlock(10, 1), TokenBlock(100, 4), TokenBlock(50_000, 8)]


@pytest.mark.parametrize("space", SPACES, ids=repr)
def test_sample_is_contained(space):
    space.seed(0)
    for _ in range(50):
        block = space.sample()
        assert block.dtype == np.int64 and block.ndim == 1
        assert 1 <= block.size <= space.block_size
        assert space.contains(block) and block in space


@pytest.mark.parametrize("space", SPACES, ids=repr)
def test_seeding_is_deterministic(space):
    a, b = copy.deepcopy(space), copy.deepcopy(space)
    a.seed(7)
    b.seed(7)
    for _ in range(10):
        assert np.array_equal(a.sample(), b.sample())
    c = copy.deepcopy(space)
    c.seed(8)
    assert any(not np.array_equal(a.sample(), c.sample()) for _ in range(10))


@pytest.mark.parametrize("space", SPACES, ids=repr)
def test_pickle_and_equality(space):
    space.seed(3)
    clone = pickle.loads(pickle.dumps(space))
    assert clone == space and hash(clone) == hash(space)
    assert np.array_equal(clone.sample(), space.sample())
    assert TokenBlock(10, 2) != TokenBlock(10, 3) != TokenBlock(11, 3)
    assert repr(space) == f"TokenBlock(vocab_size={space.vocab_size}, block_size={space.block_size})"


def test_contains_rejects_bad_blocks():
    space = TokenBlock(10, 3)
    assert not space.contains(np.zeros(0, dtype=np.int64))  # empty
    assert not space.contains(np.zeros(4, dtype=np.int64))  # too long
    assert not space.contains(np.array([10]))  # out of vocab
    assert not space.contains(np.array([-1]))
    assert not space.contains(np.array([1.5]))
    assert not space.contains(np.zeros((1, 2), dtype=np.int64))
    assert not space.contains("abc")
    assert space.contains([1, 2]) and space.contains(np.array([9], dtype=np.int32))


def test_check_explains_errors():
    space = TokenBlock(10, 3)
    with pytest.raises(ValueError, match="1..3 tokens"):
        space.check(np.arange(4))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        space.check([3, 12])
    assert space.check([1, 2]).dtype == np.int64


def test_sample_mask():
    space = TokenBlock(5, 4, seed=0)
    block = space.sample(mask=(3, np.array([0, 1, 0, 0, 1], dtype=np.int8)))
    assert block.size == 3 and set(block.tolist()) <= {1, 4}
    with pytest.raises(ValueError):
        space.sample(mask=(5, None))


def test_jsonable_roundtrip():
    space = TokenBlock(10, 3, seed=1)
    samples = [space.sample() for _ in range(4)]
    back = space.from_jsonable(space.to_jsonable(samples))
    assert all(np.array_equal(a, b) for a, b in zip(samples, back))


def test_batching_under_gymnasium_vector():
    space = TokenBlock(10, 3, seed=0)
    batched = batch_space(space, 4)
    assert isinstance(batched, gym.spaces.Tuple) and len(batched) == 4
    actions = batched.sample()
    assert batched.contains(actions)
    assert [a.tolist() for a in iterate(batched, actions)] == [a.tolist() for a in actions]


def test_gymnasium_space_utils_on_the_batched_space():
    batched = batch_space(TokenBlock(10, 3, seed=0), 2)
    empty = create_empty_array(batched, n=1)
    assert len(empty) == 2
    out = concatenate(batched, [batched.sample()], create_empty_array(batched, n=1))
    assert len(out) == 2
