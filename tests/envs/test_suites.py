"""Benchmark suite envs: data loading, field mapping, pinned templates, gold self-check."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from importlib.resources import files
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import mpo_gym  # noqa: F401  (registers the ids)
from mpo_gym.envs import suites
from mpo_gym.envs.suites import (
    DATA_DIR_ENV,
    SUITES,
    DataFileError,
    StopTruncatingVerifier,
    gsm8k_solution,
    load_rows,
    load_tasks,
    resolve_source,
)
from mpo_gym.tokenizers import CharTokenizer
from mpo_gym.verifiers import Verdict
from mpo_gym.verifiers.sandbox import probe

from ..conftest import REPO, SHARED_DATA

# The code suites' envs build the sandboxed code verifier, which refuses to start without
# bubblewrap (as in tests/verifiers/test_sandbox.py).
needs_sandbox = pytest.mark.skipif(not probe().strong, reason="code verifier needs bubblewrap")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "suites"
# MBPP+ (its data is derived, not an upstream file) has its own tests: tests/envs/test_mbppplus.py
ENV_IDS = {info.env_id: name for name, info in SUITES.items() if name != "mbppplus"}

# Rows whose own reference fails through the env's verifier, with the reason. The gold
# self-check asserts that failures are a subset of these. All 500 MBPP test references pass
# under plain Python (solution code, then test_setup_code, then the asserts), so every entry
# is a code-verifier issue (ordering, strictness or time limit), not a dataset defect.
KNOWN_BAD: dict[str, str] = {
    "mbpp/123": "amicable_numbers_sum(9999) can exceed the 5 s limit on a loaded 2-core machine",
    "mbpp/367": "test_setup_code uses the solution's class Node but the verifier runs it first",
    "mbpp/414": "returns 0 where the assert compares == False; the verifier treats 0 != False",
}


def mini_data_root(tmp_path: Path) -> Path:
    """A data root shaped like ``shared/data`` built from the small fixtures (gz for HumanEval)."""
    root = tmp_path / "data"
    shutil.copytree(FIXTURES, root)
    src = root / "humaneval" / "HumanEval.jsonl"
    with src.open("rb") as f, gzip.open(root / "humaneval" / "HumanEval.jsonl.gz", "wb") as g:
        g.write(f.read())
    src.unlink()
    return root


@pytest.fixture
def mini_root(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    return mini_data_root(tmp_path)


@pytest.fixture
def no_data_dir(monkeypatch):
    """No MPO_GYM_DATA_DIR and a hub loader that fails the test if anything calls it."""
    import datasets

    calls = []

    def no_hub(*args, **kwargs):
        calls.append(args[:1])
        raise AssertionError(f"the hub was asked for {args[:1]} although no hub_id was given")

    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    yield
    assert not calls, f"the hub was asked for {calls}"


@pytest.fixture(scope="module")
def shared():
    if not (SHARED_DATA / "gsm8k" / "test.jsonl").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


# ---------------------------------------------------------------------------- loading
def test_data_path_accepts_file_suite_folder_and_root(mini_root):
    by_root = load_tasks("gsm8k", "test", mini_root)
    by_folder = load_tasks("gsm8k", "test", mini_root / "gsm8k")
    by_file = load_tasks("gsm8k", "test", mini_root / "gsm8k" / "test.jsonl")
    assert [t.id for t in by_root] == [t.id for t in by_folder] == [t.id for t in by_file]
    assert len(by_root) == 3


def test_env_var_data_dir(mini_root, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(mini_root))
    assert len(load_tasks("math500")) == 2
    env = gym.make("mpo_gym/MATH500-v0", tokenizer="char")
    assert len(env.unwrapped.tasks) == 2


def test_missing_explicit_data_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no gsm8k test file: looked for .*test.jsonl"):
        load_rows("gsm8k", "test", tmp_path)


def test_unreachable_hub_id_names_the_other_options(monkeypatch, clear_row_cache):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError) as err:
        load_rows("humaneval", "test", hub_id="openai/openai_humaneval")
    message = str(err.value)
    assert "openai/openai_humaneval" in message and "shipped" in message
    assert "data_path" in message and DATA_DIR_ENV in message


@needs_sandbox
def test_loaded_suites_are_cached(mini_root):
    assert load_tasks("mbpp", "test", mini_root) is load_tasks("mbpp", "test", mini_root)
    envs = [
        gym.make("mpo_gym/MBPP-v0", tokenizer="char", data_path=str(mini_root)) for _ in range(3)
    ]
    assert envs[0].unwrapped.tasks[0] is envs[2].unwrapped.tasks[0]


def test_bad_split_variant_and_style_are_rejected(mini_root):
    with pytest.raises(ValueError, match="splits"):
        load_tasks("math500", "train", mini_root)
    with pytest.raises(ValueError, match="has no split 'dev'; available splits: train, test$"):
        gym.make("mpo_gym/GSM8K-v0", tokenizer="char", split="dev")
    with pytest.raises(ValueError, match="MATH500-v0 has no split 'train'; available splits: test$"):
        gym.make("mpo_gym/MATH500-v0", tokenizer="char", split="train")
    with pytest.raises(ValueError, match="variants"):
        load_tasks("mbpp", "test", mini_root, variant="plus")
    with pytest.raises(ValueError, match="style"):
        gym.make("mpo_gym/GSM8K-v0", tokenizer="char", data_path=str(mini_root), style="completion")


def test_mbpp_splits_follow_task_id_ranges(mini_root):
    ids = {s: [t.id for t in load_tasks("mbpp", s, mini_root)] for s in SUITES["mbpp"].splits}
    assert ids == {
        "prompt": ["mbpp/2"],
        "test": ["mbpp/11", "mbpp/12"],
        "validation": ["mbpp/520"],
        "train": ["mbpp/700"],
    }


# ---------------------------------------------------------------------------- field mapping
def test_gsm8k_reference_and_solution(mini_root):
    tasks = load_tasks("gsm8k", "test", mini_root)
    assert [t.reference for t in tasks] == ["12", "1500", "6"]
    assert (
        tasks[1].solution
        == "Together they cost 1200+300=$1,500.\nThe final answer is \\boxed{1500}."
    )
    assert gsm8k_solution("a=<<1+1=2>>2\nb\n#### 2") == "a=2\nb\nThe final answer is \\boxed{2}."


def test_pinned_math_template_and_fewshot(mini_root):
    env = gym.make("mpo_gym/GSM8K-v0", tokenizer="char", data_path=str(mini_root)).unwrapped
    messages = env.prompt_messages(0)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[-1]["content"] == (
        "Solve the problem. Put the final answer in \\boxed{}.\n\n"
        "Problem: Ann has 3 bags with 4 apples each. How many apples does she have?"
    )
    assert messages[1]["content"].endswith("The final answer is \\boxed{18}.")
    no_shot = gym.make(
        "mpo_gym/GSM8K-v0", tokenizer="char", data_path=str(mini_root), fewshot=False
    )
    assert len(no_shot.unwrapped.prompt_messages(0)) == 1
    assert "\\boxed{\\frac{5}{6}}" in suites.MATH_EXAMPLE[1]


def test_math500_fields(mini_root):
    task = load_tasks("math500", "test", mini_root)[0]
    assert task.id == "math500/test/prealgebra/1"
    assert task.reference == "\\frac{3}{4}" and "\\boxed{\\frac{3}{4}}" in task.solution
    assert task.metadata["level"] == 1


def test_humaneval_chat_and_completion_styles(mini_root):
    chat = load_tasks("humaneval", "test", mini_root)[0]
    done = load_tasks("humaneval", "test", mini_root, style="completion")[0]
    prompt = (
        'def add(a: int, b: int) -> int:\n    """Return a + b.\n    >>> add(1, 2)\n    3\n    """\n'
    )
    assert chat.prompt == f"{suites.HUMANEVAL_INSTRUCTION}\n\n```python\n{prompt}```"
    assert chat.solution == f"```python\n{prompt}    return a + b\n```"
    assert done.prompt == prompt and done.solution == "    return a + b\n"
    assert chat.reference == {
        "entry_point": "add",
        "test": done.reference["test"],
        "prompt": prompt,
    }


@needs_sandbox
def test_completion_style_bypasses_chat_rendering(mini_root):
    env = gym.make(
        "mpo_gym/HumanEval-v0", tokenizer="char", data_path=str(mini_root), style="completion"
    ).unwrapped
    tok = CharTokenizer()
    assert env.prompt_ids(0).tolist() == tok.encode(env.tasks[0].prompt)
    assert "\ndef " in env.stop and isinstance(env.verifier, StopTruncatingVerifier)


def test_stop_truncating_verifier_cuts_at_first_stop():
    class Echo:
        def verify(self, response, reference):
            return Verdict(0.0, "no_answer", response, "")

        def verify_batch(self, responses, references):
            return [self.verify(r, x) for r, x in zip(responses, references)]

    v = StopTruncatingVerifier(Echo(), ("\ndef ", "\n#"))
    assert v.verify("    return 1\n#x\ndef g", None).extracted == "    return 1"
    assert [x.extracted for x in v.verify_batch(["a", "b\ndef c"], [None, None])] == ["a", "b"]


def test_mbpp_prompt_shows_the_tests(mini_root):
    task = load_tasks("mbpp", "test", mini_root)[0]
    assert task.prompt == (
        "You are an expert Python programmer, and here is your task: Write a function to square a "
        "number. Your code should pass these tests:\n\nassert square(2) == 4\nassert square(3) == 9\n"
        "assert square(0) == 0\n\nReply with the code in one ```python code block."
    )
    assert task.reference == {
        "test_list": ["assert square(2) == 4", "assert square(3) == 9", "assert square(0) == 0"],
        "test_setup_code": "",
    }
    assert task.solution == "```python\ndef square(x):\n    return x * x\n```"


def test_mbpp_env_shows_the_first_assert_and_grades_them_all(mini_root):
    import gymnasium as gym

    env = gym.make("mpo_gym/MBPP-v0", data_path=str(mini_root), tokenizer="char").unwrapped
    task = env.tasks[0]
    assert "assert square(2) == 4\n\nReply" in task.prompt and "square(3)" not in task.prompt
    assert task.reference["test_list"] == ["assert square(2) == 4", "assert square(3) == 9", "assert square(0) == 0"]
    assert task.metadata["prompt_tests"] == "first"
    published = gym.make("mpo_gym/MBPP-v0", data_path=str(mini_root), tokenizer="char", prompt_tests="all").unwrapped
    assert published.tasks[0].prompt == load_tasks("mbpp", "test", mini_root)[0].prompt  # the paper's prompt
    with pytest.raises(ValueError, match="prompt_tests"):
        gym.make("mpo_gym/MBPP-v0", data_path=str(mini_root), tokenizer="char", prompt_tests="some")


_ASSERT = re.compile(r"^assert\s+(.+?)\s*==\s*(.+)$")


def _lookup_attack(prompt: str) -> tuple[str, set[str]]:
    """A response built from the prompt alone: a table of the shown asserts' calls and results."""
    shown = [line.strip() for line in prompt.splitlines() if line.strip().startswith("assert")]
    body, entry = ["_T = {}"], "f"
    for line in shown:
        m = _ASSERT.match(line)
        if m and "(" in m.group(1):
            call, want = m.groups()
            entry = call.split("(")[0].strip()
            body.append(f"_T[repr(({call[call.index('(') + 1 : call.rindex(')')]},))] = {want}")
    code = "\n".join(body) + f"\ndef {entry}(*a):\n    return _T[repr(a)]\n"
    return f"```python\n{code}```", set(shown)


@pytest.mark.parametrize("split", ["train", "test"])
def test_replaying_the_prompt_is_not_rewarded_on_mbpp(split):
    """The prompt-lookup attack on every task of the split (statically: it passes exactly when
    every graded assert is one the prompt shows) and, for a sample, through the sandbox. With
    every assert shown (the paper's prompt) it passes on every task; measured 0 of 374 train
    and 1 of 500 test tasks (three identical asserts) with the default prompt."""
    import gymnasium as gym

    from mpo_gym.verifiers.code import CodeVerifier

    shown_all = gym.make("mpo_gym/MBPP-v0", split=split, tokenizer="char", prompt_tests="all").unwrapped.tasks
    default = gym.make("mpo_gym/MBPP-v0", split=split, tokenizer="char").unwrapped.tasks
    def passes(tasks):
        return [{x.strip() for x in t.reference["test_list"]} <= _lookup_attack(t.prompt)[1] for t in tasks]
    assert all(passes(shown_all))  # the leak, as the published prompt has it
    assert sum(passes(default)) <= 0.005 * len(default), sum(passes(default))
    sample = default[::50]
    verdicts = CodeVerifier().verify_batch([_lookup_attack(t.prompt)[0] for t in sample], [t.reference for t in sample])
    assert sum(v.status == "correct" for v in verdicts) == sum(passes(sample))
    leaked = CodeVerifier().verify_batch([_lookup_attack(t.prompt)[0] for t in shown_all[::50]],
                                         [t.reference for t in shown_all[::50]])
    assert sum(v.status == "correct" for v in leaked) >= 0.8 * len(leaked)  # the attack itself works


# ---------------------------------------------------------------------------- stepping the env
def _step_gold(env, index: int, text: str) -> dict:
    """Step ``text`` (then EOS) through the env in blocks; return the final info."""
    env.reset(seed=0, options={"task_index": index})
    ids = env.tokenizer.encode(text) + [env.eos_token_id]
    for start in range(0, len(ids), env.block_size):
        _, reward, terminated, truncated, info = env.step(
            np.asarray(ids[start : start + env.block_size])
        )
        if terminated or truncated:
            info["reward"] = reward
            return info
    raise AssertionError("episode did not end")


def _code_suite(env_id: str) -> bool:
    return SUITES[ENV_IDS[env_id]].name in ("humaneval", "mbpp")


SUITE_PARAMS = [
    pytest.param(env_id, marks=[needs_sandbox] if _code_suite(env_id) else [])
    for env_id in sorted(ENV_IDS)
]


@pytest.mark.parametrize("env_id", SUITE_PARAMS)
def test_gold_episodes_on_fixture_data(env_id, mini_root):
    env = gym.make(
        env_id, tokenizer="char", data_path=str(mini_root), max_new_tokens=2048, block_size=16
    ).unwrapped
    for i in range(len(env.tasks)):
        info = _step_gold(env, i, env.tasks[i].solution)
        assert info["verdict"].status == "correct", (env.tasks[i].id, info["verdict"])
        assert info["reward"] == 1.0


@needs_sandbox
def test_humaneval_completion_episode_stops_and_verifies(mini_root):
    env = gym.make(
        "mpo_gym/HumanEval-v0",
        tokenizer="char",
        data_path=str(mini_root),
        style="completion",
        block_size=8,
    ).unwrapped
    info = _step_gold(env, 0, "    return a + b\n\ndef unrelated():\n    pass\n")
    assert info["verdict"].status == "correct"


# ---------------------------------------------------------------------------- the real files
def _ascii(text: str) -> bool:
    return all(ord(c) < 128 for c in text)


@pytest.mark.parametrize("env_id", SUITE_PARAMS)
def test_gold_episodes_on_shared_data(env_id, shared):
    """A few real rows (ASCII-only, so the char tokenizer keeps them) stepped through the env."""
    env = gym.make(
        env_id,
        tokenizer="char",
        data_path=str(shared),
        max_new_tokens=4096,
        max_prompt_tokens=16384,
        block_size=64,
    ).unwrapped
    picked = [i for i in range(len(env.tasks)) if _ascii(env.tasks[i].solution)][:3]
    for i in picked:
        info = _step_gold(env, i, env.tasks[i].solution)
        assert info["verdict"].status == "correct", (env.tasks[i].id, info["verdict"])


def gold_failures(
    suite: str, root: Path | None = None, every: int = 1, style: str = "chat"
) -> tuple[int, dict[str, str]]:
    """Verify every ``every``-th task's own solution (and, for math, its boxed reference).

    ``root=None``: the data shipped with the package.
    """
    data: dict = {"data_path": str(root)} if root is not None else {}
    if suite == "mbpp":  # MBPP's own code against MBPP's tests (with MBPP+'s, some miss edge cases)
        data["plus_tests"] = False
    env = gym.make(SUITES[suite].env_id, tokenizer="char", style=style, **data).unwrapped
    tasks = list(env.tasks)[::every]
    responses = [t.solution for t in tasks]
    references = [t.reference for t in tasks]
    if env.verifier.__class__.__name__ == "MathVerifier":
        responses += [f"\\boxed{{{t.reference}}}" for t in tasks]
        references += references
        tasks += tasks
    verdicts = env.verifier.verify_batch(responses, references)
    bad = {
        t.id: f"{v.status}: {v.detail[:200]}"
        for t, v in zip(tasks, verdicts)
        if v.status != "correct"
    }
    return len(tasks), bad


def _assert_gold(suite, root, every, style="chat"):
    checked, bad = gold_failures(suite, root, every, style)
    unexpected = {k: v for k, v in bad.items() if k not in KNOWN_BAD}
    assert checked > 0 and not unexpected, (
        f"{len(unexpected)}/{checked} references fail: {unexpected}"
    )


@pytest.mark.parametrize(
    "suite",
    [
        "gsm8k",
        "math500",
        pytest.param("humaneval", marks=needs_sandbox),
        pytest.param("mbpp", marks=[pytest.mark.slow, needs_sandbox]),
    ],
)
def test_gold_self_check_full_file(suite, no_data_dir):
    """Every shipped test reference verifies through the env's verifier (MBPP ~30 s: slow)."""
    _assert_gold(suite, None, 1)


@needs_sandbox
def test_gold_self_check_mbpp_sampled(no_data_dir):
    _assert_gold("mbpp", None, 10)


@pytest.mark.slow
@needs_sandbox
def test_gold_self_check_humaneval_completion_style(no_data_dir):
    _assert_gold("humaneval", None, 1, style="completion")


def test_shared_file_row_counts(shared):
    counts = Counter()
    for name, info in SUITES.items():
        for split in info.splits:
            if name == "mbppplus":
                continue
            if name == "math500" or split in ("train", "test") or name == "mbpp":
                counts[f"{name}/{split}"] = len(load_rows(name, split, shared))
    assert counts == {
        "gsm8k/train": 7473, "gsm8k/test": 1319, "math500/test": 500, "humaneval/test": 164,
        "mbpp/prompt": 10, "mbpp/test": 500, "mbpp/validation": 90, "mbpp/train": 374,
    }  # fmt: skip
    assert len(load_rows("mbpp", "test", shared, variant="sanitized")) == 257


# ---------------------------------------------------------------------------- available_splits
def test_available_splits_of_builtin_ids():
    from mpo_gym.envs import BUILTIN, available_splits

    assert available_splits("mpo_gym/GSM8K-v0") == ("train", "test")
    assert available_splits("mpo_gym/MBPP-v0") == ("train", "validation", "test", "prompt")
    assert available_splits("mpo_gym/MATH500-v0") == ("test",)
    assert available_splits("mpo_gym/HumanEval-v0") == ("test",)
    for env_id in ("Arithmetic", "LinearEquation", "Toy", "CodeFunctions"):
        assert available_splits(f"mpo_gym/{env_id}-v0") == ("train", "test")
    assert available_splits("mpo_gym/NoSuch-v0") is None
    assert available_splits("CartPole-v1") is None
    assert all(available_splits(env_id) for env_id in BUILTIN)


@pytest.mark.parametrize(
    "env_id", ["mpo_gym/Arithmetic-v0", "mpo_gym/LinearEquation-v0", "mpo_gym/Toy-v0",
               "mpo_gym/CodeFunctions-v0"],
)  # fmt: skip
def test_procedural_splits_make_and_report_their_split(env_id):
    from mpo_gym.envs import available_splits

    for split in available_splits(env_id):
        extra = {"verifier": "exact"} if "Code" in env_id else {}  # no sandbox needed here
        env = gym.make(env_id, tokenizer="char", split=split, **extra).unwrapped
        assert env.split == env.tasks.split == split


# ---------------------------------------------------------------------------- shipped data
SPLIT_SIZES = {
    ("mpo_gym/GSM8K-v0", "train"): 7473,
    ("mpo_gym/GSM8K-v0", "test"): 1319,
    ("mpo_gym/MATH500-v0", "test"): 500,
    ("mpo_gym/HumanEval-v0", "test"): 164,
    ("mpo_gym/MBPP-v0", "train"): 374,
    ("mpo_gym/MBPP-v0", "validation"): 90,
    ("mpo_gym/MBPP-v0", "test"): 500,
    ("mpo_gym/MBPP-v0", "prompt"): 10,
}

# sha256 of the upstream files (from their PROVENANCE notes). The shipped .gz files must
# decompress to exactly these bytes; HumanEval is gzip upstream and is shipped byte for byte.
UPSTREAM_SHA256 = {
    "gsm8k/train.jsonl.gz": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    "gsm8k/test.jsonl.gz": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    "math500/test.jsonl.gz": "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
    "humaneval/HumanEval.jsonl.gz": "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
    "mbpp/mbpp.jsonl.gz": "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f",
    "mbpp/sanitized-mbpp.json.gz": "7fec016546acaee11dbe14f9f0bb670e59f41919f7b522a59fba34871da78551",
}


def _data_dir():
    return files("mpo_gym.envs").joinpath("data")


def test_every_suite_split_matches_available_splits():
    from mpo_gym.envs import available_splits

    assert {(env_id, s) for env_id in ENV_IDS for s in available_splits(env_id)} == set(
        SPLIT_SIZES
    )


@pytest.mark.parametrize("env_id, split", sorted(SPLIT_SIZES))
def test_split_sizes_offline_from_shipped_data(env_id, split, no_data_dir):
    # "exact" keeps the code suites from needing the sandbox: this test is about the data
    env = gym.make(env_id, split=split, tokenizer="char", verifier="exact").unwrapped
    assert len(env.tasks) == SPLIT_SIZES[(env_id, split)]
    assert env.split == split
    assert env.data_source.startswith("embedded:")
    ids = [t.id for t in env.tasks]
    assert len(set(ids)) == len(ids)


def test_train_and_test_tasks_are_distinct(no_data_dir):
    for suite in ("gsm8k", "mbpp"):
        train, test = load_tasks(suite, "train"), load_tasks(suite, "test")
        assert not {t.id for t in train} & {t.id for t in test}
        assert not {t.prompt for t in train} & {t.prompt for t in test}
    assert load_tasks("gsm8k", "train")[0].id == "gsm8k/train/0"
    mbpp_ids = [int(t.id.split("/")[1]) for t in load_tasks("mbpp", "train")]
    assert (min(mbpp_ids), max(mbpp_ids)) == (601, 974)


def test_offline_load_in_a_fresh_process_never_touches_the_hub(tmp_path):
    """No data dir, no ../shared beside the working folder, hub offline: fast, no `datasets`."""
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "import gymnasium as gym, mpo_gym\n"
        "env = gym.make('mpo_gym/GSM8K-v0', split='train', tokenizer='char')\n"
        "n = len(env.unwrapped.tasks)\n"
        "sizes = [len(gym.make(i, tokenizer='char', verifier='exact').unwrapped.tasks)\n"
        "         for i in ('mpo_gym/GSM8K-v0', 'mpo_gym/MATH500-v0', 'mpo_gym/HumanEval-v0',\n"
        "                   'mpo_gym/MBPP-v0')]\n"
        "print(n, sizes, 'datasets' in sys.modules, round(time.perf_counter() - t, 2))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != DATA_DIR_ENV}
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    wall = time.perf_counter() - start
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("7473 [1319, 500, 164, 500] False ")
    # a hub round-trip costs ~25 s of retries offline; the shipped data loads in well under 1 s
    # (the rest is interpreter and import start-up on a shared 2-core machine)
    assert wall < 20, f"offline load took {wall:.1f} s"


@pytest.fixture
def clear_row_cache():
    """Drop cached rows afterwards (a faked hub's rows must not serve later tests)."""
    yield
    suites._load_rows_cached.cache_clear()
    suites._load_tasks_cached.cache_clear()


def test_override_order_data_path_then_env_then_hub_then_shipped(
    tmp_path, monkeypatch, clear_row_cache
):
    import datasets

    calls = []

    def fake_hub(hub_id, config=None, split=None):
        calls.append((hub_id, config, split))

        class Rows:
            def to_list(self):
                return [{"question": "hub q", "answer": "x\n#### 7"}]

        return Rows()

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    explicit, env_root = tmp_path / "explicit", tmp_path / "env"
    for root, n in ((explicit, 2), (env_root, 1)):
        (root / "gsm8k").mkdir(parents=True)
        rows = [{"question": f"{root.name} {i}", "answer": f"#### {i}"} for i in range(n)]
        (root / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv(DATA_DIR_ENV, str(env_root))

    def make(**kw):
        return gym.make("mpo_gym/GSM8K-v0", tokenizer="char", **kw).unwrapped

    both = make(data_path=str(explicit), hub_id="openai/gsm8k")
    assert len(both.tasks) == 2 and both.data_source.startswith("file:")
    assert Path(both.data_source[5:]) == (explicit / "gsm8k" / "test.jsonl").resolve()
    env_over_hub = make(hub_id="openai/gsm8k")
    assert len(env_over_hub.tasks) == 1
    assert env_over_hub.tasks[0].metadata["question"] == "env 0" and not calls
    # MPO_GYM_DATA_DIR without this suite's file falls through: to the hub when asked ...
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "empty"))
    hub = make(hub_id="openai/gsm8k")
    assert hub.data_source == "hub:openai/gsm8k" and len(hub.tasks) == 1
    assert calls == [("openai/gsm8k", "main", "test")]
    # ... else to the shipped data, without asking the hub
    shipped = make()
    assert shipped.data_source == "embedded:gsm8k/test.jsonl.gz" and len(shipped.tasks) == 1319
    assert len(calls) == 1
    monkeypatch.delenv(DATA_DIR_ENV)
    assert resolve_source("gsm8k", "train") == "embedded:gsm8k/train.jsonl.gz"
    assert resolve_source("mbpp", "prompt", variant="sanitized") == (
        "embedded:mbpp/sanitized-mbpp.json.gz"
    )


def test_local_root_may_hold_gzip_copies_of_the_files(tmp_path, monkeypatch):
    """A copy of the shipped data folder works as MPO_GYM_DATA_DIR (names with .gz)."""
    root = tmp_path / "copy"
    (root / "math500").mkdir(parents=True)
    shipped = _data_dir().joinpath("math500").joinpath("test.jsonl.gz").read_bytes()
    (root / "math500" / "test.jsonl.gz").write_bytes(shipped)
    monkeypatch.setenv(DATA_DIR_ENV, str(root))
    assert resolve_source("math500") == f"file:{(root / 'math500' / 'test.jsonl.gz').resolve()}"
    assert len(load_rows("math500")) == 500


GOOD = '{"question": "q", "answer": "a\\n#### 1"}\n'


@pytest.mark.parametrize(
    "content, where, what",
    [
        (GOOD + GOOD + '{"question": "q", "answer": \n', "line 3", "invalid JSON"),
        (GOOD + "\n" + GOOD + "[1, 2]\n", "line 4", "expected a JSON object, got list"),
        (GOOD + '{"question": "q"}\n', "line 2", "missing field 'answer'"),
        (GOOD + '{"question": "q", "answer": "no final line"}\n', "line 2", "'#### N'"),
        ('[\n  {"question": "q", "answer": "#### 1"},\n  {"question": "q"}\n]\n', "line 3",
         "missing field 'answer'"),
        ('[\n  {"question": "q", "answer": "#### 1"},\n  {"question": \n]\n', "line 4",
         "invalid JSON"),
        (GOOD.encode() + b'{"question": "\xff"}\n', "line 2", "not UTF-8"),
        ("", "", "no records"),
    ],
)  # fmt: skip
def test_malformed_file_error_names_file_and_line(tmp_path, content, where, what):
    path = tmp_path / "gsm8k" / "test.jsonl"
    path.parent.mkdir()
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(DataFileError) as err:
        gym.make("mpo_gym/GSM8K-v0", tokenizer="char", data_path=str(tmp_path))
    message = str(err.value)
    assert message.startswith(f"{path.resolve()}, {where}" if where else f"{path.resolve()}:")
    assert what in message and "position" not in message


def test_malformed_gzip_file_is_named(tmp_path):
    path = tmp_path / "HumanEval.jsonl.gz"
    path.write_bytes(gzip.compress(GOOD.encode())[:20])
    with pytest.raises(DataFileError, match=f"{path.name}: not a readable gzip file"):
        load_rows("humaneval", "test", path)
    path.write_bytes(gzip.compress(b'{"task_id": "HumanEval/0"}\n{"oops"\n'))
    with pytest.raises(DataFileError, match=f"{path.name}, line 2: invalid JSON"):
        load_rows("humaneval", "test", path)
    path.write_bytes(gzip.compress(b'{"task_id": "HumanEval/0"}\n'))
    with pytest.raises(DataFileError, match=f"{path.name}, line 1: missing field 'prompt'"):
        load_rows("humaneval", "test", path)


def test_shipped_files_licences_and_provenance():
    data = _data_dir()
    for rel, upstream in UPSTREAM_SHA256.items():
        folder, name = rel.split("/")
        shipped = data.joinpath(folder).joinpath(name).read_bytes()
        same = shipped if folder == "humaneval" else gzip.decompress(shipped)
        assert hashlib.sha256(same).hexdigest() == upstream, rel
        provenance = data.joinpath(folder).joinpath("PROVENANCE.md").read_text()
        assert hashlib.sha256(shipped).hexdigest() in provenance, rel
        assert upstream in provenance and "commit" in provenance, rel
        assert data.joinpath(folder).joinpath("LICENSE").read_text().strip(), rel
    mbpp_licence = data.joinpath("mbpp").joinpath("LICENSE").read_text()
    assert "CC BY 4.0" in mbpp_licence and "Austin" in mbpp_licence


def test_pyproject_package_data_covers_every_shipped_file():
    """What setuptools puts in the wheel: the package-data globs must match every data file."""
    import fnmatch
    import re

    # (tomllib is 3.11+; the one line is read directly)
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    line = re.search(r'^"mpo_gym\.envs"\s*=\s*(\[.*\])\s*$', section, re.M)
    assert line, "no package-data entry for mpo_gym.envs"
    globs = json.loads(line.group(1))
    envs_dir = REPO / "envs"
    shipped = sorted(p.relative_to(envs_dir).as_posix() for p in (envs_dir / "data").rglob("*")
                     if p.is_file())  # fmt: skip
    assert len(shipped) == 17
    unmatched = [f for f in shipped if not any(fnmatch.fnmatch(f, g) and
                 f.count("/") == g.count("/") for g in globs)]  # fmt: skip
    assert not unmatched


@pytest.mark.slow
def test_wheel_contains_the_data_and_stays_small(tmp_path):
    """Build the wheel from a copy of the tree (pip's build isolation fetches setuptools)."""
    import zipfile

    tree = tmp_path / "tree"
    skip = shutil.ignore_patterns(".venv", "build", "*.egg-info", "runs", "__pycache__", ".*")
    shutil.copytree(REPO, tree, ignore=skip)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "w"),
         str(tree)], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "w").glob("mpo_gym-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in UPSTREAM_SHA256:
        folder = rel.split("/")[0]
        assert {f"mpo_gym/envs/data/{rel}", f"mpo_gym/envs/data/{folder}/LICENSE",
                f"mpo_gym/envs/data/{folder}/PROVENANCE.md"} <= names  # fmt: skip
    assert wheel.stat().st_size < 3_000_000, wheel.stat().st_size


def test_shipped_rows_equal_the_shared_files(shared, no_data_dir):
    for name, info in SUITES.items():
        for split in info.splits if name != "mbppplus" else ():
            assert load_rows(name, split) == load_rows(name, split, shared), (name, split)
    assert load_rows("mbpp", "test", variant="sanitized") == load_rows(
        "mbpp", "test", shared, variant="sanitized"
    )


def test_check_data_fails_like_gym_make_without_making_an_env(tmp_path, no_data_dir):
    from mpo_gym.envs import check_data

    assert check_data("mpo_gym/GSM8K-v0", "train") == 7473
    assert check_data("mpo_gym/MBPP-v0", "validation") == 90
    assert check_data("mpo_gym/Toy-v0", "train") is None
    with pytest.raises(ValueError, match="available splits: test$"):
        check_data("mpo_gym/HumanEval-v0", "train")
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(GOOD + "{\n")
    with pytest.raises(DataFileError, match=r"test\.jsonl, line 2: invalid JSON"):
        check_data("mpo_gym/GSM8K-v0", data_path=str(tmp_path))


def test_each_suite_names_the_protocol_it_follows():
    tok = CharTokenizer()
    protocol = {eid: gym.make(eid, tokenizer=tok, **kw).unwrapped.protocol for eid, kw in [
        ("mpo_gym/GSM8K-v0", {}), ("mpo_gym/MATH500-v0", {"fewshot": False}), ("mpo_gym/HumanEval-v0", {}),
        ("mpo_gym/MBPP-v0", {}),
    ]}
    assert "GSM8K (Cobbe et al., 2021) test" in protocol["mpo_gym/GSM8K-v0"] and "one fixed example" in protocol["mpo_gym/GSM8K-v0"]
    assert "zero-shot" in protocol["mpo_gym/MATH500-v0"]
    assert "not HumanEval+" in protocol["mpo_gym/HumanEval-v0"]
    assert "first assert only" in protocol["mpo_gym/MBPP-v0"] and "MBPP+'s base and plus" in protocol["mpo_gym/MBPP-v0"]
    assert "not MBPP+" in gym.make("mpo_gym/MBPP-v0", tokenizer=tok, plus_tests=False).unwrapped.protocol
    assert "original protocol" in gym.make("mpo_gym/MBPP-v0", tokenizer=tok, prompt_tests="all").unwrapped.protocol
