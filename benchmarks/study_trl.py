"""The study: our agents against TRL's ``GRPOTrainer``, same task, model, reward, held-out set, clock.

Protocol (issue 18.3). Two-digit sums (``mpo_gym/Arithmetic-v0``, digits=2, one fixed example
turn in the chat), the embedded SmolLM2-135M-Instruct, **equal training wall-clock per run**
(``--budget-s``, 360 s), at least three seeds, and held-out greedy accuracy on the same 200 test
sums before and after every run, evaluated by *our* evaluator for every run (TRL's trained
weights are saved and evaluated here, so TRL is measured with exactly our protocol). Runs:

- ``ppo``, ``mpo`` (K=5), ``grpo``, ``gspo``: the ``quickstart`` preset's settings;
- ``ppo-lr-beta1``: PPO with its actor lr scaled by MPO's β₁ = 0.82288. On-policy MPO's
  backbone gradient is β₁ times PPO's (the MTP modules are detached): this control separates
  MPO's ratio from its smaller step;
- ``mpo-offpolicy``: MPO in the ``offpolicy`` preset (2 epochs of 4 mini-batches per rollout),
  where its window ratio differs from the token ratio;
- ``trl``: TRL's ``GRPOTrainer`` with TRL's defaults for everything the protocol does not fix
  (lr 1e-6, 8 generations per prompt, ε 0.2, loss "dapo", no KL); ``trl-ourlr``: the same at our
  lr (2e-6). The protocol fixes: the model, the prompt (the env's chat messages, rendered by the
  same chat template; checked token by token), 16 completions per step (as our 16 envs), at
  most 40 new tokens, sampling temperature 0.7, and the wall-clock. TRL's reward is boxed exact
  match (the last ``\\boxed{...}`` equals the reference); ours is the math verifier, which for
  integer sums also accepts numerically equal forms (e.g. ``57.0``).

Both sides stop after the update (TRL: the optimizer step) during which the training clock
passed the budget, so a run overshoots by up to one update; the results keep the actual
``train_seconds``. TRL runs in its own virtualenv, created by this script (``TRL_PINS``: TRL pinned, torch pinned
as ours, transformers pinned to the version ours resolved, so both sides run the same kernels).

Order is seed-major and interleaved (seed 0: every run, then seed 1, ...), so that a change of
load on the machine hits every agent alike. Each finished run is appended as one JSON line to
``--results`` (default ``benchmarks/results/study_trl.jsonl``, in the repo); running the same
command again skips the (run, seed) pairs already there under the same protocol, so the study
can be resumed or continued later. Every line records the machine (CPU kind, cores, resolved
dtype, load average before and after the run): the timing *is* the comparison, so run it on an
otherwise quiet machine. At the end (or with ``--summary-only``) it writes the summary next to
the results (``.md`` table, ``.png`` plot of held-out accuracy vs training wall-clock, one line
per seed): per run, mean gain with 95% intervals over seeds (t) and over tasks (paired), updates,
s/update, peak memory, and the best of ours against the best TRL run.

    python benchmarks/study_trl.py                                    # the full study, ~4 h
    # the same in ~2 h on 2 cores: two streams, one per core, one torch thread each, never two
    # MPO runs side by side (7-12 GB each); both append to the same --results file
    taskset -c 0 python benchmarks/study_trl.py --threads 1 --agents mpo,mpo-offpolicy,ppo-lr-beta1,trl-ourlr &
    taskset -c 1 python benchmarks/study_trl.py --threads 1 --agents ppo,grpo,gspo,trl
    python benchmarks/study_trl.py --budget-s 20 --seeds 1 --agents ppo --eval-tasks 20 \\
        --results /tmp/smoke.jsonl                                    # a smoke test
    python benchmarks/study_trl.py --summary-only                     # rewrite the summary

Not done here: no GPU path for TRL (``use_cpu``), no vLLM; MPO's MTP warm-up runs before its
budget (timed and reported apart, as in the paper's cost tables); evaluation time is never
counted in a budget.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# requests: trl 1.13.0 imports it in its GRPO trainer without declaring it as a dependency
TRL_PINS = ("trl==1.13.0", "torch==2.13.0", "transformers==5.24.0", "requests==2.34.2")
OUR_RUNS = ("ppo", "mpo", "grpo", "gspo", "ppo-lr-beta1", "mpo-offpolicy")
TRL_RUNS = ("trl", "trl-ourlr")
RUNS = OUR_RUNS + TRL_RUNS
BETA1 = 0.82288  # mpo_betas(5, 0.06, 0.8)[0]; checked against the function at run time
TRL_DEFAULT_LR = 1e-6  # GRPOConfig.learning_rate in TRL_PINS; checked in the worker
Z_80 = 0.8416  # standard normal 0.80 quantile: the margin for 80% power


# ---------------------------------------------------------------------------------- protocol
def protocol(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that makes two results comparable; its hash keys the results file."""
    from mpo_gym.compare import PRESETS

    quick = PRESETS["quickstart"]
    return {
        "env": quick["env"], "env_kwargs": quick["env_kwargs"], "model": args.model,
        "budget_s": args.budget_s, "eval_tasks": args.eval_tasks, "num_envs": quick["num_envs"],
        "common_kwargs": quick["common_kwargs"], "agent_kwargs": quick["agent_kwargs"],
        "offpolicy_common": PRESETS["offpolicy"]["common_kwargs"], "trl_pins": list(TRL_PINS),
        "trl_generations": 8, "temperature": quick["common_kwargs"]["temperature"], "threads": args.threads,
    }


def protocol_id(proto: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(proto, sort_keys=True).encode()).hexdigest()[:12]


def train_config(name: str, seed: int, args: argparse.Namespace, run_dir: Path) -> Any:
    """The ``TrainConfig`` of one of our runs (``quickstart`` settings, this study's budget)."""
    import dataclasses

    from mpo_gym.agents import functional as F
    from mpo_gym.compare import PRESETS, CompareConfig

    beta1 = float(F.mpo_betas(5, 0.06, 0.8)[0])
    if abs(beta1 - BETA1) > 1e-6:
        raise SystemExit(f"β₁ of MPO's defaults is {beta1}, not {BETA1}: update BETA1")
    agent = {"ppo-lr-beta1": "ppo", "mpo-offpolicy": "mpo"}.get(name, name)
    preset = PRESETS["offpolicy" if name == "mpo-offpolicy" else "quickstart"]
    agent_kwargs = {**preset["agent_kwargs"], "gspo": {"group_size": 4}}
    cmp = CompareConfig.from_options({
        **preset, "agents": (agent,), "agent_kwargs": {agent: agent_kwargs.get(agent, {})}, "model": args.model,
        "seeds": (seed,), "budget_s": args.budget_s, "updates": 0, "eval_tasks": args.eval_tasks,
        "eval_every": args.eval_every, "out_dir": str(run_dir.parent), "threads": args.threads,
    })
    cfg = cmp.run_config(agent, seed)
    if name == "ppo-lr-beta1":
        kwargs = {**cfg.agent_kwargs, "lr": cfg.agent_config().lr * BETA1}
        cfg = dataclasses.replace(cfg, agent_kwargs=kwargs)
    names = {f.name for f in dataclasses.fields(cfg)}
    extra = {"checkpoint_every_s": 0.0} if "checkpoint_every_s" in names else {}  # one checkpoint, at the end
    return dataclasses.replace(cfg, out_dir=str(run_dir), checkpoint_every=0, **extra)


def machine() -> dict[str, Any]:
    flags = set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = {f for f in ("avx512_bf16", "amx_bf16", "avx2") if f" {f}" in text}
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    except OSError:
        model = platform.processor()
    from mpo_gym.policy import compute_dtype

    return {"cpu": model, "cpu_flags": sorted(flags), "cores": os.cpu_count(), "resolved_dtype": compute_dtype("auto", "cpu"),
            "python": platform.python_version(), "affinity": sorted(os.sched_getaffinity(0))}


# ---------------------------------------------------------------------------------- our runs
def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """Child process: one training run of ours; returns its result (written by the parent)."""
    import argparse as ap

    from mpo_gym.trainer import train

    args = ap.Namespace(**spec["args"])
    run_dir = Path(spec["run_dir"])
    cfg = train_config(spec["name"], spec["seed"], args, run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished earlier attempt starts over
    run_dir.mkdir(parents=True)
    (run_dir / "eval.json").write_text(json.dumps({"before": spec["before"]}))  # shared, not recomputed
    result = train(cfg, progress=False)
    curve = [(0.0, spec["before"]["accuracy"])]
    curve += [(row["time"], row["eval/accuracy"]) for row in result.history if "eval/accuracy" in row]
    after = result.eval_after or {}
    curve.append((result.train_seconds, after.get("accuracy", float("nan"))))
    from mpo_gym.policy import compute_dtype

    return {
        "updates": result.updates, "train_seconds": result.train_seconds, "warmup_seconds": result.warmup_seconds,
        "peak_rss_mb": result.peak_rss_mb, "after": after.get("accuracy"), "outcomes_after": after.get("outcomes"),
        "curve": curve, "resolved_dtype": compute_dtype(cfg.dtype, cfg.resolved_device),
        "settings": {"agent": cfg.agent, **cfg.agent_config().to_dict()},
    }


@contextlib.contextmanager
def work_lock(work: Path) -> Iterator[None]:
    """One process at a time prepares what the streams share in ``work`` (the untrained model's
    evaluation, the TRL virtualenv, the TRL data): two streams started together would otherwise
    both build them, and one would delete the virtualenv the other is installing into."""
    import fcntl

    work.mkdir(parents=True, exist_ok=True)
    with (work / ".prepare.lock").open("w") as f:  # closing the file releases the lock
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def held_out_before(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Greedy held-out accuracy of the untrained model (every run starts from it), cached."""
    path = work / f"before-{protocol_id(protocol(args))}.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    out = _child(["_eval", "--model-dir", "", "--args", json.dumps(vars(args))], work / "before.log")
    path.write_text(json.dumps(out))
    return out


def evaluate_model(model_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    """Child process: held-out greedy accuracy of ``model_dir`` ("" = the untrained model)."""
    import dataclasses

    from mpo_gym.trainer import evaluate_held_out, make_policy

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = train_config("grpo", 0, args, Path(args.work_dir) / "eval")
    cfg = dataclasses.replace(cfg, model=model_dir or args.model, agent_kwargs={"group_size": 4})
    policy = make_policy(cfg)
    out = evaluate_held_out(cfg, policy)
    return {k: out[k] for k in ("accuracy", "n", "outcomes")}


# ---------------------------------------------------------------------------------- TRL
def trl_python(args: argparse.Namespace) -> Path:
    """The TRL virtualenv's interpreter; creates the venv with ``TRL_PINS`` when missing."""
    venv = Path(args.trl_venv)
    python = venv / "bin" / "python"
    stamp = venv / "pins.txt"
    if python.exists() and stamp.exists() and stamp.read_text().split() == list(TRL_PINS):
        return python
    ours = _our_transformers()
    pinned = next(p for p in TRL_PINS if p.startswith("transformers=="))
    if pinned.split("==")[1] != ours:
        print(f"note: TRL_PINS has {pinned} but our venv runs transformers {ours}", flush=True)
    print(f"creating the TRL virtualenv {venv} with {' '.join(TRL_PINS)} (a few minutes)", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    log = venv.parent / "trl-install.log"
    with log.open("w") as f:
        proc = subprocess.run([str(python), "-m", "pip", "install", *TRL_PINS], stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"installing {' '.join(TRL_PINS)} failed (exit {proc.returncode}); the end of {log}:\n" + "\n".join(tail))
    stamp.write_text("\n".join(TRL_PINS))
    return python


def _our_transformers() -> str:
    import transformers

    return str(transformers.__version__)


def export_trl_data(args: argparse.Namespace, work: Path, n_train: int = 4000) -> Path:
    """The env's training prompts (chat messages + rendered ids) and references, as JSON lines."""
    import gymnasium as gym

    from mpo_gym.compare import PRESETS

    quick = PRESETS["quickstart"]
    path = work / f"trl-train-{args.model}.jsonl"
    if path.exists():
        return path
    env: Any = gym.make(quick["env"], **quick["env_kwargs"], tokenizer=args.model).unwrapped
    with path.open("w") as f:
        for i in range(min(n_train, len(env.tasks))):
            f.write(json.dumps({"prompt": env.prompt_messages(i), "prompt_ids": [int(x) for x in env.prompt_ids(i)],
                                "answer": env.tasks[i].reference}) + "\n")
    return path


def run_trl(name: str, seed: int, args: argparse.Namespace, run_dir: Path, before: dict[str, Any]) -> dict[str, Any]:
    """One TRL run in its venv, then our evaluation of its snapshots and final weights."""
    from mpo_gym.compare import PRESETS
    from mpo_gym.policy import compute_dtype, default_model_dir

    quick = PRESETS["quickstart"]
    with work_lock(Path(args.work_dir)):
        python = trl_python(args)
        data = export_trl_data(args, Path(args.work_dir))
    model_dir = str(default_model_dir()) if args.model == "default" else args.model
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    spec: dict[str, Any] = {
        "model_dir": model_dir, "data": str(data), "out_dir": str(run_dir), "seed": seed, "budget_s": args.budget_s,
        "snapshot_every_s": args.trl_snapshot_every_s, "lr": quick["common_kwargs"]["lr"] if name == "trl-ourlr" else None,
        "batch": quick["num_envs"], "generations": 8, "max_new_tokens": quick["env_kwargs"]["max_new_tokens"],
        "temperature": quick["common_kwargs"]["temperature"], "bf16": compute_dtype("auto", "cpu") == "bfloat16",
        "threads": args.threads,
    }
    out = _child(["_trl-worker", "--spec", json.dumps(spec)], run_dir / "worker.log", python=python)
    curve = [(0.0, before["accuracy"])]
    after: dict[str, Any] = {}
    for t, snapshot in out.pop("snapshots"):
        ev = _child(["_eval", "--model-dir", snapshot, "--args", json.dumps(vars(args))], run_dir / "eval.log")
        curve.append((t, ev["accuracy"]))
        after = ev
        if not args.keep_trl_weights:
            shutil.rmtree(snapshot, ignore_errors=True)
    out.update({"after": after.get("accuracy"), "outcomes_after": after.get("outcomes"), "curve": curve,
                "warmup_seconds": 0.0, "resolved_dtype": "bfloat16" if spec["bf16"] else "float32"})
    return out


def trl_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs *inside the TRL venv* (no mpo_gym import): GRPOTrainer for a wall-clock budget."""
    import dataclasses
    import re
    import resource

    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    mismatched = 0
    for row in rows[:200]:  # TRL renders conversational prompts with the chat template: same ids?
        ids: Any = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        mismatched += [int(i) for i in ids] != row["prompt_ids"]
    if mismatched:
        raise SystemExit(f"{mismatched} of 200 prompts render to other token ids under TRL's tokenizer")
    dataset = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])

    boxed = re.compile(r"\\boxed\{([^{}]*)\}")

    def boxed_exact_match(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
        out = []
        for completion, ref in zip(completions, answer):
            text = completion[-1]["content"] if isinstance(completion, list) else str(completion)
            found = boxed.findall(text)
            out.append(float(bool(found) and found[-1].replace(" ", "") == ref.replace(" ", "")))
        return out

    fields = {f.name: f.default for f in dataclasses.fields(trl.GRPOConfig)}
    if fields["learning_rate"] != TRL_DEFAULT_LR:
        raise SystemExit(f"TRL's default lr is {fields['learning_rate']}, not {TRL_DEFAULT_LR}: update the study")
    config = trl.GRPOConfig(
        output_dir=str(Path(spec["out_dir"]) / "trainer"), seed=spec["seed"], use_cpu=True, bf16=spec["bf16"],
        learning_rate=spec["lr"] or fields["learning_rate"], num_generations=spec["generations"],
        per_device_train_batch_size=spec["batch"], gradient_accumulation_steps=1,
        max_completion_length=spec["max_new_tokens"], temperature=spec["temperature"], max_steps=100_000,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
    )

    class Clock(TrainerCallback):
        """Stops after ``budget_s`` of training; snapshots are saved off the clock."""

        def __init__(self) -> None:
            self.start = 0.0
            self.paused = 0.0
            self.snapshots: list[tuple[float, str]] = []
            self.next_snapshot = spec["snapshot_every_s"] or float("inf")
            self.steps = 0

        def elapsed(self) -> float:
            return time.perf_counter() - self.start - self.paused

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            self.steps = state.global_step
            t = self.elapsed()
            if t >= spec["budget_s"]:
                control.should_training_stop = True
            elif t >= self.next_snapshot:
                t0 = time.perf_counter()
                self.save(model, t)
                self.next_snapshot += spec["snapshot_every_s"]
                self.paused += time.perf_counter() - t0

        def save(self, model: Any, t: float) -> None:
            path = Path(spec["out_dir"]) / f"weights-t{int(t)}"
            model.save_pretrained(str(path), safe_serialization=True)
            tok.save_pretrained(str(path))
            self.snapshots.append((t, str(path)))

    clock = Clock()
    trainer = trl.GRPOTrainer(model=spec["model_dir"], reward_funcs=boxed_exact_match, args=config,
                              train_dataset=dataset, processing_class=tok, callbacks=[clock])
    trainer.train()
    train_seconds = clock.elapsed()
    clock.save(trainer.model, train_seconds)
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {
        "updates": clock.steps, "train_seconds": train_seconds, "snapshots": clock.snapshots,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_reward_first_last": [rewards[0], rewards[-1]] if rewards else None,
        "settings": {k: getattr(config, k) for k in ("learning_rate", "num_generations", "per_device_train_batch_size",
                                                    "max_completion_length", "temperature", "beta", "epsilon",
                                                    "loss_type", "scale_rewards", "num_iterations", "bf16")},
        "versions": {"trl": trl.__version__, "torch": torch.__version__},
    }


# ---------------------------------------------------------------------------------- driver
def _child(argv: list[str], log: Path, python: Path | None = None) -> dict[str, Any]:
    """Run this script's sub-command in a fresh process; its last stdout line is the JSON result."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(python or sys.executable), str(Path(__file__).resolve()), *argv]
    with log.open("a") as f:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, cwd=str(REPO))
    if proc.returncode != 0 or not proc.stdout.strip():
        tail = "\n".join(log.read_text().splitlines()[-12:])
        raise SystemExit(f"{argv[0]} failed (exit {proc.returncode}); the end of {log}:\n{tail}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


OVER_BUDGET = 1.5  # a run whose training clock passed this many budgets did not get equal wall-clock


def machine_kind(m: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two timings comparable: CPU features, core count, resolved dtype."""
    return (tuple(m.get("cpu_flags", ())), m.get("cores"), m.get("resolved_dtype"))


def invalid_reason(record: dict[str, Any], kind: tuple[Any, ...] | None) -> str | None:
    """Why a finished run cannot enter the comparison (``None``: it can).

    The protocol is equal training wall-clock on one machine kind. A run stops after the update
    during which its clock passed the budget, so it overshoots by up to one update; a run whose
    clock passed ``OVER_BUDGET`` budgets was slowed by something outside the protocol (memory
    pressure, another job) and had more wall-clock than the others. A run measured on another
    machine kind (``kind``: that of the study's first run) is not comparable either.
    """
    budget = record["protocol"]["budget_s"]
    if record["train_seconds"] > OVER_BUDGET * budget:
        return (f"over budget: {record['train_seconds']:.0f} s of training for a {budget:.0f} s budget "
                f"({record['updates']} updates)")
    if kind is not None and machine_kind(record["machine"]) != kind:
        return f"other machine kind {machine_kind(record['machine'])}, the study's is {kind}"
    return None


def split_valid(results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """(valid runs, [(invalid run, reason)]) of one protocol's results, in file order."""
    kind = machine_kind(results[0]["machine"]) if results else None
    valid, invalid = [], []
    for r in results:
        reason = invalid_reason(r, kind)
        if reason is None:
            valid.append(r)
        else:
            invalid.append((r, reason))
    return valid, invalid


def run_study(args: argparse.Namespace) -> None:
    proto = protocol(args)
    pid = protocol_id(proto)
    results_path = Path(args.results)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    valid, invalid = split_valid([r for r in read_results(results_path) if r.get("protocol_id") == pid])
    info = machine()
    if valid and machine_kind(info) != machine_kind(valid[0]["machine"]):
        raise SystemExit(
            f"the runs of protocol {pid} in {results_path} were measured on {valid[0]['machine']['cpu']} "
            f"{machine_kind(valid[0]['machine'])}; this machine is {info['cpu']} {machine_kind(info)}. The timing is "
            "the comparison: continue on a machine of the study's kind, or start another study with --results NEW.jsonl")
    done = {(r["run"], r["seed"]) for r in valid}
    for r, reason in invalid:
        if (r["run"], r["seed"]) not in done:
            print(f"{r['run']} seed {r['seed']} is run again: the earlier run is invalid ({reason})", flush=True)
    todo = [(seed, name) for seed in args.seed_list for name in args.agent_list if (name, seed) not in done]
    print(f"protocol {pid}: {len(done)} valid runs already in {results_path}, {len(todo)} to go "
          f"(order: seed-major, {', '.join(args.agent_list)})", flush=True)
    if not todo:
        return
    with work_lock(work):
        before = held_out_before(args, work)
    print(f"untrained model: held-out greedy accuracy {before['accuracy']:.3f} on {int(before['n'])} sums", flush=True)
    for seed, name in todo:
        run_dir = work / pid / f"{name}-s{seed}"
        load_before = os.getloadavg()
        t0 = time.time()
        if name in TRL_RUNS:
            out = run_trl(name, seed, args, run_dir, before)
        else:
            spec = {"name": name, "seed": seed, "args": vars(args), "run_dir": str(run_dir), "before": before}
            out = _child(["_ours", "--spec", json.dumps(spec)], run_dir.parent / f"{name}-s{seed}.log")
        record = {
            "run": name, "seed": seed, "protocol_id": pid, "protocol": proto, "before": before["accuracy"],
            "outcomes_before": before["outcomes"], **out, "wall_seconds": time.time() - t0,
            "machine": {**info, "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "code": _code_version(),
        }
        results_path.parent.mkdir(parents=True, exist_ok=True)
        with results_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        gain = (record["after"] or float("nan")) - record["before"]
        reason = invalid_reason(record, machine_kind(valid[0]["machine"]) if valid else None)
        if reason:
            print(f"{name} seed {seed} is INVALID ({reason}); it stays in the file, out of the summary, and the "
                  "next run of this command repeats it", flush=True)
        print(f"{name} seed {seed}: {record['updates']} updates in {record['train_seconds']:.0f} s, held-out "
              f"{record['before']:.3f} -> {record['after']:.3f} ({gain:+.3f}); peak {record['peak_rss_mb']:.0f} MB, "
              f"load {load_before[0]:.1f} -> {record['machine']['loadavg_after'][0]:.1f}", flush=True)


def _code_version() -> str:
    """The commit the runs' code came from (``+dirty`` with local changes), or ``unknown``."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) or "unknown"


# ---------------------------------------------------------------------------------- summary
def summarize(results: list[dict[str, Any]], order: tuple[str, ...] = RUNS) -> dict[str, dict[str, Any]]:
    """Per run name: mean gain, 95% intervals over seeds and over tasks, cost."""
    import numpy as np

    out: dict[str, dict[str, Any]] = {}
    for name in order:
        rows = sorted((r for r in results if r["run"] == name and r.get("after") is not None), key=lambda r: r["seed"])
        if not rows:
            continue
        from mpo_gym.report import seed_interval

        gains = np.array([r["after"] - r["before"] for r in rows])
        n = len(gains)
        mean_gain, seed_sd, seed_half = seed_interval(gains)
        seed_se = seed_sd / math.sqrt(n) if n > 1 else float("nan")
        diffs = np.array([np.asarray(r["outcomes_after"], float) - np.asarray(r["outcomes_before"], float) for r in rows])
        per_task = diffs.mean(0)  # [tasks] gain of each task, averaged over seeds
        task_half = 1.96 * per_task.std(ddof=1) / math.sqrt(per_task.size) if per_task.size > 1 else float("nan")
        out[name] = {
            "seeds": [r["seed"] for r in rows], "gains": gains.tolist(), "mean_gain": mean_gain,
            "seed_se": float(seed_se), "seed_half": float(seed_half), "task_half": float(task_half),
            "before": float(np.mean([r["before"] for r in rows])), "after": float(np.mean([r["after"] for r in rows])),
            "updates": float(np.mean([r["updates"] for r in rows])),
            "s_per_update": float(np.mean([r["train_seconds"] / max(r["updates"], 1) for r in rows])),
            "warmup_s": float(np.mean([r.get("warmup_seconds", 0.0) for r in rows])),
            "peak_rss_mb": float(max(r["peak_rss_mb"] for r in rows)),
        }
    return out


def compare_two(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float, float]:
    """(difference of mean gains a - b, combined 95% seed interval, smallest detectable difference).

    The rule: a difference counts when it is larger than the combined interval (the two runs' 95%
    half-widths over seeds, added in quadrature). The smallest detectable difference is the true
    difference that this rule finds 4 times in 5 (80% power): the combined interval plus 0.84
    standard errors of the difference (normal approximation, the seed spread taken as measured).
    """
    diff = a["mean_gain"] - b["mean_gain"]
    combined = math.hypot(a["seed_half"], b["seed_half"])
    return diff, combined, combined + Z_80 * math.hypot(a["seed_se"], b["seed_se"])


def verdict(summary: dict[str, dict[str, Any]]) -> str:
    ours = {k: v for k, v in summary.items() if k not in TRL_RUNS}
    theirs = {k: v for k, v in summary.items() if k in TRL_RUNS}
    if not ours or not theirs:
        return "No comparison with TRL yet (needs at least one of our runs and one TRL run)."
    best, ref = max(ours, key=lambda k: ours[k]["mean_gain"]), max(theirs, key=lambda k: theirs[k]["mean_gain"])
    diff, combined, detectable = compare_two(ours[best], theirs[ref])
    if math.isnan(combined):
        word = "not resolved (one seed: no interval over seeds)"
    elif diff > combined:
        word = "above TRL's by more than the combined interval"
    elif diff < -combined:
        word = "below TRL's by more than the combined interval"
    else:
        word = (f"not resolved: differences below ±{combined:.3f} cannot be told apart with these seeds; "
                f"a true difference of {detectable:.3f} would be found with 80% power")
    return (f"Best of ours: {best} ({ours[best]['mean_gain']:+.3f}); best TRL run: {ref} ({theirs[ref]['mean_gain']:+.3f}); "
            f"difference {diff:+.3f}, combined 95% seed interval ±{combined:.3f}: {word}.")


def agents_verdict(summary: dict[str, dict[str, Any]]) -> str:
    """Every pair of runs, by the same rule as ``verdict``: which differ, or that none do, with its power."""
    names = [n for n in summary if len(summary[n]["seeds"]) > 1]
    pairs = [(a, b, *compare_two(summary[a], summary[b])) for i, a in enumerate(names) for b in names[i + 1:]]
    if not pairs:
        return "Between runs: no two runs with two or more seeds yet."
    apart = [f"{a} {'>' if d > 0 else '<'} {b} ({d:+.3f}, ±{c:.3f})" for a, b, d, c, _ in pairs if abs(d) > c]
    widest = max(pairs, key=lambda p: abs(p[2]))
    detect = [p[4] for p in pairs]
    power = (f"with these seeds a pair's true difference would be found with 80% power from "
             f"{min(detect):.3f} to {max(detect):.3f}, by pair")
    if not apart:
        return (f"Between runs: no two runs differ by more than their combined 95% seed interval (largest difference "
                f"{widest[0]} - {widest[1]} {widest[2]:+.3f}, ±{widest[3]:.3f}); {power}.")
    return f"Between runs, differences larger than their combined 95% seed interval: {'; '.join(apart)}; the rest do not; {power}."


def write_summary(results_path: Path, pid: str | None = None) -> None:
    results = read_results(results_path)
    if pid is None and results:
        pid = results[-1]["protocol_id"]
    results = [r for r in results if r["protocol_id"] == pid]
    if not results:
        raise SystemExit(f"no results in {results_path}: run the study first, or name its results file with --results")
    m, proto = results[0]["machine"], results[0]["protocol"]
    results, invalid = split_valid(results)
    summary = summarize(results)
    lines = [
        f"# Study: our agents vs TRL GRPOTrainer (protocol {pid})", "",
        f"Machine: {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['cores']} cores, resolved dtype {m['resolved_dtype']}; "
        f"budget {proto['budget_s']:.0f} s of training per run; {proto['eval_tasks']} "
        "held-out sums, greedy, evaluated by mpo-gym for every run.", "",
        "| run | seeds | before | after | mean gain | 95% CI over seeds | 95% CI over tasks | updates | s/update | "
        "warm-up s | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {len(s['seeds'])} | {s['before']:.3f} | {s['after']:.3f} | {s['mean_gain']:+.3f} | ±{s['seed_half']:.3f} | "
            f"±{s['task_half']:.3f} | {s['updates']:.1f} | {s['s_per_update']:.1f} | {s['warmup_s']:.0f} | {s['peak_rss_mb']:.0f} |")
    lines += ["", verdict(summary), "", agents_verdict(summary), "", "Per seed (gain): " + "; ".join(
        f"{name} " + ", ".join(f"s{seed} {g:+.3f}" for seed, g in zip(s["seeds"], s["gains"])) for name, s in summary.items()),
        "", "Load average (1 min) before/after each run: " + ", ".join(
        f"{r['run']} s{r['seed']} {r['machine']['loadavg_before'][0]:.1f}/{r['machine']['loadavg_after'][0]:.1f}" for r in results),
        "", "Code (commit) of the runs: " + ", ".join(
        f"{code} ({n} runs)" for code, n in sorted(Counter(r.get("code", "not recorded") for r in results).items())) + ".",
        "", "Excluded (invalid; `--summary-only` keeps them out, the study command runs them again): " + (
        "; ".join(f"{r['run']} s{r['seed']}: {reason}" for r, reason in invalid) or "none") + ".",
        "", f"![held-out accuracy vs training wall-clock]({results_path.with_suffix('.png').name})", ""]
    results_path.with_suffix(".md").write_text("\n".join(lines))
    plot(results, results_path.with_suffix(".png"))
    print("\n".join(lines))


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in RUNS if any(r["run"] == n for r in results)]
    if not names:  # every run invalid: nothing to draw
        return
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names):
        for r in sorted((r for r in results if r["run"] == name), key=lambda r: r["seed"]):
            xs, ys = zip(*r["curve"])
            ax.plot(xs, ys, marker="o", label=f"seed {r['seed']}")
        ax.set_title(name)
        ax.set_xlabel("training wall-clock (s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("held-out greedy accuracy")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=360.0, help="training wall-clock per run (default 360)")
    p.add_argument("--seeds", default="3", help="a count N (seeds 0..N-1) or a comma list (default 3)")
    p.add_argument("--agents", default=",".join(RUNS), help=f"comma list of runs from {','.join(RUNS)}")
    p.add_argument("--eval-tasks", type=int, default=200, help="held-out sums (default 200)")
    p.add_argument("--eval-every", type=int, default=8, help="our runs: held-out evaluation every N updates too")
    p.add_argument("--trl-snapshot-every-s", type=float, default=120.0,
                   help="TRL runs: save weights every N s of training, evaluated afterwards (0: only the end)")
    p.add_argument("--model", default="default", help="default (embedded SmolLM2-135M) or a local model directory")
    p.add_argument("--threads", type=int, default=0, help="torch threads in every run, ours and TRL's (0: torch's default)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "study_trl.jsonl"))
    p.add_argument("--work-dir", default=str(REPO / "runs" / "study-trl"), help="run folders, TRL data and weights")
    p.add_argument("--trl-venv", default=None, help="TRL virtualenv (default WORK_DIR/trl-venv)")
    p.add_argument("--keep-trl-weights", action="store_true", help="keep TRL's saved weights after evaluation")
    p.add_argument("--summary-only", action="store_true", help="only (re)write the summary of --results")
    args = p.parse_args(argv)
    try:
        seeds = args.seeds.strip()
        args.seed_list = list(range(int(seeds))) if "," not in seeds else [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds must be a count or a comma list of ints; got {args.seeds!r}")
    args.agent_list = [a.strip() for a in args.agents.split(",") if a.strip()]
    unknown = sorted(set(args.agent_list) - set(RUNS))
    if unknown or not args.agent_list:
        p.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    if args.budget_s <= 0 or args.eval_tasks < 1 or not args.seed_list:
        p.error("need --budget-s > 0, --eval-tasks >= 1 and at least one seed")
    args.trl_venv = args.trl_venv or str(Path(args.work_dir) / "trl-venv")
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["_ours"]:
        print(json.dumps(run_ours(json.loads(argv[2]))))
        return 0
    if argv[:1] == ["_eval"]:
        ns = argparse.Namespace(**json.loads(argv[4]))
        print(json.dumps(evaluate_model(argv[2], ns)))
        return 0
    if argv[:1] == ["_trl-worker"]:
        print(json.dumps(trl_worker(json.loads(argv[2]))))
        return 0
    args = parse_args(argv)
    if not args.summary_only:
        try:
            run_study(args)
        except KeyboardInterrupt:  # the run in progress is dropped; the finished ones are in --results
            print(f"\nstopped: the runs that finished are in {args.results}; the run in progress is dropped. "
                  "Run the same command again to continue.", file=sys.stderr)
            return 130
    write_summary(Path(args.results), protocol_id(protocol(args)) if not args.summary_only else None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
