"""The comparison report: ``report.md``, ``curves.png``, combined ``metrics.jsonl``, ``summary.txt``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["paired_gain", "wilson_interval", "write_report"]

MPO_DIAGNOSTICS = (
    "mpo/clipfrac_united",
    "mpo/clipfrac_token",
    "mpo/ratio_var_united",
    "mpo/ratio_var_token",
    "mpo/clip_disagreement",
)

# The MPO paper's Fig. 4 diagnostics for each kind of ratio, as the metric names that give them:
# (the clip fraction the loss applied, Var of the agent's ratio, Var of the token ratio, the clip
# fraction of the token ratio at the agent's range, and how often the two clip decisions differ).
RATIO_DIAGNOSTICS = {
    "window (MPO)": ("mpo/clipfrac_united", "mpo/ratio_var_united", "mpo/ratio_var_token", "mpo/clipfrac_token", "mpo/clip_disagreement"),
    "sequence (GSPO)": ("losses/clipfrac", "gspo/ratio_var_seq", "gspo/ratio_var_token", "gspo/clipfrac_token", "gspo/clip_disagreement"),
    "sequence (GMPO)": ("losses/clipfrac", "gmpo/ratio_var_seq", "gmpo/ratio_var_token", "gmpo/clipfrac_token", "gmpo/clip_disagreement"),
    "token": ("losses/clipfrac", "losses/ratio_var", "losses/ratio_var", "losses/clipfrac", ""),
}


def wilson_interval(successes: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_gain(before: list[int], after: list[int], z: float = 1.96) -> tuple[float, float]:
    """Mean per-task gain (after − before on the same tasks) and its 95% half-width."""
    diff = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    if diff.size < 2:
        return (float(diff.mean()) if diff.size else float("nan"), float("nan"))
    return float(diff.mean()), float(z * diff.std(ddof=1) / math.sqrt(diff.size))


def _read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_report(cfg: Any, out: Path, summaries: dict[tuple[str, int], dict[str, Any]], before: dict[str, Any] | None, command: str) -> None:
    """Write every report artefact into ``out``."""
    runs = {key: _read_metrics(Path(cfg.run_config(*key).out_dir)) for key in summaries}
    with (out / "metrics.jsonl").open("w") as f:
        for (agent, seed), rows in runs.items():
            for row in rows:
                f.write(json.dumps({"agent": agent, "seed": seed, **row}) + "\n")
    _plot(cfg, runs, out / "curves.png", summaries, before)
    table = _results_table(cfg, summaries, before)
    text = "\n".join(
        [
            "# Agent comparison",
            "",
            f"Env `{cfg.env}` {json.dumps(cfg.env_kwargs)}, model `{cfg.model}`, seeds {list(cfg.seeds)}, "
            f"budget per run: {_budget(cfg)}, {cfg.num_envs} episodes per update, dtype {cfg.dtype}.",
            "",
            "## Held-out greedy accuracy before and after",
            "",
            f"Same {cfg.eval_tasks} held-out tasks (the env's test split) for every run.",
            "Intervals are 95%: Wilson for an accuracy, paired over tasks for a gain.",
            "",
            *table,
            "",
            _verdict(cfg, summaries, before),
            "",
            *_held_out_curve(cfg, summaries, runs, before),
            "## MPO diagnostics: token, window and sequence ratios (mean over optimizer steps)",
            "",
            *_diagnostics_table(cfg, runs),
            "",
            "## Cost",
            "",
            *_cost_table(cfg, summaries, runs),
            "",
            "![curves](curves.png)",
            "",
            "## Reproduce",
            "",
            "```bash",
            command or "mpo-gym compare --resume " + str(out),
            "```",
            "",
        ]
    )
    (out / "report.md").write_text(text)
    (out / "summary.txt").write_text("\n".join(table) + "\n")


def _budget(cfg: Any) -> str:
    parts = []
    if cfg.budget_s:
        parts.append(f"{cfg.budget_s:.0f} s of training wall-clock")
    if cfg.updates:
        parts.append(f"{cfg.updates} updates")
    return " or ".join(parts)


def _results_table(cfg: Any, summaries: dict[tuple[str, int], dict[str, Any]], before: dict[str, Any] | None) -> list[str]:
    rows = ["| agent | seed | updates | before | after (95% CI) | gain (95% CI) |", "|---|---|---|---|---|---|"]
    b_acc = before["accuracy"] if before else float("nan")
    for agent in cfg.agents:
        gains = []
        for seed in cfg.seeds:
            s = summaries[(agent, seed)]
            after = s.get("eval_after") or {}
            acc, n = after.get("accuracy", float("nan")), after.get("n", 0)
            lo, hi = wilson_interval(acc * n, n)
            gain, half = paired_gain(before["outcomes"], after["outcomes"]) if before and after else (float("nan"),) * 2
            gains.append(gain)
            rows.append(f"| {agent} | {seed} | {s['updates']} | {b_acc:.3f} | {acc:.3f} [{lo:.3f}, {hi:.3f}] | {gain:+.3f} ± {half:.3f} |")
        if len(cfg.seeds) > 1:
            spread = np.std(gains, ddof=1)
            rows.append(f"| **{agent} mean** | {len(cfg.seeds)} seeds | | {b_acc:.3f} | | **{np.mean(gains):+.3f}** (seed sd {spread:.3f}) |")
    return rows


def _verdict(cfg: Any, summaries: dict[tuple[str, int], dict[str, Any]], before: dict[str, Any] | None) -> str:
    if not before:
        return ""
    lines = []
    for agent in cfg.agents:
        gains = []
        significant = 0
        for seed in cfg.seeds:
            after = summaries[(agent, seed)].get("eval_after") or {}
            if "outcomes" in after:
                gain, half = paired_gain(before["outcomes"], after["outcomes"])
                gains.append(gain)
                significant += gain - half > 0
        if not gains:
            continue
        mean = float(np.mean(gains))
        word = "beat" if mean > 0 else "did not beat"
        lines.append(
            f"- **{agent}** {word} the untrained model on average ({mean:+.3f}); "
            f"{significant} of {len(gains)} seeds improved by more than their 95% interval."
        )
    return "\n".join(lines)


def _held_out_points(runs: dict[tuple[str, int], list[dict[str, Any]]], summaries: dict[tuple[str, int], dict[str, Any]],
                     before: dict[str, Any] | None) -> dict[tuple[str, int], dict[int, float]]:
    """Per run: update -> held-out accuracy (0: before, each ``eval_every`` update, the final one).

    Empty dicts for runs that logged no ``eval/accuracy`` (``eval_every`` unset).
    """
    points: dict[tuple[str, int], dict[int, float]] = {}
    for key, rows in runs.items():
        curve = {int(r["step"]): r["eval/accuracy"] for r in rows if "eval/accuracy" in r}
        if curve:
            if before:
                curve[0] = before["accuracy"]
            after = summaries.get(key, {}).get("eval_after")
            if after:
                curve[int(summaries[key]["updates"])] = after["accuracy"]
        points[key] = dict(sorted(curve.items()))
    return points


def _held_out_curve(cfg: Any, summaries: dict[tuple[str, int], dict[str, Any]],
                    runs: dict[tuple[str, int], list[dict[str, Any]]], before: dict[str, Any] | None) -> list[str]:
    """Held-out greedy accuracy after each evaluated update (``eval_every``); empty without it."""
    curves = _held_out_points(runs, summaries, before)
    if not any(curves.values()):
        return []
    steps = sorted({step for c in curves.values() for step in c} - {0})
    b = f"{before['accuracy']:.3f}" if before else ""
    rows = ["## Held-out greedy accuracy during training", "",
            "| agent | seed | update 0 | " + " | ".join(str(x) for x in steps) + " |",
            "|---|---|---|" + "---|" * len(steps)]
    for (agent, seed), curve in curves.items():
        cells = [f"{curve[x]:.3f}" if x in curve else "" for x in steps]
        rows.append(f"| {agent} | {seed} | {b} | " + " | ".join(cells) + " |")
    return [*rows, ""]


def _diagnostics_table(cfg: Any, runs: dict[tuple[str, int], list[dict[str, Any]]]) -> list[str]:
    """The MPO paper's Fig. 4 numbers (clip fraction, ratio variance) per run, by kind of ratio."""
    rows = ["| agent | seed | ratio | clip range | clipfrac (applied) | Var(ratio) | Var(token ratio) | "
            "token clipfrac at that range | clip disagreement |", "|---|---|---|---|---|---|---|---|---|"]
    for (agent, seed), history in runs.items():
        kind = next((k for k, names in RATIO_DIAGNOSTICS.items() if any(names[1] in r for r in history)), None)
        if kind is None:
            continue
        cells = [f"{np.mean([r[k] for r in history if k in r]):.4g}" if k else "(same)" for k in RATIO_DIAGNOSTICS[kind]]
        rows.append(f"| {agent} | {seed} | {kind} | {_clip_range(cfg, agent, seed, kind)} | " + " | ".join(cells) + " |")
    if len(rows) == 2:
        return ["No run logged ratio diagnostics."]
    return rows + ["", "Var(ratio) is over tokens for token and window ratios and over responses for sequence ratios;",
                   "clipfrac is the fraction of tokens whose gradient the clip dropped. With one on-policy",
                   "mini-batch per rollout every ratio is 1: the columns differ only with off-policy steps."]


def _clip_range(cfg: Any, agent: str, seed: int, kind: str) -> str:
    agent_cfg = cfg.run_config(agent, seed).agent_config()
    low, high = getattr(agent_cfg, "clip_low", None), getattr(agent_cfg, "clip_high", None)
    if low is None or high is None:
        return ""
    if kind == "sequence (GMPO)":
        return f"log r in [-{low:g}, {high:g}] per token"
    return f"[{1 - low:g}, {1 + high:g}]"


def _cost_table(cfg: Any, summaries: dict[tuple[str, int], dict[str, Any]], runs: dict[tuple[str, int], list[dict[str, Any]]]) -> list[str]:
    rows = [
        "| agent | seed | updates | RL train s | s/update | warm-up s | peak RSS MB | wall s (incl. eval, load) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (agent, seed), s in summaries.items():
        per = s["train_seconds"] / max(s["updates"], 1)
        rows.append(
            f"| {agent} | {seed} | {s['updates']} | {s['train_seconds']:.0f} | {per:.1f} | {s.get('warmup_seconds', 0.0):.0f} | "
            f"{s.get('peak_rss_mb', float('nan')):.0f} | {s.get('wall_seconds', float('nan')):.0f} |"
        )
    rows += ["", "The budget covers the RL stage; MPO's supervised MTP warm-up runs before it (its own column),",
             "as in the paper's cost tables."]
    return rows


def _plot(cfg: Any, runs: dict[tuple[str, int], list[dict[str, Any]]], path: Path,
          summaries: dict[tuple[str, int], dict[str, Any]], before: dict[str, Any] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held_out = _held_out_points(runs, summaries, before)
    has_eval = any(held_out.values())
    fig, axes = plt.subplots(1, 3 if has_eval else 2, figsize=(16 if has_eval else 11, 4))
    for agent in cfg.agents:
        histories = [[r for r in runs[(agent, s)] if "charts/reward" in r] for s in cfg.seeds]
        n = min((len(h) for h in histories), default=0)
        if n == 0:
            continue
        reward = np.array([[r["charts/reward"] for r in h[:n]] for h in histories])  # [S, n]
        times = np.array([[r["time"] for r in h[:n]] for h in histories]).mean(0)  # [n]
        steps = np.arange(1, n + 1)
        mean, lo, hi = reward.mean(0), reward.min(0), reward.max(0)
        for ax, x in zip(axes, (steps, times)):
            (line,) = ax.plot(x, mean, label=agent)
            if len(cfg.seeds) > 1:
                ax.fill_between(x, lo, hi, alpha=0.2, color=line.get_color())
        for i, seed in enumerate(cfg.seeds):  # held-out panel: one line per seed
            points = held_out[(agent, seed)]
            if points:
                axes[2].plot(list(points), list(points.values()), marker="o", color=line.get_color(),
                             label=agent if i == 0 else None)
    for ax, label in zip(axes, ("update", "training wall-clock (s)")):
        ax.set_xlabel(label)
        ax.set_ylabel("train reward (mean over batch)")
        ax.grid(alpha=0.3)
    if has_eval:
        axes[2].set_xlabel("update")
        axes[2].set_ylabel("held-out greedy accuracy (one line per seed)")
        axes[2].grid(alpha=0.3)
    if axes[0].lines:
        axes[0].legend()
    title = f"{cfg.env}: mean over {len(cfg.seeds)} seed(s)" + (", band = min..max" if len(cfg.seeds) > 1 else "")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
