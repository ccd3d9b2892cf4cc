"""The language-model policy: loading, scoring, and KV-cached block generation.

- :func:`load_default_model` / :func:`default_model_dir`: the embedded SmolLM2-135M-Instruct.
- :func:`tiny_model`: a small random Llama with the char tokenizer, for tests.
- :class:`LMPolicy`: causal LM + optional value head/critic + MTP modules;
  :meth:`LMPolicy.score` (teacher-forced, one pass), :meth:`LMPolicy.act` (blocks from env
  observations).
- :class:`BlockSampler`: the generation engine used by :func:`mpo_gym.rollout.rollout`; by
  default it runs :mod:`~mpo_gym.policy.decode`'s static decode loop (preallocated KV cache,
  fused weights in the compute dtype), with the ``transformers`` forward as the fallback.

This package imports torch; ``import mpo_gym`` does not.
"""

from __future__ import annotations

from .lm import LMPolicy, ScoreOutput
from .models import (
    bfloat16_is_fast,
    compute_dtype,
    default_model_dir,
    load_default_model,
    load_model,
    resolve_dtype,
    reuse_freed_memory,
    tiny_model,
)
from .sampling import BlockSampler
from .scoring import CriticModel, ValueHead, chunked_token_logprobs, position_ids_from_mask

__all__ = [
    "BlockSampler",
    "CriticModel",
    "LMPolicy",
    "ScoreOutput",
    "ValueHead",
    "bfloat16_is_fast",
    "chunked_token_logprobs",
    "compute_dtype",
    "default_model_dir",
    "load_default_model",
    "load_model",
    "position_ids_from_mask",
    "resolve_dtype",
    "reuse_freed_memory",
    "tiny_model",
]
