"""Episode rollout throughput against ``model.generate``, old and new decode loops side by side.

Embedded SmolLM2-135M, EOS disabled (every row makes exactly the shape's new tokens). For each
shape (episodes x new tokens, temperature) and batch size (episodes generated together), in one
process and interleaved round by round, so load changes hit every method alike:

- ``generate fp32``: ``model.generate`` on the left-padded prompts (no envs), float32;
- ``generate bf16``: the same under ``torch.autocast(bfloat16)``;
- ``ours before``: :func:`mpo_gym.rollout.rollout` with ``engine="hf"`` (the ``transformers``
  forward and its ``DynamicCache``), float32;
- ``ours after``: ``rollout`` with its default engine (the static decode loop), float32, and
  ``ours after bf16`` (a bf16 policy: the loop's own bf16 copy of the weights).

Shapes: the quickstart's (16 episodes x 40 tokens, T=0.7) and a long one (8 x 256, T=1); batch
1 and 8. Prints tokens/s (median over rounds), the ratio to ``generate fp32`` of the same round
(median and worst), the CPU kind (``avx512_bf16``/``amx_bf16`` flags; none = AVX2, where bf16 is
emulated and slow) and the load (``uptime``) before and after.

Run: ``python benchmarks/bench_rollout.py [--repeats 2] [--shapes quick long] [--batches 1 8]
[--methods ...] [--threads N] [--block-size 8]``.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import statistics
import subprocess
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from mpo_gym.envs.arithmetic import ArithmeticEnv
from mpo_gym.policy import LMPolicy
from mpo_gym.rollout import rollout

SHAPES = {"quick": (16, 40, 0.7), "long": (8, 256, 1.0)}  # episodes, new tokens, temperature
METHODS = ("generate fp32", "generate bf16", "ours before", "ours after", "ours after bf16")


def cpu_kind() -> str:
    try:
        flags = set(pathlib.Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    return ", ".join(native) if native else "AVX2 (no native bf16)"


def load() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    return "unknown"


def make_envs(policy: LMPolicy, n: int, new_tokens: int, k: int) -> list[ArithmeticEnv]:
    envs = [ArithmeticEnv(tokenizer=policy.tokenizer, block_size=k, max_new_tokens=new_tokens,
                          digits=3, terms=4, ops="+-*") for _ in range(n)]
    for env in envs:
        env.eos_token_id = -1  # never terminate: every episode runs the full budget
    return envs


def left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    return ids, mask


def run_generate(policy: LMPolicy, prompts: list[list[int]], batch: int, new_tokens: int, temperature: float,
                 bf16: bool) -> int:
    tokens = 0
    region = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    for start in range(0, len(prompts), batch):
        ids, mask = left_pad(prompts[start:start + batch], policy.pad_token_id)
        with torch.no_grad(), region:
            out = policy.model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                                        min_new_tokens=new_tokens, pad_token_id=policy.pad_token_id,
                                        do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        tokens += int(out[:, ids.shape[1]:].numel())
    return tokens


def run_rollout(policy: LMPolicy, envs: list[ArithmeticEnv], batch: int, temperature: float, engine: str) -> int:
    episodes = rollout(envs, policy, task_indices=list(range(len(envs))), seed=0, temperature=temperature,
                       max_batch=batch, engine=engine)
    return sum(len(e.response_ids) for e in episodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["quick", "long"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--block-size", type=int, default=8, help="K: tokens per env step")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_kind()}; torch threads {torch.get_num_threads()}; load before: {load()}", flush=True)
    fp32 = LMPolicy.from_pretrained("default", dtype="float32")
    bf16 = LMPolicy(fp32.model, fp32.tokenizer, compute_dtype="bfloat16")  # same weights, bf16 products
    for pol in (fp32, bf16):
        pol.eos_token_id = -1  # the samplers never stop a block on EOS
    def methods_for(envs: list[ArithmeticEnv], prompts: list[list[int]], batch: int, new_tokens: int,
                    temperature: float) -> dict[str, Callable[[], int]]:
        fns = {
            "generate fp32": partial(run_generate, fp32, prompts, batch, new_tokens, temperature, False),
            "generate bf16": partial(run_generate, fp32, prompts, batch, new_tokens, temperature, True),
            "ours before": partial(run_rollout, fp32, envs, batch, temperature, "hf"),
            "ours after": partial(run_rollout, fp32, envs, batch, temperature, "auto"),
            "ours after bf16": partial(run_rollout, bf16, envs, batch, temperature, "auto"),
        }
        return {m: fns[m] for m in ["generate fp32"] + [m for m in args.methods if m != "generate fp32"]}

    small = make_envs(fp32, 2, 8, args.block_size)
    for fn in methods_for(small, [list(map(int, small[0].prompt_ids(i))) for i in range(2)], 2, 8, 1.0).values():
        fn()  # warm-up: first-call allocations, the bf16 copy of the weights
    rows = []
    for shape in args.shapes:
        n, new_tokens, temperature = SHAPES[shape]
        envs = make_envs(fp32, n, new_tokens, args.block_size)  # built once, as a trainer keeps them
        prompts = [list(map(int, envs[0].prompt_ids(i))) for i in range(n)]
        for batch in args.batches:
            fns = methods_for(envs, prompts, batch, new_tokens, temperature)
            results: dict[str, list[float]] = {m: [] for m in fns}
            for r in range(args.repeats):
                for m, fn in fns.items():
                    start = time.perf_counter()
                    tokens = fn()
                    results[m].append(tokens / (time.perf_counter() - start))
                    print(f"  {shape} batch {batch} round {r}: {m}: {results[m][-1]:.1f} tok/s", flush=True)
            rows.append((shape, n, new_tokens, temperature, batch, results))
    print(f"\nload after: {load()}")
    print(f"CPU: {cpu_kind()}; torch threads {torch.get_num_threads()}; block size K={args.block_size}; "
          f"median of {args.repeats} interleaved rounds; ratios against generate fp32 of the same round")
    header = f"{'shape':<22}{'batch':>6}  {'method':<17}{'tok/s':>8}{'x gen fp32':>12}{'worst':>8}{'x before':>10}"
    print(header)
    print("-" * len(header))
    for shape, n, new_tokens, temperature, batch, results in rows:
        base = results["generate fp32"]
        label = f"{shape} {n}x{new_tokens} T={temperature}"
        for m, values in results.items():
            ratios = [v / b for v, b in zip(values, base)]
            vs_before: Any = ""
            if "ours before" in results and m.startswith("ours after"):
                vs_before = f"{statistics.median(v / b for v, b in zip(values, results['ours before'])):.2f}x"
            print(f"{label:<22}{batch:>6}  {m:<17}{statistics.median(values):>8.1f}"
                  f"{statistics.median(ratios):>11.2f}x{min(ratios):>7.2f}x{vs_before:>10}")


if __name__ == "__main__":
    main()
