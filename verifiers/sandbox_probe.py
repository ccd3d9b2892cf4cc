"""Capability probe for the sandbox: which isolation layers work on this machine.

:func:`probe` tries a real ``bwrap`` run (as uid 65534 through ``setpriv`` when we are root,
falling back to ``bwrap``'s own uid mapping), looks for a writable pids+memory cgroup
hierarchy and for a seccomp syscall table, and caches the answer. It also builds the
``bwrap`` command line the sandbox uses, so the probe tests exactly what runs later.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass

from .sandbox_layers import CgroupLayout, detect_cgroups, remove_stale_cgroups, seccomp_supported

SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534


@dataclass(frozen=True)
class Capabilities:
    """Which isolation layers work on this machine (see :func:`probe`).

    Attributes:
        bwrap: path of a working ``bwrap``, or ``None``.
        setpriv: path of ``setpriv`` used to start ``bwrap`` as uid 65534 (root only).
        cgroups: writable pids+memory cgroup layout, or ``None``.
        seccomp: whether a seccomp filter can be installed through ``bwrap``.
        python: the interpreter used inside the sandbox.
        problems: why a layer is missing, for the user.
    """

    bwrap: str | None
    setpriv: str | None
    cgroups: CgroupLayout | None
    seccomp: bool
    python: str
    problems: tuple[str, ...] = ()

    @property
    def strong(self) -> bool:
        """Namespace + filesystem isolation is available (required for untrusted code)."""
        return self.bwrap is not None

    def layers(self) -> list[str]:
        """Names of the active layers, weakest first."""
        active = ["verdict-protocol", "process-group+deadline", "rlimits"]
        if self.cgroups:
            active.append(self.cgroups.describe())
        if self.bwrap:
            active.append("bwrap-namespaces(no-net,ro-fs,tmpfs,uid-65534)")
            if self.setpriv:
                active.append("host-uid-65534")
            if self.seccomp:
                active.append("seccomp")
        return active


_PROBE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _cached_probe() -> Capabilities:
    problems: list[str] = []
    python = SYSTEM_PYTHON if os.access(SYSTEM_PYTHON, os.X_OK) else ""
    if not python:
        problems.append(f"{SYSTEM_PYTHON} not found")
    setpriv = shutil.which("setpriv") if os.geteuid() == 0 else None
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        problems.append("bwrap not installed (Debian/Ubuntu: apt-get install bubblewrap)")
    elif python and not _bwrap_works(bwrap, setpriv, python, problems):
        if setpriv and _bwrap_works(bwrap, None, python, problems):
            setpriv = None
        else:
            bwrap = None
    cgroups = detect_cgroups()
    if cgroups is not None:
        remove_stale_cgroups(cgroups)
    if cgroups is None:
        problems.append("no writable pids+memory cgroup under /sys/fs/cgroup")
    seccomp = bool(bwrap) and seccomp_supported()
    return Capabilities(
        bwrap, setpriv if bwrap else None, cgroups, seccomp, python, tuple(problems)
    )


def probe(refresh: bool = False) -> Capabilities:
    """Detect the isolation layers available here (cached; ``refresh=True`` re-detects)."""
    with _PROBE_LOCK:
        if refresh:
            _cached_probe.cache_clear()
        return _cached_probe()


def _bwrap_works(bwrap: str, setpriv: str | None, python: str, problems: list[str]) -> bool:
    caps = Capabilities(bwrap, setpriv, None, False, python)
    argv = (
        drop_privileges(caps)
        + [bwrap, *bwrap_args(caps, None, 8)]
        + [python, "-I", "-S", "-c", "print(6 * 7)"]
    )
    try:
        done = subprocess.run(argv, capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        problems.append(f"bwrap failed to start: {exc}")
        return False
    if done.stdout.strip() != b"42":
        problems.append(f"bwrap does not work here: {done.stderr.decode(errors='replace')[-300:]}")
        return False
    return True


def drop_privileges(caps: Capabilities) -> list[str]:
    if not caps.setpriv:
        return []
    return [
        caps.setpriv,
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        "--inh-caps=-all",
    ]


def bwrap_args(caps: Capabilities, scratch: str | None, tmpfs_mb: int) -> list[str]:
    args = [
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--uid",
        str(NOBODY),
        "--gid",
        str(NOBODY),
        "--hostname",
        "sandbox",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "HOME",
        "/tmp",
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(tmpfs_mb << 20),
        "--tmpfs",
        "/tmp",
        "--size",
        str(tmpfs_mb << 20),
        "--tmpfs",
        "/dev/shm",
        "--chdir",
        "/tmp",
    ]
    if scratch:
        args += ["--ro-bind", scratch, "/task"]
    return args
