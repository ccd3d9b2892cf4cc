"""pass@k, evaluate() through the suite envs, reports, and the eval command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mpo_gym import evaluation
from mpo_gym.evaluation import (
    SuiteResult,
    comparison_table,
    evaluate,
    pass_at_k,
    results_table,
    write_results,
)
from mpo_gym.tokenizers import CharTokenizer

from .envs.test_suites import mini_data_root


# ---------------------------------------------------------------------------- pass@k
def _closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_hand_made_cases():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 5) == 1.0
    for k in (4, 5):  # k >= n - c + 1: every k-subset holds a correct sample
        assert pass_at_k(5, 2, k) == 1.0
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)


@pytest.mark.parametrize("n", [1, 2, 7, 20])
def test_pass_at_k_matches_binomial_closed_form(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_closed_form(n, c, k), abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    value = pass_at_k(1000, 10, 100)
    assert value == pytest.approx(_closed_form(1000, 10, 100), rel=1e-9)
    assert 0.0 < value < 1.0


@pytest.mark.parametrize("n, c, k", [(5, 6, 1), (5, 2, 0), (5, 2, 6), (0, 0, 1)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


# ---------------------------------------------------------------------------- evaluate (no model)
class GoldPolicy:
    """Stands in for an LMPolicy: the char tokenizer, and answers from ``answer(task)``."""

    def __init__(self, answer):
        self.tokenizer = CharTokenizer()
        self.answer = answer


def fake_rollout(envs, policy, *, task_indices, seed, temperature, top_p, greedy, first_index=0):
    """Plays each env with the policy's answer, block by block, through the env's own step()."""
    from mpo_gym.rollout import Episode

    episodes = []
    rng = np.random.default_rng(seed + first_index)
    for env, index in zip(envs, task_indices):
        _, info = env.reset(options={"task_index": index})
        base = env.unwrapped
        ids = base.tokenizer.encode(policy.answer(base.tasks[index], greedy, rng)) + [base.eos_token_id]
        ep = Episode(task_index=index, task_id=info["task_id"], prompt_ids=[])
        for start in range(0, len(ids), base.block_size):
            block = ids[start : start + base.block_size]
            _, reward, terminated, truncated, info = env.step(np.asarray(block))
            ep.response_ids += block[: info["accepted"]]
            ep.step_rewards.append(float(reward))
            if terminated or truncated:
                break
        ep.reward, ep.verdict, ep.text = sum(ep.step_rewards), info["verdict"], info["text"]
        ep.truncated = truncated
        episodes.append(ep)
    return episodes


@pytest.fixture
def fake_model(monkeypatch, tmp_path):
    import mpo_gym.rollout

    monkeypatch.setattr(mpo_gym.rollout, "rollout", fake_rollout)
    monkeypatch.delenv("MPO_GYM_DATA_DIR", raising=False)
    return mini_data_root(tmp_path)


def test_greedy_gold_answers_score_one(fake_model):
    policy = GoldPolicy(lambda task, greedy, rng: task.solution)
    for suite, n_tasks in (("gsm8k", 3), ("math500", 2), ("humaneval", 2), ("mbpp", 2)):
        result = evaluate(suite, policy, data_path=str(fake_model), progress=False, batch_size=2)
        assert result.pass_at_k == {1: 1.0}, (suite, result.status_counts)
        assert result.n_tasks == n_tasks and result.status_counts["correct"] == n_tasks
        assert [s.task_index for s in result.samples] == list(range(n_tasks))


def test_sampled_pass_at_k_and_status_counts(fake_model):
    # task 0 always right, task 1 right on even samples (2 of 4), task 2 never answers
    counter = {"n": 0}

    def answer(task, greedy, rng):
        counter["n"] += 1
        if task.id.endswith("/0") or (task.id.endswith("/1") and counter["n"] % 2 == 0):
            return task.solution
        return "no idea" if task.id.endswith("/2") else "\\boxed{-1}"

    result = evaluate(
        "gsm8k", GoldPolicy(answer), n_samples=4, ks=(1, 2, 4), temperature=0.7,
        data_path=str(fake_model), progress=False, batch_size=3,
    )  # fmt: skip
    assert result.status_counts == {
        "correct": 6,
        "incorrect": 2,
        "no_answer": 4,
        "timeout": 0,
        "error": 0,
    }
    assert result.pass_at_k[1] == pytest.approx((1 + 0.5 + 0) / 3)
    assert result.pass_at_k[2] == pytest.approx((1 + pass_at_k(4, 2, 2) + 0) / 3)
    assert result.pass_at_k[4] == pytest.approx(2 / 3)
    assert sorted({(s.task_index, s.sample) for s in result.samples}) == [
        (t, j) for t in range(3) for j in range(4)
    ]


def test_limit_and_argument_checks(fake_model):
    policy = GoldPolicy(lambda task, greedy, rng: task.solution)
    result = evaluate(
        "mpo_gym/GSM8K-v0", policy, limit=1, data_path=str(fake_model), progress=False
    )
    assert result.n_tasks == 1 and result.suite == "gsm8k"
    with pytest.raises(ValueError, match="greedy"):
        evaluate("gsm8k", policy, n_samples=2, ks=(1,), data_path=str(fake_model))
    with pytest.raises(ValueError, match="k <= n_samples"):
        evaluate("gsm8k", policy, n_samples=2, ks=(4,), temperature=1.0, data_path=str(fake_model))
    with pytest.raises(ValueError, match="unknown suite"):
        evaluate("gsm9k", policy)


# ---------------------------------------------------------------------------- reports
def _result(model: str, suite: str, p1: float, samples=()) -> SuiteResult:
    return SuiteResult(
        suite=suite, env_id=evaluation.SUITE_IDS[suite], model=model, n_tasks=10, n_samples=1,
        temperature=0.0, pass_at_k={1: p1}, status_counts={"correct": int(10 * p1)},
        wall_time_s=1.5, mean_response_tokens=12.0, truncated_rate=0.0, samples=list(samples),
    )  # fmt: skip


def test_comparison_table_rows_are_models_columns_are_suites():
    rows = {
        "default": {
            "gsm8k": _result("default", "gsm8k", 0.3),
            "humaneval": _result("default", "humaneval", 0.1),
        },
        "mpo": {"gsm8k": _result("mpo", "gsm8k", 0.45)},
    }
    table = comparison_table(rows).splitlines()
    assert table[0] == "| model | gsm8k | humaneval | avg |"
    assert table[2] == "| default | 30.0 | 10.0 | 20.0 |"
    assert table[3] == "| mpo | 45.0 | - | 45.0 |"
    assert "pass@8" not in comparison_table(
        rows, k=8
    ) and "| default | - | - | - |" in comparison_table(rows, k=8)


def test_write_results_files(fake_model, tmp_path):
    policy = GoldPolicy(lambda task, greedy, rng: task.solution)
    result = evaluate(
        "math500", policy, data_path=str(fake_model), progress=False, model_name="gold"
    )
    paths = write_results([result], tmp_path / "out")
    payload = json.loads(paths["json"].read_text())
    assert (
        payload["results"][0]["pass_at_k"] == {"1": 1.0} and "samples" not in payload["results"][0]
    )
    rows = [json.loads(line) for line in paths["samples"].read_text().splitlines()]
    assert len(rows) == 2 and {"reference", "response", "status", "task_id", "prompt"} <= set(
        rows[0]
    )
    assert rows[0]["reference"] == "\\frac{3}{4}"
    markdown = paths["markdown"].read_text()
    assert "| gold | 100.0 | 100.0 |" in markdown and "| gold | math500 | 2 |" in markdown
    assert results_table([result]).count("\n") == 3
    # every result says which published protocol it follows, in the JSON and the report
    assert payload["results"][0]["protocol"].startswith("MATH-500 (Lightman et al., 2023) test")
    assert "## Protocols" in markdown and "- **math500**: MATH-500" in markdown


# ---------------------------------------------------------------------------- command line
def test_eval_command_line_compares_models(fake_model, tmp_path, monkeypatch, capsys):
    from mpo_gym.cli import main

    answers = {"good": lambda t, g, r: t.solution, "bad": lambda t, g, r: "I do not know"}
    monkeypatch.setattr(
        evaluation, "load_policy", lambda spec, dtype="float32", **kw: GoldPolicy(answers[spec])
    )
    monkeypatch.setattr("mpo_gym.errors.check_model_spec", lambda spec, flag="--model": spec)
    out = tmp_path / "eval"
    code = main(
        ["eval", "--suite", "gsm8k,mbpp", "--model", "good", "--model", "bad", "--limit", "2",
         "--data-dir", str(fake_model), "--out", str(out), "--no-progress",
         "--env-kwargs", '{"max_new_tokens": 300}']
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| good | 100.0 | 100.0 | 100.0 |" in printed and "| bad | 0.0 | 0.0 | 0.0 |" in printed
    assert len((out / "samples.jsonl").read_text().splitlines()) == 8
