"""The static decode loop: same tokens as the transformers forward, the sampling distribution in
fp32 and bf16, weight scoping of every cache, fallbacks, and rollout's default path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpo_gym import timing
from mpo_gym.envs.toy import ToyEnv
from mpo_gym.policy import BlockSampler, LMPolicy, tiny_model
from mpo_gym.policy import decode as decode_mod
from mpo_gym.policy.decode import StaticDecoder, decode_weights, unsupported_reason
from mpo_gym.rollout import rollout

HEAD = list(range(5, 25))  # a shared prompt head of 20 tokens
PROMPTS = [HEAD + [30, 31, 32], HEAD + [40], HEAD + [50, 51], HEAD, [7, 8, 9]]


def policy(dtype: str = "float32", seed: int = 0, **kwargs) -> LMPolicy:
    model, tok = tiny_model(seed=seed, **kwargs)
    pol = LMPolicy(model, tok, compute_dtype=dtype)
    pol.eos_token_id = -1  # rows run their whole budget
    return pol


def play(pol: LMPolicy, engine: str, *, greedy: bool, blocks: int = 6, reserve: int = 4, **kwargs):
    """Prefill logits, then blocks of [3, 2, 3, 1, 3] tokens (row 1 finishes after the third)."""
    with pol.autocast():
        s = BlockSampler(pol, PROMPTS, seed=3, greedy=greedy, engine=engine, reserve=reserve, **kwargs)
        first = s._logits.clone()
        tokens, logps = [], []
        for k in range(blocks):
            t, lp = s.sample([3, 2, 3, 1, 3])
            tokens.append(t)
            logps.append(lp)
            if k == 2:
                s.finish([1])
    return s, first, tokens, logps


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("greedy, temperature, top_p", [(True, 1.0, 1.0), (False, 1.0, 1.0), (False, 0.7, 0.9)])
def test_static_engine_draws_what_the_transformers_forward_draws(dtype, greedy, temperature, top_p):
    """Same prompts (shared head, left padding), same streams: the same tokens, and logits and
    log-probs equal up to reduction order, through cache growth (reserve 4) and a finished row."""
    pol = policy(dtype)
    s_static, static_logits, static_tokens, static_lps = play(pol, "static", greedy=greedy, temperature=temperature,
                                                              top_p=top_p)
    s_hf, hf_logits, hf_tokens, hf_lps = play(pol, "hf", greedy=greedy, temperature=temperature, top_p=top_p)
    assert s_static.engine == "static" and s_hf.engine == "hf"
    assert s_static._decoder is not None and s_static._decoder.capacity > 4 + len(PROMPTS[0])  # it grew
    torch.testing.assert_close(static_logits, hf_logits, atol=1e-5, rtol=1e-5)
    assert static_tokens == hf_tokens
    for a, b in zip(static_lps, hf_lps):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_static_logprobs_equal_teacher_forced_scores(dtype):
    """The sampler's recorded log-probs against LMPolicy.score at the same weights (the
    agents' checks/sample_logprob_gap): ~1e-6 in fp32, bf16 rounding in bf16."""
    pol = policy(dtype)
    s, _, tokens, logps = play(pol, "static", greedy=False, temperature=0.8)
    tol = 1e-5 if dtype == "float32" else 0.05
    for i, prompt in enumerate(PROMPTS):
        resp = s.responses[i]
        seq = torch.tensor([prompt + resp])
        with torch.no_grad():
            out = pol.score(seq, torch.ones_like(seq), len(prompt), temperature=0.8)
        want = torch.tensor([x for lp in logps for x in lp[i]])
        torch.testing.assert_close(out.logprobs[0, :len(resp)], want, atol=tol, rtol=0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("engine", ["static", "hf"])
@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.8)])
def test_sampled_tokens_follow_the_tempered_top_p_softmax_of_the_engine_logits(engine, dtype, temperature, top_p):
    """The whole path (prefill forward in the policy's dtype, then the draw): n rows of one prompt
    draw their first token; the frequencies match softmax(z / T) on the top-p set of the
    engine's own logits z within 5 standard errors, nothing outside the set is drawn, and the
    recorded log-prob is log softmax(z / T)."""
    pol = policy(dtype)
    with torch.no_grad():  # a peaked distribution, so top-p cuts and temperature matters
        pol.model.lm_head.weight.mul_(25.0)
    pol.weights_changed()
    n = 4000
    with pol.autocast():
        s = BlockSampler(pol, [[5, 6, 7]] * n, seed=11, temperature=temperature, top_p=top_p, engine=engine)
        assert s.engine == engine
        logits = s._logits[0].clone()
        blocks, logps = s.sample(1)
    tokens = torch.tensor([b[0] for b in blocks])
    z = logits / temperature
    p = torch.softmax(z.double(), -1)
    order = p.argsort(descending=True)
    keep = torch.zeros_like(p, dtype=torch.bool)
    keep[order[(p[order].cumsum(0) - p[order]) < top_p]] = True
    q = torch.where(keep, p, torch.zeros_like(p))
    q = q / q.sum()
    assert int(keep.sum()) > 1 and float(q.max()) < 0.9, "the test needs a spread-out distribution"
    freq = torch.bincount(tokens, minlength=p.numel()).double() / n
    assert bool((freq[~keep] == 0).all()), "a token outside the top-p set was drawn"
    big = q * n >= 10  # tokens expected at least 10 times each; the others pooled into one bin
    assert int(big.sum()) >= 3
    bins_q = torch.cat([q[big], q[~big].sum()[None]])
    bins_f = torch.cat([freq[big], freq[~big].sum()[None]])
    se = (bins_q * (1 - bins_q) / n).sqrt()
    assert bool(((bins_f - bins_q).abs() <= 5 * se + 1e-12).all()), (bins_f, bins_q)
    want = torch.log_softmax(z, -1)[tokens]
    torch.testing.assert_close(torch.tensor([lp[0] for lp in logps]), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("engine", ["static", "hf"])
@pytest.mark.parametrize("notify", [True, False])
def test_no_stale_cache_after_the_weights_change(engine, notify):
    """After an update (weights_changed(), or for the static engine any in-place edit of a
    parameter) a sampler's next block is drawn from the new weights: its log-probs equal teacher
    forcing under the new weights, the earlier ones those of the old weights."""
    if engine == "hf" and not notify:
        pytest.skip("the transformers path learns of an update through weights_changed() only")
    pol = policy("float32")
    prompts = [[5, 6, 7, 8], [9, 10]]
    s = BlockSampler(pol, prompts, seed=2, temperature=1.0, engine=engine)
    before = s.sample(4)[1]
    old = decode_weights(pol, torch.float32) if engine == "static" else None
    with torch.no_grad():
        for p in pol.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if notify:
        pol.weights_changed()
    after = s.sample(4)[1]
    for i, prompt in enumerate(prompts):
        seq = torch.tensor([prompt + s.responses[i]])
        with torch.no_grad():
            out = pol.score(seq, torch.ones_like(seq), len(prompt))
        torch.testing.assert_close(out.logprobs[0, 4:8], torch.tensor(after[i]), atol=1e-5, rtol=0)
        assert (out.logprobs[0, :4] - torch.tensor(before[i])).abs().max() > 1e-3  # the old weights' draws
    if old is not None:
        assert s._weights is not old and s._weights is decode_weights(pol, torch.float32)


def test_policy_decode_weights_are_shared_refreshed_and_timed():
    pol = policy("bfloat16")
    timing.take()
    a = decode_weights(pol, torch.bfloat16)
    assert decode_weights(pol, torch.bfloat16) is a  # one copy per weights
    assert a.layers[0].wqkv.dtype == torch.bfloat16 and a.nbytes > 0
    assert "weight_refresh_s" in timing.take()
    pol.weights_changed()
    assert pol._decode_weights is None
    b = decode_weights(pol, torch.bfloat16)
    assert b is not a and "weight_refresh_s" in timing.take()
    f32 = policy("float32")
    w = decode_weights(f32, torch.float32)
    lm = f32.causal_lm
    assert w.layers[0].wo.data_ptr() == lm.model.layers[0].self_attn.o_proj.weight.data_ptr()  # no copy needed
    assert w.nbytes == sum(t.numel() * 4 for layer in w.layers for t in (layer.wqkv, layer.wgu))  # fused ones only


def test_unsupported_models_fall_back_to_the_transformers_path():
    pytest.importorskip("peft")
    pol = policy("float32")
    assert unsupported_reason(pol.causal_lm) is None
    pol.apply_lora(r=2, target_modules=["q_proj", "v_proj"])
    assert "nn.Linear" in (unsupported_reason(pol.causal_lm) or "")
    s = BlockSampler(pol, [[5, 6]], seed=0)
    assert s.engine == "hf"
    with pytest.raises(ValueError, match="cannot run this model"):
        BlockSampler(pol, [[5, 6]], seed=0, engine="static")
    with pytest.raises(ValueError, match="engine must be"):
        BlockSampler(pol, [[5, 6]], seed=0, engine="fast")


def toy_envs(n, k, max_new_tokens=24):
    return [ToyEnv(block_size=k, max_new_tokens=max_new_tokens) for _ in range(n)]


def test_rollout_takes_the_static_path_by_default(monkeypatch):
    model, tok = tiny_model(seed=1)
    pol = LMPolicy(model, tok)
    steps = []
    step = StaticDecoder.step
    monkeypatch.setattr(StaticDecoder, "step", lambda self, *a: steps.append(1) or step(self, *a))
    fast = rollout(toy_envs(4, 3), pol, task_indices=[0, 1, 2, 3], seed=4, temperature=0.8)
    assert steps, "rollout did not use the static decode loop"
    steps.clear()
    slow = rollout(toy_envs(4, 3), pol, task_indices=[0, 1, 2, 3], seed=4, temperature=0.8, engine="hf")
    assert not steps
    assert [e.response_ids for e in fast] == [e.response_ids for e in slow]
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_cache_capacity_grows_and_rows_are_selected():
    pol = policy("float32")
    w = decode_weights(pol, torch.float32)
    dec = StaticDecoder(w, torch.device("cpu"))
    ids = torch.tensor([[5, 6, 7], [0, 8, 9]])
    mask = torch.tensor([[True, True, True], [False, True, True]])
    pos = torch.tensor([[0, 1, 2], [0, 0, 1]])
    dec.prefill(ids, mask, pos, reserve=1)
    assert dec.capacity == 4 and dec.length == 3
    kv = dec.kv[:, :, :, :, :3].clone()
    for _ in range(3):
        dec.step(torch.tensor([10, 11]), torch.tensor([True, False]))
    assert dec.length == 6 and dec.capacity >= 8
    assert torch.equal(dec.kv[:, :, :, :, :3], kv)  # the old columns survived the growth
    assert dec.pos.tolist() == [6, 2] and dec.mask[1, 3:6].tolist() == [False] * 3
    dec.select(torch.tensor([1]))
    assert dec.kv.shape[2] == 1 and dec.pos.tolist() == [2]
    assert torch.equal(dec.kv[:, :, 0, :, :3], kv[:, :, 1])


def test_decode_module_supports_its_model_types():
    assert set(decode_mod.SUPPORTED_MODEL_TYPES) >= {"llama"}
