"""Rollouts: recorded log-probs, greedy == generate, seeding, chunking, batched verification."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mpo_gym
from mpo_gym.envs.toy import ToyEnv
from mpo_gym.policy import LMPolicy, tiny_model
from mpo_gym.rollout import rollout


def eos_prone_policy(seed: int = 0, eos_scale: float = 1.5) -> LMPolicy:
    """A tiny policy whose EOS row copies (and scales) the greedy favourite token's row.

    Wherever that token would win with a positive logit, EOS wins instead, so rows end at
    different steps.
    """
    model, tok = tiny_model(seed=seed)
    with torch.no_grad():
        ids = torch.tensor([tok.encode("Say a")])
        fav = model.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1]:]
        favourite = int(torch.mode(fav).values)
        w = model.lm_head.weight
        w[tok.eos_token_id] = eos_scale * w[favourite]
    return LMPolicy(model, tok)


def score_episodes(policy, episodes, temperature=1.0):
    P = max(len(e.prompt_ids) for e in episodes)
    T = max(len(e.response_ids) for e in episodes)
    ids = torch.zeros(len(episodes), P + T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(episodes):
        n, m = len(e.prompt_ids), len(e.response_ids)
        ids[i, P - n:P], ids[i, P:P + m] = torch.tensor(e.prompt_ids), torch.tensor(e.response_ids)
        mask[i, P - n:P + m] = 1
    with torch.no_grad():
        return policy.score(ids, mask, P, temperature=temperature)


def toy_envs(n, k, max_new_tokens=24):
    return [ToyEnv(block_size=k, max_new_tokens=max_new_tokens) for _ in range(n)]


@pytest.mark.parametrize("k", [1, 3, 8])
def test_sampling_logprobs_equal_teacher_forced_logprobs(k):
    policy = eos_prone_policy(eos_scale=1.1)
    episodes = rollout(toy_envs(5, k), policy, seed=k)
    out = score_episodes(policy, episodes)
    for i, e in enumerate(episodes):
        got = out.logprobs[i, :len(e.response_ids)]
        torch.testing.assert_close(got, torch.tensor(e.logprobs), atol=1e-5, rtol=1e-5)
        assert sum(e.block_lengths) == len(e.response_ids) == len(e.logprobs)
        assert all(b == k for b in e.block_lengths[:-1])


def test_logprobs_are_tempered():
    policy = eos_prone_policy()
    episodes = rollout(toy_envs(3, 4), policy, seed=0, temperature=0.7)
    out = score_episodes(policy, episodes, temperature=0.7)
    for i, e in enumerate(episodes):
        torch.testing.assert_close(out.logprobs[i, :len(e.logprobs)], torch.tensor(e.logprobs),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_greedy_block_rollout_equals_generate(k):
    policy = eos_prone_policy()
    envs = toy_envs(4, k, max_new_tokens=20)
    episodes = rollout(envs, policy, task_indices=[0, 1, 2, 3], greedy=True)
    lengths = {len(e.response_ids) for e in episodes}
    assert len(lengths) > 1, "rows should end at different steps for this test to bite"
    P = max(len(e.prompt_ids) for e in episodes)
    ids = torch.zeros(len(episodes), P, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(episodes):
        ids[i, P - len(e.prompt_ids):] = torch.tensor(e.prompt_ids)
        mask[i, P - len(e.prompt_ids):] = 1
    gen = policy.model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                                eos_token_id=2, pad_token_id=0)[:, P:]
    for i, e in enumerate(episodes):
        row = gen[i].tolist()
        want = row[: row.index(2) + 1] if 2 in row else row
        assert e.response_ids == want
        assert e.terminated == (2 in row) and e.truncated == (2 not in row)


def test_top_p_near_zero_is_greedy():
    policy = eos_prone_policy()
    greedy = rollout(toy_envs(3, 4), policy, task_indices=[0, 1, 2], greedy=True)
    tiny_p = rollout(toy_envs(3, 4), policy, task_indices=[0, 1, 2], seed=5, top_p=1e-6)
    assert [e.response_ids for e in greedy] == [e.response_ids for e in tiny_p]


def test_seeded_rollouts_are_deterministic_and_leave_global_rng_alone():
    policy = eos_prone_policy(eos_scale=1.0)
    state = torch.get_rng_state()
    a = rollout(toy_envs(4, 3), policy, seed=11)
    rollout(toy_envs(2, 3), policy)  # unseeded: fresh entropy, global RNG untouched
    assert torch.equal(state, torch.get_rng_state())
    b = rollout(toy_envs(4, 3), policy, seed=11)
    c = rollout(toy_envs(4, 3), policy, seed=12)
    assert [(e.task_index, e.response_ids) for e in a] == [(e.task_index, e.response_ids) for e in b]
    assert [e.response_ids for e in a] != [e.response_ids for e in c]


def test_chunked_rollout_matches_one_batch():
    policy = eos_prone_policy()
    tasks = [0, 1, 2, 3, 0]
    whole = rollout(toy_envs(5, 3), policy, task_indices=tasks, greedy=True)
    chunks = rollout(toy_envs(5, 3), policy, task_indices=tasks, greedy=True, max_batch=2)
    assert [e.response_ids for e in whole] == [e.response_ids for e in chunks]
    assert [e.task_index for e in chunks] == tasks


@pytest.mark.parametrize("k", [1, 4])
def test_sampled_episodes_do_not_depend_on_how_the_batch_is_split(k):
    """Episode i's sampling stream depends on (seed, i) only: halves of a batch played apart
    (as two data-parallel ranks would) sample exactly what the whole batch samples."""
    policy = eos_prone_policy(eos_scale=1.0)
    tasks = [0, 1, 2, 3, 1, 0]
    whole = rollout(toy_envs(6, k), policy, task_indices=tasks, seed=5)
    left = rollout(toy_envs(3, k), policy, task_indices=tasks[:3], seed=5)
    right = rollout(toy_envs(3, k), policy, task_indices=tasks[3:], seed=5, first_index=3)
    chunked = rollout(toy_envs(6, k), policy, task_indices=tasks, seed=5, max_batch=4)
    assert [e.response_ids for e in whole] == [e.response_ids for e in left + right]
    assert [e.response_ids for e in whole] == [e.response_ids for e in chunked]
    assert len({tuple(e.response_ids) for e in whole}) > 1  # not all the same episode
    shifted = rollout(toy_envs(3, k), policy, task_indices=tasks[3:], seed=5)  # streams of rows 0..2
    assert [e.response_ids for e in shifted] != [e.response_ids for e in right]


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.8)])
def test_sampler_draws_from_the_tempered_top_p_distribution(temperature, top_p):
    """Empirical token frequencies of the inverse-CDF draw match softmax(z / T) restricted to the
    top-p set, within 5 standard errors, and the recorded log-prob is log softmax(z / T)."""
    from mpo_gym.policy import BlockSampler

    model, tok = tiny_model(seed=0)
    policy = LMPolicy(model, tok)
    n = 4000
    sampler = BlockSampler(policy, [[5, 6]] * n, seed=3, temperature=temperature, top_p=top_p)
    logits = torch.full((n, tok.vocab_size), -30.0)
    logits[:, :5] = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    tokens, logps = sampler._draw(logits)
    z = logits[0] / temperature
    p = torch.softmax(z, -1)
    order = p.argsort(descending=True)
    keep = torch.zeros_like(p, dtype=torch.bool)
    keep[order[(p[order].cumsum(0) - p[order]) < top_p]] = True
    q = torch.where(keep, p, torch.zeros_like(p))
    q = q / q.sum()
    freq = torch.bincount(tokens, minlength=tok.vocab_size).double() / n
    se = (q.double() * (1 - q.double()) / n).sqrt()
    assert bool((freq[~keep] == 0).all()), "a token outside the top-p set was drawn"
    assert bool(((freq - q.double()).abs() <= 5 * se + 1e-12).all()), (freq[:6], q[:6])
    assert torch.allclose(logps, torch.log_softmax(z, -1)[tokens], atol=1e-5)


def test_verification_is_batched_per_step_and_rewards_filled():
    policy = eos_prone_policy()
    envs = toy_envs(4, 2)
    verifier = envs[0].verifier
    calls = []
    for env in envs:
        env.verifier = verifier
    original = verifier.verify_batch
    verifier.verify_batch = lambda texts, refs: calls.append(len(texts)) or original(texts, refs)
    episodes = rollout(envs, policy, seed=0)
    ends = sorted({len(e.block_lengths) for e in episodes})
    assert len(ends) > 1, "episodes should end at different steps for this test to bite"
    assert sum(calls) == 4 and len(calls) == len(ends)  # one batch per step in which some ended
    for e in episodes:
        assert e.verdict is not None
        assert e.reward == pytest.approx(sum(e.step_rewards))
        assert e.reward == pytest.approx(e.verdict.reward)
        assert e.text == policy.tokenizer.decode(e.response_ids)


def test_rollout_through_vector_env():
    policy = eos_prone_policy()
    envs = mpo_gym.make_vec("mpo_gym/Toy-v0", 3)
    episodes = rollout(envs, policy, seed=0)
    assert len(episodes) == 3 and all(e.verdict is not None for e in episodes)
    envs.close()


def test_act_from_observations_keeps_cache_and_checks_prefix():
    policy = eos_prone_policy()
    envs = toy_envs(3, 4, max_new_tokens=10)
    obs = [env.reset(options={"task_index": i})[0] for i, env in enumerate(envs)]
    done = np.zeros(3, dtype=bool)
    policy.end()
    while not done.all():
        blocks = policy.act(obs, 4, done=done, greedy=True)
        for i, env in enumerate(envs):
            if not done[i]:
                obs[i], _, term, trunc, _ = env.step(blocks[i])
                done[i] = term or trunc
            else:
                assert blocks[i].size == 0
    greedy = rollout(toy_envs(3, 4, max_new_tokens=10), policy, task_indices=[0, 1, 2], greedy=True)
    assert [env.response_ids for env in envs] == [e.response_ids for e in greedy]
    policy.end()
    obs = [env.reset(options={"task_index": 0})[0] for env in envs]
    policy.act(obs, 4)
    obs[0]["response_ids"][:5] = 7
    obs[0]["response_length"] = np.int64(5)
    with pytest.raises(ValueError, match="does not continue"):
        policy.act(obs, 4)
    policy.end()


def test_act_resumes_mid_episode_from_observations():
    policy = eos_prone_policy()
    envs = toy_envs(2, 3, max_new_tokens=12)
    obs = [env.reset(options={"task_index": i})[0] for i, env in enumerate(envs)]
    policy.end()
    blocks = policy.act(obs, 3, greedy=True)
    obs = [env.step(b)[0] for env, b in zip(envs, blocks)]
    policy.end()  # a new batch prefills prompt + response so far
    blocks = policy.act(obs, 3, greedy=True)
    for env, b in zip(envs, blocks):
        env.step(b)
    policy.end()
    greedy = rollout(toy_envs(2, 3, max_new_tokens=12), policy, task_indices=[0, 1], greedy=True)
    assert [env.response_ids for env in envs] == [e.response_ids[:6] for e in greedy]


@pytest.mark.parametrize("engine", ["static", "hf"])
@pytest.mark.parametrize("greedy", [True, False])
def test_shared_prompt_head_is_encoded_once_with_the_same_result(monkeypatch, greedy, engine):
    """Prompts with a common head (system prompt, example turn) prefill the head once and repeat
    its KV cache; logits, tokens and log-probs equal a full left-padded prefill, and the
    recorded log-probs still equal teacher forcing."""
    from mpo_gym.policy import decode, sampling

    policy = eos_prone_policy(eos_scale=1.0)
    head = list(range(5, 25))  # 20 shared tokens
    prompts = [head + [30, 31, 32], head + [40], head + [50, 51], head]  # the last is all head
    calls = []
    if engine == "hf":
        forward = sampling.BlockSampler._forward

        def spy(self, ids, mask, pos, cache):
            calls.append(tuple(ids.shape))
            return forward(self, ids, mask, pos, cache)

        monkeypatch.setattr(sampling.BlockSampler, "_forward", spy)
    else:
        prefill = decode.StaticDecoder.prefill

        def spy_prefill(self, ids, mask, pos, reserve):
            calls.append(tuple(ids.shape))
            return prefill(self, ids, mask, pos, reserve)

        monkeypatch.setattr(decode.StaticDecoder, "prefill", spy_prefill)

    def play(min_shared):
        monkeypatch.setattr(sampling, "MIN_SHARED_HEAD", min_shared)
        calls.clear()
        s = sampling.BlockSampler(policy, prompts, seed=3, greedy=greedy, temperature=1.0, engine=engine)
        logits = s._logits.clone()
        prefill = list(calls)
        tokens, logprobs = [], []
        for _ in range(4):
            t, lp = s.sample(3)
            tokens.append(t)
            logprobs.append(lp)
        return logits, prefill, tokens, logprobs

    shared_logits, shared_calls, shared_tokens, shared_lps = play(8)
    full_logits, full_calls, full_tokens, full_lps = play(10**9)
    assert shared_calls == [(1, 19), (4, 4)]  # the head minus one token (the last row keeps one), then the tails
    assert full_calls == [(4, 23)]
    torch.testing.assert_close(shared_logits, full_logits, atol=1e-5, rtol=1e-5)
    assert shared_tokens == full_tokens
    for a, b in zip(shared_lps, full_lps):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, atol=1e-5)
    # teacher forcing agrees with what the head-shared sampler recorded
    ids = [p + sum((blk[i] for blk in shared_tokens), []) for i, p in enumerate(prompts)]
    for i, seq in enumerate(ids):
        P, r = len(prompts[i]), seq[len(prompts[i]):]
        if not r:
            continue
        with torch.no_grad():
            out = policy.score(torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long), P)
        want = sum((lp[i] for lp in shared_lps), [])
        torch.testing.assert_close(out.logprobs[0, :len(r)], torch.tensor(want, dtype=out.logprobs.dtype),
                                   atol=1e-5, rtol=1e-5)
