"""``mpo_gym.training_run`` is :mod:`mpo_gym.apps.training_run` (the same module, under its earlier name)."""

import sys

from .apps import training_run as _module

sys.modules[__name__] = _module
