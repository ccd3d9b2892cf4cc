"""``mpo_gym.trainer`` is :mod:`mpo_gym.apps.trainer` (the same module, under its earlier name)."""

import sys

from .apps import trainer as _module

sys.modules[__name__] = _module
