"""Per-phase wall-clock timers: where an update's time goes, read rather than guessed.

Code that does one phase of an update wraps it in ``with phase("rollout"):``; the trainer takes
the totals after each update (:func:`take`) and logs them as ``perf/<name>_s`` in that update's
metrics row. Nested phases are counted in both (a ``verify`` inside a ``rollout`` is part of the
rollout's seconds too), so phases need not add up to the update's time. Counters may also be
added (:func:`count`, e.g. the tokens a rollout sampled) and come back beside the seconds.

The phases the project times: ``rollout`` (sampling, env steps and verification), ``verify``
(the verifier inside it), ``score`` (teacher-forced old log-probs and values), ``update`` (the
optimizer steps), ``weight_refresh`` (rebuilding a sampler's copy of the weights, where there is
one). Timers are per process (each rank times its own work).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["count", "phase", "take"]

_seconds: defaultdict[str, float] = defaultdict(float)
_counts: defaultdict[str, float] = defaultdict(float)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the wall-clock seconds of the ``with`` body to the phase ``name``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _seconds[name] += time.perf_counter() - t0


def count(name: str, value: float) -> None:
    """Add ``value`` to the counter ``name`` (e.g. ``rollout_tokens``)."""
    _counts[name] += value


def take() -> dict[str, float]:
    """The totals since the last call, as ``{"<phase>_s": seconds, "<counter>": value}``, and reset."""
    out = {f"{name}_s": round(seconds, 4) for name, seconds in _seconds.items()}
    out.update(_counts)
    _seconds.clear()
    _counts.clear()
    return out
