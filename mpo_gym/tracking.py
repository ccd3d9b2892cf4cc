"""Where a run's numbers go besides ``metrics.jsonl``: trackers, completions, progress lines.

- ``report_to``: ``none``, ``tensorboard`` (event files in ``<run>/tensorboard``, via
  ``torch.utils.tensorboard``; needs the ``tensorboard`` package), ``wandb`` (offline mode, files
  in ``<run>/wandb``; needs ``wandb``) or ``trackio`` (local; needs ``trackio``). A tracker whose
  package is missing is refused before the run starts, never silently skipped.
- :func:`write_completions`: every ``completions_every`` updates the batch's prompts, responses,
  verdicts and rewards are appended to ``<run>/completions.jsonl`` (and sent to the tracker as a
  table).
- :class:`Progress`: a tqdm bar when stdout is a terminal; otherwise one plain line every
  ``log_every`` updates, so logs stay readable.

What this does not do: no online W&B/trackio sync (run ``wandb sync <run>/wandb`` yourself), no
system metrics, no model uploads.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["REPORT_TO", "Progress", "Tracker", "check_report_to", "make_tracker", "write_completions"]

REPORT_TO = ("none", "tensorboard", "wandb", "trackio")
_NEEDS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def check_report_to(report_to: str) -> None:
    """Refuse an unknown tracker or one whose package is not installed."""
    if report_to not in REPORT_TO:
        raise ConfigError(f"--report-to must be one of {', '.join(REPORT_TO)}; got {report_to!r}")
    module = _NEEDS.get(report_to)
    if module and importlib.util.find_spec(module) is None:
        raise ConfigError(f"--report-to {report_to} needs the {module} package: pip install {module}")


class Tracker:
    """No-op tracker (``report_to="none"``); the others override these three methods."""

    def log(self, row: dict[str, Any], step: int) -> None:
        pass

    def log_completions(self, rows: list[dict[str, Any]], step: int) -> None:
        pass

    def close(self) -> None:
        pass


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardTracker(Tracker):
    def __init__(self, out: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a previous attempt logged after the checkpoint we resume from
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1 if start_step else None)

    def log(self, row: dict[str, Any], step: int) -> None:
        for key, value in _scalars(row).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_completions(self, rows: list[dict[str, Any]], step: int) -> None:
        self.writer.add_text("completions", markdown_table(rows), step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, out: Path, config: dict[str, Any]):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(mode="offline", dir=str(out), project="mpo-gym", name=out.name, config=config,
                              id=_run_id(out), resume="allow")

    def log(self, row: dict[str, Any], step: int) -> None:
        self.run.log(_scalars(row), step=step)

    def log_completions(self, rows: list[dict[str, Any]], step: int) -> None:
        columns = list(rows[0]) if rows else []
        table = self.wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])
        self.run.log({"completions": table}, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioTracker(Tracker):
    def __init__(self, out: Path, config: dict[str, Any]):
        import trackio

        self.trackio = trackio
        trackio.init(project="mpo-gym", name=out.name, config=config, resume="allow")

    def log(self, row: dict[str, Any], step: int) -> None:
        self.trackio.log(_scalars(row), step=step)

    def close(self) -> None:
        self.trackio.finish()


def _run_id(out: Path) -> str:
    import hashlib

    return hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]


def make_tracker(cfg: Any, out: Path, start_step: int = 0) -> Tracker:
    """The tracker ``cfg.report_to`` names (checked by :func:`check_report_to`)."""
    import dataclasses

    check_report_to(cfg.report_to)
    config = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type) else {}
    if cfg.report_to == "tensorboard":
        return TensorBoardTracker(out, start_step)
    if cfg.report_to == "wandb":
        return WandbTracker(out, config)
    if cfg.report_to == "trackio":
        return TrackioTracker(out, config)
    return Tracker()


# ---------------------------------------------------------------------- completions
def completion_rows(step: int, batch: Any, envs: list[Any], max_chars: int = 2000) -> list[dict[str, Any]]:
    """One row per episode of ``batch``: the update ``step`` and the episode's record
    (:func:`mpo_gym.evaluation.episode_record`: task, prompt, response, verdict, reward), with
    prompt and response cut to ``max_chars``."""
    from dataclasses import asdict

    from .records import episode_record

    rows = []
    for i, ep in enumerate(getattr(batch, "episodes", []) or []):
        env: Any = envs[i % len(envs)]
        row = {"step": step, **asdict(episode_record(ep, env, suite=str(getattr(env.spec, "id", "") or "")))}
        row.update(prompt=str(row["prompt"])[:max_chars], response=str(row["response"])[:max_chars],
                   reference=_short(row["reference"], max_chars))
        rows.append(row)
    return rows


def _short(value: Any, max_chars: int) -> Any:
    """A JSON-able ``value`` as is when short, else its text cut to ``max_chars``."""
    text = json.dumps(value, default=str)
    return value if len(text) <= max_chars else text[:max_chars]


def write_completions(path: Path, step: int, batch: Any, envs: list[Any]) -> list[dict[str, Any]]:
    """Append the batch's completions to ``path`` (JSONL); returns the rows."""
    from .runs import append_jsonl

    rows = completion_rows(step, batch, envs)
    append_jsonl(path, *rows)
    return rows


def markdown_table(rows: list[dict[str, Any]], width: int = 200) -> str:
    def cell(value: Any) -> str:
        text = "" if value is None else str(value)
        text = text.replace("|", "\\|").replace("\n", "⏎")
        return text if len(text) <= width else text[: width - 1] + "…"

    columns = ["task_id", "prompt", "response", "status", "reward"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------- progress
class Progress:
    """A tqdm bar on a terminal, else a plain line every ``cfg.log_every`` updates (or silent)."""

    def __init__(self, cfg: Any, start: int, label: str | None, enabled: bool):
        self.bar: Any = None
        self.every = int(getattr(cfg, "log_every", 10))
        self.total = int(cfg.updates) or None
        self.budget = float(cfg.time_budget_s)
        self.label = label or cfg.agent
        self.enabled = enabled
        self.start_step = start
        self.t0 = time.monotonic()
        if enabled and sys.stdout.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=start, desc=self.label, unit="upd", dynamic_ncols=True)

    def update(self, step: int, seconds: float, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        left = f"{max(self.budget - seconds, 0):.0f}s left" if self.budget else ""
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix_str(f"reward {row.get('charts/reward', 0):.3f} {left}".strip())
            return
        if self.every and (step % self.every == 0 or step == self.total):
            print(self.line(step, seconds, row, left), flush=True)

    def line(self, step: int, seconds: float, row: dict[str, Any], left: str = "") -> str:
        of = f"/{self.total}" if self.total else ""
        done = max(step - self.start_step, 1)
        parts = [f"{self.label} update {step}{of}", f"reward {row.get('charts/reward', float('nan')):.3f}"]
        if "verdicts/correct" in row:
            parts.append(f"correct {row['verdicts/correct']:.2f}")
        if "eval/accuracy" in row:
            parts.append(f"held-out {row['eval/accuracy']:.3f}")
        parts.append(f"{(time.monotonic() - self.t0) / done:.2f} s/update")
        parts.append(f"train {seconds:.0f}s" + (f", {left}" if left else ""))
        return " | ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
