"""``mpo_gym.evaluation`` is :mod:`mpo_gym.apps.evaluation` (the same module, under its earlier name)."""

import sys

from .apps import evaluation as _module

sys.modules[__name__] = _module
