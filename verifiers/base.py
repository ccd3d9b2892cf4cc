"""Verdicts, the ``Verifier`` protocol, and the verifier registry.

A verifier turns a model response into a typed :class:`Verdict`. Verifiers are *total*: they
never raise into the caller for anything a model can write, and they never run model text in
the caller's process. A crash in our own code is ``status="error"`` with the exception in
``detail``, never a silent ``incorrect``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from mpo_gym._imports import load_attr

from .math_extract import last_boxed

STATUSES = ("correct", "incorrect", "no_answer", "timeout", "error")


@dataclass(frozen=True)
class Verdict:
    """The result of one check.

    Attributes:
        reward: what the env pays (1.0 for ``correct`` by default, else 0.0).
        status: one of ``"correct" | "incorrect" | "no_answer" | "timeout" | "error"``.
        extracted: the answer or code actually judged, ``None`` when nothing was extracted.
        detail: a short reason (parse error, failing test, stderr tail).
    """

    reward: float
    status: str
    extracted: str | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"Verdict.status must be one of {STATUSES}; got {self.status!r}")

    @property
    def correct(self) -> bool:
        return self.status == "correct"


@runtime_checkable
class Verifier(Protocol):
    """Anything with ``verify`` and ``verify_batch``."""

    def verify(self, response: str, reference: Any) -> Verdict: ...

    def verify_batch(
        self, responses: Sequence[str], references: Sequence[Any]
    ) -> list[Verdict]: ...


class ExactMatchVerifier:
    """Whitespace-insensitive string match on the last ``\\boxed{}`` or the whole response.

    Cheap and in-process (it only compares strings). Meant for toy envs and tests; use
    :class:`~mpo_gym.verifiers.MathVerifier` for anything mathematical.
    """

    def __init__(self, *, boxed_only: bool = False, timeout_s: float = 5.0) -> None:
        self.boxed_only = boxed_only
        self.timeout_s = timeout_s

    def verify(self, response: str, reference: Any) -> Verdict:
        try:
            answer, _ = last_boxed(response)
            if answer is None and not self.boxed_only:
                answer = response
            if answer is None or not answer.strip():
                return Verdict(0.0, "no_answer", None, "no \\boxed{} answer")
            ok = "".join(answer.split()) == "".join(str(reference).split())
            return Verdict(1.0 if ok else 0.0, "correct" if ok else "incorrect", answer.strip(), "")
        except Exception as exc:  # a bug of ours, reported as such
            return Verdict(0.0, "error", None, f"{type(exc).__name__}: {exc}")

    def verify_batch(self, responses: Sequence[str], references: Sequence[Any]) -> list[Verdict]:
        _check_lengths(responses, references)
        return [self.verify(r, ref) for r, ref in zip(responses, references)]


def _check_lengths(responses: Sequence[Any], references: Sequence[Any]) -> None:
    if len(responses) != len(references):
        raise ValueError(
            f"verify_batch needs one reference per response; got {len(responses)} responses "
            f"and {len(references)} references"
        )


# name -> "module:attr" (lazy, so `import mpo_gym` stays light) or a factory
_VERIFIERS: dict[str, str | Callable[..., Verifier]] = {
    "exact": "mpo_gym.verifiers.base:ExactMatchVerifier",
    "math": "mpo_gym.verifiers.math:MathVerifier",
    "code": "mpo_gym.verifiers.code:CodeVerifier",
}
_INSTANCES: dict[tuple[str, tuple[tuple[str, Any], ...]], Verifier] = {}


def register_verifier(name: str, factory: str | Callable[..., Verifier]) -> None:
    """Make ``make_verifier(name)`` build ``factory(**kwargs)``.

    ``factory`` is a callable or an import string ``"package.module:attr"``.
    """
    _VERIFIERS[name] = factory


def make_verifier(spec: str | Verifier, **kwargs: Any) -> Verifier:
    """Resolve a verifier name (``"math"``, ``"code"``, ``"exact"`` or a registered one).

    Instances are shared per (name, kwargs) so that envs reuse one worker pool.
    A ``Verifier`` instance is returned unchanged.
    """
    if not isinstance(spec, str):
        if not isinstance(spec, Verifier):
            raise TypeError(f"expected a verifier name or an object with verify/verify_batch; got {spec!r}")
        return spec
    key = (spec, tuple(sorted(kwargs.items())))
    if key in _INSTANCES:
        return _INSTANCES[key]
    if spec not in _VERIFIERS:
        raise ValueError(
            f"unknown verifier {spec!r}; known: {sorted(_VERIFIERS)} "
            "(add one with mpo_gym.verifiers.register_verifier)"
        )
    factory = _VERIFIERS[spec]
    if isinstance(factory, str):
        factory = load_attr(factory)
    verifier = factory(**kwargs)
    _INSTANCES[key] = verifier
    return verifier


