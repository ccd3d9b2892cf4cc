"""MBPP+ (EvalPlus) tests in the MBPP reward, and the MBPP+ protocol env."""

from __future__ import annotations

import hashlib
import json
from importlib.resources import files

import gymnasium as gym
import pytest

import mpo_gym  # noqa: F401  (registers the ids)
from mpo_gym.verifiers.sandbox import probe

from ..conftest import SHARED_DATA

needs_sandbox = pytest.mark.skipif(not probe().strong, reason="needs bubblewrap")
DATA = files("mpo_gym.envs").joinpath("data").joinpath("mbppplus")
SHIPPED_SHA256 = "af009818468aa860b9cb8a09c617106cd6af48fb90dad6f4a70b9ef194b46afc"


@pytest.fixture(autouse=True)
def _no_data_dir(monkeypatch):
    monkeypatch.delenv("MPO_GYM_DATA_DIR", raising=False)


def _env(env_id: str = "mpo_gym/MBPP-v0", **kwargs):
    return gym.make(env_id, tokenizer="char", **kwargs).unwrapped


@pytest.fixture(scope="module")
def verifier():
    from mpo_gym.verifiers.code import CodeVerifier

    with CodeVerifier(timeout_s=10.0) as v:
        yield v


def test_shipped_data_is_the_recorded_file_with_its_licence():
    data = DATA.joinpath("mbppplus_tests.jsonl.gz").read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHIPPED_SHA256
    assert len(data) < 1_000_000
    provenance = DATA.joinpath("PROVENANCE.md").read_text()
    assert SHIPPED_SHA256 in provenance and "dadf43da556a00f7bacd71cb154f2932757d9144" in provenance
    upstream = SHARED_DATA / "mbppplus" / "LICENSE"
    if upstream.is_file():
        assert DATA.joinpath("LICENSE").read_bytes() == upstream.read_bytes()
    assert "Apache License" in DATA.joinpath("LICENSE").read_text()


def test_mbppplus_env_has_evalplus_tasks_and_counts():
    env = _env("mpo_gym/MBPPPlus-v0")
    assert len(env.tasks) == 378 and env.split == "test"
    assert env.data_source == "embedded:mbppplus/mbppplus_tests.jsonl.gz"
    task = env.tasks[0]
    assert task.id == "mbppplus/2" and task.reference["test_list"] == []
    assert "shared elements from the given two lists" in task.prompt
    assert "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))\n\nReply" in task.prompt
    counts = [t.reference["plus"].n for t in env.tasks]
    assert sum(counts) == 40450 and max(counts) <= 150
    with pytest.raises(ValueError, match="available splits: test$"):
        _env("mpo_gym/MBPPPlus-v0", split="train")


def test_mbpp_env_adds_plus_tests_only_where_consistent():
    on, off = _env(), _env(plus_tests=False)
    assert on.plus_tests and not off.plus_tests
    assert on.plus_covered == 196 and off.plus_covered == 0
    assert [t.prompt for t in on.tasks] == [t.prompt for t in off.tasks]  # the prompt is unchanged
    by_id = {t.id: t for t in on.tasks}
    assert by_id["mbpp/280"].reference["plus"].task_id == "Mbpp/280"
    # MBPP+ changed find_Max_Num's signature (the MBPP asserts pass a length): not combined
    assert "plus" not in by_id["mbpp/57"].reference
    assert not _env(prompt_tests="all").plus_tests
    with pytest.raises(ValueError, match="plus_tests=True needs prompt_tests='first'"):
        _env(prompt_tests="all", plus_tests=True)
    with pytest.raises(ValueError, match="plus_tests"):
        _env(plus_tests="yes")


def test_protocol_says_which_tests_grade():
    protocols = {
        "plus": _env().protocol,
        "no plus": _env(plus_tests=False).protocol,
        "original": _env(prompt_tests="all").protocol,
        "mbpp+": _env("mpo_gym/MBPPPlus-v0").protocol,
    }
    assert len(set(protocols.values())) == 4
    assert "on the 196 of 500 tasks MBPP+ covers, on MBPP+'s base and plus inputs" in protocols["plus"]
    assert "follows no published protocol" in protocols["plus"]
    assert "not MBPP+" in protocols["no plus"] and "MBPP+'s base" not in protocols["no plus"]
    assert "the original protocol" in protocols["original"]
    assert protocols["mbpp+"].startswith("MBPP+ (EvalPlus v0.2.0") and "378 tasks" in protocols["mbpp+"]
    assert "40450 of the 41,015 inputs" in protocols["mbpp+"] and "not MBPP's asserts" in protocols["mbpp+"]


def test_reference_stays_short_in_sample_files():
    task = next(t for t in _env().tasks if "plus" in t.reference)
    text = json.dumps(task.reference, default=str)
    assert len(text) < 1000 and "MBPP+ Mbpp/" in text


def test_bad_plus_reference_is_a_caller_error():
    from mpo_gym.verifiers.code import validate_reference

    with pytest.raises(ValueError, match="PlusTests"):
        validate_reference({"test_list": [], "plus": [["f", 1]]})


@needs_sandbox
def test_mbpp_code_that_misses_an_edge_input_is_paid_only_without_plus(verifier):
    """MBPP's own solution of task 280 passes its three asserts but answers (False, 0) for an
    empty list, where MBPP+ expects (False, -1)."""
    on, off = _env(), _env(plus_tests=False)
    i = next(i for i, t in enumerate(on.tasks) if t.id == "mbpp/280")
    code = on.tasks[i].solution
    assert verifier.verify(code, off.tasks[i].reference).status == "correct"
    verdict = verifier.verify(code, on.tasks[i].reference)
    assert verdict.status == "incorrect"
    assert "sequential_search([], 10): expected (False, -1), got (False, 0)" in verdict.detail
    fixed = code.replace("return found, pos", "return found, (pos if found else -1)")
    assert fixed != code and verifier.verify(fixed, on.tasks[i].reference).status == "correct"


def _gold(verifier, tasks):
    verdicts = verifier.verify_batch([t.solution for t in tasks], [t.reference for t in tasks])
    return [(t.id, v.status, v.detail[:200]) for t, v in zip(tasks, verdicts) if not v.correct]


@needs_sandbox
def test_reference_solutions_pass_their_plus_tests_sample(verifier):
    """Every 12th task (32 of 378) through the MBPP+ env; all of them: the slow test below."""
    assert _gold(verifier, _env("mpo_gym/MBPPPlus-v0").tasks[::12]) == []


@pytest.mark.slow
@needs_sandbox
def test_reference_solutions_pass_their_plus_tests_all(verifier):
    assert _gold(verifier, _env("mpo_gym/MBPPPlus-v0").tasks) == []


@pytest.mark.slow
@needs_sandbox
def test_reference_solutions_pass_mbpp_with_plus_where_combined(verifier):
    env = _env()
    plus = {t.metadata["task_id"]: t.solution for t in _env("mpo_gym/MBPPPlus-v0").tasks}
    covered = [t for t in env.tasks if "plus" in t.reference]
    verdicts = verifier.verify_batch([plus[t.reference["plus"].task_id] for t in covered],
                                     [t.reference for t in covered])
    assert [t.id for t, v in zip(covered, verdicts) if not v.correct] == []


@needs_sandbox
@pytest.mark.parametrize("split", ["train", "test"])
def test_prompt_lookup_attack_fails_with_plus_tests(verifier, split):
    """The lookup table built from the prompt's assert, on every task MBPP+ covers in the split
    (and on MBPP+'s own tasks for the test split): it can pass only where every graded test
    repeats the shown call, which MBPP+'s inputs never do."""
    from .test_suites import _lookup_attack

    tasks = [t for t in _env(split=split).tasks if "plus" in t.reference]
    if split == "test":
        tasks += list(_env("mpo_gym/MBPPPlus-v0").tasks)
    verdicts = verifier.verify_batch([_lookup_attack(t.prompt)[0] for t in tasks], [t.reference for t in tasks])
    assert sum(v.correct for v in verdicts) <= 0.005 * len(tasks), [t.id for t, v in zip(tasks, verdicts) if v.correct]
