"""The reasoning-gym adapter: checkers pass, gold answers score 1, scoring is out of process."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("reasoning_gym")

from mpo_gym.envs.reasoning_gym import _score, extract_answer  # noqa: E402
from mpo_gym.testing import check_reasoning_env  # noqa: E402


def make(**kwargs):
    return gym.make(
        "mpo_gym/ReasoningGym-v0", tokenizer="char", dataset="basic_arithmetic", size=50,
        max_prompt_tokens=4096, max_new_tokens=32, **kwargs,
    )


def test_passes_checkers():
    check_reasoning_env(make())


def test_gold_answer_scores_one_through_the_env():
    env = make()
    env.reset(options={"task_index": 3})
    task = env.unwrapped.task
    tok = env.unwrapped.tokenizer
    ids = tok.encode(f"<answer>{task.metadata['answer']}</answer>") + [tok.eos_token_id]
    info: dict = {}
    for start in range(0, len(ids), 8):
        _, reward, terminated, truncated, info = env.step(np.array(ids[start : start + 8]))
    assert terminated and reward == 1.0 and info["verdict"].status == "correct"


def test_statuses_and_injection(tmp_path):
    env = make().unwrapped
    ref = env.tasks[0].reference
    marker = tmp_path / "pwned"
    verdicts = env.verifier.verify_batch(
        ["no tags here", f"<answer>__import__('os').system('touch {marker}')</answer>", "\\boxed{1}"], [ref] * 3
    )
    assert [v.status for v in verdicts][0] == "no_answer"
    assert verdicts[1].reward == 0.0 and not marker.exists()
    assert extract_answer("a <answer>1</answer> b <answer> 2 </answer>") == "2"


def test_scorer_runs_in_a_worker_process():
    env = make().unwrapped
    result = env.verifier.pool.run(os.getpid, (), timeout_s=30)
    assert result.status == "ok" and result.value != os.getpid()
    spec, index = tuple(env.tasks[0].reference["spec"]), 0
    assert _score(spec, index, env.tasks[0].metadata["answer"]) == 1.0
