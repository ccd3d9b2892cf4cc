"""Kernel-level layers for :mod:`mpo_gym.verifiers.sandbox`: cgroups and a seccomp filter.

- :class:`CgroupLayout` / :class:`RunCgroup`: one pids + memory cgroup per sandboxed run,
  on cgroup v1 (separate ``pids`` and ``memory`` hierarchies) or v2 (unified hierarchy),
  used only when ``/sys/fs/cgroup`` is writable. The run's processes join it through a tiny
  ``/bin/sh`` wrapper *before* the sandbox starts, so nothing escapes the accounting.
- :func:`seccomp_program`: a classic-BPF filter for x86_64 handed to ``bwrap --seccomp``: a
  deny-list of syscalls, and an allow-list of socket families (``AF_UNIX`` only).

Neither is a complete sandbox on its own; see the module docstring of ``sandbox``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import platform
import secrets
import shlex
import signal
import struct
import time
from dataclasses import dataclass

_V1_ROOT = "/sys/fs/cgroup"
_CONTROLLERS = ("pids", "memory")


@dataclass(frozen=True)
class CgroupLayout:
    """Where run cgroups are created.

    Attributes:
        version: ``"v1"`` or ``"v2"``.
        roots: controller name -> hierarchy directory (v2: both map to the same directory).
    """

    version: str
    roots: dict[str, str]

    def describe(self) -> str:
        return f"cgroup-{self.version}(pids,memory)"


def detect_cgroups() -> CgroupLayout | None:
    """Return a writable pids+memory cgroup layout, or ``None`` when there is none."""
    v1 = {c: os.path.join(_V1_ROOT, c) for c in _CONTROLLERS}
    if all(os.path.isfile(os.path.join(p, "cgroup.procs")) for p in v1.values()):
        layout = CgroupLayout("v1", v1)
        if _can_create(layout):
            return layout
    controllers = os.path.join(_V1_ROOT, "cgroup.controllers")
    if os.path.isfile(controllers):
        with open(controllers) as handle:
            available = handle.read().split()
        if all(c in available for c in _CONTROLLERS):
            layout = CgroupLayout("v2", {c: _V1_ROOT for c in _CONTROLLERS})
            if _enable_v2_controllers() and _can_create(layout):
                return layout
    return None


def remove_stale_cgroups(layout: CgroupLayout) -> int:
    """Remove run cgroups left by processes that died mid-check; return how many went."""
    removed = 0
    for root in sorted(set(layout.roots.values())):
        for path in glob.glob(os.path.join(root, "mpo_gym_*_*")):
            owner = os.path.basename(path).split("_")[2]
            if not owner.isdigit() or pid_alive(int(owner)):
                continue
            with open(os.path.join(path, "cgroup.procs")) as handle:
                for line in handle:
                    with contextlib.suppress(OSError, ValueError):
                        os.kill(int(line), signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.rmdir(path)
                removed += 1
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (it may be someone else's after reuse)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _enable_v2_controllers() -> bool:
    path = os.path.join(_V1_ROOT, "cgroup.subtree_control")
    try:
        with open(path) as handle:
            enabled = handle.read().split()
        if all(c in enabled for c in _CONTROLLERS):
            return True
        with open(path, "w") as handle:
            handle.write(" ".join(f"+{c}" for c in _CONTROLLERS))
        return True
    except OSError:
        return False


def _can_create(layout: CgroupLayout) -> bool:
    try:
        group = RunCgroup(layout, pids_max=8, memory_bytes=64 << 20)
    except OSError:
        return False
    group.remove()
    return True


class RunCgroup:
    """A fresh pids + memory cgroup for one run; removed by :meth:`remove`."""

    def __init__(self, layout: CgroupLayout, *, pids_max: int, memory_bytes: int) -> None:
        self.layout = layout
        name = f"mpo_gym_{os.getpid()}_{secrets.token_hex(6)}"
        self.dirs = sorted({os.path.join(root, name) for root in layout.roots.values()})
        for path in self.dirs:
            os.mkdir(path)
        try:
            self._configure(pids_max, memory_bytes)
        except OSError:
            self.remove()
            raise

    def _configure(self, pids_max: int, memory_bytes: int) -> None:
        pids_dir = self._dir("pids")
        mem_dir = self._dir("memory")
        _write(os.path.join(pids_dir, "pids.max"), str(pids_max))
        if self.layout.version == "v1":
            _write(os.path.join(mem_dir, "memory.limit_in_bytes"), str(memory_bytes))
            with contextlib.suppress(OSError):
                _write(os.path.join(mem_dir, "memory.memsw.limit_in_bytes"), str(memory_bytes))
        else:
            _write(os.path.join(mem_dir, "memory.max"), str(memory_bytes))
            with contextlib.suppress(OSError):
                _write(os.path.join(mem_dir, "memory.swap.max"), "0")

    def _dir(self, controller: str) -> str:
        root = self.layout.roots[controller]
        return next(d for d in self.dirs if os.path.dirname(d) == root)

    def wrap(self, argv: list[str]) -> list[str]:
        """Prefix ``argv`` with a shell that joins this cgroup and then ``exec``s it."""
        joins = " && ".join(
            f"echo $$ > {shlex.quote(os.path.join(d, 'cgroup.procs'))}" for d in self.dirs
        )
        return ["/bin/sh", "-c", f'{joins} && exec "$@"', "sh", *argv]

    def pids(self) -> list[int]:
        """Processes currently in the run's pids cgroup."""
        try:
            with open(os.path.join(self._dir("pids"), "cgroup.procs")) as handle:
                return [int(line) for line in handle if line.strip()]
        except OSError:
            return []

    def kill_all(self, wait_s: float = 2.0) -> bool:
        """SIGKILL every process in the cgroup; return ``True`` once it is empty."""
        kill_file = os.path.join(self._dir("pids"), "cgroup.kill")
        deadline = time.monotonic() + wait_s
        while True:
            members = self.pids()
            if not members:
                return True
            if os.path.exists(kill_file):
                with contextlib.suppress(OSError):
                    _write(kill_file, "1")
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)

    def events(self) -> tuple[bool, bool]:
        """``(oom_killed, pids_limit_hit)`` observed during the run."""
        mem_dir, pids_dir = self._dir("memory"), self._dir("pids")
        oom_file = "memory.oom_control" if self.layout.version == "v1" else "memory.events"
        oom = _counter(os.path.join(mem_dir, oom_file), "oom_kill") > 0
        if self.layout.version == "v1" and not oom:
            oom = _counter(os.path.join(mem_dir, "memory.oom_control"), "under_oom") > 0
        pids_hit = _counter(os.path.join(pids_dir, "pids.events"), "max") > 0
        return oom, pids_hit

    def remove(self) -> bool:
        """Kill what is left and remove the directories; ``False`` if one could not go."""
        self.kill_all()
        ok = True
        for path in self.dirs:
            for _ in range(200):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.005)
            else:
                ok = False
        return ok


def _write(path: str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _counter(path: str, key: str) -> int:
    try:
        with open(path) as handle:
            for line in handle:
                parts = line.split()
                if len(parts) == 2 and parts[0] == key:
                    return int(parts[1])
    except (OSError, ValueError):
        pass
    return 0


# --- seccomp -------------------------------------------------------------------------------

_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000
_DENY_X86_64 = {
    "ptrace": 101,
    "syslog": 103,
    "personality": 135,
    "pivot_root": 155,
    "chroot": 161,
    "acct": 163,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "init_module": 175,
    "delete_module": 176,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "perf_event_open": 298,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "fsopen": 430,
    "fsmount": 432,
    "open_tree": 428,
    "move_mount": 429,
}
_SOCKET, _SOCKETPAIR, _CLONE, _CLONE3 = 41, 53, 56, 435
# socket()/socketpair() families allowed: AF_UNIX only. Everything else (AF_INET*, AF_PACKET,
# AF_NETLINK, AF_VSOCK - which the network namespace does not separate -, AF_ALG, ...) fails
# with EPERM. Nothing the runner or the standard library needs uses another family.
ALLOWED_FAMILIES = (1,)
_NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
_EPERM, _ENOSYS = 1, 38
_RET_ALLOW, _RET_ERRNO, _RET_KILL = 0x7FFF0000, 0x00050000, 0x80000000


def seccomp_supported() -> bool:
    """Whether :func:`seccomp_program` has syscall numbers for this machine."""
    return platform.machine() == "x86_64"


def seccomp_program() -> bytes:
    """A BPF filter: denies ptrace, mounts, namespaces, keyrings, bpf, kernel modules, and
    sockets of any family but :data:`ALLOWED_FAMILIES`.

    Denied calls fail with ``EPERM`` (``clone3`` with ``ENOSYS`` so libc falls back to
    ``clone``, whose namespace flags are checked); a foreign architecture is killed.
    """
    if not seccomp_supported():
        raise OSError(f"no seccomp syscall table for {platform.machine()}")
    ops: list[tuple] = [
        ("ld", 4),
        ("jeq", _AUDIT_ARCH_X86_64, None, "kill"),
        ("ld", 0),
        ("jge", _X32_BIT, "eperm", None),
    ]
    ops += [("jeq", nr, "eperm", None) for nr in sorted(_DENY_X86_64.values())]
    ops += [
        ("jeq", _SOCKET, "socket", None),
        ("jeq", _SOCKETPAIR, "socket", None),
        ("jeq", _CLONE, "clone", None),
        ("jeq", _CLONE3, "enosys", None),
        ("ret", _RET_ALLOW),
    ]
    ops += [("label", "socket"), ("ld", 16)]  # low 32 bits of arg 0: the kernel's int family
    ops += [("jeq", family, "allow", None) for family in ALLOWED_FAMILIES]
    ops += [
        ("ret", _RET_ERRNO | _EPERM),
        ("label", "allow"),
        ("ret", _RET_ALLOW),
        ("label", "clone"),
        ("ld", 16),
        ("jset", _NAMESPACE_FLAGS, "eperm", None),
        ("ret", _RET_ALLOW),
        ("label", "eperm"),
        ("ret", _RET_ERRNO | _EPERM),
        ("label", "enosys"),
        ("ret", _RET_ERRNO | _ENOSYS),
        ("label", "kill"),
        ("ret", _RET_KILL),
    ]
    return _assemble(ops)


def _assemble(ops: list[tuple]) -> bytes:
    labels, index = {}, 0
    for op in ops:
        if op[0] == "label":
            labels[op[1]] = index
        else:
            index += 1
    codes = {"ld": 0x20, "ret": 0x06, "jeq": 0x15, "jge": 0x35, "jset": 0x45}
    out, index = [], 0
    for op in ops:
        if op[0] == "label":
            continue
        code = codes[op[0]]
        if op[0] in ("ld", "ret"):
            out.append(struct.pack("<HBBI", code, 0, 0, op[1]))
        else:
            jt = labels[op[2]] - index - 1 if op[2] else 0
            jf = labels[op[3]] - index - 1 if op[3] else 0
            out.append(struct.pack("<HBBI", code, jt, jf, op[1]))
        index += 1
    return b"".join(out)
