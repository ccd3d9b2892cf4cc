"""Teacher-forced scoring cost: backbone only vs 4 MTP modules (K = 5), time and peak memory.

Each configuration runs in its own subprocess. Peak memory is the peak resident set size
during scoring minus the resident size just before it (Linux: the peak is reset through
``/proc/self/clear_refs``; elsewhere ``ru_maxrss`` growth), so it covers activations, logits
chunks and the backward pass (including fresh ``.grad`` buffers), not the weights (reported
separately as ``weights MB``; the MTP rows include 4 copied decoder layers and LM heads).
An ``unchunked`` row scores with one LM-head chunk for the whole batch, to show what
materialising ``[B, T, V]`` logits costs.

Run: ``python benchmarks/bench_scoring.py [--dtype float32 bfloat16] [--batch 8]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time

CONFIGS = {  # name -> (num_mtp_modules, chunk_size or None for the default)
    "backbone": (0, None),
    "mtp4": (4, None),
    "mtp4 unchunked": (4, 10**9),
}


def worker(name: str, dtype: str, batch: int, prompt: int, response: int, grad: bool,
           repeats: int) -> dict:
    import torch

    from mpo_gym.policy import LMPolicy

    num_mtp, chunk = CONFIGS[name]
    policy = LMPolicy.from_pretrained("default", dtype=dtype, num_mtp_modules=num_mtp)
    if chunk:
        policy.chunk_size = chunk
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 20000, (batch, prompt + response), generator=g)
    mask = torch.ones_like(ids)
    weights = sum(p.numel() * p.element_size() for p in policy.parameters()) / 2**20
    with torch.no_grad():  # page in the (memory-mapped) weights before measuring
        policy.score(ids[:1, : prompt + 2], mask[:1, : prompt + 2], prompt, mtp=num_mtp > 0)
    gc.collect()
    base = _reset_peak_kb()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.set_grad_enabled(grad):
            out = policy.score(ids, mask, prompt, mtp=num_mtp > 0)
            if grad:
                loss = out.logprobs.sum() + (out.mtp_logprobs.sum() if num_mtp else 0)
                loss.backward()
                policy.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "peak_mb": (_peak_kb() - base) / 1024, "weights_mb": weights}


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_kb() -> int:
    """Reset the peak-RSS mark if the OS allows; return the baseline (KiB)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmRSS") or 0
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_kb() -> int:
    return _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--response", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, dtype, grad = args.worker
        res = worker(name, dtype, args.batch, args.prompt, args.response, grad == "1", args.repeats)
        print(json.dumps(res))
        return
    for dtype in args.dtype:
        for grad in (False, True):
            print(f"\n== {dtype}, {'forward+backward' if grad else 'no-grad forward'}: batch "
                  f"{args.batch}, prompt {args.prompt} + response {args.response} tokens")
            print(f"{'config':<16}{'weights MB':>11}{'seconds':>9}{'peak MB':>10}{'time x':>8}{'mem x':>8}")
            rows = {}
            for name in CONFIGS:
                cmd = [sys.executable, __file__, "--worker", name, dtype, str(int(grad)),
                       "--batch", str(args.batch), "--prompt", str(args.prompt),
                       "--response", str(args.response), "--repeats", str(args.repeats)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                rows[name] = json.loads(out.strip().splitlines()[-1])
                r, b = rows[name], rows["backbone"]
                print(f"{name:<16}{r['weights_mb']:>11.0f}{r['seconds']:>9.2f}{r['peak_mb']:>10.0f}"
                      f"{r['seconds'] / b['seconds']:>7.2f}x{r['peak_mb'] / max(b['peak_mb'], 1):>7.2f}x")


if __name__ == "__main__":
    main()
