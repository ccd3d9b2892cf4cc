"""Benchmark suite envs: data loading, field mapping, pinned templates, gold self-check."""

from __future__ import annotations

import gzip
import shutil
from collections import Counter
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import mpo_gym  # noqa: F401  (registers the ids)
from mpo_gym.envs import suites
from mpo_gym.envs.suites import (
    DATA_DIR_ENV,
    SUITES,
    StopTruncatingVerifier,
    gsm8k_solution,
    load_rows,
    load_tasks,
)
from mpo_gym.tokenizers import CharTokenizer
from mpo_gym.verifiers import Verdict

from ..conftest import SHARED_DATA

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "suites"
ENV_IDS = {info.env_id: name for name, info in SUITES.items()}

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
    with pytest.raises(FileNotFoundError, match="no gsm8k file"):
        load_rows("gsm8k", "test", tmp_path)


def test_no_local_data_and_no_hub_names_both_options(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError) as err:
        load_rows("humaneval", "test")
    message = str(err.value)
    assert (
        "data_path" in message and DATA_DIR_ENV in message and "openai/openai_humaneval" in message
    )


def test_loaded_suites_are_cached(mini_root):
    assert load_tasks("mbpp", "test", mini_root) is load_tasks("mbpp", "test", mini_root)
    envs = [
        gym.make("mpo_gym/MBPP-v0", tokenizer="char", data_path=str(mini_root)) for _ in range(3)
    ]
    assert envs[0].unwrapped.tasks[0] is envs[2].unwrapped.tasks[0]


def test_bad_split_variant_and_style_are_rejected(mini_root):
    with pytest.raises(ValueError, match="splits"):
        load_tasks("math500", "train", mini_root)
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


@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_gold_episodes_on_fixture_data(env_id, mini_root):
    env = gym.make(
        env_id, tokenizer="char", data_path=str(mini_root), max_new_tokens=2048, block_size=16
    ).unwrapped
    for i in range(len(env.tasks)):
        info = _step_gold(env, i, env.tasks[i].solution)
        assert info["verdict"].status == "correct", (env.tasks[i].id, info["verdict"])
        assert info["reward"] == 1.0


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


@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
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
    suite: str, root: Path, every: int = 1, style: str = "chat"
) -> tuple[int, dict[str, str]]:
    """Verify every ``every``-th task's own solution (and, for math, its boxed reference)."""
    env = gym.make(
        SUITES[suite].env_id, tokenizer="char", data_path=str(root), style=style
    ).unwrapped
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
    "suite", ["gsm8k", "math500", "humaneval", pytest.param("mbpp", marks=pytest.mark.slow)]
)
def test_gold_self_check_full_file(suite, shared):
    """Every reference of the test split verifies through the env's verifier (MBPP ~30 s: slow)."""
    _assert_gold(suite, shared, 1)


def test_gold_self_check_mbpp_sampled(shared):
    _assert_gold("mbpp", shared, 10)


@pytest.mark.slow
def test_gold_self_check_humaneval_completion_style(shared):
    _assert_gold("humaneval", shared, 1, style="completion")


def test_shared_file_row_counts(shared):
    counts = Counter()
    for name, info in SUITES.items():
        for split in info.splits:
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


@pytest.mark.parametrize("env_id", ["mpo_gym/Arithmetic-v0", "mpo_gym/Toy-v0"])
def test_procedural_splits_make_and_report_their_split(env_id):
    from mpo_gym.envs import available_splits

    for split in available_splits(env_id):
        env = gym.make(env_id, tokenizer="char", split=split)
        assert env.unwrapped.tasks.split == split
