"""Run a test plan in the sandbox and turn the raw result into a :class:`Verdict`.

The parent-side half of the verdict protocol (layer 0): the sandbox's result channel is
untrusted bytes. It is parsed as JSON lines (split on ``\n`` only, a bounded number of them,
numbers in the messages at most a few digits), values are rebuilt into fresh primitives
within a budget taken from the expected value and compared with Python's ``==``
(:mod:`.code_compare`), so the caller's work per check is bounded whatever the submission
writes. Stdout banners never decide a pass; stdout is only the *answer* for stdio tasks, and
a non-zero exit status is never a pass.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Sequence
from typing import Any

from .base import Verdict
from .code_compare import encoded_size_limit, plus_result_equal, result_equal
from .code_runner import encode
from .code_tests import CallCase, CallPlan, ScriptPlan
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


def _small_number(text: str) -> int | float:
    """JSON numbers in runner messages are indices and counts; a long one is malformed (and
    converting a megabyte of decimal digits would cost this process quadratic time)."""
    if len(text) > 24:
        raise ValueError("number too long")
    return float(text) if any(c in text for c in ".eE") else int(text)


def _reject_constant(text: str) -> None:
    raise ValueError(f"{text} is not allowed in the result channel")


_DECODER = json.JSONDecoder(
    parse_int=_small_number, parse_float=_small_number, parse_constant=_reject_constant
)


MESSAGE_BYTES = 64 << 10  # longest runner message that does not carry a result value


def _split_lines(channel: bytes, max_lines: int) -> list[bytes] | None:
    """The channel's non-blank lines (ended by ``\n`` only); ``None`` if there are more than
    ``max_lines``. Counted before splitting, so a flood of tiny lines costs nothing here."""
    if channel.count(b"\n") > max_lines:
        return None
    lines = [line for line in channel.split(b"\n") if line.strip()]
    return lines if len(lines) <= max_lines else None


def _parse(line: bytes, max_bytes: int = MESSAGE_BYTES) -> dict | None:
    """One JSON-object message, or ``None`` (malformed, or longer than ``max_bytes``)."""
    if len(line) > max_bytes:
        return None
    try:
        message = _DECODER.decode(line.decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError):
        return None
    return message if type(message) is dict else None


def _lines(channel: bytes, max_lines: int) -> list[dict] | None:
    """Parse the channel as JSON-object lines; ``None`` if malformed or longer than expected.

    The one parser of every channel (calls, script and stdio modes; calls mode parses result
    lines with a per-test size limit, see :meth:`Judge.calls`). Lines end at ``\n`` only,
    their count is checked before parsing and each is at most :data:`MESSAGE_BYTES`, so
    nothing a submission writes makes this process build millions of objects.
    """
    lines = _split_lines(channel, max_lines)
    if lines is None:
        return None
    messages = [_parse(line) for line in lines]
    return None if any(m is None for m in messages) else messages  # type: ignore[return-value]


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


def _error_triple(error: Any) -> list:
    """``[kind, message, line]`` from an (untrusted) error report."""
    if not isinstance(error, list) or len(error) < 2:
        return ["?", "", None]
    line = error[2] if len(error) > 2 and type(error[2]) is int else None
    return [str(error[0])[:SHOW], str(error[1])[:DETAIL], line]


def _load_error(message: dict) -> Verdict:
    kind, text, line = _error_triple(message.get("error"))
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
        messages = self._call_messages(plan, result.channel)
        if messages is None:
            return _with_code(_error("malformed result channel"), code)
        if messages and messages[0].get("status") == "load_error":
            return _with_code(_load_error(messages[0]), code)
        return _with_code(self._compare_calls(plan, messages, result), code)

    @staticmethod
    def _call_messages(plan: CallPlan, channel: bytes) -> list[dict] | None:
        """Parse a calls-mode channel: line ``i`` holds test ``i``'s result, and one longer than
        any encoding of a value equal to the expected one is not parsed (it becomes a
        ``too_large`` placeholder, an unequal result)."""
        n = len(plan.cases)
        lines = _split_lines(channel, n + 1)
        if lines is None:
            return None
        messages = []
        for index, line in enumerate(lines):
            limit = MESSAGE_BYTES
            if index < n:
                limit = max(limit, encoded_size_limit(plan.cases[index].expected))
            if len(line) > limit:
                messages.append({"i": index, "too_large": len(line)})
                continue
            message = _parse(line, limit)
            if message is None:
                return None
            messages.append(message)
        return messages

    @staticmethod
    def _compare_calls(plan: CallPlan, messages: list[dict], result: SandboxResult) -> Verdict:
        n = len(plan.cases)
        expected_shape = [m.get("i") for m in messages[:n]] == list(range(n))
        if (
            len(messages) != n + 1
            or not expected_shape
            or messages[n] != {"status": "done", "n": n}
            or result.returncode != 0
        ):
            return _error(
                "the runner did not report every test (exit code "
                f"{result.returncode}){_stderr_tail(result)}"
            )
        for index, (case, message) in enumerate(zip(plan.cases, messages)):
            where = f"test {index + 1}/{n}: {case.source[:SHOW]}"
            if case.plus is not None:
                failed = _plus_case(where, case, message)
                if failed is not None:
                    return failed
                continue
            if "too_large" in message:
                return Verdict(
                    0.0,
                    "incorrect",
                    None,
                    sanitize(
                        f"{where}: expected {_show(case.expected)}, got a result of "
                        f"{message['too_large']} bytes, too large to equal it (not rebuilt)"
                    ),
                )
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
                equal, got = result_equal(
                    message.get("ok"), case.expected, case.abs_tol, case.inclusive
                )
            except (ValueError, TypeError) as exc:
                return _error(f"{where}: malformed result value ({exc})")
            if not equal:
                op = "<=" if case.inclusive else "<"
                tol = f" (|got - expected| {op} {case.abs_tol:g})" if case.abs_tol is not None else ""
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
        if result.returncode != 0:  # the real exit status decides; the channel only explains
            messages = _lines(result.channel, 1)
            status = messages[0] if messages and len(messages) == 1 else {}
            if status.get("status") == "exception":
                error = _error_triple(status.get("error"))
                if str(error[0]) in ("SyntaxError", "IndentationError", "TabError", "MemoryError"):
                    return _load_error({"error": error})
                return Verdict(
                    0.0,
                    "incorrect",
                    None,
                    sanitize(f"runtime error{where}: {error[0]}: {str(error[1])[:SHOW]}"),
                )
            return Verdict(
                0.0,
                "incorrect",
                None,
                sanitize(f"exit status {result.returncode}{where}{_stderr_tail(result)}"),
            )
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


def _plus_case(where: str, case: CallCase, message: dict) -> Verdict | None:
    """The failing verdict of an MBPP+ test (EvalPlus's rule, ``code_compare.plus_result_equal``),
    or ``None`` when it passes."""
    if "exc" in message:
        return _raised(where, message["exc"])
    try:
        equal, got = plus_result_equal(message, case.expected, case.plus)
    except (ValueError, TypeError) as exc:
        return _error(f"{where}: malformed result value ({exc})")
    if equal:
        return None
    rule = case.plus
    how = {"set": " (as a set)", "not_none": " (whether not None)"}.get(rule.oracle, "") if rule else ""
    tol = f" (within atol {rule.atol:g})" if rule and rule.atol else ""
    return Verdict(0.0, "incorrect", None, sanitize(f"{where}: expected {_show(case.expected)}{how}{tol}, got {_show(got)}"))


def _raised(where: str, error: Any) -> Verdict:
    kind = str(error[0]) if isinstance(error, list) and error else "?"
    text = str(error[1]) if isinstance(error, list) and len(error) > 1 else ""
    if kind == "MemoryError":
        return _error(f"memory limit: MemoryError in {where}")
    return Verdict(0.0, "incorrect", None, sanitize(f"{where}: raised {kind}: {text[:SHOW]}"))


def _with_code(verdict: Verdict, code: str) -> Verdict:
    return Verdict(verdict.reward, verdict.status, code, verdict.detail)
