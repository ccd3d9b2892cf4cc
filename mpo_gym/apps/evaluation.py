"""Evaluation on the benchmark suites: pass@k through the same envs and verifiers as training.

``evaluate("gsm8k", policy)`` makes ``batch_size`` copies of the suite's registered env, runs
every task (``n_samples`` times) with :func:`mpo_gym.rollout.rollout`, verifies the responses
with the env's verifier (``verify_batch``), and returns a :class:`SuiteResult`: unbiased
pass@k (Chen et al., 2021), per-status counts, wall time and one :class:`SampleRecord` per
response. :func:`write_results` writes ``results.json``, ``results.md`` and
``samples.jsonl`` (rows carry ``reference`` and ``response``, so math failures can go straight
into ``mpo-gym audit-math``); :func:`comparison_table` lays several models side by side
(rows = models, columns = suites, the shape of the MPO paper's Table 1).

From Python, :func:`run_evaluation` takes an :class:`~mpo_gym.configs.EvalConfig` (what
``mpo-gym eval`` builds from its flags). Command line::

    mpo-gym eval --suite gsm8k,math500 --model default --limit 100 --out-dir runs/eval
    mpo-gym eval --suite humaneval --model default --model runs/ppo/checkpoint \\
        --n-samples 8 --k 1,8 --temperature 0.8

What this does not do: no answer-format retries, no majority voting, no per-task timeouts
beyond the verifier's own ``timeout_s``; greedy pass@1 is one greedy sample per task.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import runs
from ..configs import SUITE_IDS, EvalConfig, check_sampling
from ..loading import load_policy
from ..records import SampleRecord, episode_record

__all__ = [
    "SUITE_IDS",
    "EvalConfig",
    "check_sampling",
    "episode_record",
    "evaluate_envs",
    "evaluate_held_out",
    "load_policy",
    "preflight",
    "run_evaluation",
    "held_out_summary",
    "read_task_rows",
    "write_task_rows",
    "SampleRecord",
    "SuiteResult",
    "comparison_table",
    "evaluate",
    "pass_at_k",
    "results_table",
    "write_results",
]

from ..verifiers import STATUSES  # noqa: E402  (the one list, re-exported)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al., 2021).

    ``1 - C(n-c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` so that it
    stays exact-ish for large ``n`` (no huge binomials).

    Raises:
        ValueError: unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@dataclass
class SuiteResult:
    """The outcome of one suite for one model.

    Attributes:
        pass_at_k: ``{k: mean over tasks of the unbiased pass@k}``, in [0, 1].
        status_counts: verdict statuses over all ``n_tasks * n_samples`` responses.
        wall_time_s: generation plus verification time (env construction excluded).
        samples: one record per response (not in :meth:`to_dict` unless asked).
    """

    suite: str
    env_id: str
    model: str
    n_tasks: int
    n_samples: int
    temperature: float
    pass_at_k: dict[int, float]
    status_counts: dict[str, int]
    wall_time_s: float
    mean_response_tokens: float
    truncated_rate: float
    limit: int | None = None
    seed: int = 0
    samples: list[SampleRecord] = field(default_factory=list, repr=False)
    protocol: str = ""  # the published protocol the suite env follows (``SuiteEnv.protocol``)

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        out = asdict(self)
        out["pass_at_k"] = {str(k): v for k, v in self.pass_at_k.items()}
        if not samples:
            out.pop("samples")
        return out


# ---------------------------------------------------------------------------- evaluate
def resolve_suite(suite_or_env_id: str) -> tuple[str, str]:
    """``(suite name, env id)`` for a suite name (``"gsm8k"``) or any registered env id."""
    if suite_or_env_id in SUITE_IDS:
        return suite_or_env_id, SUITE_IDS[suite_or_env_id]
    for name, env_id in SUITE_IDS.items():
        if env_id == suite_or_env_id:
            return name, env_id
    if "/" in suite_or_env_id:
        return suite_or_env_id, suite_or_env_id
    raise ValueError(
        f"unknown suite {suite_or_env_id!r}; use one of {sorted(SUITE_IDS)} or an env id"
    )


def evaluate(
    suite_or_env_id: str,
    policy: Any,
    *,
    n_samples: int = 1,
    ks: Sequence[int] = (1,),
    temperature: float = 0.0,
    top_p: float = 1.0,
    limit: int | None = None,
    batch_size: int = 8,
    data_path: str | None = None,
    seed: int = 0,
    progress: bool = True,
    model_name: str = "model",
    env_kwargs: Mapping[str, Any] | None = None,
    dist: Any = None,
) -> SuiteResult:
    """Run one suite through its env with ``policy`` and score it.

    Args:
        suite_or_env_id: ``"gsm8k" | "math500" | "humaneval" | "mbpp"`` or an env id (made
            with ``gymnasium.make``, so the wrappers it was registered with apply).
        policy: an :class:`~mpo_gym.policy.LMPolicy`.
        n_samples: responses per task (``n`` of pass@k).
        ks: the k of pass@k; each must be ``<= n_samples``.
        temperature: 0 means greedy decoding (then ``n_samples`` must be 1).
        limit: evaluate only the first ``limit`` tasks of the split.
        batch_size: episodes generated together (one env copy each).
        data_path: local data file/folder for the suite env (see :mod:`mpo_gym.envs.suites`).
        seed: sampling seed.
        model_name: label stored in the records.
        env_kwargs: extra kwargs for ``gymnasium.make`` (``split``, ``max_new_tokens``, ...).
        dist: shard the episodes over these ranks (see :func:`evaluate_envs`).
    """
    from ..rollout import reasoning_env, task_count

    ks = check_sampling(n_samples, ks, temperature)
    suite, env_id = resolve_suite(suite_or_env_id)
    envs = _make_envs(env_id, batch_size, policy, data_path, env_kwargs)
    total = task_count(envs)[1]
    n_tasks = total if limit is None else min(int(limit), total)
    start = time.perf_counter()
    samples = evaluate_envs(
        envs, policy, range(n_tasks), n_samples=n_samples, temperature=temperature, top_p=top_p,
        seed=seed, progress=progress, suite=suite, model_name=model_name, dist=dist,
    )  # fmt: skip
    wall = time.perf_counter() - start
    result = _summarize(
        suite, env_id, model_name, samples, ks, n_tasks, n_samples, temperature, wall, limit, seed
    )
    result.protocol = str(getattr(reasoning_env(envs), "protocol", "") or "")
    return result


def evaluate_envs(
    envs: Sequence[Any],
    policy: Any,
    task_indices: Sequence[int],
    *,
    n_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    suite: str = "",
    model_name: str = "model",
    dist: Any = None,
) -> list[SampleRecord]:
    """The one evaluation path (``mpo-gym eval``, the trainer's held-out evaluation, compare).

    Plays ``n_samples`` episodes of each task in ``task_indices`` with
    :func:`mpo_gym.rollout.rollout` (the training collection code), ``len(envs)`` at a time,
    and returns one :class:`SampleRecord` per episode: the status and answer from the final
    step's ``info["verdict"]``, the reward the outermost wrapper returned.

    Args:
        envs: (wrapped) envs of one registered id; their count is the batch size.
        temperature: 0 is greedy decoding. Sampled episode ``j`` (of the task-major list)
            draws from the stream of ``(seed, j)``, whatever the batch size or sharding.
        dist: a :class:`~mpo_gym.distributed.Dist` to shard over: each rank plays its
            contiguous share of the episodes and every rank returns all records, in order.
            Default: this process alone.
    """
    from ..distributed import SINGLE
    from ..rollout import reasoning_env

    dist = dist or SINGLE
    env = reasoning_env(envs)
    indices = [int(i) for i in task_indices for _ in range(n_samples)]
    mine = dist.shard(len(indices))
    episodes = _rollout(list(envs), policy, indices[mine.start : mine.stop], seed, temperature, top_p,
                        progress and dist.is_main, offset=mine.start)
    if dist.active:  # every rank's episodes, in order, so sample numbers count over the whole list
        episodes = [e for part in dist.all_gather_objects(episodes) for e in part]
    return _records(suite, model_name, env, episodes)


def _make_envs(
    env_id: str, count: int, policy: Any, data_path: str | None, env_kwargs: Any
) -> list[Any]:
    import gymnasium as gym

    import mpo_gym  # noqa: F401  (registers the suite ids)

    kwargs = dict(env_kwargs or {})
    tokenizer = getattr(policy, "tokenizer", None)
    if tokenizer is not None:
        kwargs.setdefault("tokenizer", tokenizer)
    if data_path is not None:
        kwargs.setdefault("data_path", str(data_path))
    return [gym.make(env_id, **kwargs) for _ in range(max(1, int(count)))]


def _rollout(envs, policy, indices, seed, temperature, top_p, progress, offset=0) -> list[Any]:
    """Episodes for ``indices`` in chunks of ``len(envs)`` (rollout plays one episode per env);
    ``offset`` is the position of ``indices[0]`` in the whole list (its sampling stream)."""
    from ..rollout import rollout

    greedy = temperature == 0
    bar = _bar(len(indices), progress, desc=getattr(envs[0].spec, "id", None) or "eval")
    episodes: list[Any] = []
    for start in range(0, len(indices), len(envs)):
        chunk = indices[start : start + len(envs)]
        episodes += rollout(
            envs[: len(chunk)],
            policy,
            task_indices=chunk,
            seed=seed,
            first_index=offset + start,
            temperature=1.0 if greedy else float(temperature),
            top_p=top_p,
            greedy=greedy,
        )
        bar.update(len(chunk))
        bar.set_postfix(
            correct=sum(getattr(e.verdict, "status", "") == "correct" for e in episodes)
        )
    bar.close()
    return episodes


def _bar(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ep", disable=not enabled, dynamic_ncols=True)




def _records(suite, model, env, episodes) -> list[SampleRecord]:
    seen: Counter[int] = Counter()
    out = []
    for ep in episodes:
        sample, seen[ep.task_index] = seen[ep.task_index], seen[ep.task_index] + 1
        out.append(episode_record(ep, env, suite=suite, model=model, sample=sample))
    return out


def held_out_summary(samples: Sequence[SampleRecord]) -> dict[str, Any]:
    """Greedy held-out numbers of one evaluation: accuracy, mean reward, per-task outcomes."""
    statuses = [s.status for s in samples]
    return {
        "accuracy": float(np.mean([s == "correct" for s in statuses])) if samples else float("nan"),
        "reward": float(np.mean([s.reward for s in samples])) if samples else float("nan"),
        "n": float(len(samples)),
        "outcomes": [int(s == "correct") for s in statuses],
        **{f"status/{s}": float(np.mean([x == s for x in statuses])) for s in sorted(set(statuses))},
    }


def write_task_rows(path: str | Path, samples: Sequence[SampleRecord], when: str | int,
                    **tags: Any) -> None:
    """Record one evaluation in ``eval_tasks.jsonl``: one row per task, replacing older rows
    with the same ``when`` (and tags), so a resumed run does not count an evaluation twice.

    Row: ``task_id``, ``task_index``, ``when`` (``"before"``, ``"after"`` or the update number),
    ``status``, ``correct`` (0/1), ``reward``, ``sample``, plus ``tags`` (e.g. agent, seed).
    """
    path = Path(path)
    key = {"when": when, **tags}
    kept = [r for r in read_task_rows(path) if any(r.get(k) != v for k, v in key.items())]
    new = [{**tags, "when": when, "task_id": s.task_id, "task_index": s.task_index,
            "sample": s.sample, "status": s.status, "correct": int(s.status == "correct"),
            "reward": s.reward} for s in samples]
    runs.write_jsonl(path, kept + new)


def read_task_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an ``eval_tasks.jsonl`` (empty if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _summarize(
    suite, env_id, model, samples, ks, n_tasks, n_samples, temperature, wall, limit, seed
) -> SuiteResult:
    correct: Counter[int] = Counter()
    drawn: Counter[int] = Counter()
    for s in samples:
        drawn[s.task_index] += 1
        correct[s.task_index] += s.status == "correct"
    scores = {
        k: float(np.mean([pass_at_k(drawn[t], correct[t], k) for t in drawn])) if drawn else 0.0
        for k in ks
    }
    counts = Counter(s.status for s in samples)
    return SuiteResult(
        suite=suite, env_id=env_id, model=model, n_tasks=n_tasks, n_samples=n_samples,
        temperature=float(temperature), pass_at_k=scores,
        status_counts={st: counts.get(st, 0) for st in STATUSES}, wall_time_s=round(wall, 2),
        mean_response_tokens=float(np.mean([s.response_tokens for s in samples])) if samples else 0.0,
        truncated_rate=float(np.mean([s.truncated for s in samples])) if samples else 0.0,
        limit=limit, seed=seed, samples=samples,
    )  # fmt: skip


# ---------------------------------------------------------------------------- reports
Results = Sequence[SuiteResult] | Mapping[str, Mapping[str, SuiteResult]]


def _nested(results: Results) -> dict[str, dict[str, SuiteResult]]:
    if isinstance(results, Mapping):
        return {m: dict(r) for m, r in results.items()}
    out: dict[str, dict[str, SuiteResult]] = {}
    for r in results:
        out.setdefault(r.model, {})[r.suite] = r
    return out


def comparison_table(rows: Mapping[str, Mapping[str, SuiteResult]], k: int = 1) -> str:
    """Markdown: one row per model/agent, one column per suite, cells pass@k in percent.

    A missing suite or k shows as ``-``; ``avg`` averages the suites a row has.
    """
    suites = [s for s in SUITE_IDS if any(s in r for r in rows.values())]
    suites += sorted({s for r in rows.values() for s in r} - set(suites))
    lines = [
        "| model | " + " | ".join(suites) + " | avg |",
        "|---|" + "---:|" * (len(suites) + 1),
    ]
    for model, results in rows.items():
        values = [results[s].pass_at_k.get(k) if s in results else None for s in suites]
        present = [v for v in values if v is not None]
        cells = [f"{100 * v:.1f}" if v is not None else "-" for v in values]
        avg = f"{100 * float(np.mean(present)):.1f}" if present else "-"
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {avg} |")
    return "\n".join(lines) + "\n"


def results_table(results: Results) -> str:
    """Markdown: one row per (model, suite) with pass@k, statuses, tokens and wall time."""
    flat = [r for by_suite in _nested(results).values() for r in by_suite.values()]
    ks = sorted({k for r in flat for k in r.pass_at_k})
    head = ["model", "suite", "tasks", "n", "T"] + [f"pass@{k}" for k in ks]
    head += list(STATUSES) + ["mean tokens", "truncated", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in flat:
        cells = [r.model, r.suite, str(r.n_tasks), str(r.n_samples), f"{r.temperature:g}"]
        cells += [f"{100 * r.pass_at_k[k]:.1f}" if k in r.pass_at_k else "-" for k in ks]
        cells += [str(r.status_counts.get(s, 0)) for s in STATUSES]
        cells += [
            f"{r.mean_response_tokens:.0f}",
            f"{100 * r.truncated_rate:.0f}%",
            f"{r.wall_time_s:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(results: Results, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``samples.jsonl`` into ``out_dir``.

    Returns:
        ``{"json": ..., "markdown": ..., "samples": ...}`` paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nested = _nested(results)
    flat = [r for by_suite in nested.values() for r in by_suite.values()]
    paths = {
        "json": out / "results.json",
        "markdown": out / "results.md",
        "samples": out / "samples.jsonl",
    }
    payload = {"results": [r.to_dict() for r in flat]}
    paths["json"].write_text(json.dumps(payload, indent=2, default=str) + "\n")
    ks = sorted({k for r in flat for k in r.pass_at_k})
    md = ["# Evaluation\n"]
    for k in ks:
        md += [f"## pass@{k} (%)\n", comparison_table(nested, k=k)]
    md += ["## Details\n", results_table(nested)]
    protocols = {r.suite: r.protocol for r in flat if r.protocol}
    if protocols:
        md += ["## Protocols\n", "".join(f"- **{suite}**: {text}\n" for suite, text in protocols.items())]
    paths["markdown"].write_text("\n".join(md))
    runs.write_jsonl(paths["samples"], (asdict(s) for r in flat for s in r.samples), default=str)
    return paths


def evaluate_held_out(cfg: Any, policy: Any, envs: list[Any] | None = None, *,
                      when: str | int = "after", rows_path: Path | None = None,
                      dist: Any = None) -> dict[str, Any]:
    """Greedy accuracy and mean reward on the first ``eval_tasks`` tasks of the test split.

    Runs :func:`evaluate_envs` (the one evaluation path; sharded by task over
    the ranks of ``dist``) and records one row per task in ``rows_path`` (default
    ``<out_dir>/eval_tasks.jsonl``; rank 0 writes) under ``when`` (``"before"``, ``"after"`` or
    the update number).
    """
    import torch

    from .. import distributed
    from ..loading import make_envs
    from ..rollout import task_count

    dist = dist or distributed.SINGLE

    envs = envs or make_envs(cfg, min(cfg.eval_batch, cfg.eval_tasks), split="test")
    n_tasks = min(cfg.eval_tasks, task_count(envs)[1])
    policy.eval()
    with torch.no_grad(), dist.gathered(policy):
        samples = evaluate_envs(envs, policy, range(n_tasks), temperature=0.0, suite=cfg.env,
                                model_name=cfg.agent, dist=dist)
    if dist.is_main:
        write_task_rows(rows_path or Path(cfg.out_dir) / "eval_tasks.jsonl", samples, when)
    return held_out_summary(samples)


# ---------------------------------------------------------------------------- an EvalConfig
def preflight(cfg: EvalConfig) -> None:
    """Check suites, data and models of ``cfg`` before any model is loaded (user errors)."""
    import gymnasium as gym

    from ..errors import ConfigError, MpoGymError, check_model_spec
    from ..plugins import check_env_id, import_modules

    import_modules(cfg.imports)
    if cfg.data_dir and not Path(cfg.data_dir).exists():
        raise ConfigError(f"--data-dir {cfg.data_dir}: no such file or directory")
    for suite in cfg.suites:
        env_id = resolve_suite(suite)[1]
        check_env_id(env_id, flag="--suite")
        kwargs = {**cfg.resolved_env_kwargs(), "tokenizer": "char"}  # loads the data (cached), not a tokenizer
        if cfg.data_dir:
            kwargs.setdefault("data_path", cfg.data_dir)
        try:
            gym.make(env_id, **kwargs)
        except MpoGymError:
            raise
        except (TypeError, ValueError, KeyError, OSError) as exc:
            raise ConfigError(f"--suite {suite}: {type(exc).__name__}: {exc}") from exc
    for spec in cfg.model:
        check_model_spec(spec)


def run_evaluation(cfg: EvalConfig) -> tuple[dict[str, dict[str, SuiteResult]], Path]:
    """``mpo-gym eval`` from Python: every model of ``cfg`` on every suite; writes
    ``results.json``, ``results.md`` and ``samples.jsonl`` into ``cfg.out_dir`` after each
    suite (so what is done is kept if a later one fails). Returns ``(rows, out_dir)``, rows as
    :func:`comparison_table` takes them."""
    from .. import distributed

    preflight(cfg)
    out = Path(cfg.resolved_out_dir())
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    rows: dict[str, dict[str, SuiteResult]] = {}
    dist = distributed.SINGLE
    device = None if cfg.device == "auto" else cfg.device
    for spec, name in zip(cfg.model, _model_names(cfg.model)):
        policy = load_policy(spec, dtype=cfg.dtype or None, seed=cfg.seed, device=device)
        dist = distributed.init(getattr(getattr(policy, "device", None), "type", "cpu"))  # tasks sharded over ranks
        out = Path(dist.broadcast_object(str(out)))  # rank 0's folder name (it has the time in it)
        for suite in cfg.suites:
            result = evaluate(
                suite, policy, n_samples=cfg.n_samples, ks=cfg.ks, temperature=cfg.temperature,
                top_p=cfg.top_p, limit=cfg.limit or None, batch_size=cfg.batch_size,
                data_path=cfg.data_dir or None, seed=cfg.seed, progress=cfg.progress,
                model_name=name, env_kwargs=cfg.resolved_env_kwargs(), dist=dist,
            )  # fmt: skip
            rows.setdefault(name, {})[suite] = result
            if dist.is_main:
                print(_one_line(result), flush=True)
                write_results(rows, out)
    return rows, out


def _model_names(models: Sequence[str]) -> list[str]:
    short = [m if m == "default" else (Path(m).name or m) for m in models]
    return short if len(set(short)) == len(short) else list(models)


def _one_line(r: SuiteResult) -> str:
    scores = " ".join(f"pass@{k}={100 * v:.1f}%" for k, v in r.pass_at_k.items())
    counts = " ".join(f"{s}={c}" for s, c in r.status_counts.items() if c)
    return f"{r.model} {r.suite}: {scores} ({r.n_tasks} tasks x {r.n_samples}; {counts}; {r.wall_time_s:.0f}s)"
