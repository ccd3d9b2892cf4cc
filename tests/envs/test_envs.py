"""Every registered env passes check_env and check_reasoning_env; env semantics."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import mpo_gym
from mpo_gym import ReasoningEnv, Task
from mpo_gym.envs import BUILTIN
from mpo_gym.testing import check_reasoning_env


def make_test_env(env_id: str, **kwargs):
    """Registered env with the char tokenizer (no model needed); suites use the shipped data."""
    kwargs = {"tokenizer": "char", "max_prompt_tokens": 8192, **kwargs}
    return gym.make(env_id, **kwargs)


@pytest.mark.parametrize("env_id", sorted(mpo_gym.list_envs()))
def test_registered_env_passes_checkers(env_id):
    env = make_test_env(env_id, max_new_tokens=16, block_size=4)
    check_reasoning_env(env)
    spec = json.loads(env.spec.to_json())
    assert spec["id"] == env_id


@pytest.mark.parametrize("env_id", sorted(BUILTIN))
def test_seeded_rollouts_are_deterministic(env_id):
    def run(seed):
        env = make_test_env(env_id, max_new_tokens=12, block_size=3)
        obs, info = env.reset(seed=seed)
        env.action_space.seed(seed)
        texts, done = [], False
        while not done:
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            texts.append(info["text"])
            done = terminated or truncated
        return info["task_id"], texts, reward, info["verdict"].status

    assert run(3) == run(3)


def test_task_index_and_random_tasks_use_env_rng():
    env = make_test_env("mpo_gym/Arithmetic-v0")
    a = env.reset(options={"task_index": 5})[1]["task_id"]
    np.random.seed(0)
    b = env.reset(seed=1, options={"task_index": 5})[1]["task_id"]
    assert a == b == "arithmetic/train/5"
    seeded = [make_test_env("mpo_gym/Arithmetic-v0").reset(seed=11)[1]["task_index"] for _ in range(2)]
    assert seeded[0] == seeded[1]
    with pytest.raises(IndexError):
        env.reset(options={"task_index": 10**9})


def test_rejects_bad_blocks_with_clear_errors():
    env = make_test_env("mpo_gym/Toy-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="1..4 tokens"):
        env.step(np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match="token ids must be in"):
        env.step(np.array([10_000]))
    with pytest.raises(ValueError, match="integers"):
        env.step(np.array([1.0]))


def test_eos_terminates_and_truncation_at_budget():
    env = make_test_env("mpo_gym/Toy-v0")
    tok = env.unwrapped.tokenizer
    env.reset(seed=0, options={"task_index": 0})
    letter = env.unwrapped.task.reference
    obs, reward, terminated, truncated, info = env.step(np.array(tok.encode(letter * 2) + [tok.eos_token_id, 5]))
    assert terminated and not truncated and info["accepted"] == 3  # tokens after EOS dropped
    assert info["verdict"].status == "correct" and reward == 1.0 and info["text"] == letter * 2

    env.reset(seed=0)
    steps = [env.step(np.array(tok.encode("zzzz"))) for _ in range(2)]
    assert [s[3] for s in steps] == [False, True] and steps[-1][4]["verdict"].status == "incorrect"
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([5]))


def test_stop_string_terminates():
    env = make_test_env("mpo_gym/Arithmetic-v0", stop=["\n\n"], max_new_tokens=64, block_size=8)
    env.reset(seed=0)
    tok = env.unwrapped.tokenizer
    _, _, terminated, _, _ = env.step(np.array(tok.encode("a\n")))
    assert not terminated
    _, _, terminated, _, info = env.step(np.array(tok.encode("\nb")))
    assert terminated and "verdict" in info


def test_prompts_use_the_chat_layout_and_fewshot_example():
    env = make_test_env("mpo_gym/Arithmetic-v0").unwrapped
    messages = env.prompt_messages(0)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert "\\boxed{7}" in messages[1]["content"]
    text = env.tokenizer.decode(env.prompt_ids(0))
    assert text.endswith("assistant: ") and messages[-1]["content"] in text


def test_train_and_test_splits_are_disjoint():
    train = make_test_env("mpo_gym/Arithmetic-v0").unwrapped.tasks
    test = make_test_env("mpo_gym/Arithmetic-v0", split="test").unwrapped.tasks
    test_prompts = {test[i].prompt for i in range(len(test))}
    assert len(test_prompts) > 400
    assert not any(train[i].prompt in test_prompts for i in range(2000))


def test_user_env_registers_in_ten_lines(clean_registry):
    gym.register(
        id="mpo_gym/MyQuiz-v0",
        entry_point="mpo_gym:ReasoningEnv",
        kwargs={"tasks": f"{__name__}:QUIZ", "verifier": "exact", "tokenizer": "char", "max_new_tokens": 8},
    )
    env = gym.make("mpo_gym/MyQuiz-v0")
    check_reasoning_env(env)
    env.reset(options={"task_index": 1})
    _, reward, *_ , info = env.step(np.array(env.unwrapped.tokenizer.encode("9") + [2]))
    assert reward == 1.0 and info["verdict"].status == "correct"
    assert "mpo_gym/MyQuiz-v0" in mpo_gym.list_envs()


QUIZ = [Task("What is 2 + 2?", "4", "q0"), Task("What is 3 * 3?", "9", "q1")]


def test_user_subclass(clean_registry):
    class Echo(ReasoningEnv):
        def __init__(self, **kwargs):
            super().__init__([{"prompt": "echo hi", "reference": "hi"}], tokenizer="char", **kwargs)

    gym.register(id="mpo_gym/Echo-v0", entry_point=Echo)
    check_reasoning_env(gym.make("mpo_gym/Echo-v0", max_new_tokens=4))


def test_block_reward_hook_potential_mode_sums_to_constant():
    def has_digit(text: str) -> float:
        return float(any(c.isdigit() for c in text))

    env = make_test_env("mpo_gym/Toy-v0", block_reward_fn=has_digit, max_new_tokens=8, block_size=2).unwrapped
    tok = env.tokenizer
    env.reset(seed=0, options={"task_index": 0})
    rewards = []
    for chunk in ["ab", "1c", "dd", "ee"]:
        _, reward, terminated, truncated, info = env.step(np.array(tok.encode(chunk)))
        rewards.append(reward)
    assert rewards[1] == 1.0  # the potential rose when a digit appeared
    assert sum(rewards) == pytest.approx(info["verdict"].reward - has_digit(""))


def test_vector_envs_choose_each_sub_env_task():
    envs = mpo_gym.make_vec("mpo_gym/Toy-v0", num_envs=4)
    obs, info = envs.reset(seed=0, options={"task_index": [2, 2, 2, 3]})
    assert list(info["task_index"]) == [2, 2, 2, 3]
    assert obs["prompt_ids"].shape == (4, 64)
    actions = envs.action_space.sample()
    obs, rewards, terminated, truncated, info = envs.step(actions)
    assert rewards.shape == (4,) and obs["response_length"].min() >= 1
    plain = gym.make_vec("mpo_gym/Toy-v0", num_envs=2, vectorization_mode="sync")
    with pytest.raises(ValueError, match="make_vec"):
        plain.reset(options={"task_index": [0, 1]})


def test_import_does_not_load_torch_or_transformers():
    code = "import sys, mpo_gym; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_cli_list_and_check():
    out = subprocess.run([sys.executable, "-m", "mpo_gym", "list"], capture_output=True, text=True, check=True)
    assert "mpo_gym/Arithmetic-v0" in out.stdout and "mpo_gym/Toy-v0" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "mpo_gym", "check", "mpo_gym/Arithmetic-v0", "--tokenizer", "char"],
        capture_output=True, text=True, check=True,
    )
    assert "passed" in out.stdout and "verdict: status=" in out.stdout
