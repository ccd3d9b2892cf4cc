"""One PPO/MPO update on the same batch (embedded model): time, FLOPs and peak memory ratios.

Baseline: ``PPOAgent`` on the same rollout batch, in the same run. Each configuration runs in
its own process (so peak memory is its own); the batch is the same seeded rollout in every
process. Reported per configuration: time of recording old log-probs (``score_old``: backbone,
values, MTP), time of ``update`` (forward + backward + optimizer step over the mini-batches),
one whole iteration (rollout + score_old + update, the paper's "time per iteration"), the
matrix-product GFLOPs of one update (``torch.utils.flop_counter``: what no implementation can
avoid, so its ratio is the floor for the time ratio), and peak RSS. Paper (Table 2): MPO is
1.18-1.48x PPO's time per iteration. Target: <= 1.25x at K=5, memory <= 1.3x. The ``-per-row``
configurations score without encoding the prompts' common head once per batch
(``LMPolicy.share_prompt_head=False``): what that saves. The ``-stale`` configurations time the
mechanism the fixed precision handling replaced (one bf16 autocast region around ``score_old``
and ``update``, its cached weight casts kept across optimizer steps, so every step after the
first ran on stale weights): with ``--dtype bfloat16``, ``ppo`` / ``ppo-stale`` is what a fresh
region per forward costs. Under fp32 the two are the same code.

Like the trainer, every process keeps freed memory for reuse
(:func:`mpo_gym.policy.reuse_freed_memory`); ``--system-malloc`` measures glibc's default,
which unmaps every freed block above 32 MB.

    python benchmarks/bench_update.py [--envs 16] [--minibatch 8] [--repeats 2] [--rounds 2]
                                      [--dtype auto] [--configs ppo,mpo-k5] [--system-malloc]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import resource
import time

CONFIGS = {
    "ppo": ("ppo", {}),
    "mpo-k3": ("mpo", {"mpo_k": 3, "warmup_steps": 0}),
    "mpo-k5": ("mpo", {"mpo_k": 5, "warmup_steps": 0}),
    "mpo-k5-shared": ("mpo", {"mpo_k": 5, "share_lm_head": True, "warmup_steps": 0}),
    "mpo-k5-frozen": ("mpo", {"mpo_k": 5, "mtp_trainable_in_rl": False, "warmup_steps": 0}),
    "mpo-k5-backbone": ("mpo", {"mpo_k": 5, "ratio_source": "backbone", "warmup_steps": 0}),
    "ppo-per-row": ("ppo", {}),  # scoring re-encodes the prompts' common head in every row
    "mpo-k5-per-row": ("mpo", {"mpo_k": 5, "warmup_steps": 0}),
    "ppo-stale": ("ppo", {}),  # one spanning region, casts cached across steps (the old defect)
    "mpo-k5-stale": ("mpo", {"mpo_k": 5, "warmup_steps": 0}),
    "ppo-again": ("ppo", {}),  # the baseline once more, last: how far the machine drifted
}


def _worker(name: str, args: dict, queue: mp.Queue) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mpo_gym.agents import make_agent
    from mpo_gym.rollout import rollout
    from mpo_gym.trainer import TrainConfig, make_envs, make_policy

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    from mpo_gym.policy import reuse_freed_memory

    reused = not args["system_malloc"] and reuse_freed_memory()
    agent_name, extra = CONFIGS[name]
    kwargs = {"lr": 2e-6, "temperature": 0.7, "minibatch_size": args["minibatch"], "micro_batch_size": args["minibatch"], **extra}
    cfg = TrainConfig(
        env="mpo_gym/Arithmetic-v0", env_kwargs={"digits": 2, "terms": 2, "max_new_tokens": 40},
        agent=agent_name, agent_kwargs=kwargs, model="default", dtype=args["dtype"], num_envs=args["envs"],
    )
    policy = make_policy(cfg)
    policy.share_prompt_head = not name.endswith("-per-row")
    agent = make_agent(agent_name, policy, **kwargs)
    envs = make_envs(cfg, args["envs"])
    from mpo_gym.agents.base import build_batch
    from mpo_gym.policy import compute_dtype

    stale = name.endswith("-stale")
    if stale:  # keep the casts for the whole update, as one spanning region did
        policy.weights_changed = lambda: setattr(policy, "_sampler", None)  # type: ignore[method-assign]

    def spanning():
        if stale and policy.compute_dtype == "bfloat16":
            return torch.autocast(device_type=policy.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    rollout_s = []
    for _ in range(args["repeats"]):
        with torch.no_grad():  # the policy runs in the run's dtype (make_policy)
            t0 = time.perf_counter()
            episodes = rollout(envs, policy, task_indices=list(range(args["envs"])), seed=0, temperature=0.7)
            rollout_s.append(time.perf_counter() - t0)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    score_s, update_s = [], []
    for _ in range(args["repeats"]):
        batch = build_batch(episodes, pad_id=int(policy.tokenizer.pad_token_id))
        with spanning():
            t0 = time.perf_counter()
            agent.score_old(batch)
            agent.compute_advantages(batch)
            t1 = time.perf_counter()
            agent.update(batch)
            t2 = time.perf_counter()
        score_s.append(t1 - t0)
        update_s.append(t2 - t1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batch = build_batch(episodes, pad_id=int(policy.tokenizer.pad_token_id))
    agent.score_old(batch)
    agent.compute_advantages(batch)
    flops = float("nan")
    if not args["no_flops"]:
        with spanning(), FlopCounterMode(display=False) as counter:
            agent.update(batch)
        flops = counter.get_total_flops() / 1e9
    queue.put({
        "name": name, "dtype": compute_dtype(cfg.dtype, cfg.resolved_device), "reuse_memory": reused,
        "rollout_s": min(rollout_s),
        "score_s": min(score_s), "update_s": min(update_s),
        "iteration_s": min(rollout_s) + min(score_s) + min(update_s),
        "update_gflop": flops,
        "peak_rss_mb": peak / 1024, "rss_growth_mb": (peak - base_rss) / 1024,
        "tokens": int(sum(len(e.response_ids) for e in episodes)),
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--minibatch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="score_old + update runs per process")
    parser.add_argument("--rounds", type=int, default=2,
                        help="passes over all configs, one process each; times are the minimum over all")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP-counted extra update")
    parser.add_argument("--system-malloc", action="store_true", help="keep glibc's default allocator settings")
    args = vars(parser.parse_args())
    ctx = mp.get_context("spawn")
    results: dict[str, dict] = {}
    for _ in range(args["rounds"]):  # interleaved, so slow spells of a noisy machine hit every config
        for name in args["configs"].split(","):
            queue = ctx.Queue()
            proc = ctx.Process(target=_worker, args=(name, args, queue))
            proc.start()
            result = queue.get()
            proc.join()
            print(json.dumps(result), flush=True)
            results[name] = _merge(results.get(name), result)
    base = results.get("ppo")
    columns = [("update_s", "update s"), ("score_s", "score_old s"), ("iteration_s", "iteration s"),
               ("update_gflop", "update GFLOP"), ("peak_rss_mb", "peak MB")]
    first = next(iter(results.values()))
    memory = "freed memory reused" if first["reuse_memory"] else "system malloc defaults"
    print(f"\ndtype {first['dtype']}, {memory}; ratios are x PPO in this run")
    print(f"{'config':<17}" + "".join(f"{label:>14}" for _, label in columns) + "".join(f"{label.split()[0] + ' x':>13}" for _, label in columns))
    for name, r in results.items():
        ratios = [r[k] / base[k] if base else float("nan") for k, _ in columns]
        print(f"{name:<17}" + "".join(f"{r[k]:>14.2f}" for k, _ in columns) + "".join(f"{x:>13.2f}" for x in ratios))


def _merge(old: dict | None, new: dict) -> dict:
    """Minimum time over processes (noise only adds time); maximum peak memory."""
    if old is None:
        return new
    merged = dict(new)
    for key in ("rollout_s", "score_s", "update_s"):
        merged[key] = min(old[key], new[key])
    merged["iteration_s"] = merged["rollout_s"] + merged["score_s"] + merged["update_s"]
    merged["peak_rss_mb"] = max(old["peak_rss_mb"], new["peak_rss_mb"])
    return merged


if __name__ == "__main__":
    main()
