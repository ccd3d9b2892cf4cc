"""The runner that executes inside the sandbox, and the typed-JSON codec both sides share.

This file is copied into each sandbox and run by the *system* interpreter as
``/usr/bin/python3 -I -S runner.py PAYLOAD CHANNEL_FD [REQ_FD RESP_FD]``. It must therefore
stay standard-library only and must not import anything from ``mpo_gym``. The parent imports
it too, for :func:`encode` / :func:`decode` (importing it runs nothing).

Modes (``payload["mode"]``):

- ``calls``: run the submission, call ``name(*args, **kwargs)`` for each requested call and
  write one typed result per call. Expected values are never in the payload.
- ``serve``: run the submission, then answer call requests arriving on ``REQ_FD`` (from a
  separate test process) with typed results on ``RESP_FD``.
- ``tests``: run dataset test code in which the submission's functions are *proxies* that
  forward typed arguments to a ``serve`` process; report pass or the first failing test.
- ``stdio``: run the submission as ``__main__`` with the case input as file descriptor 0.

Results go to ``CHANNEL_FD`` as JSON lines, never to stdout. Everything the submission can
touch is inside the sandbox; the parent treats the channel as untrusted bytes and decides the
verdict itself.
"""

from __future__ import annotations

import marshal
import os
import sys

try:  # the C string quoter; importing ``json`` itself costs more than the rest of start-up
    from _json import encode_basestring_ascii as _quote
except ImportError:  # pragma: no cover - CPython always has it
    from json.encoder import py_encode_basestring_ascii as _quote

MAX_DEPTH = 100
MAX_NODES = 1_000_000
MAX_LINE = 32 << 20

_SCALARS = {
    type(None): "none",
    bool: "bool",
    int: "int",
    float: "float",
    complex: "complex",
    str: "str",
    bytes: "bytes",
}
_CONTAINERS = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset", dict: "dict"}


class EncodeError(TypeError):
    """A value that is not a plain primitive (or nested list/tuple/set/dict of them)."""


def encode(value: object, _depth: int = 0, _count: list | None = None) -> dict:
    """Encode a primitive value as typed JSON, rejecting anything else (subclasses included)."""
    count = [0] if _count is None else _count
    count[0] += 1
    if count[0] > MAX_NODES or _depth > MAX_DEPTH:
        raise EncodeError("value too large or too deeply nested")
    kind = type(value)
    tag = _SCALARS.get(kind) or _CONTAINERS.get(kind)
    if tag is None and _is_stdlib_mapping(kind):
        tag = "dict"  # encoded from the dict's own storage; the subclass's methods are not used
    if tag is None:
        raise EncodeError(f"unsupported type {_type_name(kind)}")
    if tag == "none":
        return {"t": tag}
    if tag == "bool":
        return {"t": tag, "v": value is True}
    if tag == "int":
        return {"t": tag, "v": int.__format__(value, "x")}
    if tag == "float":
        return {"t": tag, "v": float.hex(value)}
    if tag == "complex":
        return {"t": tag, "v": [float.hex(value.real), float.hex(value.imag)]}
    if tag == "str":
        return {"t": tag, "v": str.__str__(value)}
    if tag == "bytes":
        return {"t": tag, "v": bytes.hex(value)}
    if tag == "dict":
        items = list(dict.items(value))
        return {
            "t": tag,
            "v": [[encode(k, _depth + 1, count), encode(v, _depth + 1, count)] for k, v in items],
        }
    return {"t": tag, "v": [encode(v, _depth + 1, count) for v in list(value)]}


def _is_stdlib_mapping(kind: type) -> bool:
    """``collections.Counter``/``OrderedDict``/``defaultdict``: sent as plain dicts."""
    try:
        return (
            issubclass(kind, dict)
            and type.__dict__["__module__"].__get__(kind) == "collections"
            and _type_name(kind) in ("Counter", "OrderedDict", "defaultdict")
        )
    except Exception:
        return False


def decode(obj: object, _depth: int = 0) -> object:
    """Rebuild a value from :func:`encode` output; raise ``ValueError`` on anything malformed."""
    if _depth > MAX_DEPTH or type(obj) is not dict:
        raise ValueError("malformed typed value")
    tag, raw = obj.get("t"), obj.get("v")
    if tag == "none":
        return None
    if tag == "bool" and type(raw) is bool:
        return raw
    if tag == "int" and type(raw) is str:
        return int(raw, 16)
    if tag == "float" and type(raw) is str:
        return float.fromhex(raw)
    if tag == "complex" and type(raw) is list and len(raw) == 2:
        return complex(float.fromhex(raw[0]), float.fromhex(raw[1]))
    if tag == "str" and type(raw) is str:
        return raw
    if tag == "bytes" and type(raw) is str:
        return bytes.fromhex(raw)
    if type(raw) is not list:
        raise ValueError(f"malformed typed value with tag {tag!r}")
    if tag == "dict":
        pairs = [
            (decode(p[0], _depth + 1), decode(p[1], _depth + 1))
            for p in raw
            if type(p) is list and len(p) == 2
        ]
        if len(pairs) != len(raw):
            raise ValueError("malformed dict")
        return dict(pairs)
    items = [decode(v, _depth + 1) for v in raw]
    builders = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}
    if tag not in builders:
        raise ValueError(f"unknown type tag {tag!r}")
    return builders[tag](items)


def _type_name(kind: type) -> str:
    try:
        name = type.__dict__["__name__"].__get__(kind)
        return name if type(name) is str else "?"
    except Exception:
        return "?"


def _describe_exception(exc: BaseException) -> list:
    try:
        message = str(exc)
        message = message if type(message) is str else "?"
    except BaseException:
        message = "<unprintable message>"
    return [_type_name(type(exc))[:200], message[:2000]]


def dumps(obj: object) -> str:
    """Minimal JSON writer for the runner's own messages (dict/list/str/int/bool/None)."""
    kind = type(obj)
    if kind is str:
        return _quote(obj)
    if obj is None:
        return "null"
    if kind is bool:
        return "true" if obj else "false"
    if kind is int:
        return int.__repr__(obj)
    if kind is dict:
        return "{" + ", ".join(_quote(str(k)) + ": " + dumps(v) for k, v in obj.items()) + "}"
    if kind is list or kind is tuple:
        return "[" + ", ".join(dumps(v) for v in obj) + "]"
    raise TypeError(f"cannot write {_type_name(kind)} to the channel")


class Channel:
    """Writes JSON lines to a file descriptor with the runner's own references."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._write = os.write
        self._dumps = dumps

    def send(self, message: dict) -> None:
        data = (self._dumps(message) + "\n").encode("utf-8", "surrogatepass")
        while data:
            data = data[self._write(self.fd, data) :]


class LineReader:
    """Reads newline-terminated JSON messages from a descriptor with a size cap."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def read(self) -> dict | None:
        while b"\n" not in self.buffer:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
            if len(self.buffer) > MAX_LINE:
                raise ValueError("message too long")
        line, _, self.buffer = self.buffer.partition(b"\n")
        import json

        return json.loads(line)


def set_limits(limits: dict) -> None:
    """Apply ``RLIMIT_*`` values (bytes, seconds, counts) before any untrusted code runs."""
    import resource

    names = {
        "as": "RLIMIT_AS",
        "cpu": "RLIMIT_CPU",
        "fsize": "RLIMIT_FSIZE",
        "nofile": "RLIMIT_NOFILE",
        "core": "RLIMIT_CORE",
        "nproc": "RLIMIT_NPROC",
    }
    for key, value in limits.items():
        which = getattr(resource, names[key])
        resource.setrlimit(which, (value, value))


def load_submission(code: str, name: str) -> dict:
    """Compile and execute the submission in a fresh namespace; exceptions propagate."""
    namespace = {"__name__": name, "__builtins__": __builtins__}
    exec(compile(code, "<submission>", "exec"), namespace)
    return namespace


def call_one(namespace: dict, call: list) -> dict:
    """Run one ``[name, args, kwargs]`` call; return ``{"ok": typed}``, ``{"exc"}`` or ``{"bad"}``."""
    name, args, kwargs = call[0], decode(call[1]), decode(call[2])
    func = namespace.get(name)
    if func is None:
        return {"exc": ["NameError", f"{name!r} is not defined by the submission"]}
    try:
        result = func(*args, **kwargs)
    except BaseException as exc:  # the submission's exception is data
        return {"exc": _describe_exception(exc)}
    try:
        return {"ok": encode(result)}
    except EncodeError as exc:
        return {"bad": str(exc), "truthy": _truthiness(result)}
    except BaseException as exc:
        return {"bad": "could not serialise the return value: " + _describe_exception(exc)[0]}


def _truthiness(value: object) -> bool | None:
    """``bool(value)`` for a non-primitive result (``None`` if it cannot be decided)."""
    try:
        return bool(value)
    except BaseException:
        return None


class Opaque:
    """Stands in, in the test process, for a non-primitive return value of the submission.

    Only its truthiness crossed the process boundary, so ``assert f(x)`` behaves as in the
    original harness, while ``==`` is identity (never equal to an expected value).
    """

    __slots__ = ("kind", "truthy")

    def __init__(self, kind: str, truthy: bool) -> None:
        self.kind, self.truthy = kind, truthy

    def __bool__(self) -> bool:
        return self.truthy

    def __repr__(self) -> str:
        return f"<{self.kind}>"


def run_calls(payload: dict, channel: Channel) -> None:
    """``calls`` mode: load the submission, then one result line per call."""
    namespace = _load_or_report(payload, channel, "solution")
    for index, call in enumerate(payload["calls"]):
        result = call_one(namespace, call)
        result["i"] = index
        channel.send(result)
    channel.send({"status": "done", "n": len(payload["calls"])})


def run_serve(payload: dict, channel: Channel, req_fd: int, resp_fd: int) -> None:
    """``serve`` mode: answer call requests from the test process until it closes the pipe."""
    namespace = _load_or_report(payload, channel, "solution")
    channel.send({"status": "loaded"})
    requests, responses = LineReader(req_fd), Channel(resp_fd)
    while True:
        request = requests.read()
        if request is None:
            return
        responses.send(call_one(namespace, request["call"]))


def _load_or_report(payload: dict, channel: Channel, name: str) -> dict:
    try:
        return load_submission(payload["code"], name)
    except BaseException as exc:
        kind, message = _describe_exception(exc)
        line = getattr(exc, "lineno", None)
        channel.send(
            {"status": "load_error", "error": [kind, message, line if type(line) is int else None]}
        )
        _finish()
    raise AssertionError("unreachable")


class SubmissionError(Exception):
    """Raised by a proxy when the submission raised an exception that is not a builtin one."""


def make_proxy(name: str, requests: Channel, responses: LineReader, log: list):
    """A stand-in for the submission's function ``name`` that forwards typed calls."""
    import builtins

    def proxy(*args, **kwargs):
        try:
            encoded = [name, encode(list(args)), encode(dict(kwargs))]
        except EncodeError as exc:
            raise TypeError(
                f"argument of {name}() cannot be sent to the submission: {exc}"
            ) from None
        requests.send({"call": encoded})
        reply = responses.read()
        if reply is None:
            raise SubmissionError("the submission process stopped answering")
        log.append((name, args, kwargs, reply))
        if "ok" in reply:
            return decode(reply["ok"])
        if "bad" in reply and type(reply.get("truthy")) is bool:
            return Opaque(str(reply["bad"]), reply["truthy"])
        if "bad" in reply:
            raise SubmissionError(
                f"{name} returned a value that is not a plain primitive: {reply['bad']}"
            )
        kind, message = reply["exc"][0], reply["exc"][1]
        error = getattr(builtins, str(kind), None)
        if not (isinstance(error, type) and issubclass(error, Exception)) or issubclass(
            error, AssertionError
        ):
            error = SubmissionError
        raise error(f"{kind}: {message}")

    return proxy


def run_tests(payload: dict, channel: Channel, req_fd: int, resp_fd: int) -> None:
    """``tests`` mode: run dataset test code against proxies; report pass or first failure."""
    requests, responses, log = Channel(req_fd), LineReader(resp_fd), []
    namespace = {"__name__": "__tests__", "__builtins__": __builtins__}
    try:
        exec(compile(payload.get("prelude", ""), "<prelude>", "exec"), namespace)
    except BaseException as exc:
        channel.send({"status": "setup_error", "error": _describe_exception(exc)})
        return
    for name in payload["proxies"]:
        namespace[name] = make_proxy(name, requests, responses, log)
    try:
        exec(compile(payload["setup"], "<tests>", "exec"), namespace)
    except BaseException as exc:
        channel.send({"status": "setup_error", "error": _describe_exception(exc)})
        return
    for index, test in enumerate(payload["tests"]):
        try:
            exec(compile(test, f"<test {index}>", "exec"), namespace)
        except BaseException as exc:
            channel.send(
                {
                    "status": "fail",
                    "index": index,
                    "error": _describe_exception(exc),
                    "line": _failing_line(exc, payload["setup"], test),
                    "last_call": _last_call(log),
                }
            )
            return
    channel.send({"status": "pass", "calls": len(log)})


def _failing_line(exc: BaseException, setup: str, test: str) -> str:
    tb, where = exc.__traceback__, None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename in ("<tests>",) or filename.startswith("<test "):
            where = (filename, tb.tb_lineno)
        tb = tb.tb_next
    if where is None:
        return ""
    lines = (setup if where[0] == "<tests>" else test).splitlines()
    return lines[where[1] - 1].strip()[:500] if 0 < where[1] <= len(lines) else ""


def _last_call(log: list) -> str:
    if not log:
        return ""
    name, args, kwargs, reply = log[-1]
    got = repr(decode(reply["ok"])) if "ok" in reply else str(reply.get("exc") or reply.get("bad"))
    shown = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
    return f"{name}({shown[:300]}) -> {got[:300]}"


def run_stdio(payload: dict, channel: Channel, input_path: str) -> int:
    """``stdio`` mode: the case input is fd 0, the program's stdout is the answer.

    Returns the exit status CPython would give the program run as a script; the runner exits
    with it, and the parent judges by the real exit status, not by the channel.
    """
    fd = os.open(input_path, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - a fresh reader over the new fd 0
    status: dict = {"status": "ok", "code": 0}
    try:
        load_submission(payload["code"], "__main__")
    except SystemExit as exc:
        code = _exit_status(exc.code)
        if code:
            status = {"status": "exit", "code": code}
    except BaseException as exc:
        line = getattr(exc, "lineno", None) if isinstance(exc, SyntaxError) else None
        status = {"status": "exception", "error": _describe_exception(exc) + [line], "code": 1}
    _interpreter_shutdown()
    streams = [sys.stdout, sys.stderr] + [s for s in (stdout, stderr) if s is not sys.stdout and s is not sys.stderr]
    for stream in streams:  # the current streams (a program may have replaced them), then ours
        try:
            if stream is not None and not getattr(stream, "closed", False):  # a closed one flushed as it closed
                stream.flush()
        except BaseException:
            error = ["OSError", "could not flush output", None]
            status = {"status": "exception", "error": error, "code": 120}
    channel.send(status)
    return status["code"]


def _interpreter_shutdown() -> None:
    """What CPython does when a script ends, before it flushes the standard streams: join the
    non-daemon threads, then run the ``atexit`` handlers (the runner leaves by ``os._exit``,
    which does neither). A thread that never ends runs into the sandbox's deadline, as the
    script would; exceptions here are reported on stderr and do not change the exit status."""
    import atexit
    import threading
    import traceback

    for step in (getattr(threading, "_shutdown", None), getattr(atexit, "_run_exitfuncs", None)):
        if step is None:
            continue
        try:
            step()
        except BaseException:
            try:
                traceback.print_exc()
            except BaseException:
                pass


def _exit_status(code: object) -> int:
    """What CPython exits with for ``raise SystemExit(code)``: ``None`` is 0, an int is itself
    (modulo 256), anything else (``0.0``, a message) is printed and gives 1."""
    if code is None:
        return 0
    if not isinstance(code, int):
        try:
            sys.stderr.write(str(code) + "\n")
        except BaseException:
            pass
        return 1
    value = int.__index__(code)
    return value & 0xFF if -(2**31) <= value < 2**31 else 255


def _finish() -> None:
    os._exit(0)


def _add_exit_builtins() -> None:
    """``exit()``/``quit()`` come from ``site``, which ``-S`` skips; programs still use them."""
    import builtins

    def _exit(code: object = None) -> None:
        raise SystemExit(code)

    for name in ("exit", "quit"):
        if not hasattr(builtins, name):
            setattr(builtins, name, _exit)


def main(argv: list) -> None:
    """Entry point inside the sandbox."""
    payload_path, channel = argv[1], Channel(int(argv[2]))
    with open(payload_path, "rb") as handle:
        payload = marshal.load(handle)  # written by the parent: trusted direction only
    set_limits(payload["limits"])
    os.chdir(payload["workdir"])
    _add_exit_builtins()
    extra = [int(a) for a in argv[3:]]
    mode = payload["mode"]
    if mode == "calls":
        run_calls(payload, channel)
    elif mode == "serve":
        run_serve(payload, channel, *extra)
    elif mode == "tests":
        run_tests(payload, channel, *extra)
    elif mode == "stdio":
        os._exit(run_stdio(payload, channel, payload["input_path"]))
    _finish()


if __name__ == "__main__":
    main(sys.argv)
