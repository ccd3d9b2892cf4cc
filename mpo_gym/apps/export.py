"""``mpo-gym export RUN_DIR OUT_DIR``: a run's trained policy as a Hugging Face model folder.

``OUT_DIR`` loads with ``transformers.AutoModelForCausalLM.from_pretrained(OUT_DIR)`` (LoRA
adapters are merged into the weights first). What the causal LM does not hold is written
beside it: ``mpo_heads.safetensors`` (the value head and the MTP modules, when the run had
them) and ``mpo_policy.json`` (the ``LMPolicy`` options and where the weights came from). The
tokenizer is saved too when it is a ``transformers`` tokenizer (the ``tiny`` test model's char
tokenizer is not one; it is rebuilt by :class:`~mpo_gym.tokenizers.CharTokenizer`).

What this does not do: no conversion to GGUF or other formats, no upload.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["export"]


def export(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the run's policy into ``out_dir`` (see the module docstring); returns ``out_dir``."""
    from safetensors.torch import save_file

    run_dir, out = Path(run_dir), Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; give a new folder")
    from ..loading import load_run

    run = load_run(run_dir, device="cpu")
    cfg, policy, folder = run.config, run.policy, run.checkpoint
    model = policy.model
    if hasattr(model, "merge_and_unload"):  # LoRA: fold the adapters into the weights
        model = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    if hasattr(policy.tokenizer, "save_pretrained"):
        policy.tokenizer.save_pretrained(str(out))
    heads: dict[str, Any] = {}
    if policy.value_head is not None:
        heads.update({f"value_head.{k}": v for k, v in policy.value_head.state_dict().items()})
    heads.update({f"mtp.{k}": v for k, v in policy.mtp.state_dict().items()})
    if heads:
        # shared tensors (a shared LM head) are stored once per name, as contiguous copies
        save_file({k: v.detach().contiguous().clone() for k, v in heads.items()}, str(out / "mpo_heads.safetensors"))
    step = run.step
    meta = {"policy_options": {**policy._options, "compute_dtype": policy.compute_dtype}, "agent": cfg.agent, "env": cfg.env, "model": cfg.model,
            "run_dir": str(run_dir), "checkpoint": folder.name, "update": step, "lora_merged": bool(cfg.lora),
            "tokenizer": "char" if cfg.model == "tiny" else "saved beside the model"}
    (out / "mpo_policy.json").write_text(json.dumps(meta, indent=2))
    return out

