"""Data-parallel scaling of one update: 1 rank x 1 thread, 2 ranks x 1 thread (replicated and
sharded, ``--fsdp``), 1 rank x 2 threads.

Each configuration runs ``mpo-gym train`` (the product path; 2 ranks through ``torchrun
--standalone``) for ``--updates`` updates of the same run and reads the per-update wall-clock
from its ``metrics.jsonl`` (the first update, which pays allocation and warm-up costs, is left
out). It prints episodes per second of each configuration, the ratios against 1 rank x 1 thread
measured in the same invocation, the gradient bytes reduced per update
(``perf/allreduce_bytes``: all-reduced when replicated, reduce-scattered when sharded) and the
bytes of trained parameters, gradients and optimizer state a rank holds
(``perf/train_state_mb``), which sharding divides by the number of ranks, and the peak resident
memory of the largest rank (``perf/peak_rss_mb``; on the CPU it also holds the process's
libraries, activations and memory the allocator keeps, so it shows far less of the sharding).

On a 2-core machine expect no speed-up from 2 ranks (both configurations use both cores); the
benchmark is for machines with more cores or devices. The ranks talk over loopback only: the
2-rank job runs inside its own network namespace (``unshare -n``; root or user namespaces
needed), and the benchmark refuses to run it otherwise.

    python benchmarks/bench_scaling.py                          # embedded model, 3+1 updates
    python benchmarks/bench_scaling.py --model tiny --updates 5  # seconds, a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}


def confined(cmd: list[str]) -> list[str]:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode:
        raise SystemExit("bench_scaling: cannot make a private network namespace (unshare -n); the 2-rank run "
                         "would listen on the host's network, so it is not run")
    return ["unshare", "-n", "sh", "-c", "ip link set lo up && exec " + shlex.join(cmd)]


def run(name: str, ranks: int, threads: int, args: argparse.Namespace, work: Path,
        fsdp: bool = False) -> dict[str, float]:
    out = work / name
    train = ["-m", "mpo_gym", "train", "--agent", args.agent, "--env", args.env, "--model", args.model,
             "--dtype", args.dtype, "--num-envs", str(args.num_envs), "--updates", str(args.updates + 1),
             "--eval-tasks", "0", "--threads", str(threads), "--completions-every", "0", "--out-dir", str(out),
             "--minibatch-size", str(args.num_envs // 2), "--micro-batch-size", str(args.num_envs // 2),
             "--fsdp", str(fsdp).lower()]
    if ranks == 1:
        cmd = [sys.executable, *train]
    else:
        cmd = confined([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                        "--master_addr=127.0.0.1", *train])
    env = {**os.environ, **LOOPBACK, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode:
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("step", 0) >= 1]
    times = [r["time"] for r in rows]
    per_update = (times[-1] - times[0]) / (len(times) - 1)
    config = json.loads((out / "config.json").read_text())
    return {"s_per_update": per_update, "episodes_per_s": args.num_envs / per_update,
            "allreduce_bytes": float(rows[-1].get("perf/allreduce_bytes", 0.0)), "dtype": config["resolved_dtype"],
            "peak_rss_mb": float(max(r["perf/peak_rss_mb"] for r in rows)),
            "train_state_mb": float(rows[-1]["perf/train_state_mb"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--env", default="mpo_gym/Arithmetic-v0")
    p.add_argument("--agent", default="ppo")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--updates", type=int, default=3, help="timed updates (one more runs first, untimed)")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"))
    args = p.parse_args(argv)
    if args.model == "tiny" and args.env == "mpo_gym/Arithmetic-v0":
        args.env = "mpo_gym/Toy-v0"
    configs = [("1 rank x 1 thread", 1, 1, False), ("2 ranks x 1 thread", 2, 1, False),
               ("2 ranks x 1 thread, fsdp", 2, 1, True), ("1 rank x 2 threads", 1, 2, False)]
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run(name.replace(" ", "_").replace(",", ""), ranks, threads, args, Path(tmp), fsdp)
                   for name, ranks, threads, fsdp in configs}
    base = results[configs[0][0]]["episodes_per_s"]
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    kind = ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "no native bf16"
    print(f"{args.agent} on {args.env}, model {args.model}, {args.num_envs} episodes per update, "
          f"{os.cpu_count()} CPUs ({kind}), resolved dtype {results[configs[0][0]]['dtype']}")
    print(f"{'configuration':<26} {'s/update':>9} {'episodes/s':>11} {'ratio':>6} {'reduced/update':>15} "
          f"{'train state/rank':>17} {'peak RSS/rank':>14}")
    for name, r in results.items():
        print(f"{name:<26} {r['s_per_update']:>9.2f} {r['episodes_per_s']:>11.2f} {r['episodes_per_s'] / base:>5.2f}x "
              f"{r['allreduce_bytes'] / 2**20:>11.1f} MiB {r['train_state_mb']:>13.0f} MiB {r['peak_rss_mb']:>10.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
