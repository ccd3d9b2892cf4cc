"""Env step overhead per K-token block, char tokenizer, without the verifier.

Baseline measured in the same run: the least work a block step has to do (append the block to a
Python list and decode the response so far with the same tokenizer). Prints microseconds per
block for ``ReasoningEnv.step`` and the ratio to that baseline, per K.

    python benchmarks/bench_env.py [--episodes 300]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import mpo_gym  # noqa: F401  (registers the envs)
from mpo_gym.verifiers import ExactMatchVerifier


def bench_env(k: int, episodes: int) -> tuple[float, int]:
    env = gym.make("mpo_gym/Arithmetic-v0", tokenizer="char", block_size=k, max_new_tokens=128).unwrapped
    env.verifier = ExactMatchVerifier()  # string compare once per episode: the verifier costs ~nothing
    rng = np.random.default_rng(0)
    blocks = [rng.integers(4, 90, size=k) for _ in range(256)]  # no EOS: every episode runs 128 tokens
    steps, t = 0, 0.0
    for e in range(episodes):
        env.reset(options={"task_index": e})
        done = False
        start = time.perf_counter()
        while not done:
            _, _, terminated, truncated, _ = env.step(blocks[steps % 256])
            done, steps = terminated or truncated, steps + 1
        t += time.perf_counter() - start
    return t, steps


def bench_baseline(k: int, episodes: int) -> tuple[float, int]:
    tok = mpo_gym.tokenizers.get_tokenizer("char")
    rng = np.random.default_rng(0)
    blocks = [rng.integers(4, 90, size=k) for _ in range(256)]
    steps, t = 0, 0.0
    for _ in range(episodes):
        response: list[int] = []
        start = time.perf_counter()
        while len(response) < 128:
            response.extend(int(x) for x in blocks[steps % 256][: 128 - len(response)])
            tok.decode(response)
            steps += 1
        t += time.perf_counter() - start
    return t, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=300)
    args = parser.parse_args()
    print(f"{'K':>3} {'env us/block':>13} {'baseline us/block':>18} {'ratio':>7}")
    for k in (1, 4, 8, 16):
        t_env, n_env = bench_env(k, args.episodes)
        t_base, n_base = bench_baseline(k, args.episodes)
        env_us, base_us = 1e6 * t_env / n_env, 1e6 * t_base / n_base
        print(f"{k:>3} {env_us:>13.1f} {base_us:>18.1f} {env_us / base_us:>7.2f}")


if __name__ == "__main__":
    main()
