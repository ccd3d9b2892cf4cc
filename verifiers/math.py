r"""``MathVerifier``: sympy-based answer checking with hard time limits.

Pipeline for one check:

1. **Extraction** (caller's process, pure string code; :mod:`.math_extract`): the last
   ``\boxed{}``/``\fbox{}``; else the last "final answer is X" / "the answer is X" /
   "Answer: X" / "Answer $X$" / "#### X" line (also "la réponse est", "la respuesta es",
   "die Antwort ist", "答案是"), with display math after the phrase allowed to run over
   lines; else the one math span of a short final sentence ("We find that $x < 3$.",
   "Therefore $x \geq 5$ is the solution."); else the whole response when it is only an
   answer. Otherwise ``no_answer``. Never "any number in the text". ``boxed_only=True``
   keeps only the first rule (recommended for RL: the format is then part of the task).
   A reference is read with the same rules (a worked solution gives its own final answer).
2. **Cheap path** (caller's process): equal normalised strings are ``correct`` at once.
3. **Worker** (a process from a shared :class:`~mpo_gym.verifiers.pool.WorkerPool`): parse
   both sides (:mod:`.math_parse`, LaTeX through ``latex2sympy2_extended``, plain text
   through a whitelisted parser; no ``eval``) and compare (:mod:`.math_equiv`). The check is
   killed at ``timeout_s`` and the worker replaced; the verdict is then ``timeout``.

Statuses: ``correct`` (reward 1.0), ``incorrect``, ``no_answer``, ``timeout``, ``error``
(a bug of ours, or a reference we cannot read; the reason is in ``detail``). An answer we
cannot parse is ``incorrect``. ``timeout`` also covers the other resource limits of a check
(worker memory cap, numbers too large for sympy, recursion depth); ``detail`` says which.

Time and isolation: ``timeout_s`` counts from the moment a ready worker receives the check;
waiting for a free worker (all busy) is not counted, so a single caller sees a verdict
within ``timeout_s`` plus a few milliseconds. Workers are forked from the caller; before
the first fork the caller imports sympy and the LaTeX parser (never running them on model
text) so that a replacement worker is ready in milliseconds. Answers or references longer
than 2,000 characters are normalised in the worker too, so the caller only ever runs
linear-time string scans on model text.

Conventions (what a careful grader does; the gold side decides where they are asymmetric):

- Numbers: exact for integers, fractions and radicals; when either side is written as a
  decimal, relative tolerance ``rel_tol`` (default 1e-6) *and* agreement to the digits the
  decimal shows: ``0.333`` is not ``1/3``, ``1000000.5`` is not ``1000000``, ``0.142857``
  is ``1/7``. A numeral with a base subscript (``40_9``) compares as written, never as 40.
- ``1,000`` and ``1{,}000`` are one thousand outside brackets; inside brackets a comma
  separates items (``[1,100]`` is an interval).
- Units in ``\text{}``/``\mbox{}`` and unit words after a number are dropped; ``\$`` too.
- Scientific notation is the number it writes, to the digits it shows: ``2e6`` and
  ``2 \times 10^6`` are exactly 2000000 (not 2000001), ``2.5e6`` shows two digits. There is
  no absolute floor: ``1e-30`` is not ``0``.
- Percent and degree signs are lenient on purpose, and the same on both sides: ``50\%``
  (also "50 percent" ending an answer) equals ``50`` and ``0.5``; ``30^\circ`` (also "30
  degrees") equals ``30`` and, when the other side contains ``\pi``, ``\frac{\pi}{6}``.
  Without a sign on either side ``0.5`` is not ``50`` and ``30`` is not ``\frac{\pi}{6}``.
  Decided on the data: GSM8K's golds never carry the sign (its 14 "what percent" test
  questions have golds like ``60``, which a response answers "60%"), and MATH-500's golds
  carry ``^\circ`` 14 times, which responses often leave out; the strict reading rejects all
  28 of these correct answers and changes no verdict of the two sets' reference solutions
  (500/500 and 1319/1319 correct either way).
- ``\pm``: ``1 \pm \sqrt{2}`` is the list ``1+\sqrt{2}, 1-\sqrt{2}``.
- Several boxes: when the reference lists ``n`` answers and the response's last ``n`` boxes
  form the whole trailing run of boxes with short glue on one line (``x = \boxed{2}`` or
  ``x = \boxed{3}``), they are read as one list; otherwise only the last box counts. A
  reference's boxes joined by list glue (``\boxed{1}\boxed{2}``, ``\boxed{1} and \boxed{2}``,
  commas) are one list. A "final answer is X" line after the last box (X a math span or a
  number) wins over the box.
- Collections: ``(a, b)`` and ``[a, b)`` are ordered and their brackets must match (an open
  interval is not a closed one); ``\{a, b\}``, bare lists ``a, b``, "a or b" and unions are
  order-insensitive and must have the same number of items. A 1-row/1-column matrix equals
  the same tuple ``(a, b)``.
- Ratios and clock times: ``11:21`` and ``12:00`` compare term by term (``12:00`` is not
  ``1:00``; ``2:4`` is not ``1:2``; ``11:21`` is not ``11/21``). A division by zero equals
  nothing.
- Labels: ``x = 2`` equals ``2`` when the left side is a label: a name (``k``, ``x_1``,
  ``f(3)``), ``|z|``, capital-letter segments and their ratios (``AB``, ``|AB|``,
  ``\frac{NO}{BO}``), a tuple or ratio of names (``(p, q) = (3, 2)``, ``V_1 : V_2 = 11 : 21``).
  ``a + 3z = 0`` and ``xy = 6`` are never ``0`` / ``6``. ``AB = 4, CD = 5`` wants ``4, 5`` in
  that order; ``x_1 = 2, x_2 = 3`` accepts either order. A chain of equal numbers
  (``35 + 70 = 105``) is its value; a false one (``1/2 = 10/9``, ``x = 2+2 = 5``) is nothing.
- Relations: ``a < b`` equals ``b > a``; equations equal when both sides match (either
  order) or ``lhs - rhs`` agree up to a constant non-zero factor (``2x + 4y - 3 = 0`` is
  ``y = -x/2 + 3/4``; for an inequality the factor must be positive). A gold inequality in
  one variable (``x``, ``f(x)`` or ``|z|``) accepts the same set as an interval or union,
  also written ``x \in [...]`` (``-2 \le x \le 7`` accepts ``[-2, 7]``); a gold interval does
  not accept an inequality.
- Matrices: ``pmatrix``/``bmatrix``/``array`` (also in ``\left[...\right]``) compare cell by
  cell and must have the same shape (a 2x2 matrix is not the tuple of its four cells); sums,
  differences and products of matrix literals are evaluated first.
- Separators: ``11,\!111`` and ``14{,}916`` are thousands; ``;`` separates items like ``,``;
  a tuple listed twice in an "all solutions" answer counts once. ``X \approx Y`` is read as
  ``X`` (``x \approx 11`` as ``x = 11``). ``\textnormal{}`` units are dropped like ``\text{}``.
- Words (``\text{Monday}``) compare case-insensitively; single letters are symbols and are
  case-sensitive.

Not handled (known blind spots, each rejected rather than guessed): ``0.333`` for ``1/3``
(rounding conventions), decimal commas (``1000,99`` is read as a list), numbers in prose
with no answer phrase or math delimiters ("... is 2/3. <|im_start|>"), units are dropped,
not checked or converted (``5 m`` passes for ``5 cm``), ``\log`` is read as base 10
(``latex2sympy2_extended``), multi-letter plain words are text (``xy`` is not ``yx``), the
name in ``x = 2`` is not checked against the question, ratios are not reduced, and
anything ``latex2sympy2_extended`` cannot parse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import Verdict, _check_lengths
from .math_extract import count_items, extract_answer, extract_reference, normalize
from .pool import TaskResult, WorkerPool, shared_pool

__all__ = ["MathVerifier", "check_answer"]

MAX_PARENT_CHARS = 2000


def _preload() -> None:
    """Import sympy and the LaTeX parser once, so forked workers start warm."""
    from . import math_equiv, math_parse  # noqa: F401

    math_parse.parse_node(r"\frac{1}{2}")


def _worker_setup() -> None:
    """Per-worker setup: imports (if not inherited) and no limit on integer string size."""
    import sys

    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)
    _preload()


def check_answer(
    gold: str, pred: str, rel_tol: float = 1e-6, normalized: bool = True
) -> tuple[str, str]:
    """Compare a gold answer with an extracted answer; returns ``(status, detail)``.

    Runs in a worker. ``normalized=False`` normalises both strings here first (the caller
    skips normalising very long strings). Raises nothing for bad *input*; an exception
    escaping from here is a bug of ours.
    """
    from .math_equiv import equivalent
    from .math_parse import ParseFailure, parse_node

    if not normalized:
        gold, pred = normalize(gold), normalize(pred)
        if gold == pred:
            return "correct", "same normalised string"

    try:
        gold_node = parse_node(gold)
    except (ParseFailure, RecursionError) as exc:
        return "error", f"could not parse reference {gold[:80]!r}: {exc}"
    try:
        pred_node = parse_node(pred)
    except (ParseFailure, RecursionError) as exc:
        return "incorrect", f"could not parse answer: {exc}"
    try:
        same = equivalent(gold_node, pred_node, rel_tol)
    except (OverflowError, RecursionError) as exc:  # numbers too big for sympy/mpmath
        return "timeout", f"resource limit: {type(exc).__name__}: {str(exc)[:100]}"
    if same:
        return "correct", "equivalent"
    return "incorrect", "not equivalent"


class MathVerifier:
    """Checks math answers against a gold answer (LaTeX or plain text).

    Args:
        timeout_s: wall-clock limit per check, enforced by killing the worker process.
        boxed_only: only accept an answer inside the last ``\\boxed{}``.
        rel_tol: relative tolerance when either side is written as a decimal.
        workers: worker processes in the shared pool (default: CPU count). The pool is
            shared by every ``MathVerifier`` in the process and starts on the first check.

    Not symmetric: ``verify(response, reference)`` reads ``reference`` as the gold answer.
    """

    def __init__(
        self,
        *,
        timeout_s: float = 5.0,
        boxed_only: bool = False,
        rel_tol: float = 1e-6,
        workers: int | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive; got {timeout_s}")
        self.timeout_s = timeout_s
        self.boxed_only = boxed_only
        self.rel_tol = rel_tol
        self.workers = workers

    @property
    def pool(self) -> WorkerPool:
        """The shared worker pool (created on first use, started on the first task)."""
        return shared_pool("math", self.workers, initializer=_worker_setup, preload=_preload)

    def verify(self, response: str, reference: Any) -> Verdict:
        """Judge one response against one gold answer; never raises."""
        return self.verify_batch([response], [reference])[0]

    def verify_batch(self, responses: Sequence[str], references: Sequence[Any]) -> list[Verdict]:
        """Judge many responses at once, spread over the worker pool; keeps input order."""
        _check_lengths(responses, references)
        verdicts: list[Verdict | None] = []
        pending: list[tuple[int, str | None, tuple[Any, ...]]] = []
        for i, (response, reference) in enumerate(zip(responses, references)):
            verdict, task = self._prescreen(response, reference)
            verdicts.append(verdict)
            if task is not None:
                pending.append((i, task[0], task[1]))
        if pending:
            try:
                results = self.pool.map(check_answer, [t for _, _, t in pending], self.timeout_s)
            except Exception as exc:  # the pool itself failed (e.g. cannot start workers)
                results = [TaskResult("error", detail=f"pool: {type(exc).__name__}: {exc}")] * len(
                    pending
                )
            for (i, extracted, _), result in zip(pending, results):
                verdicts[i] = _to_verdict(result, extracted)
        return [v for v in verdicts if v is not None]

    def _prescreen(self, response: Any, reference: Any) -> tuple[Verdict | None, Any]:
        """Extraction and string equality in-process; returns a verdict or a worker task."""
        try:
            if not isinstance(response, str):
                return Verdict(0.0, "no_answer", None, f"response is {type(response).__name__}"), None
            if reference is None or isinstance(reference, bool):
                return Verdict(0.0, "error", None, f"reference must be a string or number; "
                               f"got {reference!r}"), None
            gold_raw = extract_reference(reference)
            items = count_items(normalize(gold_raw)) if len(gold_raw) <= MAX_PARENT_CHARS else 1
            answer = extract_answer(response, self.boxed_only, items)
            if answer is None:
                return Verdict(0.0, "no_answer", None, "no final answer found"), None
            if max(len(gold_raw), len(answer)) > MAX_PARENT_CHARS:  # normalise in the worker
                return None, (answer, (gold_raw, answer, self.rel_tol, False))
            gold, pred = normalize(gold_raw), normalize(answer)
            if not gold:
                return Verdict(0.0, "error", answer, "empty reference"), None
            if gold == pred:
                return Verdict(1.0, "correct", answer, "same normalised string"), None
            if not pred:
                return Verdict(0.0, "no_answer", answer, "empty answer"), None
            return None, (answer, (gold, pred, self.rel_tol))
        except Exception as exc:  # a bug of ours: report it, never as "incorrect"
            return Verdict(0.0, "error", None, f"{type(exc).__name__}: {exc}"), None

    def close(self) -> None:
        """Stop the shared pool's workers (a later check starts new ones)."""
        self.pool.close()


def _to_verdict(result: Any, extracted: str | None) -> Verdict:
    if result.status == "timeout":
        return Verdict(0.0, "timeout", extracted, result.detail)
    if result.status != "ok":
        if result.detail.startswith(("MemoryError", "RecursionError")):
            return Verdict(0.0, "timeout", extracted, f"resource limit: {result.detail}")
        return Verdict(0.0, "error", extracted, result.detail)
    status, detail = result.value
    return Verdict(1.0 if status == "correct" else 0.0, status, extracted, detail)
