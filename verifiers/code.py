"""``CodeVerifier``: runs model-written Python against tests in a sandbox and returns a Verdict.

Reference shapes (``reference`` argument of :meth:`CodeVerifier.verify`):

- HumanEval: ``{"entry_point": "f", "test": "def check(candidate): ...", "prompt": "..."}``
  (``prompt`` optional),
- MBPP: ``{"test_list": ["assert f(1) == 2", ...], "test_setup_code": ""}``, optionally with
  ``"plus"``: a :class:`~.code_plus.PlusTests` (MBPP+'s extra inputs, judged by EvalPlus's
  rule, in the same sandboxed run as the asserts; ``test_list`` may then be empty),
- stdio: ``{"stdio": [{"input": "1 2\\n", "output": "3\\n"}, ...]}``.

How the code to judge is obtained from the response (:func:`extract_code`, :func:`assemble`):

1. Among the fenced blocks tagged ``python``/``py``/``python3`` or untagged (an unclosed final
   fence counts, for truncated generations), the last one that defines the function the tests
   call (:func:`entry_point_of`), else the last one; with no such block, the whole response.
   So a solution followed by an "example usage", "output" or "tests" block is judged by its
   solution.
2. HumanEval only: if the code defines the entry point (``def f(`` at column 0), it is the
   whole program; the prompt's top-level imports, and its helper functions or classes that
   the code does not define itself, are put in front of it.
   Otherwise, when a ``prompt`` is given, the code is a *function body*: it is appended to
   the prompt, and a body whose first non-blank line is not indented is indented by four
   spaces first.

The verdict is decided here, in the caller's process, from typed primitives that the sandbox
sent back (see ``code_runner.py``, ``code_tests.py`` and ``code_compare.py``); submission code
never runs here. Equality rule: a test passes exactly when the official harness's ``==`` would
hold on the same values (Python's own ``==`` on the rebuilt primitives: ``1 == True``,
``{1} == {1.0}``, ``240 == 240.0`` pass; ``0 == 1e-10``, ``0.1 + 0.2 == 0.3`` fail); no tolerance
of ours is added, and a test with its own (``abs(f(x) - y) < tol``) keeps exactly that. For
stdio tasks a pass needs the right stdout *and* exit status 0 (the real one, not what the
program reports).
Status mapping: ``correct``; ``incorrect`` (wrong value, exception in the code, wrong stdout;
detail names the test, expected vs got); ``timeout`` (wall clock or CPU limit); ``error``
(syntax error, error while loading, crash by signal, memory limit, output cap, sandbox
failure); ``no_answer`` (no code in the response).
"""

from __future__ import annotations

import ast
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .base import Verdict, _check_lengths
from .code_judge import Judge, sanitize
from .code_plus import PlusTests
from .code_tests import CallPlan, humaneval_plan, mbpp_plan
from .pool import local_cpus
from .sandbox import Limits, Sandbox

_FENCE = re.compile(r"^[ \t]*```+[ \t]*([^\s`]*)")
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}


def extract_code(response: str, entry_point: str | None = None) -> str:
    """The fenced Python block of ``response`` to judge, else the whole response.

    That is the last block that defines ``entry_point`` (a solution followed by an "example
    usage", "output" or "tests" block is judged by its solution), else the last Python block.
    """
    blocks: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for line in response.splitlines():
        match = _FENCE.match(line)
        if match and current is None:
            current = []
            blocks.append((match.group(1).lower(), current))
        elif match and not line.strip().strip("`"):
            current = None
        elif current is not None:
            current.append(line)
    python = ["\n".join(body) + "\n" for tag, body in blocks if tag in _PYTHON_TAGS]
    if entry_point:
        defining = [code for code in python if _defines(code, entry_point)]
        python = defining or python
    return python[-1] if python else response


_CALLED = re.compile(r"^\s*assert\s+(?:not\s+)?\(?\s*(?:set\()?\s*(?:math\.isclose\()?([A-Za-z_]\w*)\s*\(")


def entry_point_of(reference: dict) -> str | None:
    """The function the tests call: HumanEval's ``entry_point``, else the name the first MBPP
    assert calls (``assert remove_Occ("hello","l") == "heo"`` -> ``remove_Occ``)."""
    if reference.get("entry_point"):
        return str(reference["entry_point"])
    tests = reference.get("test_list") or []
    match = _CALLED.match(str(tests[0])[:500]) if tests else None
    return match.group(1) if match else None


def assemble(code: str, reference: dict) -> str:
    """Apply the HumanEval body-joining rule (module docstring, point 2); other shapes as is."""
    entry_point, prompt = reference.get("entry_point"), reference.get("prompt")
    if not entry_point or "test" not in reference:
        return code
    if _defines(code, entry_point):
        return "\n".join([*_prompt_context(prompt or "", entry_point, code), code])
    if not prompt:
        return code
    lines = code.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if first and not first[0].isspace():
        code = "\n".join(("    " + ln) if ln.strip() else ln for ln in lines) + "\n"
    return prompt + ("" if prompt.endswith("\n") else "\n") + code


def _defines(code: str, name: str) -> bool:
    """Whether ``code`` has ``def name(`` (or a class) at column 0; a regex, not a parse."""
    return bool(re.search(rf"^((async\s+)?def|class)\s+{re.escape(name)}\b", code, re.M))


def _prompt_context(prompt: str, entry_point: str, code: str) -> list[str]:
    """The prompt's imports and helper definitions that ``code`` does not define itself.

    Only the (trusted) prompt is parsed; the model's code is matched with :func:`_defines`.
    """
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return [ln for ln in prompt.splitlines() if ln.startswith(("import ", "from "))]
    parts = []
    for node in tree.body:
        keep = isinstance(node, (ast.Import, ast.ImportFrom)) or (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and node.name != entry_point
            and not _defines(code, node.name)
        )
        if keep:
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            parts.append("\n".join(prompt.splitlines()[first - 1 : node.end_lineno]))
    return parts


def validate_reference(reference: Any) -> str:
    """Return the reference shape (``humaneval``, ``mbpp``, ``stdio``) or raise ``ValueError``."""
    if isinstance(reference, dict):
        if isinstance(reference.get("test"), str) and isinstance(reference.get("entry_point"), str):
            return "humaneval"
        if isinstance(reference.get("test_list"), (list, tuple)) and all(
            isinstance(t, str) for t in reference["test_list"]
        ):
            plus = reference.get("plus")
            if plus is not None and not isinstance(plus, PlusTests):
                raise ValueError(
                    f"reference['plus'] must be a PlusTests (MBPP+ tests); got {type(plus).__name__}"
                )
            return "mbpp"
        cases = reference.get("stdio")
        if isinstance(cases, (list, tuple)) and all(
            isinstance(c, dict)
            and isinstance(c.get("input"), str)
            and isinstance(c.get("output"), str)
            for c in cases
        ):
            return "stdio"
    keys = sorted(reference) if isinstance(reference, dict) else type(reference).__name__
    raise ValueError(
        "reference for CodeVerifier must have 'test' + 'entry_point' (HumanEval), 'test_list' "
        f"(MBPP) or 'stdio' (list of {{'input', 'output'}} strings); got {keys}"
    )


class CodeVerifier:
    """Sandboxed code-test verifier (``make_verifier("code")``).

    Args:
        timeout_s: wall-clock limit per check (all tests of one response together).
        concurrency: checks running at once; default: twice the number of CPUs, since part
            of each check waits on process and namespace set-up rather than computing. The
            pool is threads, each driving its own sandbox processes: the isolation is the
            subprocess, so a worker *process* pool would add a hop without adding safety.
        limits: sandbox resource limits; by default ``Limits(cpu_s=int(timeout_s) + 2)``.
        unsafe: allow running without namespace isolation when ``bwrap`` is missing.
            Only for trusted code; see ``sandbox.py``.
        cgroups, seccomp: use those layers when available.

    Raises:
        SandboxUnavailableError: at construction, when no strong isolation is available and
            ``unsafe`` is false.
        ValueError: from ``verify``/``verify_batch`` for a malformed *reference* (a caller
            bug); nothing in a *response* makes them raise.

    Does not: give partial credit; make third-party packages importable in the sandbox (only
    the system Python's standard library); compare return values that are not plain
    primitives (``int``, ``float``, ``str``, ``bytes``, ``bool``, ``None``, ``complex``,
    ``list``, ``tuple``, ``set``, ``frozenset``, ``dict``; ``Counter``/``OrderedDict``/
    ``defaultdict`` are sent as dicts; any other result is unequal to every expected
    value, and in script mode only its truthiness reaches ``assert f(x)``); pass objects other than primitives as arguments;
    let tests observe mutation of their arguments (each call receives fresh copies) - so
    MBPP rows that build instances of the solution's own classes cannot pass.
    """

    def __init__(
        self,
        *,
        timeout_s: float = 5.0,
        concurrency: int | None = None,
        limits: Limits | None = None,
        unsafe: bool = False,
        cgroups: bool = True,
        seccomp: bool = True,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive; got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.concurrency = max(1, int(concurrency or 2 * local_cpus()))
        if limits is None:
            limits = Limits(cpu_s=int(timeout_s) + 2)
        self.sandbox = Sandbox(limits, unsafe=unsafe, cgroups=cgroups, seccomp=seccomp)
        self._judge = Judge(self.sandbox)
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @property
    def layers(self) -> list[str]:
        """Active isolation layers (from the capability probe)."""
        return self.sandbox.layers()

    def verify(self, response: str, reference: Any) -> Verdict:
        """Judge one response; never raises for anything in ``response``."""
        shape = validate_reference(reference)
        return self._verify_one(response, reference, shape)

    def verify_batch(self, responses: Sequence[str], references: Sequence[Any]) -> list[Verdict]:
        """Judge many responses concurrently; one verdict per input, in input order."""
        _check_lengths(responses, references)
        shapes = [validate_reference(r) for r in references]
        pool = self._executor()
        futures = [
            pool.submit(self._verify_one, resp, ref, shape)
            for resp, ref, shape in zip(responses, references, shapes)
        ]
        return [f.result() for f in futures]

    def close(self) -> None:
        """Stop the worker threads (sandboxes never outlive their check)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> CodeVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.concurrency, thread_name_prefix="code-verifier"
                )
            return self._pool

    def _verify_one(self, response: str, reference: dict, shape: str) -> Verdict:
        try:
            if not isinstance(response, str):
                return Verdict(
                    0.0, "no_answer", None, f"response is {type(response).__name__}, not str"
                )
            code = assemble(extract_code(response, entry_point_of(reference)), reference)
            if not code.strip():
                return Verdict(0.0, "no_answer", None, "no code in the response")
            with self._slots:
                deadline = time.monotonic() + self.timeout_s
                return self._dispatch(code, reference, shape, deadline)
        except Exception as exc:  # a bug of ours: report it, never raise into the trainer
            return Verdict(
                0.0, "error", None, sanitize(f"verifier error: {type(exc).__name__}: {exc}")
            )

    def _dispatch(self, code: str, reference: dict, shape: str, deadline: float) -> Verdict:
        if shape == "stdio":
            return self._judge.stdio(code, reference["stdio"], deadline, self.timeout_s)
        if shape == "humaneval":
            plan = humaneval_plan(
                reference["test"], reference["entry_point"], reference.get("prompt") or ""
            )
        else:
            return self._mbpp(code, reference, deadline)
        if isinstance(plan, CallPlan):
            return self._judge.calls(code, plan, deadline, self.timeout_s)
        return self._judge.script(code, plan, deadline, self.timeout_s)

    def _mbpp(self, code: str, reference: dict, deadline: float) -> Verdict:
        """MBPP asserts, plus the MBPP+ tests of ``reference["plus"]`` when given: with the
        asserts in one calls-mode run (one sandboxed process, one deadline); after them, in a
        second run within the same deadline, when the asserts need the script fallback."""
        tests, setup = tuple(reference["test_list"]), reference.get("test_setup_code") or ""
        plus = reference.get("plus")
        extra = plus.cases() if isinstance(plus, PlusTests) else ()
        if not tests and extra:
            return self._judge.calls(code, CallPlan(extra), deadline, self.timeout_s)
        plan = mbpp_plan(tests, setup)
        if isinstance(plan, CallPlan):
            return self._judge.calls(code, CallPlan(plan.cases + extra), deadline, self.timeout_s)
        verdict = self._judge.script(code, plan, deadline, self.timeout_s)
        if extra and verdict.status == "correct":
            return self._judge.calls(code, CallPlan(extra), deadline, self.timeout_s)
        return verdict
