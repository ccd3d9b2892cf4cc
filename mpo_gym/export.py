"""``mpo_gym.export`` is :mod:`mpo_gym.apps.export` (the same module, under its earlier name)."""

import sys

from .apps import export as _module

sys.modules[__name__] = _module
