"""Ratio diagnostics and the MTP warm-up curve in float32 and bfloat16, side by side.

What a bf16 run must reproduce of its fp32 twin (the numbers a stale autocast cache broke):

- **diagnostics**: the tiny model on ``mpo_gym/Toy-v0`` (8 envs, 2 updates, lr 1e-3, seed 0),
  (GSPO: the tests' ``dist_test/Letters-v0``, whose rewards vary within a group), with one
  optimizer step per update (one epoch, one mini-batch of 8: every ratio is taken at
  the rollout's weights) and with several (4 epochs of mini-batches of 4: 8 steps, the later
  ones off-policy). Per update: PPO's token clip fraction and ratio variance, MPO's (K=3)
  token and window ones, GSPO's sequence ones, and the sampler-scorer log-prob gap.
- **warm-up**: MPO's MTP warm-up loss (K=3, 20 steps, lr 3e-3, batch 8) on ``--warmup-model``
  (default: the embedded SmolLM2-135M-Instruct; ``tiny`` for a quick look).

Both dtypes run in one invocation on the same machine; bf16 is autocast, emulated on CPUs
without native bf16 (same numerics, slower). Prints one table per part.

    python benchmarks/precision_diagnostics.py [--warmup-model default] [--skip-warmup]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

DTYPES = ("float32", "bfloat16")
AGENTS = {
    "ppo": ({}, [("token", "losses/clipfrac", "losses/ratio_var")]),
    "mpo": ({"mpo_k": 3, "warmup_steps": 2, "warmup_batch_size": 4},
            [("token", "mpo/clipfrac_token", "mpo/ratio_var_token"),
             ("window", "mpo/clipfrac_united", "mpo/ratio_var_united")]),
    "gspo": ({"group_size": 4}, [("sequence", "losses/clipfrac", "losses/ratio_var")]),
}
# a group-relative agent needs rewards that vary within a group: the tests' parity env gives the
# tiny random model varied rewards (Toy-v0's are all 0 for it, so GSPO would never step)
ENVS = {"gspo": ("dist_test/Letters-v0", "tests.dist_envs")}
STEPS = {"1 step": {"ppo_epochs": 1, "minibatch_size": 8}, "8 steps": {"ppo_epochs": 4, "minibatch_size": 4}}


def diagnostics(root: Path) -> None:
    from mpo_gym.trainer import TrainConfig, train

    print("| agent | ratio | steps/update | dtype | clipfrac u1 / u2 | ratio var u1 / u2 | gap mean / max |")
    print("|---|---|---|---|---|---|---|")
    for agent, (extra, keys) in AGENTS.items():
        for steps, step_kwargs in STEPS.items():
            rows = {}
            for dtype in DTYPES:
                out = root / f"{agent}-{steps.replace(' ', '')}-{dtype}"
                kwargs = {"lr": 1e-3, "micro_batch_size": 2, **step_kwargs, **extra}
                env, imports = ENVS.get(agent, ("mpo_gym/Toy-v0", ""))
                cfg = TrainConfig(env=env, imports=imports, model="tiny", agent=agent, dtype=dtype, num_envs=8,
                                  updates=2, eval_tasks=0, out_dir=str(out), threads=1, agent_kwargs=kwargs)
                train(cfg, progress=False)
                lines = (out / "metrics.jsonl").read_text().splitlines()
                rows[dtype] = [r for r in map(json.loads, lines) if r.get("step", 0) >= 1 and "losses/clipfrac" in r]
            for name, clip, var in keys:
                for dtype in DTYPES:
                    r = rows[dtype]
                    gap = max(x["checks/sample_logprob_gap_max"] for x in r)
                    mean = sum(x["checks/sample_logprob_gap_mean"] for x in r) / len(r)
                    print(f"| {agent} | {name} | {steps} | {dtype} | {r[0][clip]:.3f} / {r[1][clip]:.3f} | "
                          f"{r[0][var]:.4f} / {r[1][var]:.4f} | {mean:.1e} / {gap:.1e} |", flush=True)


def warmup_curve(model: str) -> None:
    from mpo_gym.agents import make_agent
    from mpo_gym.trainer import TrainConfig, make_envs, make_policy

    curves = {}
    for dtype in DTYPES:
        cfg = TrainConfig(env="mpo_gym/Arithmetic-v0", model=model, agent="mpo", dtype=dtype, num_envs=4,
                          agent_kwargs={"mpo_k": 3}, seed=0)
        policy = make_policy(cfg)
        agent = make_agent("mpo", policy, mpo_k=3, warmup_steps=20, warmup_lr=3e-3, warmup_batch_size=8, seed=0)
        curves[dtype] = [row["warmup/loss"] for row in agent.warmup(make_envs(cfg, 4), policy)]
    marks = [0, 4, 9, 14, 19]
    print(f"\nMTP warm-up loss on {model!r} (K=3, lr 3e-3, batch 8), at steps {[m + 1 for m in marks]}:")
    for dtype, losses in curves.items():
        print(f"  {dtype:9} " + "  ".join(f"{losses[m]:.3f}" for m in marks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup-model", default="default")
    parser.add_argument("--skip-warmup", action="store_true")
    parser.add_argument("--skip-diagnostics", action="store_true")
    args = parser.parse_args()
    from mpo_gym.policy import bfloat16_is_fast

    print(f"native bf16 on this CPU: {'yes' if bfloat16_is_fast('cpu') else 'no (bf16 autocast is emulated)'}\n")

    if not args.skip_diagnostics:
        with tempfile.TemporaryDirectory() as tmp:
            diagnostics(Path(tmp))
    if not args.skip_warmup:
        warmup_curve(args.warmup_model)


if __name__ == "__main__":
    main()
