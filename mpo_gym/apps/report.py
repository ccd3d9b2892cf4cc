"""The comparison report: ``report.md``, ``curves.png``, combined ``metrics.jsonl`` and
``eval_tasks.jsonl``, ``summary.txt``.

Every held-out number in ``report.md`` is computed from the per-task rows of
``eval_tasks.jsonl`` (one row per agent, seed, ``when`` and task; see
:func:`mpo_gym.evaluation.write_task_rows`) by the small functions below, so a reader can
recompute it: :func:`accuracy_cell` (accuracy and Wilson interval of one evaluation),
:func:`paired_gain` over :func:`paired_outcomes` (before/after matched by task) and
:func:`seed_summary` (mean and spread of the seeds' gains).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..runs import write_jsonl
from .evaluation import read_task_rows

__all__ = ["accuracy_cell", "paired_gain", "paired_outcomes", "seed_interval", "seed_summary", "t_quantile",
           "wilson_interval", "write_report"]

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

RECOMPUTE = (
    "How to recompute: every held-out number above comes from `eval_tasks.jsonl` in this folder "
    "(one row per agent, seed, `when` and task; `when` is `before`, `after` or the update number). "
    "An accuracy is the mean of `correct` over the rows of one agent, seed and `when`; its "
    "interval is the 95% Wilson score interval of that count. A gain pairs a run's `before` and "
    "`after` rows by `task_id`: the mean of after − before, ± 1.96 × sd(differences, ddof=1) / √n. "
    "A mean row averages the seeds' gains; seed sd is their standard deviation (ddof=1) and the interval "
    "over seeds is t(0.975, seeds − 1) × sd / √seeds."
)


def wilson_interval(successes: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_gain(before: Sequence[int], after: Sequence[int], z: float = 1.96) -> tuple[float, float]:
    """Mean per-task gain (after − before on the same tasks) and its 95% half-width."""
    diff = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    if diff.size < 2:
        return (float(diff.mean()) if diff.size else float("nan"), float("nan"))
    return float(diff.mean()), float(z * diff.std(ddof=1) / math.sqrt(diff.size))


def accuracy_cell(rows: Sequence[dict[str, Any]]) -> str:
    """``"0.525 [0.456, 0.593]"``: accuracy of ``rows`` (mean of ``correct``) and its Wilson interval."""
    if not rows:
        return "-"
    correct, n = sum(int(r["correct"]) for r in rows), len(rows)
    lo, hi = wilson_interval(correct, n)
    return f"{correct / n:.3f} [{lo:.3f}, {hi:.3f}]"


def paired_outcomes(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """``correct`` of the tasks (``task_id``, ``sample``) evaluated both before and after, paired."""
    first = {(r["task_id"], r.get("sample", 0)): int(r["correct"]) for r in before}
    pairs = [(first[key], int(r["correct"])) for r in after if (key := (r["task_id"], r.get("sample", 0))) in first]
    return [b for b, _ in pairs], [a for _, a in pairs]


# Student's t 0.975 quantiles by degrees of freedom (a df between two keys uses the lower key:
# the interval is then slightly wider than exact, never narrower).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 14: 2.145, 19: 2.093, 29: 2.045}


def t_quantile(df: int) -> float:
    """Student's t 0.975 quantile for ``df`` degrees of freedom (nan below 1)."""
    return T_975[max(k for k in T_975 if k <= df)] if df >= 1 else float("nan")


def seed_summary(gains: Sequence[float]) -> tuple[float, float]:
    """Mean of the seeds' gains and their standard deviation (ddof=1; nan for one seed)."""
    mean, sd, _ = seed_interval(gains)
    return mean, sd


def seed_interval(gains: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, sd, half)`` of the seeds' gains: sd with ddof=1 and the 95% half-width over seeds,
    ``t(0.975, n-1) * sd / sqrt(n)`` (nan for one seed). The one seed interval of the report and
    the study."""
    values = np.asarray(gains, dtype=float)
    n = values.size
    if n < 2:
        return (float(values.mean()) if n else float("nan")), float("nan"), float("nan")
    sd = float(values.std(ddof=1))
    return float(values.mean()), sd, t_quantile(n - 1) * sd / math.sqrt(n)


def _rows_of(rows: Sequence[dict[str, Any]], agent: str, seed: int, when: str | int) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("agent") == agent and r.get("seed") == seed and r["when"] == when]


def _gain(rows: Sequence[dict[str, Any]], agent: str, seed: int) -> tuple[float, float] | None:
    before, after = _rows_of(rows, agent, seed, "before"), _rows_of(rows, agent, seed, "after")
    if not before or not after:
        return None
    return paired_gain(*paired_outcomes(before, after))


def collect_task_rows(cfg: Any, keys: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
    """Every run's ``eval_tasks.jsonl`` rows, tagged with the run's agent and seed."""
    out = []
    for agent, seed in keys:
        for row in read_task_rows(Path(cfg.run_config(agent, seed).out_dir) / "eval_tasks.jsonl"):
            out.append({"agent": agent, "seed": seed, **{k: v for k, v in row.items() if k not in ("agent", "seed")}})
    return out


def _read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_report(cfg: Any, out: Path, summaries: dict[tuple[str, int], dict[str, Any]], before: dict[str, Any] | None, command: str) -> None:
    """Write every report artefact into ``out``."""
    runs = {key: _read_metrics(Path(cfg.run_config(*key).out_dir)) for key in summaries}
    write_jsonl(out / "metrics.jsonl", ({"agent": agent, "seed": seed, **row} for (agent, seed), rows in runs.items()
                                        for row in rows))
    tasks = collect_task_rows(cfg, list(summaries))
    write_jsonl(out / "eval_tasks.jsonl", tasks)
    _plot(cfg, runs, out / "curves.png", summaries, tasks)
    table = _results_table(cfg, summaries, tasks)
    text = "\n".join(
        [
            "# Agent comparison",
            "",
            f"Env `{cfg.train.env}` {json.dumps(cfg.train.env_kwargs)}, model `{cfg.train.model}`, seeds {list(cfg.seeds)}, "
            f"budget per run: {_budget(cfg)}, {cfg.train.num_envs} episodes per update, dtype {cfg.train.dtype}.",
            "",
            "## Held-out greedy accuracy before and after",
            "",
            f"Same {cfg.train.eval_tasks} held-out tasks (the env's test split) for every run.",
            "Intervals are 95%: Wilson for an accuracy, paired over tasks for a gain.",
            "",
            *table,
            "",
            _verdict(cfg, tasks),
            "",
            *_held_out_curve(cfg, summaries, tasks),
            RECOMPUTE,
            "",
            "## MPO diagnostics: token, window and sequence ratios (mean over optimizer steps)",
            "",
            *_diagnostics_table(cfg, runs),
            "",
            "## Sampler against scorer",
            "",
            *_gap_table(runs),
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
    if cfg.train.time_budget_s:
        parts.append(f"{cfg.train.time_budget_s:.0f} s of training wall-clock")
    if cfg.train.updates:
        parts.append(f"{cfg.train.updates} updates")
    return " or ".join(parts)


def _results_table(cfg: Any, summaries: dict[tuple[str, int], dict[str, Any]], tasks: list[dict[str, Any]]) -> list[str]:
    rows = ["| agent | seed | updates | before (95% CI) | after (95% CI) | gain (95% CI) |", "|---|---|---|---|---|---|"]
    for agent in cfg.arms:
        gains = []
        for seed in cfg.seeds:
            s = summaries[(agent, seed)]
            before, after = _rows_of(tasks, agent, seed, "before"), _rows_of(tasks, agent, seed, "after")
            result = _gain(tasks, agent, seed)
            cell = "-"
            if result is not None:
                gains.append(result[0])
                cell = f"{result[0]:+.3f} ± {result[1]:.3f}"
            rows.append(f"| {agent} | {seed} | {s['updates']} | {accuracy_cell(before)} | {accuracy_cell(after)} | {cell} |")
        if len(cfg.seeds) > 1 and gains:
            mean, spread, half = seed_interval(gains)
            rows.append(f"| **{agent} mean** | {len(gains)} seeds | | | | **{mean:+.3f}** ± {half:.3f} over seeds "
                        f"(seed sd {spread:.3f}) |")
    return rows


def _verdict(cfg: Any, tasks: list[dict[str, Any]]) -> str:
    lines = []
    for agent in cfg.arms:
        results = [r for r in (_gain(tasks, agent, seed) for seed in cfg.seeds) if r is not None]
        if not results:
            continue
        mean, _ = seed_summary([g for g, _ in results])
        significant = sum(g - half > 0 for g, half in results)
        word = "beat" if mean > 0 else "did not beat"
        lines.append(
            f"- **{agent}** {word} the untrained model on average ({mean:+.3f}); "
            f"{significant} of {len(results)} seeds improved by more than their 95% interval."
        )
    return "\n".join(lines)


def _held_out_points(summaries: dict[tuple[str, int], dict[str, Any]],
                     tasks: list[dict[str, Any]]) -> dict[tuple[str, int], dict[int, float]]:
    """Per run: update -> held-out accuracy (0: before, each ``eval_every`` update, the final one).

    Empty dicts for runs without an evaluation during training (``eval_every`` unset).
    """
    points: dict[tuple[str, int], dict[int, float]] = {}
    for key, summary in summaries.items():
        mine = [r for r in tasks if (r.get("agent"), r.get("seed")) == key]
        by_when: dict[int, list[int]] = {}
        for r in mine:
            if isinstance(r["when"], int):
                by_when.setdefault(r["when"], []).append(int(r["correct"]))
        if by_when:
            for when, step in (("before", 0), ("after", int(summary["updates"]))):
                found = [int(r["correct"]) for r in mine if r["when"] == when]
                if found:
                    by_when[step] = found
        points[key] = {step: float(np.mean(v)) for step, v in sorted(by_when.items())}
    return points


def _held_out_curve(cfg: Any, summaries: dict[tuple[str, int], dict[str, Any]], tasks: list[dict[str, Any]]) -> list[str]:
    """Held-out greedy accuracy after each evaluated update (``eval_every``); empty without it."""
    curves = _held_out_points(summaries, tasks)
    if not any(curves.values()):
        return []
    steps = sorted({step for c in curves.values() for step in c})
    rows = ["## Held-out greedy accuracy during training", "",
            "Update 0 is before training; the last column of a run is its final (after) evaluation.", "",
            "| agent | seed | " + " | ".join(f"update {x}" for x in steps) + " |",
            "|---|---|" + "---|" * len(steps)]
    for (agent, seed), curve in curves.items():
        cells = [f"{curve[x]:.3f}" if x in curve else "" for x in steps]
        rows.append(f"| {agent} | {seed} | " + " | ".join(cells) + " |")
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
    base = cfg.run_config(agent, seed).agent
    if kind == "sequence (GMPO)" or base == "wgmpo":  # clipped in log space, per token
        return f"log r in [-{low:g}, {high:g}] per token"
    if base == "cispo":  # a clipped, gradient-stopped weight: no gradient is dropped
        return f"weight clipped to [{1 - low:g}, {1 + high:g}], its gradient stopped"
    return f"[{1 - low:g}, {1 + high:g}]"


def _gap_table(runs: dict[tuple[str, int], list[dict[str, Any]]]) -> list[str]:
    """Per run, |log-prob the sampler recorded − teacher-forced old log-prob| of the same token
    at the same weights (``checks/sample_logprob_gap_*``): the training–inference gap."""
    rows = ["| agent | seed | updates | mean gap (nats/token) | largest gap |", "|---|---|---|---|---|"]
    for (agent, seed), history in runs.items():
        means = [r["checks/sample_logprob_gap_mean"] for r in history if "checks/sample_logprob_gap_mean" in r]
        tops = [r["checks/sample_logprob_gap_max"] for r in history if "checks/sample_logprob_gap_max" in r]
        if means and tops:
            rows.append(f"| {agent} | {seed} | {len(means)} | {np.mean(means):.2e} | {max(tops):.3g} |")
    if len(rows) == 2:
        return ["No run logged the sampler's log-prob gap."]
    return rows + ["", "Mean: over the updates' per-token means; largest: over every token of every update. "
                   "About 1e-6 in float32; bf16 products put single tokens about 1e-3 nats off "
                   "(more on larger models). A growing gap means sampling and scoring drift apart."]


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
          summaries: dict[tuple[str, int], dict[str, Any]], tasks: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held_out = _held_out_points(summaries, tasks)
    has_eval = any(held_out.values())
    fig, axes = plt.subplots(1, 3 if has_eval else 2, figsize=(16 if has_eval else 11, 4))
    for agent in cfg.arms:
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
    title = f"{cfg.train.env}: mean over {len(cfg.seeds)} seed(s)" + (", band = min..max" if len(cfg.seeds) > 1 else "")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
