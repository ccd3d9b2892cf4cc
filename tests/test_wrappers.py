"""Wrappers are honoured: rollouts, vector envs, training and evaluation see what the outermost
wrapper returned (reward wrappers and ``RecordEpisodeStatistics``, per env and per vector env)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import WrapperSpec
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers import RecordEpisodeStatistics, TransformReward
from gymnasium.wrappers import vector as vector_wrappers

import mpo_gym
from mpo_gym.envs.toy import ToyEnv
from mpo_gym.policy import LMPolicy, tiny_model
from mpo_gym.rollout import rollout
from mpo_gym.vector import ReasoningVectorEnv

from .test_rollout import eos_prone_policy


def plus_100(reward):
    return reward + 100.0


def times_10(reward):
    return 10.0 * reward


def shifted_toy(**kwargs):
    """An entry point that wraps: the toy env paying +100 per step."""
    return TransformReward(ToyEnv(**kwargs), plus_100)


gym.register(id="wrapped_test/ShiftedToy-v0", entry_point=shifted_toy, disable_env_checker=True)
gym.register(
    id="wrapped_test/StatsToy-v0", entry_point="mpo_gym.envs.toy:ToyEnv", disable_env_checker=True,
    additional_wrappers=(
        WrapperSpec("TransformReward", "gymnasium.wrappers:TransformReward", {"func": plus_100}),
        WrapperSpec("RecordEpisodeStatistics", "gymnasium.wrappers:RecordEpisodeStatistics", {}),
    ),
)  # fmt: skip


@pytest.fixture(scope="module")
def policy():
    return eos_prone_policy()


def test_reward_wrapper_on_a_single_env(policy):
    (ep,) = rollout(TransformReward(gym.make("mpo_gym/Toy-v0"), plus_100), policy, seed=0)
    assert ep.verdict is not None
    assert ep.step_rewards[-1] == pytest.approx(ep.verdict.reward + 100)
    assert ep.reward == pytest.approx(ep.verdict.reward + 100 * len(ep.block_lengths))


def test_record_episode_statistics_on_a_list_of_envs(policy):
    envs = [RecordEpisodeStatistics(TransformReward(ToyEnv(max_new_tokens=16, block_size=3), times_10))
            for _ in range(4)]
    episodes = rollout(envs, policy, seed=1)
    for env, ep in zip(envs, episodes):
        assert list(env.return_queue) == pytest.approx([ep.reward])
        assert list(env.length_queue) == [len(ep.block_lengths)]
        assert ep.reward == pytest.approx(10 * ep.verdict.reward)


def test_per_env_wrappers_see_batched_verdicts(policy):
    envs = mpo_gym.make_vec("mpo_gym/Toy-v0", 4, wrappers=[lambda e: TransformReward(e, times_10)],
                            max_new_tokens=16, block_size=2)
    verifier = envs.bases[0].verifier
    texts = []
    original = verifier.verify_batch
    verifier.verify_batch = lambda t, r: texts.extend(t) or original(t, r)
    try:
        episodes = rollout(envs, policy, task_indices=[0, 1, 2, 3], seed=0)
    finally:
        verifier.verify_batch = original
    ends = {len(e.block_lengths) for e in episodes}
    assert len(ends) > 1 and envs.verify_calls == len(ends)  # one batch per step with endings
    assert sorted(texts) == sorted(e.text for e in episodes)  # every verdict came from a batch
    for e in episodes:
        assert e.reward == pytest.approx(10 * e.verdict.reward)


def test_vector_wrappers_on_reasoning_vector_env(policy):
    envs = mpo_gym.make_vec("mpo_gym/Toy-v0", 4, max_new_tokens=16, block_size=3)
    envs = vector_wrappers.RecordEpisodeStatistics(vector_wrappers.TransformReward(envs, plus_100))
    episodes = rollout(envs, policy, seed=2)
    assert len({len(e.block_lengths) for e in episodes}) > 1
    # finished sub-envs idle: exactly the 4 episodes played are recorded, with the wrapped reward
    assert sorted(envs.return_queue) == pytest.approx(sorted(e.reward for e in episodes))
    assert sorted(envs.length_queue) == sorted(len(e.block_lengths) for e in episodes)
    for e in episodes:
        assert e.reward == pytest.approx(e.verdict.reward + 100 * len(e.block_lengths))
    again = rollout(envs, policy, seed=2)  # a second call resets and replays
    assert [e.response_ids for e in again] == [e.response_ids for e in episodes]


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_gymnasium_sync_vector_env_with_vector_reward_wrapper(policy, mode):
    envs = gym.make_vec("mpo_gym/Toy-v0", 3, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": mode}, max_new_tokens=16, block_size=3)
    wrapped = vector_wrappers.TransformReward(envs, plus_100)
    episodes = rollout(wrapped, policy, task_indices=[0, 1, 2], seed=3)
    plain = rollout([ToyEnv(max_new_tokens=16, block_size=3) for _ in range(3)], policy,
                    task_indices=[0, 1, 2], seed=3)
    assert [e.response_ids for e in episodes] == [e.response_ids for e in plain]
    for e, p in zip(episodes, plain):
        assert e.verdict == p.verdict
        assert e.reward == pytest.approx(p.reward + 100 * len(p.block_lengths))
    envs.close()


def test_gymnasium_async_vector_env(policy):
    envs = gym.make_vec("mpo_gym/Toy-v0", 2, vectorization_mode="async",
                        wrappers=[lambda e: TransformReward(e, times_10)], max_new_tokens=8)
    try:
        episodes = rollout(envs, policy, task_indices=[1, 2], seed=4)
    finally:
        envs.close()
    assert [e.task_index for e in episodes] == [1, 2]
    for e in episodes:
        assert e.verdict is not None and e.reward == pytest.approx(10 * e.verdict.reward)


def test_vector_env_idles_finished_sub_envs_and_resets_by_mask():
    envs = ReasoningVectorEnv([lambda: ToyEnv(max_new_tokens=4, block_size=4)] * 2)
    obs, _ = envs.reset(seed=0)
    eos = np.asarray([2])
    _, rewards, term, trunc, info = envs.step((eos, np.asarray([10, 11])))
    assert term.tolist() == [True, False] and info["_verdict"].tolist() == [True, False]
    obs2, rewards, term, trunc, info = envs.step((np.asarray([12]), np.asarray([13])))
    assert rewards[0] == 0 and not term[0] and not trunc[0] and not info["_accepted"][0]  # idle
    assert obs2["response_length"].tolist() == [1, 3]
    envs.reset(options={"reset_mask": np.asarray([True, False])})
    assert envs.running.tolist() == [True, True]


def test_training_on_env_registered_with_wrappers(tmp_path):
    from mpo_gym.trainer import TrainConfig, train

    for env_id in ("wrapped_test/ShiftedToy-v0", "wrapped_test/StatsToy-v0"):
        cfg = TrainConfig(
            env=env_id, model="tiny", agent="grpo", dtype="float32", num_envs=4, updates=1,
            eval_tasks=2, eval_batch=2, out_dir=str(tmp_path / env_id.split("/")[1]), threads=1,
            agent_kwargs={"group_size": 2, "lr": 1e-3, "minibatch_size": 4, "micro_batch_size": 4},
        )
        result = train(cfg, progress=False)
        assert result.history[0]["charts/reward"] >= 100  # the agent trained on wrapped rewards
        assert result.eval_after["reward"] >= 100  # held-out evaluation reports them too
        rows = [json.loads(line) for line in (result.out_dir / "eval_tasks.jsonl").read_text().splitlines()]
        assert all(r["reward"] >= 100 for r in rows) and {r["when"] for r in rows} == {"before", "after"}


def test_evaluation_reports_wrapped_rewards():
    from mpo_gym.evaluation import evaluate

    model, tok = tiny_model(seed=0)
    result = evaluate("wrapped_test/StatsToy-v0", LMPolicy(model, tok), limit=3, batch_size=2,
                      progress=False)
    assert len(result.samples) == 3
    for s in result.samples:
        assert s.reward >= 100 and s.status in ("correct", "incorrect", "no_answer")
