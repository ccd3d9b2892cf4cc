"""One CLI generated from configs: shared names, --config on every app, plug-ins before
validation, --model RUN_DIR, --resume, and a package without import cycles."""

from __future__ import annotations

import ast
import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

from mpo_gym.cli import main

from .conftest import REPO

TINY_TRAIN = ["--model", "tiny", "--env", "mpo_gym/Toy-v0", "--dtype", "float32", "--threads", "1"]

# A user's module outside the repository: a PPO variant registered under a new name.
USER_AGENT = textwrap.dedent('''
    from dataclasses import dataclass

    from mpo_gym.agents import register_agent
    from mpo_gym.agents.ppo import PPOAgent, PPOConfig


    @dataclass(frozen=True)
    class HalfClipConfig(PPOConfig):
        """PPO with a tighter clip.

        Attributes:
            half_marker: a field only this agent has.
        """

        half_marker: int = 7


    class HalfClipAgent(PPOAgent):
        pass


    register_agent("halfclip", HalfClipAgent, HalfClipConfig)
''')


@pytest.fixture
def user_agent(tmp_path, monkeypatch):
    """``myagents.py`` in a fresh folder outside the repo (the working directory), unregistered after."""
    from mpo_gym import agents

    assert not str(tmp_path).startswith(str(REPO))
    (tmp_path / "myagents.py").write_text(USER_AGENT)
    monkeypatch.chdir(tmp_path)
    before = dict(agents.AGENTS)
    yield tmp_path
    for name in set(agents.AGENTS) - set(before):
        del agents.AGENTS[name]
    sys.modules.pop("myagents", None)


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------- the same names everywhere
def _flags(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", capsys.readouterr().out))


def test_help_of_train_eval_and_compare_shows_the_same_names_for_shared_options(capsys):
    train, evaluate, compare = (_flags(c, capsys) for c in ("train", "eval", "compare"))
    shared = {"--config", "--model", "--dtype", "--device", "--seed", "--threads", "--data-dir", "--env-kwargs",
              "--out-dir", "--import"}
    assert shared <= train and shared - {"--seed"} <= compare and shared <= evaluate
    # compare composes the train options: every one of train's run options is one of compare's,
    # but those a comparison sets per run
    per_run = {"--agent", "--seed", "--out-dir"}
    run_options = {f"--{f.replace('_', '-')}" for f in __import__("mpo_gym.configs").configs.TrainConfig.__dataclass_fields__}
    assert run_options - per_run - {"--agent-kwargs"} <= compare
    assert "--resume" in train and "--resume" in compare
    assert "--lr" in compare and "--group-size" in compare  # agent options, for every agent that has them


def test_allowed_values_are_defined_once_and_used_for_help_and_validation(capsys):
    from mpo_gym.configs import EvalConfig, TrainConfig
    from mpo_gym.errors import ConfigError
    from mpo_gym.options import CHOICES

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    help_text = capsys.readouterr().out
    assert "{" + ",".join(CHOICES["report_to"]) + "}" in help_text
    with pytest.raises(ConfigError, match="report_to must be one of none, tensorboard, wandb, trackio"):
        TrainConfig(report_to="tensorbord")
    with pytest.raises(ConfigError, match="device must be one of"):
        EvalConfig(device="tpu")


# ---------------------------------------------------------------------- --config FILE.yaml everywhere
def test_a_yaml_config_runs_train_eval_and_compare(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.yaml").write_text(textwrap.dedent("""\
        agent: ppo
        env: mpo_gym/Toy-v0
        model: tiny
        dtype: float32
        threads: 1
        num_envs: 2
        updates: 1
        eval_tasks: 1
        minibatch_size: 2
        micro_batch_size: 2
        out_dir: run
    """))
    code, out, err = run(["train", "--config", "train.yaml"], capsys)
    assert code == 0, err
    assert "1 updates" in out and json.loads((tmp_path / "run" / "config.json").read_text())["num_envs"] == 2

    (tmp_path / "eval.yaml").write_text("suite: mpo_gym/Toy-v0\nmodel: [tiny, run]\nlimit: 2\nthreads: 1\n"
                                        "out_dir: ev\nprogress: false\n")
    code, out, err = run(["eval", "--config", "eval.yaml", "--limit", "3"], capsys)  # the flag overrides the file
    assert code == 0, err
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert [r["n_tasks"] for r in results["results"]] == [3, 3]

    (tmp_path / "compare.yaml").write_text("preset: tiny\nagents: ppo\nseeds: [0]\nupdates: 1\neval_tasks: 0\n"
                                           "agent_kwargs: {}\nout_dir: cmp\n")
    code, out, err = run(["compare", "--config", "compare.yaml"], capsys)
    assert code == 0, err
    stored = json.loads((tmp_path / "cmp" / "compare.json").read_text())["config"]
    assert stored["agents"] == ["ppo"] and stored["updates"] == 1 and stored["model"] == "tiny"
    assert (tmp_path / "cmp" / "ppo-s0" / "summary.json").exists()


def test_config_file_mistakes_are_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("suite: gsm8k\nlimt: 3\n")
    code, _, err = run(["eval", "--config", "bad.yaml"], capsys)
    assert code == 2 and "unknown option 'limt'" in err and "did you mean 'limit'" in err and "Traceback" not in err
    (tmp_path / "cmp.yaml").write_text("preset: tinny\n")
    code, _, err = run(["compare", "--config", "cmp.yaml"], capsys)
    assert code == 2 and "preset 'tinny'" in err and "tiny" in err
    (tmp_path / "cmp2.yaml").write_text("preset: tiny\nnum_env: 4\n")
    code, _, err = run(["compare", "--config", "cmp2.yaml"], capsys)
    assert code == 2 and "unknown option 'num_env'" in err


# ---------------------------------------------------------------------- plug-ins before validation
def test_a_user_agent_trains_through_train_and_compare(user_agent, capsys):
    code, out, err = run(["train", "--import", "myagents", "--agent", "halfclip", *TINY_TRAIN, "--num-envs", "2",
                          "--updates", "1", "--eval-tasks", "0", "--minibatch-size", "2", "--micro-batch-size", "2",
                          "--half-marker", "3", "--out-dir", "run"], capsys)
    assert code == 0, err
    record = json.loads((user_agent / "run" / "config.json").read_text())
    assert record["agent"] == "halfclip" and record["resolved_agent_config"]["half_marker"] == 3

    code, out, err = run(["list", "--agents", "--import", "myagents"], capsys)
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["halfclip"] == "HalfClipAgent" and lines["mpo"].startswith("MPO: Multi-token Policy Optimization")
    assert {"ppo", "grpo", "gspo", "gmpo", "rloo", "reinforcepp", "dapo", "cispo", "wgmpo"} <= set(lines)
    code, out, err = run(["compare", "--import", "myagents", "--agents", "ppo,halfclip", "--preset", "tiny",
                          "--updates", "1", "--eval-tasks", "0", "--out-dir", "cmp"], capsys)
    assert code == 0, err
    for name in ("ppo-s0", "halfclip-s0"):
        assert (user_agent / "cmp" / name / "summary.json").exists(), name
    assert "halfclip" in (user_agent / "cmp" / "report.md").read_text()


def test_the_readme_agent_example_trains_through_train_and_compare(tmp_path, capsys, monkeypatch):
    """README "Adding an agent": its module, pasted into a fresh folder, runs its two commands."""
    from mpo_gym import agents

    text = (REPO / "README.md").read_text()
    start = text.index("## Adding an agent\n")
    section = text[start : text.find("\n## ", start + 1)]
    module = next(b for b in re.findall(r"```python\n(.*?)```", section, flags=re.S) if b.startswith("# myagent.py"))
    commands = re.findall(r"^mpo-gym (.*)$", section, flags=re.M)
    assert [c.split()[0] for c in commands] == ["train", "compare"]
    (tmp_path / "myagent.py").write_text(module)
    monkeypatch.chdir(tmp_path)
    before = dict(agents.AGENTS)
    try:
        code, out, err = run([*commands[0].split(), "--dtype", "float32", "--threads", "1", "--eval-tasks", "0",
                              "--out-dir", "run"], capsys)
        assert code == 0, err
        record = json.loads((tmp_path / "run" / "config.json").read_text())
        assert record["agent"] == "myagent" and record["resolved_agent_config"]["sign_scale"] == 0.5
        rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2]
        code, out, err = run([*commands[1].split(), "--updates", "1", "--eval-tasks", "0", "--out-dir", "cmp"], capsys)
        assert code == 0, err
        assert (tmp_path / "cmp" / "myagent-s0" / "summary.json").exists() and "myagent" in (tmp_path / "cmp" / "report.md").read_text()
    finally:
        for name in set(agents.AGENTS) - set(before):
            del agents.AGENTS[name]
        sys.modules.pop("myagent", None)


def test_import_is_repeatable_and_a_missing_module_is_one_line(user_agent, capsys, monkeypatch):
    (user_agent / "myenvs.py").write_text("import gymnasium as gym\n"
                                          "gym.register('mpo_gym/UserToy-v0', entry_point='mpo_gym.envs.toy:ToyEnv')\n")
    monkeypatch.setattr(sys, "argv", ["mpo-gym"])
    code, out, err = run(["list", "--import", "myagents", "--import", "myenvs"], capsys)
    assert code == 0 and "myagents" in sys.modules and "mpo_gym/UserToy-v0" in out, err
    import gymnasium as gym

    del gym.registry["mpo_gym/UserToy-v0"]
    sys.modules.pop("myenvs", None)
    import argparse

    from mpo_gym.cli.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser, [])
    args = parser.parse_args(["--import", "myagents", "--import", "myenvs,json"])
    assert args.imports == "myagents,myenvs,json"  # a second --import adds to the first
    code, _, err = run(["compare", "--import", "nosuchmod_abc", "--preset", "tiny"], capsys)
    assert code == 2 and "no module named 'nosuchmod_abc'" in err and "Traceback" not in err


# ---------------------------------------------------------------------- --model RUN_DIR, --resume
def test_model_run_dir_is_refused_in_one_line_by_train_and_compare(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "done"
    (run_dir / "checkpoint").mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    for argv in (["train", "--model", str(run_dir), "--env", "mpo_gym/Toy-v0"],
                 ["compare", "--preset", "tiny", "--model", str(run_dir), "--out-dir", "cmp"]):
        code, _, err = run(argv, capsys)
        assert code == 2 and "is a training run folder" in err and "mpo-gym export" in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cmp").exists()


def test_resume_takes_the_run_folder_in_train_as_in_compare(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["train", "--agent", "ppo", *TINY_TRAIN, "--num-envs", "2", "--updates", "1",
                        "--eval-tasks", "0", "--minibatch-size", "2", "--micro-batch-size", "2", "--out-dir", "r"],
                       capsys)
    assert code == 0, err
    code, out, err = run(["train", "--resume", "r", "--updates", "2"], capsys)  # stored config, a longer budget
    assert code == 0, err
    assert "2 updates" in out
    code, _, err = run(["train", "--resume", "nothere"], capsys)
    assert code == 2 and "holds no run" in err
    code, _, err = run(["compare", "--resume", "nothere"], capsys)
    assert code == 2 and "holds no comparison" in err


# ---------------------------------------------------------------------- the package's imports
PACKAGES = {"mpo_gym": REPO / "mpo_gym", "mpo_gym.envs": REPO / "envs", "mpo_gym.agents": REPO / "agents",
            "mpo_gym.verifiers": REPO / "verifiers"}


def module_graph() -> dict[str, set[str]]:
    """``module -> modules it imports`` over the package, counting imports inside functions too."""
    files: dict[str, Path] = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if package == "mpo_gym" and parts and parts[0] in ("envs", "agents", "verifiers"):
                continue
            files[".".join([package, *parts])] = path

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        base = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = base
                for _ in range(node.level - 1):
                    module = module.rpartition(".")[0]
                module = (module + ("." + node.module if node.module else "")) if node.level else (node.module or "")
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in files else module for a in node.names]
            for target in targets:
                found = known(target) if target.startswith("mpo_gym") else None
                if found and found != name:
                    graph[name].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_layers_import_downwards_only():
    """The contract and the infrastructure never import the apps or the CLI; the apps never the CLI."""
    graph = module_graph()
    upper = {m for m in graph if m.startswith(("mpo_gym.apps", "mpo_gym.cli"))}
    aliases = {m for m in graph if graph[m] and all(t.startswith("mpo_gym.apps.") for t in graph[m])
               and m.count(".") == 1 and f"mpo_gym.apps.{m.split('.')[1]}" in graph}
    for module, targets in graph.items():
        if module in upper or module in aliases or module == "mpo_gym.__main__":  # the entry point
            continue
        assert not targets & (upper | aliases), (module, sorted(targets & (upper | aliases)))
    for module in (m for m in graph if m.startswith("mpo_gym.apps")):
        assert not {t for t in graph[module] if t.startswith("mpo_gym.cli")}, module


def test_the_package_has_no_import_cycle():
    graph = module_graph()
    assert {"mpo_gym.apps.trainer", "mpo_gym.apps.evaluation", "mpo_gym.cli.train"} <= set(graph)
    assert "mpo_gym.loading" in graph["mpo_gym.apps.evaluation"]
    assert "mpo_gym.records" in graph["mpo_gym.tracking"]  # the graph sees function-level imports
    assert cycles(graph) == []
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]  # the detector finds one


# ---------------------------------------------------------------------- what an agent declares
def test_shards_are_checked_from_what_the_agent_config_declares():
    from mpo_gym.distributed import Dist
    from mpo_gym.errors import ConfigError
    from mpo_gym.trainer import TrainConfig, check_shards

    two = Dist(rank=0, world_size=2, backend="gloo")
    base = dict(env="mpo_gym/Toy-v0", model="tiny", fsdp=True)
    check_shards(TrainConfig(**base, agent="grpo", num_envs=16, agent_kwargs={"group_size": 4}), two)
    with pytest.raises(ConfigError, match="equal shares of whole groups of 4"):
        check_shards(TrainConfig(**base, agent="grpo", num_envs=12, agent_kwargs={"group_size": 4}), two)
    # a reference model is refused under FSDP whether the KL is in the loss or in the reward
    with pytest.raises(ConfigError, match="reference model"):
        check_shards(TrainConfig(**base, agent="ppo", agent_kwargs={"kl_coef": 0.1}), two)
    reinforcepp = TrainConfig(**base, agent="reinforcepp", num_envs=16)
    assert reinforcepp.agent_config().needs_reference_model()
    with pytest.raises(ConfigError, match="reference model"):
        check_shards(reinforcepp, two)
    with pytest.raises(ConfigError, match="start 2 or more with torchrun"):
        check_shards(TrainConfig(**base, agent="ppo"), Dist())


# ---------------------------------------------------------------------- arms and sweeps
def test_a_sweep_runs_as_one_comparison_with_one_report(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["compare", "--preset", "tiny", "--agents", "ppo,mpo", "--sweep", "mpo_k=1,2",
                          "--updates", "1", "--eval-tasks", "0", "--out-dir", "cmp"], capsys)
    assert code == 0, err
    arms = ["ppo", "mpo@mpo_k=1", "mpo@mpo_k=2"]
    for arm in arms:
        record = json.loads((tmp_path / "cmp" / f"{arm}-s0" / "config.json").read_text())
        assert record["agent"] == arm.split("@")[0]
        if "@" in arm:
            assert record["resolved_agent_config"]["mpo_k"] == int(arm[-1])
            assert record["resolved_agent_config"]["warmup_steps"] == 2  # the preset's mpo settings stay
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert all(f"| {arm} |" in report for arm in arms)
    stored = json.loads((tmp_path / "cmp" / "compare.json").read_text())["config"]
    assert stored["sweep"] == {"mpo_k": [1, 2]} and stored["agents"] == ["ppo", "mpo"]


def test_arms_with_their_own_settings_and_their_mistakes(tmp_path, capsys, monkeypatch):
    from mpo_gym.compare import PRESETS, CompareConfig
    from mpo_gym.errors import ConfigError

    cfg = CompareConfig.from_options({**PRESETS["tiny"], "agents": "grpo@group_size=2,grpo@group_size=4",
                                      "agent_kwargs": {"grpo": {"group_size": 8}}, "out_dir": str(tmp_path)})
    assert cfg.arms == ("grpo@group_size=2", "grpo@group_size=4")
    assert [cfg.run_config(a, 0).agent_config().group_size for a in cfg.arms] == [2, 4]
    grid = CompareConfig.from_options({**PRESETS["tiny"], "agents": "mpo,ppo", "out_dir": str(tmp_path), "agent_kwargs": {},
                                       "sweep": {"mpo_k": [1, 2], "lr": [1e-3, 1e-4]}})
    assert len(grid.arms) == 4 + 2 and "mpo@mpo_k=2@lr=0.0001" in grid.arms and "ppo@lr=0.001" in grid.arms
    for options, message in (({"agents": "mpo@nosuch=1"}, "has no option 'nosuch'"),
                             ({"agents": "mpo@mpo_k"}, "name=value"),
                             ({"agents": "ppo", "sweep": {"mpo_k": [1]}}, "no agent of"),
                             ({"agents": "ppo,ppo"}, "name one arm twice"),
                             ({"agents": "ppo", "sweep": {"lr": ["a", "b"]}}, "lr takes a number; got 'a'")):
        with pytest.raises(ConfigError, match=message):
            CompareConfig.from_options({**PRESETS["tiny"], "out_dir": str(tmp_path), "agent_kwargs": {}, **options})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:  # argparse's own error: usage and one line
        main(["compare", "--preset", "tiny", "--sweep", "mpo_k"])
    assert exit_.value.code == 2 and "expected OPTION=V1,V2" in capsys.readouterr().err
