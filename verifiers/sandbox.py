"""Run untrusted Python in a throw-away sandbox and collect its output from the outside.

Layers (each assumes the ones above it failed; :func:`probe` reports which are active):

1. **Process and time**: a fresh process per run in its own process group, stdin closed, a
   wall-clock deadline enforced by this process with SIGKILL, output read with byte caps.
2. **Resources**: ``RLIMIT_AS/CPU/FSIZE/NOFILE/CORE`` set by the runner before untrusted code
   starts; a per-run pids + memory cgroup (v1 or v2) when ``/sys/fs/cgroup`` is writable.
3. **Namespaces and filesystem** (``bwrap``): new user/pid/net/ipc/uts/cgroup namespaces (no
   network at all), read-only ``/usr``, private ``/proc`` and ``/dev``, size-capped private
   tmpfs ``/tmp`` and ``/dev/shm``, the run's files read-only at ``/task``, uid 65534, a
   cleared environment, ``--die-with-parent``, ``--new-session``, no further user namespaces, and the *system*
   interpreter ``/usr/bin/python3 -I -S`` (never the caller's virtualenv). When we are root,
   ``bwrap`` itself is started as uid 65534 (``setpriv``), so the sandbox is not root on the
   host even through the user namespace.
4. **Syscall filter** (x86_64): a seccomp deny-list (ptrace, mount, namespaces, keyrings,
   bpf, kernel modules, io_uring) and an allow-list of socket families for ``socket`` and
   ``socketpair``: ``AF_UNIX`` only (no ``AF_INET*``, ``AF_PACKET``, ``AF_NETLINK``, and no
   ``AF_VSOCK``, which the network namespace does not separate from the host or hypervisor).
5. **Hygiene**: a random scratch directory per run, removed afterwards; nothing from the
   caller's environment, home, repository or temp directory is visible.

What this does **not** protect against:

- Kernel exploits and CPU side channels: everything shares one kernel; a kernel bug that
  escapes namespaces escapes this sandbox.
- Denial of service on shared resources that cgroups do not cover here: disk I/O bandwidth,
  kernel memory in some cgroup-v1 setups, and CPU: there is no CPU cgroup, so concurrent
  checks (and everything else on the machine) compete for the cores. A submission that
  spins, or forks up to the pids limit and spins, slows its neighbours until its deadline
  kills it; on a loaded machine an honest but slow submission can then hit *its* deadline
  and be judged ``timeout``. The deadline is wall-clock, so such verdicts depend on the load.
- The caller's work on what comes back is bounded (the channel, stdout and stderr byte caps;
  JSON lines split on ``\n`` only and counted before parsing; results rebuilt within a budget
  taken from the expected value, see ``code_compare.py``), but it runs in the caller's process
  after the run: up to ``Limits.channel_bytes`` of JSON is parsed there (tens of ms, ~20x
  the bytes in transient memory), holding the GIL meanwhile.
- Anything in unsafe mode (``unsafe=True`` without ``bwrap``): then only layers 1-2 apply and
  the code can read and write whatever the calling user can, open network connections, and
  (without cgroups) leave daemonised processes behind. Use it only for code you trust.
- A caller killed mid-check: the sandbox dies with it (``--die-with-parent``), but its
  scratch dir and empty cgroup stay until the next :class:`Sandbox` is created, which removes
  those of dead processes.
- Reading the sandbox's own inputs: call arguments and stdin are visible to the code by
  design; expected outputs are never passed in (see ``code.py``).
"""

from __future__ import annotations

import contextlib
import glob
import marshal
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .sandbox_layers import RunCgroup, pid_alive, seccomp_program
from .sandbox_probe import (
    NOBODY,
    SYSTEM_PYTHON,
    Capabilities,
    bwrap_args,
    drop_privileges,
    probe,
)

__all__ = [
    "NOBODY",
    "SCRATCH_PREFIX",
    "SYSTEM_PYTHON",
    "Capabilities",
    "Limits",
    "Sandbox",
    "SandboxProcess",
    "SandboxResult",
    "SandboxUnavailableError",
    "collect",
    "probe",
    "run_in_sandbox",
]

SCRATCH_PREFIX = "mpo-gym-sbx-"  # + pid + random, under tempfile.gettempdir()
_RUNNER_SOURCE = (Path(__file__).with_name("code_runner.py")).read_bytes()


class SandboxUnavailableError(RuntimeError):
    """No strong isolation layer is available and unsafe mode was not requested."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandboxed run.

    Attributes:
        memory_mb: ``RLIMIT_AS`` per process, and (plus ``tmpfs_mb``) the cgroup memory cap.
        cpu_s: ``RLIMIT_CPU`` seconds per process.
        fsize_mb: largest file a process may write (``RLIMIT_FSIZE``).
        nofile: open file descriptors per process (``RLIMIT_NOFILE``).
        pids: processes + threads in the run's cgroup (``pids.max``).
        tmpfs_mb: size of the private ``/tmp``.
        output_bytes: cap on each of stdout and stderr; exceeding it kills the run.
        channel_bytes: cap on the result channel; exceeding it kills the run. The caller
            parses up to this much JSON per check (transiently ~20x as much memory for
            adversarial tiny values), so keep it modest.
    """

    memory_mb: int = 1024
    cpu_s: int = 10
    fsize_mb: int = 16
    nofile: int = 64
    pids: int = 64
    tmpfs_mb: int = 64
    output_bytes: int = 1 << 20
    channel_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive int; got {value!r}")
        if self.nofile < 16:
            raise ValueError(
                f"Limits.nofile must be at least 16 (the runner needs a few); got {self.nofile}"
            )

    def rlimits(self) -> dict[str, int]:
        """The ``RLIMIT_*`` values the runner applies, in bytes/seconds/counts."""
        return {
            "as": self.memory_mb << 20,
            "cpu": self.cpu_s,
            "fsize": self.fsize_mb << 20,
            "nofile": self.nofile,
            "core": 0,
        }


@dataclass
class SandboxResult:
    """What came out of one run, as raw bytes; the caller decides what it means.

    Attributes:
        channel: bytes written to the dedicated result descriptor.
        stdout, stderr: captured output (at most ``Limits.output_bytes`` each).
        returncode: exit status (negative: killed by that signal); ``None`` if unknown.
        timed_out: the wall-clock deadline was hit and the run was killed.
        overflow: ``"stdout"``, ``"stderr"`` or ``"channel"`` if that cap was exceeded.
        oom_killed, pids_limited: cgroup events seen during the run.
        elapsed_s: wall-clock seconds from start to collection.
        failure: the sandbox itself failed (could not start), with the reason.
    """

    channel: bytes = b""
    stdout: bytes = b""
    stderr: bytes = b""
    returncode: int | None = None
    timed_out: bool = False
    overflow: str | None = None
    oom_killed: bool = False
    pids_limited: bool = False
    elapsed_s: float = 0.0
    failure: str | None = None


@dataclass
class SandboxProcess:
    """A started run: the process, its pipes, cgroup and scratch dir."""

    proc: subprocess.Popen | None
    streams: dict[str, int]
    byte_caps: dict[str, int]
    cgroup: RunCgroup | None
    scratch: str
    started: float
    result: SandboxResult = field(default_factory=SandboxResult)
    buffers: dict[str, bytearray] = field(default_factory=dict)


class Sandbox:
    """Starts sandboxed runs of ``code_runner.py`` with one set of limits.

    Args:
        limits: resource limits per run.
        unsafe: allow running without namespace isolation (no ``bwrap``). Only for trusted code.
        cgroups: use pids/memory cgroups when writable.
        seccomp: install the seccomp filter when supported.

    Raises:
        SandboxUnavailableError: no strong layer is available and ``unsafe`` is false.
    """

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        unsafe: bool = False,
        cgroups: bool = True,
        seccomp: bool = True,
    ) -> None:
        found = probe()
        if not found.python:
            raise SandboxUnavailableError(f"{SYSTEM_PYTHON} is required inside the sandbox")
        if not found.strong and not unsafe:
            raise SandboxUnavailableError(
                "refusing to run untrusted code without namespace isolation: "
                + "; ".join(found.problems)
                + ". Install bubblewrap, or pass unsafe=True for code you trust."
            )
        self.limits = limits or Limits()
        self.unsafe = unsafe and not found.strong
        self.caps = Capabilities(
            found.bwrap,
            found.setpriv,
            found.cgroups if cgroups else None,
            found.seccomp and seccomp,
            found.python,
            found.problems,
        )
        self._seccomp = seccomp_program() if self.caps.seccomp else b""
        _remove_stale_scratch()

    def layers(self) -> list[str]:
        """The isolation layers this sandbox applies."""
        return self.caps.layers() if not self.unsafe else self.caps.layers() + ["UNSAFE-MODE"]

    def start(
        self, payload: dict, *, files: dict[str, bytes] | None = None, pipes: Sequence[int] = ()
    ) -> SandboxProcess:
        """Start ``code_runner.py`` on ``payload``; ``pipes`` are extra fds passed through.

        The runner receives ``payload`` (plus ``limits``, ``workdir``) as the ``marshal`` file
        ``/task/payload.bin``, and ``files`` beside it. Takes ownership of ``pipes`` (closes
        this process's copies). Never raises for sandbox problems: a failed start is reported
        in ``result.failure`` by :func:`collect`, which also cleans up.
        """
        scratch = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
        byte_caps = {
            "stdout": self.limits.output_bytes,
            "stderr": self.limits.output_bytes,
            "channel": self.limits.channel_bytes,
        }
        run = SandboxProcess(None, {}, byte_caps, None, scratch, time.monotonic())
        owned = list(pipes)  # closed here exactly once, whatever happens
        try:
            self._launch(run, payload, files or {}, owned)
        except Exception as exc:  # report, never raise into the verifier
            run.result.failure = f"sandbox failed to start: {type(exc).__name__}: {exc}"
        finally:
            for fd in owned:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return run

    def _launch(
        self, run: SandboxProcess, payload: dict, files: dict[str, bytes], owned: list[int]
    ) -> None:
        task = "/task" if self.caps.bwrap else run.scratch
        workdir = "/tmp" if self.caps.bwrap else os.path.join(run.scratch, "work")
        full = {**payload, "limits": self._rlimits(), "workdir": workdir}
        full.update({f"{name}_path": f"{task}/{name}" for name in files})
        self._write_scratch(run.scratch, full, files)
        channel_r, channel_w = os.pipe()
        run.streams["channel"] = channel_r  # closed by collect()
        owned.insert(0, channel_w)
        seccomp_r = self._seccomp_fd(owned)
        extra_fds = list(owned)  # channel, then the caller's pipes, then seccomp
        argv = self._argv(run.scratch, task, extra_fds, seccomp_r)
        if self.caps.cgroups:
            memory = (self.limits.memory_mb + self.limits.tmpfs_mb + 64) << 20
            run.cgroup = RunCgroup(
                self.caps.cgroups, pids_max=self.limits.pids, memory_bytes=memory
            )
            argv = run.cgroup.wrap(argv)
        run.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=extra_fds,
            start_new_session=True,
            env=self._env(),
            cwd=run.scratch,
        )
        assert run.proc.stdout is not None and run.proc.stderr is not None  # PIPEs above
        run.streams.update(stdout=run.proc.stdout.fileno(), stderr=run.proc.stderr.fileno())

    def _rlimits(self) -> dict[str, int]:
        limits = self.limits.rlimits()
        if self.caps.cgroups is None and self.caps.setpriv:
            # No pids cgroup: bound fork bombs by the sandbox's host uid (65534) instead. The
            # count is shared by all concurrent sandboxes, hence the headroom.
            limits["nproc"] = self.limits.pids * 16
        return limits

    def _seccomp_fd(self, owned: list[int]) -> int | None:
        if not self._seccomp:
            return None
        read_end, write_end = os.pipe()
        owned.append(read_end)
        try:
            os.write(write_end, self._seccomp)
        finally:
            os.close(write_end)
        return read_end

    def _write_scratch(self, scratch: str, payload: dict, files: dict[str, bytes]) -> None:
        entries = {"runner.py": _RUNNER_SOURCE, "payload.bin": marshal.dumps(payload, 4)}
        entries.update(files)
        for name, data in entries.items():
            with open(os.path.join(scratch, name), "wb") as handle:
                handle.write(data)
            os.chmod(os.path.join(scratch, name), 0o444)
        if not self.caps.bwrap:
            os.mkdir(os.path.join(scratch, "work"), 0o700)
        elif self.caps.setpriv:  # readable by the sandbox's host uid, and by nobody else
            os.chown(scratch, NOBODY, NOBODY)
            os.chmod(scratch, 0o500)

    def _argv(
        self, scratch: str, task: str, extra_fds: list[int], seccomp_fd: int | None
    ) -> list[str]:
        runner = [
            self.caps.python,
            "-I",
            "-S",
            f"{task}/runner.py",
            f"{task}/payload.bin",
            *(str(fd) for fd in extra_fds if fd != seccomp_fd),
        ]
        if not self.caps.bwrap:
            return runner
        args = bwrap_args(self.caps, scratch, self.limits.tmpfs_mb)
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        return drop_privileges(self.caps) + [self.caps.bwrap, *args, *runner]

    @staticmethod
    def _env() -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}

    def run(
        self, payload: dict, *, timeout_s: float, files: dict[str, bytes] | None = None
    ) -> SandboxResult:
        """Start and collect one run with a wall-clock limit of ``timeout_s``."""
        run = self.start(payload, files=files)
        return collect([run], time.monotonic() + timeout_s)[0]


def _remove_stale_scratch() -> None:
    """Delete scratch dirs of processes that died mid-check (ours are removed after each run)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{SCRATCH_PREFIX}*-*")):
        owner = os.path.basename(path)[len(SCRATCH_PREFIX) :].split("-")[0]
        if owner.isdigit() and not pid_alive(int(owner)):
            shutil.rmtree(path, ignore_errors=True)


def run_in_sandbox(
    payload: dict,
    *,
    timeout_s: float = 5.0,
    limits: Limits | None = None,
    files: dict[str, bytes] | None = None,
    unsafe: bool = False,
) -> SandboxResult:
    """One-shot convenience: build a :class:`Sandbox` and run ``payload`` in it."""
    return Sandbox(limits, unsafe=unsafe).run(payload, timeout_s=timeout_s, files=files)


def collect(runs: Sequence[SandboxProcess], deadline: float) -> list[SandboxResult]:
    """Read every run's pipes until all exit or ``deadline`` (``time.monotonic()``) passes.

    All runs are killed (whole process group and cgroup) and cleaned up before returning.
    """
    live = [r for r in runs if r.proc is not None and r.result.failure is None]
    try:
        _pump(live, deadline)
        for run in live:
            _wait(run, deadline)
    finally:
        for run in runs:
            _cleanup(run)
    return [r.result for r in runs]


def _pump(runs: Sequence[SandboxProcess], deadline: float) -> None:
    with selectors.DefaultSelector() as selector:
        for run in runs:
            for name, fd in run.streams.items():
                run.buffers[name] = bytearray()
                selector.register(fd, selectors.EVENT_READ, (run, name))
        open_fds = sum(len(r.streams) for r in runs)
        while open_fds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for run in runs:
                    run.result.timed_out = True
                return
            for key, _ in selector.select(remaining):
                run, name = key.data
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fd)
                    open_fds -= 1
                    continue
                if len(run.buffers[name]) > run.byte_caps[name]:
                    continue  # already over the cap and killed: drain until EOF
                run.buffers[name] += chunk
                if len(run.buffers[name]) > run.byte_caps[name]:
                    run.result.overflow = run.result.overflow or name
                    _kill(run)


def _wait(run: SandboxProcess, deadline: float) -> None:
    assert run.proc is not None, "the sandbox process was started"
    try:
        run.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        run.result.timed_out = True


def _kill(run: SandboxProcess) -> None:
    if run.proc is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.proc.pid, signal.SIGKILL)
    if run.cgroup is not None:
        run.cgroup.kill_all(wait_s=0.0)


def _cleanup(run: SandboxProcess) -> None:
    result = run.result
    _kill(run)
    if run.proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.proc.wait(timeout=5)
        result.returncode = run.proc.returncode
        for stream in (run.proc.stdout, run.proc.stderr):
            if stream is not None:
                stream.close()
    if "channel" in run.streams:
        with contextlib.suppress(OSError):
            os.close(run.streams["channel"])
    for name, buffer in run.buffers.items():
        setattr(result, name, bytes(buffer[: run.byte_caps[name]]))
    if run.cgroup is not None:
        result.oom_killed, result.pids_limited = run.cgroup.events()
        run.cgroup.remove()
    shutil.rmtree(run.scratch, ignore_errors=True)
    result.elapsed_s = time.monotonic() - run.started
    if result.failure is None and result.returncode not in (0, None) and not result.channel:
        text = result.stderr.decode("utf-8", "replace")
        if text.startswith("bwrap:") or text.startswith("setpriv:"):
            result.failure = "sandbox failed: " + text.strip()[-300:]
