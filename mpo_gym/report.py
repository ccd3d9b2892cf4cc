"""``mpo_gym.report`` is :mod:`mpo_gym.apps.report` (the same module, under its earlier name)."""

import sys

from .apps import report as _module

sys.modules[__name__] = _module
