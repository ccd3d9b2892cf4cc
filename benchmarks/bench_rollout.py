"""Episode rollout throughput through the envs vs plain ``model.generate``.

Batch 8, 128 new tokens per row, K in {1, 4, 8}, embedded SmolLM2-135M, temperature-1
sampling (``--mode sample``, the default: what training rollouts do; ``generate`` samples with
``top_k=0, top_p=1``, so both draw from the full softmax) or greedy decoding (``--mode greedy``).
EOS is disabled (env and sampler never stop on it; ``generate`` runs with ``min_new_tokens``), so
every row makes exactly 128 tokens.

Compared, in the same process and interleaved:

- ``generate``: ``model.generate`` on the left-padded prompts (one call, no envs);
- ``rollout``: :func:`mpo_gym.rollout.rollout` (KV cache kept across env steps);
- ``naive``: per block, ``model.generate`` on the re-encoded prefix (prompt + response so far)
  for K tokens, then the env step: what a cache-less env loop costs.

Run: ``python benchmarks/bench_rollout.py [--dtype float32 bfloat16] [--mode sample greedy]
[--repeats 3]``. Prints tokens/s and the ratios rollout/generate (median over repeats, and the
worst repeat) and rollout/naive.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from mpo_gym.envs.arithmetic import ArithmeticEnv
from mpo_gym.policy import LMPolicy
from mpo_gym.rollout import rollout

BATCH, NEW_TOKENS = 8, 128


def make_envs(policy: LMPolicy, k: int) -> list[ArithmeticEnv]:
    envs = [ArithmeticEnv(tokenizer=policy.tokenizer, block_size=k, max_new_tokens=NEW_TOKENS,
                          digits=3, terms=4, ops="+-*") for _ in range(BATCH)]
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


SAMPLE = True  # set from --mode


def sampling_kwargs() -> dict:
    if SAMPLE:
        return {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    return {"do_sample": False}


def run_generate(policy: LMPolicy, prompts: list[list[int]]) -> int:
    ids, mask = left_pad(prompts, policy.pad_token_id)
    with torch.no_grad():
        out = policy.model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                                    min_new_tokens=NEW_TOKENS, pad_token_id=policy.pad_token_id,
                                    **sampling_kwargs())
    return int(out[:, ids.shape[1]:].numel())


def run_rollout(policy: LMPolicy, envs: list[ArithmeticEnv]) -> int:
    """One episode per env (envs are built once, as a trainer keeps them; reset is timed)."""
    k = int(envs[0].block_size)
    episodes = rollout(envs, policy, task_indices=list(range(BATCH)), seed=k, greedy=not SAMPLE, temperature=1.0)
    return sum(len(e.response_ids) for e in episodes)


def run_naive(policy: LMPolicy, k: int) -> int:
    envs = make_envs(policy, k)
    prompts = [list(env.reset(options={"task_index": i})[0]["prompt_ids"][: env.prompt_ids(i).size])
               for i, env in enumerate(envs)]
    responses: list[list[int]] = [[] for _ in envs]
    while len(responses[0]) < NEW_TOKENS:
        n = min(k, NEW_TOKENS - len(responses[0]))
        ids, mask = left_pad([p + r for p, r in zip(prompts, responses)], policy.pad_token_id)
        with torch.no_grad():
            out = policy.model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                        pad_token_id=policy.pad_token_id, **sampling_kwargs())
        for i, env in enumerate(envs):
            block = out[i, ids.shape[1]:].tolist()
            env.step(np.asarray(block))
            responses[i] += block
    return sum(len(r) for r in responses)


def timed(label: str, fn, *args) -> float:
    start = time.perf_counter()
    tokens = fn(*args)
    seconds = time.perf_counter() - start
    print(f"  {label}: {tokens} tokens in {seconds:.1f} s", flush=True)
    return tokens / seconds


def bench(dtype: str, ks: list[int], repeats: int, naive: bool) -> None:
    policy = LMPolicy.from_pretrained("default", dtype=dtype)
    policy.eos_token_id = -1  # the sampler never stops a block on EOS
    prompts = [list(map(int, make_envs(policy, 1)[0].prompt_ids(i))) for i in range(BATCH)]
    run_generate(policy, prompts)  # warm-up
    envs = {k: make_envs(policy, k) for k in ks}  # built once (task generation is not rollout work)
    results: dict[str, list[float]] = {}
    for _ in range(repeats):  # interleaved, so load changes hit every method alike
        results.setdefault("generate", []).append(timed("generate", run_generate, policy, prompts))
        for k in ks:
            results.setdefault(f"rollout K={k}", []).append(
                timed(f"rollout K={k}", run_rollout, policy, envs[k]))
            if naive:
                results.setdefault(f"naive K={k}", []).append(
                    timed(f"naive K={k}", run_naive, policy, k))
    gen = statistics.median(results["generate"])
    mode = "temperature-1 sampling" if SAMPLE else "greedy"
    print(f"\n== {dtype}: batch {BATCH}, {NEW_TOKENS} new tokens/row, {mode}, "
          f"{torch.get_num_threads()} threads, median of {repeats} interleaved rounds")
    print(f"{'method':<14}{'tok/s':>9}{'vs generate':>13}{'worst round':>13}{'rollout/naive':>15}")
    for name, values in results.items():
        tps = statistics.median(values)
        worst = min(v / g for v, g in zip(values, results["generate"]))  # same round's generate
        extra = ""
        if name.startswith("rollout") and naive:
            extra = f"{tps / statistics.median(results[name.replace('rollout', 'naive')]):>14.2f}x"
        print(f"{name:<14}{tps:>9.1f}{tps / gen:>12.2f}x{worst:>12.2f}x{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", nargs="+", default=["float32"])
    parser.add_argument("--mode", nargs="+", choices=("sample", "greedy"), default=["sample"])
    parser.add_argument("--k", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-naive", action="store_true", help="skip the re-encoding baseline")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    args = parser.parse_args()
    globals()["NEW_TOKENS"] = args.new_tokens
    if args.threads:
        torch.set_num_threads(args.threads)
    for mode in args.mode:
        globals()["SAMPLE"] = mode == "sample"
        for dtype in args.dtype:
            bench(dtype, args.k, args.repeats, not args.no_naive)


if __name__ == "__main__":
    main()
