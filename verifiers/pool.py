"""A small process pool with a hard wall-clock limit per task.

Each task runs in a long-lived worker process (so imports and caches are paid once). The
caller's thread waits on the worker's pipe for at most ``timeout_s`` seconds; when the limit
passes the worker is killed with ``SIGKILL`` and a fresh one is started in its place. No
signals are used in the caller, so :meth:`WorkerPool.run` works from any thread.

Workers start lazily, on the first task, and are stopped at interpreter exit.

What this does *not* do: it is not a sandbox. Workers share the caller's user, filesystem
and network; a task may only run trusted code (our own checking functions) on untrusted
*data*. Results are unpickled in the caller, so only return plain data from tasks.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import multiprocess as mp

STARTUP_TIMEOUT_S = 120.0
_SPAWN_LOCK = threading.Lock()
MEMORY_LIMIT_BYTES = 2 << 30


@dataclass(frozen=True)
class TaskResult:
    """Outcome of one task.

    Attributes:
        status: ``"ok"`` (``value`` holds the return value), ``"timeout"`` (killed at the
            limit), or ``"error"`` (the task raised or the worker died; see ``detail``).
        value: the task's return value when ``status == "ok"``.
        detail: the exception text for errors, or a short note for timeouts.
        seconds: wall-clock time spent waiting for the worker.
    """

    status: str
    value: Any = None
    detail: str = ""
    seconds: float = 0.0


def local_cpus() -> int:
    """CPUs this process may use, shared among the data-parallel ranks on this node
    (``LOCAL_WORLD_SIZE``, set by ``torchrun``); at least 1. Sizes worker pools."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def _limit_memory(extra: int) -> None:
    """Cap the address space at its current size plus ``extra`` bytes (fork-safe)."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = current + extra
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard if hard != -1 else limit))
    except (ImportError, ValueError, OSError, IndexError):
        pass


def _worker_main(conn: Any, initializer: Callable[[], None] | None, memory_limit: int,
                 parent_end: Any = None, parent_pid: int = 0) -> None:
    """Worker loop: run ``(fn, args)`` messages until ``None``, the pipe closes or the parent dies.

    The parent's end of the pipe (inherited through fork) is closed here, so the worker sees
    EOF when the parent goes; and the parent's pid is checked between messages, so a worker
    whose parent was killed (SIGKILL, the OOM killer) exits instead of living on as an orphan.
    SIGINT is ignored: Ctrl-C goes to the whole process group, and the parent decides.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_end is not None:
        parent_end.close()
    if memory_limit:
        _limit_memory(memory_limit)
    try:
        if initializer is not None:
            initializer()
        conn.send(("ready", None))
    except BaseException as exc:  # report, then exit: the parent sees a dead worker
        conn.send(("error", f"initializer failed: {type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            while not conn.poll(1.0):
                if parent_pid and os.getppid() != parent_pid:
                    return  # orphaned
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn, args = msg
        try:
            reply = ("ok", fn(*args))
        except MemoryError:
            conn.send(("fatal", "MemoryError: worker memory limit reached"))
            return  # the heap may be in a bad state: let the parent replace this worker
        except BaseException as exc:  # noqa: BLE001 - every failure goes back as data
            reply = ("error", f"{type(exc).__name__}: {str(exc)[:300]}")
        conn.send(reply)


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, ctx: Any, initializer: Callable[[], None] | None, memory_limit: int):
        self.conn, child = ctx.Pipe(duplex=True)
        forked = ctx.get_start_method() == "fork"
        self.proc = ctx.Process(
            target=_worker_main,
            args=(child, initializer, memory_limit, self.conn if forked else None, os.getpid()),
            daemon=True,
        )
        self.proc.start()
        child.close()
        self.ready = False

    def wait_ready(self) -> str | None:
        """Block until the worker has imported; return an error text or ``None``."""
        if self.ready:
            return None
        if not self.conn.poll(STARTUP_TIMEOUT_S):
            return "worker did not start in time"
        kind, detail = self.conn.recv()
        if kind != "ready":
            return str(detail)
        self.ready = True
        return None

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.join(timeout=5)
        except (OSError, ValueError, AssertionError):
            pass
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
            self.proc.join(timeout=1)
        except (OSError, ValueError, BrokenPipeError):
            pass
        if self.proc.is_alive():
            self.kill()
        else:
            self.conn.close()


class WorkerPool:
    """A fixed number of reusable worker processes with per-task deadlines.

    Args:
        size: number of worker processes (default: the CPU count).
        initializer: called once in each new worker (per-process setup).
        preload: called once in the caller before the first worker starts, with the
            ``"fork"`` start method only, so that workers inherit its imports and
            replacements start warm. It must not change global state the caller relies on.
        memory_limit: extra address space each worker may allocate beyond what it inherits,
            in bytes, enforced with ``RLIMIT_AS`` (0 for no limit).
        start_method: ``multiprocess`` start method. ``"fork"`` (the default) starts fast
            and never re-imports the caller's ``__main__`` (``"spawn"``/``"forkserver"`` do,
            which breaks scripts without an ``if __name__ == "__main__"`` guard).
    """

    def __init__(
        self,
        size: int | None = None,
        *,
        initializer: Callable[[], None] | None = None,
        preload: Callable[[], None] | None = None,
        memory_limit: int = MEMORY_LIMIT_BYTES,
        start_method: str = "fork",
    ) -> None:
        self.size = max(1, size or local_cpus())
        self._initializer = initializer
        self._preload = preload
        self._memory_limit = memory_limit
        self._start_method = start_method
        self._ctx: Any = None
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._cond = threading.Condition()
        self._closed = False
        self.replaced = 0

    # -- lifecycle -------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        if self._ctx is None:
            methods = mp.get_all_start_methods()
            method = self._start_method if self._start_method in methods else methods[0]
            self._ctx = mp.get_context(method)
            atexit.register(self.close)
            if method == "fork" and self._preload is not None:
                self._preload()
        with _SPAWN_LOCK:  # no fork between another pool's Pipe() and its child.close()
            worker = _Worker(self._ctx, self._initializer, self._memory_limit)
        self._all.add(worker)
        return worker

    def _acquire(self) -> _Worker:
        with self._cond:
            if self._closed:
                raise RuntimeError("WorkerPool is closed")
            if not self._all:
                self._idle.extend(self._spawn() for _ in range(self.size))
            while not self._idle:
                self._cond.wait()
            return self._idle.pop()

    def _release(self, worker: _Worker, healthy: bool) -> None:
        if not healthy:
            worker.kill()
        with self._cond:
            if not healthy:
                self._all.discard(worker)
                self.replaced += 1
                if self._closed:
                    return
                worker = self._spawn()
            if self._closed:
                worker.stop()
                return
            self._idle.append(worker)
            self._cond.notify()

    def close(self) -> None:
        """Stop all workers; idempotent. Tasks in flight finish or time out first."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._all.difference_update(idle)
        for worker in idle:
            worker.stop()

    def pids(self) -> list[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        with self._cond:
            return sorted(w.proc.pid for w in self._all if w.proc.pid is not None)

    # -- running tasks ---------------------------------------------------------------------
    def run(
        self, fn: Callable[..., Any], args: Sequence[Any] = (), timeout_s: float = 5.0
    ) -> TaskResult:
        """Run ``fn(*args)`` in a worker and wait at most ``timeout_s`` seconds for it.

        ``fn`` must be picklable (a module-level function). The limit counts from the moment
        the task is handed to a ready worker; time spent waiting for a free worker or for a
        fresh worker to import is not counted.

        Returns:
            A :class:`TaskResult`; never raises for anything the task does.
        """
        worker = self._acquire()
        healthy = False
        start = time.monotonic()
        try:
            problem = worker.wait_ready()
            if problem is not None:
                return TaskResult("error", detail=problem)
            start = time.monotonic()
            worker.conn.send((fn, tuple(args)))
            if not worker.conn.poll(timeout_s):
                return TaskResult("timeout", detail=f"killed after {timeout_s:g}s",
                                  seconds=time.monotonic() - start)
            kind, value = worker.conn.recv()
            healthy = kind != "fatal"
            if kind == "ok":
                return TaskResult("ok", value=value, seconds=time.monotonic() - start)
            return TaskResult("error", detail=str(value), seconds=time.monotonic() - start)
        except (EOFError, OSError, BrokenPipeError) as exc:
            return TaskResult("error", detail=f"worker died: {type(exc).__name__}: {exc}",
                              seconds=time.monotonic() - start)
        finally:
            self._release(worker, healthy)

    def map(
        self, fn: Callable[..., Any], arg_list: Sequence[Sequence[Any]], timeout_s: float = 5.0
    ) -> list[TaskResult]:
        """Run ``fn`` over ``arg_list`` on all workers at once; results keep input order."""
        if not arg_list:
            return []
        if len(arg_list) == 1:
            return [self.run(fn, arg_list[0], timeout_s)]
        threads = min(self.size, len(arg_list))
        with ThreadPoolExecutor(max_workers=threads) as ex:
            return list(ex.map(lambda a: self.run(fn, a, timeout_s), arg_list))


_SHARED: dict[str, WorkerPool] = {}
_SHARED_LOCK = threading.Lock()


def shared_pool(
    name: str,
    size: int | None = None,
    initializer: Callable[[], None] | None = None,
    preload: Callable[[], None] | None = None,
) -> WorkerPool:
    """The process-wide pool called ``name``, created (not started) on first use.

    ``size``, ``initializer`` and ``preload`` only matter for the call that creates it.
    """
    with _SHARED_LOCK:
        pool = _SHARED.get(name)
        if pool is None or pool._closed:
            pool = WorkerPool(size, initializer=initializer, preload=preload)
            _SHARED[name] = pool
        return pool
