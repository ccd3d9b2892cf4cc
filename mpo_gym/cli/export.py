"""``mpo-gym export RUN_DIR OUT_DIR`` (:func:`mpo_gym.export.export`)."""

from __future__ import annotations

import argparse

from ..errors import MpoGymError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training run folder (has config.json and checkpoint/)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="new folder for the Hugging Face model")


def run(args: argparse.Namespace) -> int:
    from ..apps.export import export

    try:
        out = export(args.run_dir, args.out_dir)
    except FileNotFoundError as exc:
        raise MpoGymError(str(exc)) from exc
    print(f"wrote {out} (AutoModelForCausalLM.from_pretrained({str(out)!r}); value head / MTP modules in "
          f"mpo_heads.safetensors)")
    return 0
