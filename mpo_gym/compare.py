"""``mpo_gym.compare`` is :mod:`mpo_gym.apps.compare` (the same module, under its earlier name)."""

import sys

from .apps import compare as _module

sys.modules[__name__] = _module
