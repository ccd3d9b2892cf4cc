"""Multi-process jobs for tests, confined to loopback.

Every job runs inside its own network namespace (``unshare -n``, then ``ip link set lo up``):
the ranks and torchrun's rendezvous can reach 127.0.0.1 and nothing else, and each job has a
port space of its own, so parallel tests never collide. ``MASTER_ADDR`` and
``GLOO_SOCKET_IFNAME`` point at loopback as well. Where a namespace cannot be made (no
privilege), the tests that need one are skipped: they never fall back to the host's network.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

_LOOPBACK_ENV = {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def namespace_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True)
    return probe.returncode == 0


needs_namespace = pytest.mark.skipif(
    not namespace_available(), reason="needs a private network namespace (unshare -n, ip) to keep ranks on loopback"
)


def in_namespace(cmd: Sequence[str]) -> list[str]:
    """``cmd`` run in a fresh network namespace with only loopback up."""
    return ["unshare", "-n", "sh", "-c", "ip link set lo up && exec " + shlex.join(cmd)]


def torchrun(args: Sequence[str], nproc: int = 2, *, cwd: Path | None = None, timeout: float = 300,
             env: dict[str, str] | None = None, module: str = "mpo_gym") -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node N -m MODULE ARGS`` confined to loopback; on
    ``timeout`` the whole process group (launcher and ranks) is killed, then the test fails."""
    proc = popen_torchrun(args, nproc, cwd=cwd, env=env, module=module)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(f"torchrun {' '.join(args[:3])} ran past {timeout} s; its stderr ends:\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def popen_torchrun(args: Sequence[str], nproc: int = 2, *, cwd: Path | None = None,
                   env: dict[str, str] | None = None, module: str = "mpo_gym") -> subprocess.Popen[str]:
    """:func:`torchrun`, started in the background (for signal tests)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", "-m", module, *args]
    full_env = {**os.environ, **_LOOPBACK_ENV, **(env or {})}
    return subprocess.Popen(in_namespace(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd, env=full_env, start_new_session=True)


def kill_tree(root: int) -> None:
    """SIGKILL ``root``'s process group and every process below it: torchrun starts its ranks in
    sessions of their own, so killing the group alone leaves them running (holding the pipes)."""
    for pid in [root, *descendants(root)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(root, signal.SIGKILL)
    except ProcessLookupError:
        pass


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (from ``/proc``), parents before children."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        for child in map(int, children):
            out.append(child)
            todo.append(child)
    return out
