"""Turn dataset tests into plans that keep expected values out of the sandbox.

Two kinds of plan:

- :class:`CallPlan` (preferred): assert-style tests rewritten with :mod:`ast` into
  ``(call, expected)`` pairs whose arguments and expected values are literals. Only the
  arguments go into the sandbox; the parent compares the typed results with Python's ``==``
  (:mod:`.code_compare`).
- :class:`ScriptPlan` (fallback, for tests the rewrite cannot express): the test code runs in
  a *separate* sandboxed process where the submission's functions are proxies that receive
  only serialised return values; it never shares a process with the submission.

Nothing here evaluates the submission; the test code itself is parsed and ``literal_eval``-ed
only (it comes from the dataset, not from the model).
"""

from __future__ import annotations

import ast
import builtins
import functools
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CallCase:
    """One rewritten assertion: ``name(*args, **kwargs)`` must equal ``expected``.

    Attributes:
        name: function to call in the submission.
        args, kwargs: literal arguments.
        expected: literal expected value (never sent to the sandbox).
        source: the original assertion, for the verdict detail.
        abs_tol: set for ``abs(f(x) - y) < tol`` assertions: that comparison (with the
            test's own tolerance) instead of ``==``.
        inclusive: the tolerance assertion used ``<=``.
        plus: set for an EvalPlus-style test (MBPP+ inputs, :mod:`.code_plus`): judged by
            :func:`.code_compare.plus_equal` with that rule instead of ``==``.
    """

    name: str
    args: tuple
    kwargs: dict
    expected: Any
    source: str
    abs_tol: float | None = None
    inclusive: bool = False
    plus: PlusRule | None = None


#: EvalPlus's special oracles for MBPP+ (``PlusRule.oracle``): ``eq`` plain ``==``; ``set``
#: ``set(got) == set(expected)``; ``not_none`` the expected value is whether the reference
#: returned something other than ``None``; ``any`` every returned value passes; ``or_zero``
#: ``==`` or ``got == 0``; ``alt`` ``==`` or ``got == alt``; ``alt_tol`` ``==`` or
#: ``abs(got - alt) <= atol``.
PLUS_ORACLES = ("eq", "set", "not_none", "any", "or_zero", "alt", "alt_tol")


@dataclass(frozen=True)
class PlusRule:
    """How one MBPP+ test compares a result with its expected value (EvalPlus's rule).

    Attributes:
        atol: the absolute tolerance in force for this input (the task's ``atol``, or ``1e-6``
            once a float expected value has been seen in the input group when that is 0, as
            EvalPlus's loop does); 0 means exact.
        oracle: one of :data:`PLUS_ORACLES`.
        alt: the second accepted value of the ``alt``/``alt_tol`` oracles.
    """

    atol: float = 0.0
    oracle: str = "eq"
    alt: Any = None


@dataclass(frozen=True)
class CallPlan:
    """All tests as call cases."""

    cases: tuple[CallCase, ...]


@dataclass(frozen=True)
class ScriptPlan:
    """Run ``prelude``, install ``proxies`` for the submission's functions, then ``setup`` and
    each of ``tests``. ``prelude`` is trusted dataset code (a HumanEval prompt, whose helper
    functions the tests may call); the proxies replace anything it defines under their names.
    """

    setup: str
    tests: tuple[str, ...]
    proxies: tuple[str, ...]
    prelude: str = ""


class _NotLiteral(Exception):
    pass


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise _NotLiteral from exc


def _call_parts(node: ast.AST, names: set[str] | None) -> tuple[str, tuple, dict]:
    """``name(literal, ..., k=literal)`` -> parts; ``names`` restricts the callee."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise _NotLiteral
    if names is not None and node.func.id not in names:
        raise _NotLiteral
    if any(isinstance(a, ast.Starred) for a in node.args) or any(
        k.arg is None for k in node.keywords
    ):
        raise _NotLiteral
    args = tuple(_literal(a) for a in node.args)
    kwargs = {k.arg: _literal(k.value) for k in node.keywords}
    return node.func.id, args, kwargs


def _assert_case(stmt: ast.Assert, names: set[str] | None, source: str) -> CallCase | None:
    """Rewrite one assertion; ``None`` for ``assert True``; raise if the shape is unknown."""
    test = stmt.test
    if isinstance(test, ast.Constant) and test.value is True:
        return None
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        raise _NotLiteral
    left, op, right = test.left, test.ops[0], test.comparators[0]
    if isinstance(op, ast.Eq):
        if isinstance(left, ast.Call) and _is_candidate(left, names):
            name, args, kwargs = _call_parts(left, names)
            return CallCase(name, args, kwargs, _literal(right), source)
        name, args, kwargs = _call_parts(right, names)
        return CallCase(name, args, kwargs, _literal(left), source)
    if isinstance(op, (ast.Lt, ast.LtE)):
        return _tolerance_case(left, right, names, source, isinstance(op, ast.LtE))
    raise _NotLiteral


def _is_candidate(node: ast.Call, names: set[str] | None) -> bool:
    return isinstance(node.func, ast.Name) and (names is None or node.func.id in names)


def _tolerance_case(
    left: ast.AST, right: ast.AST, names: set[str] | None, source: str, inclusive: bool
) -> CallCase:
    """``abs(f(x) - y) < tol`` or ``<= tol`` (or ``abs(y - f(x))``)."""
    if not (
        isinstance(left, ast.Call)
        and isinstance(left.func, ast.Name)
        and left.func.id == "abs"
        and len(left.args) == 1
        and isinstance(left.args[0], ast.BinOp)
        and isinstance(left.args[0].op, ast.Sub)
    ):
        raise _NotLiteral
    tol = _literal(right)
    diff = left.args[0]
    call, other = (
        (diff.left, diff.right) if isinstance(diff.left, ast.Call) else (diff.right, diff.left)
    )
    name, args, kwargs = _call_parts(call, names)
    expected = _literal(other)
    if type(tol) not in (int, float) or type(expected) not in (int, float):
        raise _NotLiteral
    return CallCase(name, args, kwargs, expected, source, float(tol), inclusive)


@functools.lru_cache(maxsize=4096)
def humaneval_plan(test: str, entry_point: str, prompt: str = "") -> CallPlan | ScriptPlan:
    """Plan for a HumanEval ``test`` (a module defining ``check(candidate)``).

    Helper functions that the test calls besides ``candidate`` come from the dataset's
    ``prompt`` (run as the prelude of the test process), never from the submission.
    """
    fallback = ScriptPlan(test, (f"check({entry_point})",), (entry_point,), prompt)
    try:
        module = ast.parse(test)
    except SyntaxError as exc:
        raise ValueError(f"HumanEval test code does not parse: {exc}") from exc
    checks = [s for s in module.body if isinstance(s, ast.FunctionDef) and s.name == "check"]
    if len(checks) != 1 or len(checks[0].args.args) != 1:
        return fallback
    others = [s for s in module.body if s is not checks[0]]
    if not all(_harmless_top_level(s) for s in others):
        return fallback
    candidate = checks[0].args.args[0].arg
    cases = []
    try:
        for stmt in checks[0].body:
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                continue
            if isinstance(stmt, ast.Pass):
                continue
            if not isinstance(stmt, ast.Assert):
                return fallback
            case = _assert_case(stmt, {candidate}, ast.unparse(stmt.test))
            if case is not None:
                cases.append(_renamed(case, entry_point))
    except _NotLiteral:
        return fallback
    return CallPlan(tuple(cases)) if cases else fallback


def _renamed(case: CallCase, name: str) -> CallCase:
    source = case.source.replace("candidate(", f"{name}(")
    return CallCase(
        name, case.args, case.kwargs, case.expected, source, case.abs_tol, case.inclusive
    )


def _harmless_top_level(stmt: ast.stmt) -> bool:
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
        return True
    if isinstance(stmt, ast.Assign):
        try:
            _literal(stmt.value)
        except _NotLiteral:
            return False
        return all(isinstance(t, ast.Name) and t.id != "check" for t in stmt.targets)
    return False


@functools.lru_cache(maxsize=4096)
def mbpp_plan(test_list: tuple[str, ...], setup: str) -> CallPlan | ScriptPlan:
    """Plan for MBPP-style ``assert f(x) == y`` lines run after ``setup``."""
    try:
        trees = [ast.parse(t) for t in test_list]
        setup_tree = ast.parse(setup)
    except SyntaxError as exc:
        raise ValueError(f"MBPP test code does not parse: {exc}") from exc
    proxies = _proxy_names(trees, setup_tree)
    fallback = ScriptPlan(setup, tuple(test_list), proxies, _module_imports(trees, setup_tree))
    if setup.strip() or not test_list:
        return fallback
    cases = []
    try:
        for tree, source in zip(trees, test_list):
            if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
                return fallback
            case = _assert_case(tree.body[0], None, source.strip())
            if case is not None:
                cases.append(case)
    except _NotLiteral:
        return fallback
    return CallPlan(tuple(cases)) if cases else fallback


def _module_imports(trees: list[ast.Module], setup: ast.Module) -> str:
    """Imports for modules the tests use without importing (``sys.getsizeof(...)``): in the
    original harness they came from the submission's namespace, which the test process does
    not share."""
    defined = _defined_names(setup)
    modules = sorted(
        {
            node.value.id
            for tree in trees
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id not in defined
        }
    )
    return "".join(f"try:\n    import {m}\nexcept ImportError:\n    pass\n" for m in modules)


def _defined_names(setup: ast.Module) -> set[str]:
    defined = set(dir(builtins))
    for node in ast.walk(setup):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.alias):
            defined.add((node.asname or node.name).split(".")[0])
    return defined


def _proxy_names(trees: list[ast.Module], setup: ast.Module) -> tuple[str, ...]:
    """Called names that neither Python nor the setup code define: the submission's."""
    defined = _defined_names(setup)
    called = []
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id not in defined and node.func.id not in called:
                    called.append(node.func.id)
    return tuple(called)

