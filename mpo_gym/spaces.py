"""``TokenBlock``: the action space of a reasoning env, a block of 1..K token ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.spaces import Space, Tuple
from gymnasium.vector.utils import batch_space

__all__ = ["TokenBlock"]


class TokenBlock(Space[np.ndarray]):
    """A block of between 1 and ``block_size`` token ids, each in ``[0, vocab_size)``.

    An element is a 1-D ``np.int64`` array. Blocks are ragged: the last block of an episode (the
    one that ends on EOS, or the one that fills the token budget) may be shorter than K.

    Batching: ``gymnasium.vector.utils.batch_space(TokenBlock(V, K), n)`` is a ``Tuple`` of n
    ``TokenBlock`` spaces, so a vector env's action is a tuple of ragged arrays (``iterate``
    over it yields one block per sub-env).

    Args:
        vocab_size: number of token ids (ids are ``0 .. vocab_size - 1``).
        block_size: K, the largest number of tokens in one action.
        seed: optional seed for :meth:`sample`.
    """

    def __init__(self, vocab_size: int, block_size: int, seed: int | np.random.Generator | None = None):
        if int(vocab_size) < 1:
            raise ValueError(f"vocab_size must be >= 1; got {vocab_size}")
        if int(block_size) < 1:
            raise ValueError(f"block_size must be >= 1; got {block_size}")
        self.vocab_size = int(vocab_size)
        self.block_size = int(block_size)
        super().__init__(shape=None, dtype=np.int64, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> np.ndarray:
        """A random block: length uniform in ``1..K``, ids uniform (or as ``mask`` allows).

        Args:
            mask: optional ``(length, ids_mask)``: ``length`` fixes the block length (an int in
                ``1..K``) or is ``None``; ``ids_mask`` is an int8 array of shape ``(vocab_size,)``
                marking the ids allowed, or ``None``.
            probability: not supported (raises).
        """
        if probability is not None:
            raise NotImplementedError("TokenBlock.sample does not take `probability`; use `mask`")
        length, ids_mask = (None, None) if mask is None else mask
        if length is None:
            length = int(self.np_random.integers(1, self.block_size + 1))
        elif not 1 <= int(length) <= self.block_size:
            raise ValueError(f"mask length must be in 1..{self.block_size}; got {length}")
        if ids_mask is None:
            return self.np_random.integers(0, self.vocab_size, size=int(length), dtype=np.int64)
        ids_mask = np.asarray(ids_mask)
        if ids_mask.shape != (self.vocab_size,):
            raise ValueError(f"ids mask must have shape ({self.vocab_size},); got {ids_mask.shape}")
        allowed = np.flatnonzero(ids_mask)
        if allowed.size == 0:
            raise ValueError("ids mask allows no token")
        return self.np_random.choice(allowed, size=int(length)).astype(np.int64)

    def contains(self, x: Any) -> bool:
        if isinstance(x, (list, tuple)):
            try:
                x = np.asarray(x, dtype=np.int64)
            except (TypeError, ValueError, OverflowError):
                return False
        if not isinstance(x, np.ndarray) or x.ndim != 1 or not np.issubdtype(x.dtype, np.integer):
            return False
        return 1 <= x.shape[0] <= self.block_size and bool(
            np.all(x >= 0) and np.all(x < self.vocab_size)
        )

    def check(self, x: Any) -> np.ndarray:
        """Return ``x`` as an int64 block or raise ``ValueError`` saying what is wrong."""
        arr = np.asarray(x)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1:
            raise ValueError(f"a token block must be 1-D; got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"token ids must be integers; got dtype {arr.dtype}")
        if not 1 <= arr.shape[0] <= self.block_size:
            raise ValueError(
                f"a token block holds 1..{self.block_size} tokens; got {arr.shape[0]} "
                f"(split longer outputs over several steps)"
            )
        bad = arr[(arr < 0) | (arr >= self.vocab_size)]
        if bad.size:
            raise ValueError(f"token ids must be in [0, {self.vocab_size}); got {bad[:5].tolist()}")
        return arr.astype(np.int64, copy=False)

    def to_jsonable(self, sample_n: Sequence[np.ndarray]) -> list[list[int]]:  # type: ignore[override]
        return [np.asarray(s, dtype=np.int64).tolist() for s in sample_n]

    def from_jsonable(self, sample_n: list[list[int]]) -> list[np.ndarray]:
        return [np.asarray(s, dtype=np.int64) for s in sample_n]

    def __repr__(self) -> str:
        return f"TokenBlock(vocab_size={self.vocab_size}, block_size={self.block_size})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TokenBlock)
            and self.vocab_size == other.vocab_size
            and self.block_size == other.block_size
        )

    def __hash__(self) -> int:
        return hash((TokenBlock, self.vocab_size, self.block_size))


@batch_space.register(TokenBlock)
def _batch_token_block(space: TokenBlock, n: int = 1) -> Tuple:
    seeds = space.np_random.integers(0, 2**31 - 1, size=n)
    return Tuple(
        [TokenBlock(space.vocab_size, space.block_size, seed=int(s)) for s in seeds]
    )
