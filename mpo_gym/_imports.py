"""Import strings (``"package.module:attr"``), so env and verifier kwargs stay plain data."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["load_attr"]


def load_attr(path: str) -> Any:
    """Import ``"package.module:attr"`` and return the attribute."""
    module, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"expected 'package.module:attr'; got {path!r}")
    return getattr(importlib.import_module(module), attr)
