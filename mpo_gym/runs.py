"""Run folders that never lose or corrupt work: config checks, atomic checkpoints, signals.

- :func:`check_run_folder`: a folder that already holds a run (``config.json``) is resumed only
  with the same config; budget and logging fields (:data:`RESUMABLE_FIELDS`) may change, any
  other difference is refused with one line naming the fields, before anything is written.
- :func:`save_checkpoint`: ``checkpoint/`` is written as ``checkpoint.tmp/`` (each file
  fsynced), then the old ``checkpoint/`` becomes ``checkpoint.prev/`` and the new one is
  renamed into place; the last two are kept. :func:`load_checkpoint` falls back to
  ``checkpoint.prev/`` with a warning when the latest fails to load.
- :class:`StopSignals`: SIGINT/SIGTERM during training finish the current update, then the
  trainer saves and stops; a second signal (or one outside the update loop) abandons at once
  and keeps the last checkpoint.

- :class:`RunLock`: one training per folder; a second is refused with the holder's pid.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from .errors import MpoGymError

__all__ = [
    "RESUMABLE_FIELDS",
    "Abandon",
    "StopSignals",
    "check_run_folder",
    "config_differences",
    "RunLock",
    "load_checkpoint",
    "read_json",
    "save_checkpoint",
    "truncate_jsonl",
]

# Fields that may differ when a run is resumed: the budget, and how it is logged/checkpointed.
RESUMABLE_FIELDS = frozenset({
    "updates", "time_budget_s", "budget_s", "checkpoint_every", "checkpoint_every_s", "report_to",
    "log_every", "completions_every", "out_dir",
})

LATEST, PREVIOUS, TEMP = "checkpoint", "checkpoint.prev", "checkpoint.tmp"


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def config_differences(stored: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str],
                       defaults: Mapping[str, Any] | None = None) -> list[str]:
    """``"name (stored here: a, now: b)"`` for every key whose value differs (JSON-compared)."""
    out = []
    for key in keys:
        if key in RESUMABLE_FIELDS:
            continue
        old = stored.get(key, (defaults or {}).get(key))
        if _plain(old) != _plain(new.get(key)):
            out.append(f"{key} (stored: {_short(old)}, now: {_short(new.get(key))})")
    return out


def _short(value: Any) -> str:
    text = json.dumps(_plain(value))
    return text if len(text) <= 40 else text[:37] + "..."


def check_run_folder(out: Path, differences: Callable[[dict[str, Any]], list[str]], *,
                     resume: bool = True, what: str = "run", config_name: str = "config.json",
                     resume_hint: str = "--resume") -> dict[str, Any] | None:
    """The stored config of the run in ``out`` (None for a new folder), or a refusal.

    ``differences(stored)`` lists what differs from the new config. Nothing is written here.
    """
    path = out / config_name
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MpoGymError(f"{path} is not readable ({exc}); use another --out-dir") from exc
    if not resume:
        raise MpoGymError(f"{out} already holds a {what}; use another --out-dir (or resume it)")
    diff = differences(stored)
    if diff:
        raise MpoGymError(
            f"{out} holds a {what} with another config ({'; '.join(diff)}): use another --out-dir, "
            f"or {resume_hint} to continue it with its stored config"
        )
    return stored


# ---------------------------------------------------------------------- checkpoints
def _save_file(obj: Any, path: Path) -> None:
    import torch

    with path.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(out: Path, files: Mapping[str, Any]) -> Path:
    """Write ``files`` (name -> object for ``torch.save``) as the latest checkpoint, atomically."""
    tmp, latest, prev = out / TEMP, out / LATEST, out / PREVIOUS
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, obj in files.items():
        _save_file(obj, tmp / name)
    _fsync_dir(tmp)
    if latest.exists():
        if prev.exists():
            shutil.rmtree(prev)
        latest.rename(prev)
    tmp.rename(latest)
    _fsync_dir(out)
    return latest


def load_checkpoint(out: Path, names: Iterable[str]) -> tuple[dict[str, Any], Path] | None:
    """The files of the newest checkpoint of ``out`` that loads, or None when there is none.

    Tries ``checkpoint/``, then ``checkpoint.prev/`` (also what is left when a crash fell between
    the two renames); each failure is announced on stderr. When checkpoints exist but none
    loads this is an error (never a silent restart).
    """
    import torch

    names = list(names)
    tried = []
    for sub in (LATEST, PREVIOUS):
        folder = out / sub
        if not folder.exists():
            continue
        try:
            loaded = {n: torch.load(folder / n, map_location="cpu", weights_only=False) for n in names}
        except Exception as exc:  # a truncated or corrupted file: fall back to the previous one
            reason = " ".join(str(exc).split())[:200]
            tried.append(f"{folder} ({reason})")
            print(f"warning: checkpoint {folder} failed to load ({reason}); trying the previous one",
                  file=sys.stderr)
            continue
        return loaded, folder
    if tried:
        raise MpoGymError(f"no checkpoint of {out} could be loaded: {'; '.join(tried)}")
    return None


def truncate_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Keep only the rows of a JSONL file for which ``keep(row)`` holds (rewritten atomically)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept, torn = [], 0
    for row in rows:
        try:
            parsed = json.loads(row)
        except json.JSONDecodeError:  # a line cut short (a crash or a full disk mid-write)
            torn += 1
            continue
        if keep(parsed):
            kept.append(row)
    if torn:
        print(f"repaired {path}: dropped {torn} torn line(s) (a write was cut short)", file=sys.stderr)
    if len(kept) == len(rows):
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(r + "\n" for r in kept))
    tmp.replace(path)


def read_json(path: Path, what: str) -> dict[str, Any] | None:
    """A JSON file of a run folder, or None (announced) when it is missing, empty or torn."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        print(f"repaired {path}: it was empty or torn; {what}", file=sys.stderr)
        return None
    return data if isinstance(data, dict) else None


class RunLock:
    """One training per run folder: an exclusive ``flock`` on ``<out>/.lock`` (released when the
    process ends, however it ends), which records the holder's pid for the refusal message."""

    def __init__(self, out: Path):
        self.path = out / ".lock"
        self.file: Any = None

    def __enter__(self) -> RunLock:
        import fcntl

        if self.file is not None:  # already held by this object
            return self
        self.file = self.path.open("a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise MpoGymError(f"{self.path.parent} is in use by another training (pid {holder}): wait for it "
                              "to finish, or use another --out-dir") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.file is not None:
            self.file.close()  # closing releases the lock
            self.file = None


# ---------------------------------------------------------------------- signals
class Abandon(BaseException):
    """Raised from the signal handler to leave the current work at once."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """Catch SIGINT/SIGTERM (main thread only) so a run can stop cleanly.

    While ``deferred`` is set (inside the update loop) the first signal only sets ``received``
    and the loop saves and stops after the current update; a second signal, or any signal
    while not deferred, raises :class:`Abandon`.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self.deferred = False
        self._old: dict[int, Any] = {}
        self._pid = os.getpid()

    def __enter__(self) -> StopSignals:
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            # a forked child (a verifier worker) inherited this handler: Ctrl-C is for the
            # trainer, which finishes its update with the workers' help and then stops them;
            # SIGTERM (how pools stop their workers) keeps its default meaning
            if signum == signal.SIGTERM:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if self.deferred and self.received is None:
            self.received = signum
            print(f"\n{signal.Signals(signum).name}: finishing the current update, then saving "
                  "(send it again to stop at once)", file=sys.stderr, flush=True)
            return
        self.received = signum
        raise Abandon(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def resume_command(subcommand: str, out_dir: str | Path) -> str:
    return f"mpo-gym {subcommand} --out-dir {shlex.quote(str(out_dir))} --resume"
