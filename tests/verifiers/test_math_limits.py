"""Hard limits, isolation and injection for ``MathVerifier`` and its worker pool."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid

import pytest

from mpo_gym.verifiers import MathVerifier
from mpo_gym.verifiers.pool import WorkerPool

LIMIT = 1.0
HOSTILE = {
    "tower": ("3", r"\boxed{9^{9^{9^9}}}"),
    "digits": ("1", "\\boxed{" + "7" * 100_000 + "}"),
    "nested": ("1", "\\boxed{" + "(" * 10_000 + "1" + ")" * 10_000 + "}"),
    "poly": ("x^{2000}", r"\boxed{(x+1)^{2000}}"),
    "plain_tower": ("3", "9^9^9^9^9"),
    "factorial": ("3", r"\boxed{(10^{10})!}"),
}


@pytest.fixture(scope="module")
def verifier():
    return MathVerifier(timeout_s=LIMIT)


def _timed(fn, *args):
    start = time.monotonic()
    out = fn(*args)
    return out, time.monotonic() - start


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_is_bounded(verifier, name):
    verifier.verify("\\boxed{2/4}", "1/2")  # pool warm: time the check, not the start-up
    reference, response = HOSTILE[name]
    verdict, seconds = _timed(verifier.verify, response, reference)
    assert seconds < LIMIT + 1.0, (name, seconds, verdict)
    assert verdict.status in ("timeout", "incorrect"), verdict
    assert verdict.reward == 0.0


def test_power_tower_times_out_and_worker_is_replaced(verifier):
    verifier.verify("\\boxed{2/4}", "1/2")
    before, replaced = verifier.pool.pids(), verifier.pool.replaced
    verdict, seconds = _timed(verifier.verify, *reversed(HOSTILE["tower"]))
    assert verdict.status == "timeout" and seconds < LIMIT + 1.0
    assert verifier.pool.replaced == replaced + 1
    assert verifier.pool.pids() != before
    assert verifier.verify("\\boxed{2}", "1+1").status == "correct"  # the pool still works


def test_reordered_nested_radicals_are_equal_without_simplify(verifier):
    """Terms of a denominator only reordered: settled structurally, far inside the limit
    (``simplify`` on this difference used to run past 10 s)."""
    verifier.verify("\\boxed{2/4}", "1/2")
    gold = r"\frac{\sqrt{\sqrt{11}+\sqrt{194}}}{15+2\sqrt{33}}"
    response = r"\boxed{\frac{\sqrt{\sqrt{11}+\sqrt{194}}}{2\sqrt{33}+15}}"
    verdict, seconds = _timed(verifier.verify, response, gold)
    assert verdict.status == "correct", verdict
    assert seconds < LIMIT


def test_timeout_from_worker_threads(verifier):
    verifier.verify("\\boxed{2/4}", "1/2")
    results: list[tuple[str, float]] = []

    def job(response, reference):
        verdict, seconds = _timed(verifier.verify, response, reference)
        results.append((verdict.status, seconds))

    threads = [threading.Thread(target=job, args=(r"\boxed{9^{9^{9^9}}}", "3"))]
    threads += [threading.Thread(target=job, args=(r"\boxed{\frac{1}{2}}", "0.5"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(s for s, _ in results) == ["correct", "timeout"]
    assert all(sec < LIMIT + 1.0 for _, sec in results), results


def test_batch_with_a_hostile_item_keeps_order_and_finishes(verifier):
    responses = [r"\boxed{2}", r"\boxed{9^{9^{9^9}}}", r"\boxed{\frac{6}{4}}", "nothing here"]
    references = ["2", "3", "1.5", "4"]
    verdicts, seconds = _timed(verifier.verify_batch, responses, references)
    assert [v.status for v in verdicts] == ["correct", "timeout", "correct", "no_answer"]
    assert seconds < 2 * (LIMIT + 1.0)


@pytest.mark.parametrize("payload", [
    "__import__('os').system('touch {p}')",
    "__import__(\"os\").system(\"touch {p}\")",
    "open('{p}', 'w').write('x')",
    "exec(\"open('{p}','w')\")",
    "\\text{__import__('os').system('touch {p}')}",
    "(lambda: __import__('os').system('touch {p}'))()",
    "x; import os; os.system('touch {p}')",
])
@pytest.mark.parametrize("where", ["response", "reference"])
def test_injected_code_does_nothing(verifier, tmp_path, payload, where):
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    text = payload.replace("{p}", str(marker))
    if where == "response":
        verdict = verifier.verify("\\boxed{" + text + "}", "3")
        assert verdict.status == "incorrect"
        verdict = verifier.verify(text, "3")
        assert verdict.status in ("incorrect", "no_answer")
    else:
        verdict = verifier.verify("\\boxed{3}", text)
        assert verdict.status in ("incorrect", "error")
    time.sleep(0.05)
    assert not marker.exists()


def test_plain_text_path_never_calls_eval_or_parse_expr(monkeypatch):
    """Parse model-style plain text in-process with every eval-like entry point booby-trapped."""
    import builtins

    import latex2sympy2_extended.latex2sympy2 as l2s
    import sympy.parsing.sympy_parser as sp

    from mpo_gym.verifiers.math import check_answer

    def trap(*args, **kwargs):
        raise AssertionError("eval-like call on model text")

    cases = [("1/2", "2/4"), ("2*sqrt(3)", "sqrt(12)"), ("x^2+1", "1+x**2"),
             ("3", "__import__('os')"), ("1", "os.system('ls')"), ("\\frac{1}{2}", "0.5")]
    for gold, pred in cases:  # first run: let sympy finish its lazy imports (they use exec)
        check_answer(gold + "+0", pred + "+0")

    monkeypatch.setattr(sp, "parse_expr", trap)
    monkeypatch.setattr(l2s, "parse_expr", trap)
    monkeypatch.setattr(builtins, "eval", trap)
    monkeypatch.setattr(builtins, "exec", trap)
    for gold, pred in cases:
        status, _ = check_answer(gold, pred)
        assert status in ("correct", "incorrect")


def test_constructing_is_cheap_and_starts_no_process():
    import multiprocess

    before = len(multiprocess.active_children())
    start = time.thread_time()
    for _ in range(100):
        MathVerifier(timeout_s=2.0, boxed_only=True)
    assert time.thread_time() - start < 2.0  # no process start, no model load
    assert len(multiprocess.active_children()) == before


def test_workers_are_reused_across_checks(verifier):
    verifier.verify("\\boxed{2/4}", "1/2")
    pids = verifier.pool.pids()
    verifier.verify_batch([f"\\boxed{{{i}/2}}" for i in range(20)], [str(i / 2) for i in range(20)])
    assert verifier.pool.pids() == pids


def test_interpreter_exits_cleanly_with_live_workers():
    code = (
        "from mpo_gym.verifiers import MathVerifier\n"
        "v = MathVerifier(timeout_s=2)\n"
        "print(v.verify('\\\\boxed{0.5}', '\\\\frac12').status)\n"
        "print(*v.pool.pids())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    lines = proc.stdout.split("\n")
    assert proc.returncode == 0 and lines[0] == "correct", proc.stderr
    time.sleep(0.2)
    for pid in map(int, lines[1].split()):
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie_or_gone(pid)


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except OSError:
        return True


# -- the generic pool -----------------------------------------------------------------------
def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _boom() -> None:
    raise ValueError("boom")


@pytest.fixture(scope="module")
def pool():
    p = WorkerPool(2)
    yield p
    p.close()


def test_pool_runs_and_keeps_order(pool):
    results = pool.map(pow, [(2, i) for i in range(50)])
    assert [r.value for r in results] == [2**i for i in range(50)]


def test_pool_timeout_kills_and_replaces(pool):
    pool.run(os.getpid)
    before = pool.pids()
    result, seconds = _timed(pool.run, _sleep, (30,), 0.5)
    assert result.status == "timeout" and seconds < 1.5
    assert pool.pids() != before and len(pool.pids()) == 2
    assert pool.run(_sleep, (0.01,)).value == 0.01


def test_pool_reports_exceptions_and_dead_workers(pool):
    err = pool.run(_boom)
    assert err.status == "error" and "ValueError: boom" in err.detail
    dead = pool.run(os._exit, (3,))
    assert dead.status == "error"
    assert pool.run(pow, (3, 2)).value == 9


def test_pool_timeouts_in_parallel_threads(pool):
    results, seconds = _timed(pool.map, _sleep, [(30,), (30,), (0.01,)], 0.5)
    assert [r.status for r in results] == ["timeout", "timeout", "ok"]
    assert seconds < 2.0


def test_a_bug_of_ours_is_error_not_incorrect(monkeypatch):
    import mpo_gym.verifiers.math as math_mod

    def broken(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(math_mod, "extract_answer", broken)
    verdict = MathVerifier().verify("\\boxed{1}", "1")
    assert verdict.status == "error" and "KeyError" in verdict.detail


def test_numeric_and_missing_references():
    v = MathVerifier()
    assert v.verify("\\boxed{5}", 5).status == "correct"
    assert v.verify("\\boxed{1/2}", 0.5).status == "correct"
    assert v.verify("\\boxed{5}", None).status == "error"
    assert v.verify("\\boxed{5}", "").status == "error"
    assert v.verify(None, "5").status == "no_answer"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one reference per response"):
        v.verify_batch(["1", "2"], ["1"])


def test_boxed_only_ignores_answer_lines():
    v = MathVerifier(boxed_only=True)
    assert v.verify("Answer: 5", "5").status == "no_answer"
    assert v.verify("5", "5").status == "no_answer"
    assert v.verify("so \\boxed{5}", "5").status == "correct"


def test_registry_and_shared_pool():
    from mpo_gym.verifiers import Verifier, make_verifier

    v = make_verifier("math", timeout_s=2.0)
    assert isinstance(v, MathVerifier) and isinstance(v, Verifier)
    assert v.pool is MathVerifier().pool  # one worker pool per process
    assert v.verify("The final answer is $\\frac{2}{4}$.", "0.5").status == "correct"


def test_pool_memory_cap_is_an_error_and_the_worker_is_replaced(pool):
    pool.run(os.getpid)
    replaced = pool.replaced
    result = pool.run(bytearray, (4 << 30,), 10.0)  # beyond the 2 GiB per-worker cap
    assert result.status == "error" and result.detail.startswith("MemoryError")
    assert pool.replaced == replaced + 1
    assert pool.run(pow, (2, 10)).value == 1024


def test_pool_workers_exit_when_their_parent_is_killed(tmp_path):
    """A parent killed outright (SIGKILL, the OOM killer) leaves no worker behind: the workers
    close the parent's pipe end they inherited and watch the parent's pid."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import time\n"
        "from mpo_gym.verifiers.pool import WorkerPool\n"
        "pool = WorkerPool(3)\n"
        "pool.map(abs, [(-1,), (-2,), (-3,)])\n"
        "print(' '.join(map(str, pool.pids())), flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 3
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _running(p)]
    assert not alive, f"workers {alive} outlived their killed parent"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
