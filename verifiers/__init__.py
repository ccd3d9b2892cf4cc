"""Verifiers: typed verdicts from math and code checkers (imported as ``mpo_gym.verifiers``).

``MathVerifier`` and ``CodeVerifier`` are loaded lazily so that importing this package does not
start worker pools or import sympy.
"""

from __future__ import annotations

from typing import Any

from .base import (
    STATUSES,
    ExactMatchVerifier,
    Verdict,
    Verifier,
    make_verifier,
    register_verifier,
)

__all__ = [
    "STATUSES",
    "CodeVerifier",
    "ExactMatchVerifier",
    "MathVerifier",
    "Verdict",
    "Verifier",
    "make_verifier",
    "register_verifier",
]


def __getattr__(name: str) -> Any:
    if name == "MathVerifier":
        from .math import MathVerifier

        return MathVerifier
    if name == "CodeVerifier":
        from .code import CodeVerifier

        return CodeVerifier
    raise AttributeError(name)
