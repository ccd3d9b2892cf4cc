"""The apps: what the command line runs, on top of the contract and the infrastructure.

- :mod:`~mpo_gym.apps.trainer` (``mpo-gym train``) and :mod:`~mpo_gym.apps.training_run` (a
  run's bookkeeping);
- :mod:`~mpo_gym.apps.evaluation` (``mpo-gym eval``: suites, pass@k, result files);
- :mod:`~mpo_gym.apps.compare` and :mod:`~mpo_gym.apps.report` (``mpo-gym compare``);
- :mod:`~mpo_gym.apps.export` (``mpo-gym export``).

Each is also importable under its earlier name (``mpo_gym.trainer`` is ``mpo_gym.apps.trainer``,
the same module object).
"""
