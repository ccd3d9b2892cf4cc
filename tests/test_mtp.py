"""MTP modules: indexing against a direct computation, init, masks, shared head."""

from __future__ import annotations

import pytest
import torch

from mpo_gym.policy import LMPolicy, tiny_model
from mpo_gym.policy.mtp import causal_padding_mask


def trained_like_policy(num: int = 3, share: bool = False) -> LMPolicy:
    model, tok = tiny_model(seed=2)
    pol = LMPolicy(model, tok, num_mtp_modules=num, share_lm_head=share)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move off the identity init so every input path matters
        for p in pol.mtp_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return pol


@torch.no_grad()
def direct_mtp_logprob(pol: LMPolicy, x: list[int], i: int, j: int) -> float:
    """Module j's log-prob of x[i+j+1] at position i, from the unpadded prefix x[:i+j+1]."""
    lm = pol.causal_lm
    ids = torch.tensor([x[: i + 1]])  # [1, i+1]
    pos = torch.arange(i + 1)[None]  # [1, i+1]
    h = lm.get_decoder()(input_ids=ids, position_ids=pos).last_hidden_state  # [1, i+1, d]
    rope = lm.get_decoder().rotary_emb(h, position_ids=pos)
    mask = causal_padding_mask(torch.ones(1, i + 1, dtype=torch.long), h.dtype)
    for k in range(1, j + 1):
        emb = lm.get_input_embeddings()(torch.tensor([x[k: k + i + 1]]))  # tokens x_{s+k}
        h = pol.mtp[k - 1](h, emb, mask, rope)
    head = pol.mtp[j - 1].lm_head or lm.get_output_embeddings()
    logp = torch.log_softmax(head(h[0, -1]).float(), -1)
    return float(logp[x[i + j + 1]])


@pytest.mark.parametrize("share", [False, True])
def test_mtp_logprob_matches_direct_computation(share):
    pol = trained_like_policy(share=share)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, 100, (n,), generator=g).tolist() for n in (4, 6)]
    responses = [torch.randint(4, 100, (n,), generator=g).tolist() for n in (6, 3)]
    P, T = 6, 6
    ids = torch.zeros(2, P + T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        ids[b, P - len(p):P + len(r)] = torch.tensor(p + r)
        mask[b, P - len(p):P + len(r)] = 1
    out = pol.score(ids, mask, P, mtp=True)
    assert out.mtp_logprobs.shape == (2, T, 3)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        x = p + r
        for t in range(T):
            for j in (1, 2, 3):
                valid = t + j < len(r)
                assert bool(out.mtp_mask[b, t, j - 1]) == valid
                if not valid:
                    assert out.mtp_logprobs[b, t, j - 1] == 0
                    continue
                want = direct_mtp_logprob(pol, x, len(p) + t - 1, j)  # predicts resp token t+j
                assert out.mtp_logprobs[b, t, j - 1].item() == pytest.approx(want, abs=1e-5)


def test_init_is_identity_on_hidden_and_zero_on_embedding():
    pol = LMPolicy(*tiny_model(), num_mtp_modules=2)
    d = pol.causal_lm.config.hidden_size
    for m in pol.mtp:
        torch.testing.assert_close(m.proj.weight[:, :d], torch.eye(d))
        assert torch.all(m.proj.weight[:, d:] == 0)
        last = pol.causal_lm.get_decoder().layers[-1]
        for (n, a), (_, b) in zip(m.layer.named_parameters(), last.named_parameters()):
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), n
    head = pol.causal_lm.get_output_embeddings().weight
    assert torch.equal(pol.mtp[0].lm_head.weight, head)


def test_share_lm_head_saves_parameters():
    own = LMPolicy(*tiny_model(), num_mtp_modules=2)
    shared = LMPolicy(*tiny_model(), num_mtp_modules=2, share_lm_head=True)
    vocab_params = own.causal_lm.get_output_embeddings().weight.numel()
    n_own = sum(p.numel() for p in own.mtp_parameters())
    n_shared = sum(p.numel() for p in shared.mtp_parameters())
    assert n_own - n_shared == 2 * vocab_params
    assert all(m.lm_head is None for m in shared.mtp)


def test_warmup_loss_trains_only_mtp():
    pol = trained_like_policy(num=2)
    ids = torch.randint(4, 100, (2, 12))
    loss = pol.mtp_warmup_loss(ids, torch.ones_like(ids), 4)
    loss.backward()
    assert all(p.grad is None for p in pol.backbone_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pol.mtp_parameters())
    assert loss.item() > 0


@pytest.mark.parametrize("detach", [True, False])
def test_score_mtp_equals_score_with_a_frozen_backbone(detach):
    pol = trained_like_policy(num=2)
    pol.mtp_detach_backbone = detach
    ids = torch.randint(4, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # a left-padded row
    full = pol.score(ids, mask, 5, mtp=True)
    lp, valid = pol.score_mtp(ids, mask, 5)
    torch.testing.assert_close(lp, full.mtp_logprobs)
    assert torch.equal(valid, full.mtp_mask)
    (lp * valid).sum().backward()
    assert all(p.grad is None for p in pol.backbone_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pol.mtp_parameters())
