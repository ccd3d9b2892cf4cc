"""Run folders that never lose or corrupt work: config checks, atomic checkpoints, signals.

- :func:`check_run_folder`: a folder that already holds a run (``config.json``) is resumed only
  with the same config; budget and logging fields (:data:`RESUMABLE_FIELDS`) may change, any
  other difference is refused with one line naming the fields, before anything is written.
- :func:`save_checkpoint`: ``checkpoint/`` is written as ``checkpoint.tmp/`` (each file
  fsynced), then the old ``checkpoint/`` becomes ``checkpoint.prev/`` and the new one is
  renamed into place; the last two are kept. :func:`load_checkpoint` falls back to
  ``checkpoint.prev/`` with a warning when the latest fails to load.
- Each checkpoint folder holds ``manifest.json``: the SHA-256 of every file (checked on load, so
  a flipped byte falls back to ``checkpoint.prev/``, announced), the run's ``config.json`` and
  its held-out evaluations at that update, from which a torn or empty ``config.json`` or
  ``eval.json`` is rebuilt. JSON files are replaced atomically (:func:`write_json`).
- A full disk or a folder that cannot be written ends the run with one line
  (:class:`RunFolderError`); the last good checkpoint stays.
- :class:`StopSignals`: SIGINT/SIGTERM during training finish the current update, then the
  trainer saves and stops; a second signal (or one outside the update loop) abandons at once
  and keeps the last checkpoint.

- :class:`RunLock`: one training per folder; a second is refused with the holder's pid.
"""

from __future__ import annotations

import errno
import hashlib
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
    "folder_error",
    "RunFolderError",
    "RunLock",
    "checkpoint_manifest",
    "load_checkpoint",
    "read_checkpoint",
    "read_json",
    "save_checkpoint",
    "append_jsonl",
    "truncate_jsonl",
    "write_json",
    "write_jsonl",
]

# Fields that may differ when a run is resumed: the budget, and how it is logged/checkpointed.
RESUMABLE_FIELDS = frozenset({
    "updates", "time_budget_s", "budget_s", "checkpoint_every", "checkpoint_every_s", "report_to",
    "log_every", "completions_every", "out_dir",
})

LATEST, PREVIOUS, TEMP = "checkpoint", "checkpoint.prev", "checkpoint.tmp"
MANIFEST = "manifest.json"
# what a full disk, a quota, a folder without write permission or an --out-dir that cannot be a
# folder (under a file, on a filesystem that takes none) raise
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                           errno.ENOTDIR, errno.ENOENT})


class RunFolderError(MpoGymError):
    """The run folder cannot be written (full disk, read-only, no permission): exit code 1."""

    exit_code = 1


def folder_error(exc: OSError, out: Path) -> RunFolderError | None:
    """The one-line refusal for an ``OSError`` of writing into the run folder ``out``, or None
    when it is not one of those (a bug, raised as it is)."""
    if exc.errno not in _WRITE_ERRNOS:
        return None
    where = exc.filename or out
    kept = f"; the last good checkpoint in {out / LATEST} is kept" if (out / LATEST).exists() else ""
    return RunFolderError(f"cannot write {where}: {exc.strerror}{kept}. Free space, or give an --out-dir "
                          "that is a writable folder, then run the same command again")


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
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        saved = checkpoint_manifest(out) if config_name == "config.json" else None
        if saved is None or not isinstance(saved[0].get("config"), dict):
            raise MpoGymError(f"{path} is not readable ({exc}) and no checkpoint holds the config; "
                              "use another --out-dir") from exc
        stored = saved[0]["config"]
        write_json(path, stored)
        print(f"repaired {path}: it was empty or torn; rebuilt from {saved[1]}", file=sys.stderr)
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _probe_write(out: Path) -> OSError | None:
    """The error that writing 1 MiB into ``out`` raises now (a full disk), or None."""
    probe = out / ".write-probe"
    try:
        with probe.open("wb") as f:
            f.write(b"\0" * (1 << 20))
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return exc
    finally:
        probe.unlink(missing_ok=True)
    return None


def append_jsonl(path: Path, *rows: Mapping[str, Any], default: Callable[[Any], Any] | None = None) -> None:
    """Append ``rows`` to the JSON Lines file ``path``, one compact line each (the one writer of
    a run's ``*.jsonl`` files; a torn last line is repaired on resume by :func:`truncate_jsonl`)."""
    with Path(path).open("a") as f:
        f.write("".join(json.dumps(row, default=default) + "\n" for row in rows))


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]], default: Callable[[Any], Any] | None = None) -> None:
    """Write ``rows`` as the JSON Lines file ``path``, replacing it atomically (a crash leaves the
    old file or the new one, never a mix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write("".join(json.dumps(row, default=default) + "\n" for row in rows))
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON atomically (a crash or a full disk leaves the old one)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w") as f:
            f.write(json.dumps(data, indent=2))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(out: Path, files: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``files`` (name -> object for ``torch.save``) as the latest checkpoint, atomically,
    with ``manifest.json``: each file's SHA-256 and ``meta`` (JSON: the config, the evaluations).

    A write that fails (a full disk) removes the partial folder and leaves the last good
    checkpoint in place; the error is a :class:`RunFolderError` when the folder is at fault.
    """
    tmp, latest, prev = out / TEMP, out / LATEST, out / PREVIOUS
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for name, obj in files.items():
            _save_file(obj, tmp / name)
        write_json(tmp / MANIFEST, {"sha256": {name: _sha256(tmp / name) for name in files}, **(meta or {})})
        _fsync_dir(tmp)
    except (OSError, RuntimeError) as exc:  # torch's writer reports a full disk as a RuntimeError
        cause = exc if isinstance(exc, OSError) else _probe_write(out)
        shutil.rmtree(tmp, ignore_errors=True)  # frees what the partial checkpoint took
        error = folder_error(cause, out) if cause is not None else None
        if error is None:
            raise
        raise error from exc
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
    names = list(names)
    tried = []
    for sub in (LATEST, PREVIOUS):
        folder = out / sub
        if not folder.exists():
            continue
        try:
            loaded = read_checkpoint(folder, names)
        except Exception as exc:  # a truncated or corrupted file: fall back to the previous one
            reason = " ".join(str(exc).split())[:200]
            tried.append(f"{folder} ({reason})")
            print(f"warning: checkpoint {folder} failed to load ({reason}); trying the previous one",
                  file=sys.stderr)
            continue
        if tried:
            print(f"loaded the previous checkpoint {folder} instead", file=sys.stderr)
        return loaded, folder
    if tried:
        raise MpoGymError(f"no checkpoint of {out} could be loaded: {'; '.join(tried)}")
    return None


def read_checkpoint(folder: Path, names: Iterable[str]) -> dict[str, Any]:
    """The files of one checkpoint folder, each checked against its manifest's SHA-256 first;
    the parsed manifest is under ``"manifest.json"`` (``{}`` for a folder written without one).
    Raises ``ValueError`` for a file that changed after it was written."""
    import torch

    manifest: dict[str, Any] = {}
    if (folder / MANIFEST).exists():
        manifest = json.loads((folder / MANIFEST).read_text())
        for name in names:
            expected = manifest.get("sha256", {}).get(name)
            if expected is not None and _sha256(folder / name) != expected:
                raise ValueError(f"{name}: checksum mismatch (the file changed after it was written)")
    loaded = {n: torch.load(folder / n, map_location="cpu", weights_only=False) for n in names}
    loaded[MANIFEST] = manifest
    return loaded


def checkpoint_manifest(out: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint manifest of ``out`` that parses, and its path (no tensors read)."""
    for sub in (LATEST, PREVIOUS):
        path = out / sub / MANIFEST
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict):
            return data, path
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
