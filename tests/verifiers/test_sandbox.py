"""Tests for the sandbox layers, the capability probe and unsafe-mode refusal."""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

import pytest

from mpo_gym.verifiers import sandbox as sandbox_module
from mpo_gym.verifiers.code import CodeVerifier
from mpo_gym.verifiers.code_runner import decode, encode
from mpo_gym.verifiers.sandbox import (
    SCRATCH_PREFIX,
    Capabilities,
    Limits,
    Sandbox,
    SandboxUnavailableError,
    probe,
    run_in_sandbox,
)
from mpo_gym.verifiers.sandbox_layers import (
    CgroupLayout,
    RunCgroup,
    seccomp_program,
    seccomp_supported,
)

CAPS = probe()
needs_bwrap = pytest.mark.skipif(not CAPS.strong, reason="needs bubblewrap")
needs_cgroups = pytest.mark.skipif(CAPS.cgroups is None, reason="/sys/fs/cgroup not writable")


def _call(code: str, *args) -> dict:
    return {"mode": "calls", "code": code, "calls": [["f", encode(list(args)), encode({})]]}


def _values(result) -> list:
    """Decoded return values from a calls-mode channel."""
    lines = [json.loads(line) for line in result.channel.splitlines()]
    return [decode(m["ok"]) for m in lines if "ok" in m]


def test_probe_reports_layers():
    layers = CAPS.layers()
    assert layers[:3] == ["verdict-protocol", "process-group+deadline", "rlimits"]
    if CAPS.bwrap:
        assert any(layer.startswith("bwrap-namespaces") for layer in layers)
    if CAPS.cgroups:
        assert CAPS.cgroups.describe() in layers


def test_sandbox_refuses_untrusted_code_without_a_strong_layer(monkeypatch):
    weak = Capabilities(None, None, None, False, "/usr/bin/python3", ("bwrap not installed",))
    monkeypatch.setattr(sandbox_module, "probe", lambda refresh=False: weak)
    with pytest.raises(SandboxUnavailableError, match="Install bubblewrap, or pass unsafe=True"):
        Sandbox()
    with pytest.raises(SandboxUnavailableError):
        CodeVerifier()


def test_unsafe_mode_runs_without_bwrap_when_asked(monkeypatch):
    weak = Capabilities(None, None, None, False, "/usr/bin/python3", ("bwrap not installed",))
    monkeypatch.setattr(sandbox_module, "probe", lambda refresh=False: weak)
    box = Sandbox(unsafe=True)
    assert "UNSAFE-MODE" in box.layers()
    result = box.run(_call("def f(x):\n    return x * 2\n", 21), timeout_s=10)
    assert _values(result) == [42]
    assert glob.glob(os.path.join(tempfile.gettempdir(), f"{SCRATCH_PREFIX}{os.getpid()}-*")) == []


@needs_bwrap
def test_inside_the_sandbox_is_nobody_with_no_network_and_no_host_files():
    code = (
        "import os\ndef f():\n    return [os.getuid(), sorted(os.listdir('/')), sorted(os.environ),"
        " open('/proc/net/dev').read().count(':'), os.path.exists('/etc/passwd'),"
        " os.path.exists(" + repr(os.getcwd()) + ")]\n"
    )
    [[uid, root, env, interfaces, passwd, cwd]] = _values(run_in_sandbox(_call(code)))
    assert uid == 65534
    assert set(root) <= {
        "bin",
        "dev",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "proc",
        "sbin",
        "task",
        "tmp",
        "usr",
    }
    assert set(env) <= {"HOME", "LANG", "PATH", "PWD"}
    assert interfaces <= 1  # loopback only
    assert not passwd and not cwd


@needs_bwrap
def test_sandbox_runs_as_an_unprivileged_host_user_when_we_are_root():
    if os.geteuid() != 0 or not CAPS.setpriv:
        pytest.skip("only relevant when running as root with setpriv")
    code = "import time\ndef f():\n    time.sleep(1.5)\n    return 1\n"
    run = Sandbox().start(_call(code))
    time.sleep(0.5)
    uids = set()
    for path in glob.glob("/proc/[0-9]*"):
        try:
            cmdline = open(path + "/cmdline", "rb").read()
            status = open(path + "/status").read()
        except OSError:
            continue
        if b"/task/runner.py" in cmdline and run.scratch.encode() not in cmdline:
            uids.add(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("Uid:")))
    sandbox_module.collect([run], time.monotonic() + 5)
    assert uids == {"65534"}


@needs_bwrap
def test_timeout_kills_an_infinite_loop_and_cleans_up():
    start = time.monotonic()
    result = run_in_sandbox(_call("def f():\n    while True:\n        pass\n"), timeout_s=1.0)
    assert result.timed_out and time.monotonic() - start < 3.0
    assert glob.glob(os.path.join(tempfile.gettempdir(), f"{SCRATCH_PREFIX}{os.getpid()}-*")) == []


@needs_bwrap
def test_output_cap_kills_a_flood():
    box = Sandbox(Limits(output_bytes=1 << 16))
    result = box.run(
        _call("import os\ndef f():\n    while True:\n        os.write(1, b'x' * 4096)\n"),
        timeout_s=5,
    )
    assert result.overflow == "stdout" and not result.timed_out
    assert len(result.stdout) <= 1 << 16


@needs_bwrap
def test_rlimit_as_turns_a_big_allocation_into_memory_error():
    result = run_in_sandbox(
        _call(
            "def f():\n    try:\n        bytearray(3 << 30)\n"
            "    except MemoryError:\n        return 'MemoryError'\n"
        )
    )
    assert _values(result) == ["MemoryError"]


@needs_bwrap
@needs_cgroups
def test_fork_bomb_is_contained_by_the_pids_cgroup():
    code = (
        "import os, time\ndef f():\n    n = 0\n    for _ in range(500):\n        try:\n"
        "            if os.fork() == 0:\n                time.sleep(30)\n                os._exit(0)\n"
        "            n += 1\n        except OSError:\n            break\n    return n\n"
    )
    box = Sandbox(Limits(pids=32))
    result = box.run(_call(code), timeout_s=10)
    [forked] = _values(result)
    assert forked < 32 and result.pids_limited
    assert not glob.glob(f"/sys/fs/cgroup/*/mpo_gym_{os.getpid()}_*")
    assert not glob.glob(f"/sys/fs/cgroup/mpo_gym_{os.getpid()}_*")


@needs_bwrap
def test_fork_bomb_is_contained_without_cgroups_by_nproc_as_nobody():
    if not CAPS.setpriv:
        pytest.skip("RLIMIT_NPROC is only used when the sandbox runs as host uid 65534")
    code = (
        "import os, time\ndef f():\n    n = 0\n    for _ in range(5000):\n        try:\n"
        "            if os.fork() == 0:\n                time.sleep(30)\n                os._exit(0)\n"
        "            n += 1\n        except OSError:\n            break\n    return n\n"
    )
    box = Sandbox(Limits(pids=16), cgroups=False)
    [forked] = _values(box.run(_call(code), timeout_s=20))
    assert forked < 16 * 16


@needs_bwrap
@needs_cgroups
def test_memory_cgroup_catches_memory_spread_over_processes():
    code = (
        "import os, time\ndef f():\n    kids = []\n    for _ in range(6):\n        pid = os.fork()\n"
        "        if pid == 0:\n            x = b'x' * (150 << 20)\n            time.sleep(2)\n"
        "            os._exit(0)\n        kids.append(pid)\n"
        "    return [os.waitpid(k, 0)[1] for k in kids]\n"
    )
    box = Sandbox(Limits(memory_mb=256, tmpfs_mb=16))
    result = box.run(_call(code), timeout_s=20)
    assert result.oom_killed and not result.timed_out
    [statuses] = _values(result)
    assert 9 in statuses  # some children were SIGKILLed by the OOM killer


@needs_bwrap
def test_cpu_limit_stops_a_c_level_spin_that_ignores_signals():
    box = Sandbox(Limits(cpu_s=1))
    result = box.run(
        _call(
            "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
            "def f():\n    return sum(range(10 ** 12))\n"
        ),
        timeout_s=15,
    )
    assert not result.timed_out
    assert result.returncode in (-9, 137, -24, 152)  # SIGKILL at the hard limit (or SIGXCPU)


@needs_bwrap
def test_sandbox_failure_is_reported_not_raised():
    box = Sandbox()
    box.caps = Capabilities("/nonexistent/bwrap", None, None, False, box.caps.python)
    result = box.run(_call("def f():\n    return 1\n"), timeout_s=5)
    assert result.failure and "FileNotFoundError" in result.failure


@pytest.mark.skipif(not seccomp_supported(), reason="no seccomp table for this machine")
def test_seccomp_program_is_well_formed():
    program = seccomp_program()
    assert len(program) % 8 == 0 and 10 < len(program) // 8 < 256
    last_code = struct.unpack("<HBBI", program[-8:])[0]
    assert last_code == 0x06  # ends with a return


@needs_bwrap
@pytest.mark.skipif(not CAPS.seccomp, reason="seccomp not active")
def test_seccomp_blocks_inet_sockets_and_ptrace():
    code = (
        "import socket, ctypes\ndef f():\n    out = []\n    try:\n"
        "        socket.socket(socket.AF_INET)\n        out.append('inet')\n    except OSError as e:\n"
        "        out.append(e.errno)\n    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    out.append(libc.ptrace(0, 0, None, None))\n    socket.socketpair()\n    return out\n"
    )
    assert _values(run_in_sandbox(_call(code))) == [[1, -1]]


@needs_bwrap
@pytest.mark.skipif(not CAPS.seccomp, reason="seccomp not active")
def test_seccomp_allows_only_unix_sockets_whatever_the_upper_bits_of_the_family():
    code = (
        "import ctypes\ndef f():\n    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    libc.syscall.restype = ctypes.c_long\n    ok = []\n"
        "    for family in list(range(64)) + [1 + (1 << 32), 40 + (1 << 32)]:\n"
        "        for kind in (1, 2, 3, 5):\n"
        "            fd = libc.syscall(41, ctypes.c_long(family), kind, 0)\n"
        "            if fd >= 0:\n                ok.append(family)\n                break\n"
        "    return ok\n"
    )
    assert _values(run_in_sandbox(_call(code))) == [[1, 1 + (1 << 32)]]


def test_cgroup_v2_layout_writes_the_v2_limit_files(tmp_path):
    layout = CgroupLayout("v2", {"pids": str(tmp_path), "memory": str(tmp_path)})
    group = RunCgroup(layout, pids_max=12, memory_bytes=1 << 26)
    [path] = group.dirs
    assert open(os.path.join(path, "pids.max")).read() == "12"
    assert open(os.path.join(path, "memory.max")).read() == str(1 << 26)
    assert open(os.path.join(path, "memory.swap.max")).read() == "0"
    assert group.wrap(["true"])[-1] == "true" and "cgroup.procs" in group.wrap(["true"])[2]
    with open(os.path.join(path, "memory.events"), "w") as handle:
        handle.write("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert group.events() == (True, False)


@needs_bwrap
def test_a_killed_caller_leaves_no_sandbox_process_and_leftovers_are_cleaned(tmp_path):
    """SIGKILL the process that runs a check: its sandbox dies with it (--die-with-parent),
    and the next Sandbox removes the scratch dir and cgroup the dead caller left."""
    script = tmp_path / "caller.py"
    script.write_text(
        "import sys\nfrom mpo_gym.verifiers.sandbox import Sandbox\n"
        "from mpo_gym.verifiers.code_runner import encode\n"
        "code = 'import time\\ndef f():\\n    time.sleep(60)\\n'\n"
        "print('started', flush=True)\n"
        "Sandbox().run({'mode': 'calls', 'code': code, 'calls': [['f', encode([]), encode({})]]},"
        " timeout_s=60)\n"
    )
    caller = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    assert caller.stdout.readline().strip() == b"started"
    time.sleep(1.0)
    pattern = f"{SCRATCH_PREFIX}{caller.pid}-*"
    assert glob.glob(os.path.join(tempfile.gettempdir(), pattern))  # the check is running
    caller.kill()
    caller.wait()
    deadline = time.monotonic() + 3
    while _runners_of(caller.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _runners_of(caller.pid) == []
    probe(refresh=True)
    Sandbox()
    assert glob.glob(os.path.join(tempfile.gettempdir(), pattern)) == []
    assert glob.glob(f"/sys/fs/cgroup/*/mpo_gym_{caller.pid}_*") == []


def _runners_of(owner: int) -> list[int]:
    """Live processes in cgroups created by ``owner`` (or, without cgroups, any sandbox runner)."""
    found = []
    for path in glob.glob("/proc/[0-9]*"):
        try:
            groups = open(path + "/cgroup").read()
            cmdline = open(path + "/cmdline", "rb").read()
            state = open(path + "/stat").read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        mine = f"mpo_gym_{owner}_" in groups if CAPS.cgroups else b"/task/runner.py" in cmdline
        if mine and state != "Z":
            found.append(int(os.path.basename(path)))
    return found


@pytest.mark.parametrize("bad", [{"memory_mb": 0}, {"pids": -1}, {"cpu_s": 1.5}, {"nofile": 4}])
def test_limits_reject_nonsense(bad):
    with pytest.raises(ValueError, match="Limits."):
        Limits(**bad)
