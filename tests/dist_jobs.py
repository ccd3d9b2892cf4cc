"""Several ``mpo-gym`` command lines in one torchrun job: ``-m tests.dist_jobs JSON`` where JSON
is a list of argument lists.

Each rank runs them in order through :func:`mpo_gym.cli.main`, in one process group that
outlives each command line (``main`` leaves it at the end of a job; here the job is the list), so
the ranks' interpreter start-up and imports (about 10 s each on 2 cores) are paid once, not once
per command line. Rank 0 brackets each command line's output with ``@@run I start@@`` and
``@@run I exit CODE@@`` (see :func:`split_runs`); a command line that raises ends the job.
"""

from __future__ import annotations

import json
import os
import re
import sys


def run(argvs: list[list[str]]) -> int:
    from mpo_gym import distributed
    from mpo_gym.cli import main

    close, distributed.close = distributed.close, lambda: None
    quiet = os.environ.get("RANK", "0") != "0"
    codes = []
    try:
        for i, argv in enumerate(argvs):
            if not quiet:
                print(f"@@run {i} start@@", flush=True)
            codes.append(main(argv))
            sys.stdout.flush()
            if not quiet:
                print(f"@@run {i} exit {codes[-1]}@@", flush=True)
    finally:
        distributed.close = close
        close()
    return max(codes, default=0)


def split_runs(stdout: str, n: int) -> list[tuple[int | None, str]]:
    """``(exit code, what rank 0 printed in between)`` of each of the ``n`` command lines, from
    the job's stdout; ``(None, "")`` for one that never ended."""
    out: list[tuple[int | None, str]] = []
    for i in range(n):
        found = re.search(rf"@@run {i} start@@\n(.*?)@@run {i} exit (-?\d+)@@", stdout, re.S)
        out.append((int(found.group(2)), found.group(1)) if found else (None, ""))
    return out


if __name__ == "__main__":
    sys.exit(run(json.loads(sys.argv[1])))
