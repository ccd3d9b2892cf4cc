"""Run a test plan in the sandbox and turn the raw result into a :class:`Verdict`.

The parent-side half of the verdict protocol (layer 0): the sandbox's result channel is
untrusted bytes. It is parsed as JSON lines, values are rebuilt by the strict typed decoder
into fresh primitives, and compared here with :func:`~.code_tests.values_equal`. Exit codes
and stdout banners never decide a pass; stdout is only the *answer* for stdio tasks.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Sequence
from typing import Any

from .base import Verdict
from .code_runner import decode, encode
from .code_tests import CallPlan, ScriptPlan, values_equal
from .sandbox import Sandbox, SandboxResult, collect

SHOW = 200  # characters of a value shown in a detail
DETAIL = 1000  # characters of a whole detail


def sanitize(text: str, limit: int = DETAIL) -> str:
    """Printable, truncated text for a verdict detail (no terminal escape sequences)."""
    out = "".join(
        c if (c.isprintable() or c == "\n") else f"\\x{ord(c) & 0xFF:02x}"
        for c in text[: limit * 2]
    )
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _show(value: Any) -> str:
    """Short repr of one of *our* primitives (rebuilt by ``decode``, never a child object)."""
    if type(value) is int and value.bit_length() > 4000:
        return f"<int of {value.bit_length()} bits>"
    try:
        text = repr(value)
    except ValueError:  # an int inside a container beyond the str-conversion digit limit
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= SHOW else text[: SHOW - 3] + "..."


def _lines(channel: bytes, max_lines: int) -> list[dict] | None:
    """Parse the channel as JSON-object lines; ``None`` if malformed or longer than expected.

    The line count is checked before parsing, so a flood of tiny messages cannot make this
    process build millions of objects.
    """
    if channel.count(b"\n") > max_lines:
        return None
    try:
        messages = [json.loads(line) for line in channel.splitlines() if line.strip()]
    except (ValueError, RecursionError):
        return None
    return messages if all(type(m) is dict for m in messages) else None


def _fatal(result: SandboxResult, timeout_s: float, what: str = "") -> Verdict | None:
    """Verdicts that do not depend on the channel: failure, caps, OOM, signals, deadline."""
    if result.failure:
        return _error(f"sandbox failure: {result.failure}")
    if result.overflow:
        return _error(f"output cap: {result.overflow} exceeded its limit{what}")
    if result.oom_killed:
        return _error(f"memory limit: killed by the cgroup OOM killer{what}")
    if result.timed_out:
        return Verdict(0.0, "timeout", None, f"exceeded the {timeout_s:g} s wall-clock limit{what}")
    code = result.returncode
    if code is not None and code > 128 and not result.channel:
        code = 128 - code  # bwrap's init reports a child killed by signal N as 128 + N
    if code is not None and code < 0:
        sig = -code
        if sig == signal.SIGXCPU:
            return Verdict(0.0, "timeout", None, f"CPU time limit (SIGXCPU){what}")
        if sig == signal.SIGXFSZ:
            return _error(f"file size limit (SIGXFSZ){what}")
        return _error(
            f"crash: killed by {signal.Signals(sig).name if sig in signal.valid_signals() else sig}{what}"
            + _stderr_tail(result)
        )
    return None


def _error(detail: str) -> Verdict:
    return Verdict(0.0, "error", None, sanitize(detail))


def _stderr_tail(result: SandboxResult) -> str:
    tail = result.stderr[-300:].decode("utf-8", "replace").strip()
    return f"; stderr: {tail}" if tail else ""


def _load_error(message: dict) -> Verdict:
    error = message.get("error") or ["?", "", None]
    kind, text = str(error[0]), str(error[1])
    line = error[2] if len(error) > 2 and type(error[2]) is int else None
    where = f" (line {line})" if line else ""
    if kind in ("SyntaxError", "IndentationError", "TabError"):
        return _error(f"syntax error{where}: {kind}: {text}")
    if kind == "MemoryError":
        return _error("memory limit: MemoryError while loading the code")
    return _error(f"the code raised {kind} while loading{where}: {text}")


class Judge:
    """Runs plans in one :class:`Sandbox` and interprets the results."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def calls(self, code: str, plan: CallPlan, deadline: float, timeout_s: float) -> Verdict:
        """Send only the call arguments in; compare the typed results out here."""
        calls = [[c.name, encode(list(c.args)), encode(dict(c.kwargs))] for c in plan.cases]
        run = self.sandbox.start({"mode": "calls", "code": code, "calls": calls})
        result = collect([run], deadline)[0]
        done = min(result.channel.count(b"\n"), len(calls))  # one line per finished test
        fatal = _fatal(result, timeout_s, f" (after {done} of {len(calls)} tests)")
        if fatal is not None:
            return _with_code(fatal, code)
        messages = _lines(result.channel, len(calls) + 1)
        if messages is None:
            return _with_code(_error("malformed result channel"), code)
        if messages and messages[0].get("status") == "load_error":
            return _with_code(_load_error(messages[0]), code)
        return _with_code(self._compare_calls(plan, messages, result), code)

    @staticmethod
    def _compare_calls(plan: CallPlan, messages: list[dict], result: SandboxResult) -> Verdict:
        n = len(plan.cases)
        expected_shape = [m.get("i") for m in messages[:n]] == list(range(n))
        if (
            len(messages) != n + 1
            or not expected_shape
            or messages[n] != {"status": "done", "n": n}
        ):
            return _error(
                "the runner did not report every test (exit code "
                f"{result.returncode}){_stderr_tail(result)}"
            )
        for index, (case, message) in enumerate(zip(plan.cases, messages)):
            where = f"test {index + 1}/{n}: {case.source[:SHOW]}"
            if "exc" in message:
                return _raised(where, message["exc"])
            if "bad" in message:
                return Verdict(
                    0.0,
                    "incorrect",
                    None,
                    sanitize(f"{where}: returned a non-primitive value: {message['bad']}"),
                )
            try:
                got = decode(message.get("ok"))
            except (ValueError, TypeError, RecursionError, OverflowError) as exc:
                return _error(f"{where}: malformed result value ({exc})")
            if not values_equal(case.expected, got, case.abs_tol):
                tol = f" (within {case.abs_tol:g})" if case.abs_tol is not None else ""
                return Verdict(
                    0.0,
                    "incorrect",
                    None,
                    sanitize(f"{where}: expected {_show(case.expected)}{tol}, got {_show(got)}"),
                )
        return Verdict(1.0, "correct", None, f"passed {n} tests")

    def script(self, code: str, plan: ScriptPlan, deadline: float, timeout_s: float) -> Verdict:
        """Run the submission and the test code in two sandboxes joined by typed pipes."""
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        server = self.sandbox.start({"mode": "serve", "code": code}, pipes=[req_r, resp_w])
        tests = self.sandbox.start(
            {
                "mode": "tests",
                "setup": plan.setup,
                "tests": list(plan.tests),
                "proxies": list(plan.proxies),
                "prelude": plan.prelude,
            },
            pipes=[req_w, resp_r],
        )
        served, tested = collect([server, tests], deadline)
        return _with_code(self._script_verdict(plan, served, tested, timeout_s), code)

    @staticmethod
    def _script_verdict(
        plan: ScriptPlan, served: SandboxResult, tested: SandboxResult, timeout_s: float
    ) -> Verdict:
        for result in (served, tested):
            if result.failure:
                return _error(f"sandbox failure: {result.failure}")
        server_msgs = _lines(served.channel, 1) or []
        if server_msgs and server_msgs[0].get("status") == "load_error":
            return _load_error(server_msgs[0])
        if tested.timed_out or served.timed_out:
            return Verdict(0.0, "timeout", None, f"exceeded the {timeout_s:g} s wall-clock limit")
        fatal = _fatal(served, timeout_s, " (submission process)")
        test_msgs = _lines(tested.channel, 1)
        if test_msgs is None or len(test_msgs) != 1:
            return fatal or _error(
                "the test process did not report a result" + _stderr_tail(tested)
            )
        outcome = test_msgs[0]
        if outcome.get("status") == "pass" and outcome.get("calls") == 0:
            return _error("the tests passed without ever calling the submission")
        if outcome.get("status") == "pass" and not served.overflow and not served.oom_killed:
            return Verdict(1.0, "correct", None, f"passed ({outcome.get('calls')} calls)")
        if fatal is not None:
            return fatal
        if outcome.get("status") == "setup_error":
            return _error(f"the test code itself failed: {outcome.get('error')}")
        error = outcome.get("error") or ["?", ""]
        index = outcome.get("index")
        test = plan.tests[index] if isinstance(index, int) and 0 <= index < len(plan.tests) else ""
        detail = (
            f"test {index + 1 if isinstance(index, int) else '?'}/{len(plan.tests)}: "
            f"{str(outcome.get('line') or test)[:SHOW]}: {error[0]}: {str(error[1])[:SHOW]}"
        )
        if outcome.get("last_call"):
            detail += f"; last call: {outcome['last_call']}"
        return Verdict(0.0, "incorrect", None, sanitize(detail))

    def stdio(self, code: str, cases: Sequence[dict], deadline: float, timeout_s: float) -> Verdict:
        """Run the program once per case (fresh sandbox each) and compare stdout here."""
        for index, case in enumerate(cases):
            run = self.sandbox.start(
                {"mode": "stdio", "code": code}, files={"input": case["input"].encode("utf-8")}
            )
            result = collect([run], deadline)[0]
            where = f" (case {index + 1}/{len(cases)})"
            verdict = self._stdio_case(result, case["output"], timeout_s, where)
            if verdict is not None:
                return _with_code(verdict, code)
        return _with_code(Verdict(1.0, "correct", None, f"passed {len(cases)} cases"), code)

    @staticmethod
    def _stdio_case(
        result: SandboxResult, expected: str, timeout_s: float, where: str
    ) -> Verdict | None:
        fatal = _fatal(result, timeout_s, where)
        if fatal is not None:
            return fatal
        messages = _lines(result.channel, 1)
        if not messages or len(messages) != 1:
            return _error(
                f"the program exited without reporting{where} (exit code "
                f"{result.returncode}){_stderr_tail(result)}"
            )
        status = messages[0]
        if status.get("status") == "exception":
            error = status.get("error") or ["?", "", None]
            if str(error[0]) in ("SyntaxError", "IndentationError", "TabError", "MemoryError"):
                return _load_error({"error": error})
            return Verdict(
                0.0,
                "incorrect",
                None,
                sanitize(f"runtime error{where}: {error[0]}: {str(error[1])[:SHOW]}"),
            )
        if status.get("status") == "exit":
            return Verdict(0.0, "incorrect", None, f"exit status {status.get('code')}{where}")
        if status.get("status") != "ok":
            return _error(f"malformed result channel{where}")
        got = result.stdout.decode("utf-8", "surrogateescape")
        if normalize_output(got) != normalize_output(expected):
            return Verdict(
                0.0,
                "incorrect",
                None,
                sanitize(f"wrong output{where}: expected {_show(expected)}, got {_show(got)}"),
            )
        return None


def normalize_output(text: str) -> list[str]:
    """Stdout comparison rule: trailing whitespace on each line and trailing blank lines
    are ignored; leading whitespace, inner spaces and line breaks are significant."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _raised(where: str, error: Any) -> Verdict:
    kind = str(error[0]) if isinstance(error, list) and error else "?"
    text = str(error[1]) if isinstance(error, list) and len(error) > 1 else ""
    if kind == "MemoryError":
        return _error(f"memory limit: MemoryError in {where}")
    return Verdict(0.0, "incorrect", None, sanitize(f"{where}: raised {kind}: {text[:SHOW]}"))


def _with_code(verdict: Verdict, code: str) -> Verdict:
    return Verdict(verdict.reward, verdict.status, code, verdict.detail)
