"""Golden numerics for ``mpo_gym.agents.functional``: every expected number is worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from mpo_gym.agents import functional as F


def close(actual, expected, atol=1e-5):
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.detach().double(), expected, atol=atol, rtol=0)


# --------------------------------------------------------------------------------------------
# masked statistics

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_masked_sum_and_mean_ignore_masked_entries():
    close(F.masked_sum(X, MASK), 7.0)  # 1 + 2 + 4
    close(F.masked_mean(X, MASK), 7.0 / 3.0)
    close(F.masked_sum(X, MASK, dim=1), [3.0, 4.0])
    close(F.masked_mean(X, MASK, dim=1), [1.5, 4.0])
    close(F.masked_mean(X, MASK.bool(), dim=0), [2.5, 2.0, 0.0])  # an all-masked column gives 0


def test_masked_entries_may_hold_nan_and_inf():
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), -float("inf")]])
    close(F.masked_sum(x, MASK), 7.0)
    close(F.masked_var(x, MASK), 7.0 / 3.0)


def test_masked_mean_of_nothing_is_zero():
    close(F.masked_mean(X, torch.zeros_like(MASK)), 0.0)
    close(F.masked_var(X, torch.zeros_like(MASK)), 0.0)


def test_masked_var_by_hand():
    # valid values 1, 2, 4: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 14/3
    close(F.masked_var(X, MASK), 7.0 / 3.0)  # / (n - 1) = 2
    close(F.masked_var(X, MASK, unbiased=False), 14.0 / 9.0)  # / n = 3
    close(F.masked_var(torch.tensor([5.0, 9.0]), torch.tensor([1, 0])), 0.0)  # one value


def test_masked_whiten_by_hand():
    x = torch.tensor([[1.0, 2.0, 4.0, 100.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    # mean 7/3, unbiased std sqrt(7/3) = 1.5275252
    close(F.masked_whiten(x, m), [[-0.8728716, -0.2182179, 1.0910895, 0.0]])
    close(F.masked_whiten(x, m, shift_mean=False), [[1.4604617, 2.1151154, 3.4244228, 0.0]])


def test_bfloat16_inputs_are_computed_in_float32():
    out = F.masked_mean(X.bfloat16(), MASK)
    assert out.dtype == torch.float32
    close(out, 7.0 / 3.0)


# --------------------------------------------------------------------------------------------
# GAE

REW = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
VAL = torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.4, 99.0]])
GMASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_gae_terminated_1x3_by_hand():
    # gamma 0.9, lam 0.8, gamma * lam = 0.72
    # t=2: delta = 1 - 0.7 = 0.3                      A = 0.3
    # t=1: delta = 0.9 * 0.7 - 0.6 = 0.03             A = 0.03 + 0.72 * 0.3 = 0.246
    # t=0: delta = 0.9 * 0.6 - 0.5 = 0.04             A = 0.04 + 0.72 * 0.246 = 0.21712
    adv, ret = F.gae(REW[:1], VAL[:1], GMASK[:1], gamma=0.9, lam=0.8)
    close(adv, [[0.21712, 0.246, 0.3]])
    close(ret, [[0.71712, 0.846, 1.0]])


def test_gae_truncated_bootstraps_from_last_value():
    # V_next after the last token = 2.0: t=2: delta = 1 + 0.9 * 2 - 0.7 = 2.1
    # t=1: 0.03 + 0.72 * 2.1 = 1.542;  t=0: 0.04 + 0.72 * 1.542 = 1.15024
    adv, ret = F.gae(
        REW[:1],
        VAL[:1],
        GMASK[:1],
        0.9,
        0.8,
        last_values=torch.tensor([2.0]),
        truncated=torch.tensor([True]),
    )
    close(adv, [[1.15024, 1.542, 2.1]])
    close(ret, [[1.65024, 2.142, 2.8]])


def test_gae_right_padded_rows_of_different_lengths():
    # row 2 has length 2; its padding (reward 5, value 99) must be ignored.
    # t=1: delta = 1 - 0.4 = 0.6;  t=0: delta = 0.9 * 0.4 - 0.2 = 0.16, A = 0.16 + 0.72 * 0.6 = 0.592
    adv, ret = F.gae(REW, VAL, GMASK, 0.9, 0.8)
    close(adv, [[0.21712, 0.246, 0.3], [0.592, 0.6, 0.0]])
    close(ret, [[0.71712, 0.846, 1.0], [0.792, 1.0, 0.0]])
    # row 1 terminated (its last_value 123 unused), row 2 truncated with V_next = 1.0:
    # t=1: delta = 1 + 0.9 - 0.4 = 1.5;  t=0: 0.16 + 0.72 * 1.5 = 1.24
    adv, ret = F.gae(
        REW,
        VAL,
        GMASK,
        0.9,
        0.8,
        last_values=torch.tensor([123.0, 1.0]),
        truncated=torch.tensor([False, True]),
    )
    close(adv, [[0.21712, 0.246, 0.3], [1.24, 1.5, 0.0]])
    close(ret, [[0.71712, 0.846, 1.0], [1.44, 1.9, 0.0]])


def test_gae_gamma_lam_one_is_reward_minus_value():
    adv, _ = F.gae(
        torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.1, 0.2, 0.3]]), torch.ones(1, 3), 1.0, 1.0
    )
    close(adv, [[0.9, 0.8, 0.7]])


def test_gae_per_block_rewards_and_holes():
    # block rewards 0.5 at t=0 and 1 at t=2, values 0, gamma = lam = 1: A = reward-to-go
    adv, ret = F.gae(torch.tensor([[0.5, 0.0, 1.0]]), torch.zeros(1, 3), torch.ones(1, 3), 1.0, 1.0)
    close(adv, [[1.5, 1.0, 1.0]])
    # a masked hole at t=1 is skipped: t=2: 1 - 0.3 = 0.7; t=0: 0.5 * 0.3 - 0.1 + 0.5 * 0.5 * 0.7 = 0.225
    adv, _ = F.gae(
        torch.tensor([[0.0, 7.0, 1.0]]),
        torch.tensor([[0.1, 9.0, 0.3]]),
        torch.tensor([[1, 0, 1]]),
        0.5,
        0.5,
    )
    close(adv, [[0.225, 0.0, 0.7]])


def test_gae_outputs_are_detached_and_float32_for_bf16():
    v = VAL.clone().bfloat16().requires_grad_()
    adv, ret = F.gae(REW.bfloat16(), v, GMASK, 0.9, 0.8)
    assert adv.dtype == ret.dtype == torch.float32
    assert not adv.requires_grad and not ret.requires_grad


def test_gae_errors():
    with pytest.raises(ValueError, match="together"):
        F.gae(REW, VAL, GMASK, 0.9, 0.8, last_values=torch.zeros(2))
    with pytest.raises(ValueError, match="gamma"):
        F.gae(REW, VAL, GMASK, 1.5, 0.8)
    with pytest.raises(ValueError, match="shape"):
        F.gae(REW, VAL[:, :2], GMASK, 0.9, 0.8)


# --------------------------------------------------------------------------------------------
# group advantages


def test_group_advantages_grpo_by_hand():
    # group 0: [1, 0, 0, 1], mean 0.5, unbiased std sqrt(1/3) = 0.5773503 -> +-0.5 / 0.5773513
    # group 1: all equal -> zeros
    adv = F.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]), 4)
    close(adv, [0.8660239, -0.8660239, -0.8660239, 0.8660239, 0.0, 0.0, 0.0, 0.0])


def test_group_advantages_dr_grpo_and_rloo():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    close(F.group_advantages(r, 4, normalize_std=False), [0.5, -0.5, -0.5, 0.5])
    # leave-one-out: 1 - (0 + 0 + 1) / 3 = 2/3; 0 - (1 + 0 + 1) / 3 = -2/3
    close(
        F.group_advantages(r, 4, normalize_std=False, baseline="loo"),
        [2 / 3, -2 / 3, -2 / 3, 2 / 3],
    )


def test_group_advantages_with_unordered_ids():
    r = torch.tensor([2.0, 5.0, 4.0, 1.0])
    ids = torch.tensor([7, 3, 7, 3])  # group 7 = {2, 4} (mean 3), group 3 = {5, 1} (mean 3)
    close(F.group_advantages(r, ids, normalize_std=False), [-1.0, 2.0, 1.0, -2.0])
    # unbiased stds sqrt(2) and sqrt(8)
    close(F.group_advantages(r, ids), [-0.7071065, 0.7071067, 0.7071065, -0.7071067])
    close(F.group_advantages(r, ids, normalize_std=False, baseline="loo"), [-2.0, 4.0, 2.0, -4.0])


def test_group_advantages_singletons_get_zero():
    r = torch.tensor([3.0, 1.0, 2.0])
    close(F.group_advantages(r, 1), [0.0, 0.0, 0.0])
    close(
        F.group_advantages(r, torch.tensor([0, 1, 1]), baseline="loo", normalize_std=False),
        [0.0, -1.0, 1.0],
    )


def test_group_advantages_errors():
    r = torch.zeros(6)
    with pytest.raises(ValueError, match="divide"):
        F.group_advantages(r, 4)
    with pytest.raises(ValueError, match="divide"):
        F.group_advantages(r, 0)
    with pytest.raises(ValueError, match="shape"):
        F.group_advantages(r, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="groups must"):
        F.group_advantages(r, 3.0)
    with pytest.raises(ValueError, match="baseline"):
        F.group_advantages(r, 3, baseline="median")


# --------------------------------------------------------------------------------------------
# clipped policy loss

ONES = torch.ones(1, 4)


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    adv = torch.tensor([[1.0, -2.0, 3.0]])
    loss, m = F.clipped_policy_loss(torch.zeros(1, 3), adv, torch.ones(1, 3))
    close(loss, -2.0 / 3.0)
    close(m["clipfrac"], 0.0)
    close(m["approx_kl"], 0.0)
    close(m["ratio_mean"], 1.0)
    close(m["ratio_var"], 0.0)


def test_policy_loss_clipping_cases_and_gradient():
    # ratio / advantage:  1.5/+1 clipped to 1.2 | 1.5/-1 kept -1.5 | 0.5/+1 kept 0.5 | 0.5/-1 clipped to -0.8
    log_ratio = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]])).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, m = F.clipped_policy_loss(log_ratio, adv, ONES, clip_low=0.2, clip_high=0.2)
    close(loss, (-1.2 + 1.5 - 0.5 + 0.8) / 4)  # 0.15
    close(m["clipfrac"], 0.5)
    # k3: (1.5 - 1) - log 1.5 = 0.0945349; (0.5 - 1) - log 0.5 = 0.1931472
    close(m["approx_kl"], 0.1438410)
    close(m["ratio_mean"], 1.0)
    close(m["ratio_var"], 1.0 / 3.0)  # deviations +-0.5, / (4 - 1)
    loss.backward()
    # d loss / d log r = -A r / N where unclipped, 0 where clipped
    close(log_ratio.grad, [[0.0, 0.375, -0.125, 0.0]])


def test_policy_loss_asymmetric_clip_higher():
    log_ratio = torch.log(torch.tensor([[1.25]]))
    adv = torch.ones(1, 1)
    sym, _ = F.clipped_policy_loss(log_ratio, adv, torch.ones(1, 1), 0.2, 0.2)
    dapo, m = F.clipped_policy_loss(log_ratio, adv, torch.ones(1, 1), 0.2, 0.28)
    close(sym, -1.2)
    close(dapo, -1.25)
    close(m["clipfrac"], 0.0)


def test_policy_loss_gradient_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    log_ratio = (0.4 * torch.randn(4, 9, generator=g)).requires_grad_()
    adv = torch.randn(4, 9, generator=g)
    mask = torch.rand(4, 9, generator=g) > 0.3
    loss, _ = F.clipped_policy_loss(log_ratio, adv, mask, clip_low=0.2, clip_high=0.28)
    loss.backward()
    r = log_ratio.detach().exp()
    clipped = ((adv > 0) & (r > 1.28)) | ((adv < 0) & (r < 0.8))
    expected = torch.where(mask & ~clipped, -adv * r, torch.zeros_like(r)) / mask.sum()
    torch.testing.assert_close(log_ratio.grad, expected)
    direct = -torch.minimum(r * adv, r.clamp(0.8, 1.28) * adv)[mask].mean()
    torch.testing.assert_close(loss.detach(), direct)


def test_policy_loss_aggregations():
    # per-token losses at ratio 1 are -A; rows [1, 2, 3] and [4, pad, pad]
    adv = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    lr = torch.zeros(2, 3)
    close(F.clipped_policy_loss(lr, adv, mask)[0], -10.0 / 4)
    close(
        F.clipped_policy_loss(lr, adv, mask, aggregation="seq-mean-token-mean")[0], (-2.0 - 4.0) / 2
    )
    # Dr.GRPO: (-6 / 4 + -4 / 4) / 2 rows
    drgrpo, _ = F.clipped_policy_loss(
        lr, adv, mask, aggregation="seq-mean-token-sum-norm", max_len=4
    )
    close(drgrpo, -1.25)
    # default max_len = T = 3: (-6 / 3 + -4 / 3) / 2
    close(
        F.clipped_policy_loss(lr, adv, mask, aggregation="seq-mean-token-sum-norm")[0], -5.0 / 3.0
    )
    # seq-mean-token-mean skips rows with no valid token
    close(F.aggregate_loss(-adv, torch.tensor([[1, 1, 1], [0, 0, 0]]), "seq-mean-token-mean"), -2.0)


def test_policy_loss_padding_cannot_poison_loss_or_gradient():
    log_ratio = torch.tensor([[0.1, float("inf")], [float("nan"), -0.2]], requires_grad=True)
    mask = torch.tensor([[1, 0], [0, 1]])
    loss, m = F.clipped_policy_loss(log_ratio, torch.tensor([[1.0, 5.0], [5.0, -1.0]]), mask)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in m.values())
    assert torch.isfinite(log_ratio.grad).all()
    assert log_ratio.grad[0, 1] == 0 and log_ratio.grad[1, 0] == 0
    empty, _ = F.clipped_policy_loss(torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(1, 2))
    close(empty, 0.0)


def test_policy_loss_bfloat16():
    log_ratio = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]])).bfloat16().requires_grad_()
    loss, m = F.clipped_policy_loss(log_ratio, torch.tensor([[1.0, -1.0, 1.0, -1.0]]), ONES)
    assert loss.dtype == torch.float32 and m["clipfrac"].dtype == torch.float32
    close(loss, 0.15, atol=1e-2)
    loss.backward()
    assert log_ratio.grad.dtype == torch.bfloat16


def test_policy_loss_metrics_are_detached():
    _, m = F.clipped_policy_loss(
        torch.zeros(1, 2, requires_grad=True), torch.ones(1, 2), torch.ones(1, 2)
    )
    assert set(m) == {"clipfrac", "approx_kl", "ratio_mean", "ratio_var"}
    assert all(v.dim() == 0 and not v.requires_grad for v in m.values())


def test_policy_loss_errors():
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="aggregation"):
        F.clipped_policy_loss(z, z, z, aggregation="sum")
    with pytest.raises(ValueError, match="clip_low"):
        F.clipped_policy_loss(z, z, z, clip_low=1.0)
    with pytest.raises(ValueError, match="clip_high"):
        F.clipped_policy_loss(z, z, z, clip_high=-0.1)
    with pytest.raises(ValueError, match="max_len"):
        F.clipped_policy_loss(z, z, z, aggregation="seq-mean-token-sum-norm", max_len=0)
    with pytest.raises(ValueError, match="shape"):
        F.clipped_policy_loss(z, torch.zeros(1, 3), z)


# --------------------------------------------------------------------------------------------
# clipped value loss


def test_value_loss_by_hand():
    # t0: V=1, V_old=0 -> V_clip=0.5; errors 0 and 0.25 -> 0.25 (clipped)
    # t1: V=V_old=2, R=3 -> both errors 1 -> 1;  t2 masked
    values = torch.tensor([[1.0, 2.0, 0.0]], requires_grad=True)
    loss, m = F.clipped_value_loss(
        values,
        torch.tensor([[0.0, 2.0, 0.0]]),
        torch.tensor([[1.0, 3.0, 9.0]]),
        torch.tensor([[1, 1, 0]]),
        clip=0.5,
    )
    close(loss, 0.5 * (0.25 + 1.0) / 2)  # 0.3125
    close(m["value_clipfrac"], 0.5)
    # returns [1, 3], residuals [0, 1]: 1 - Var([0, 1]) / Var([1, 3]) = 1 - 0.5 / 2
    close(m["explained_variance"], 0.75)
    loss.backward()
    # t0 clipped -> no gradient; t1: 0.5 * 2 * (2 - 3) / 2 = -0.5
    close(values.grad, [[0.0, -0.5, 0.0]])


def test_value_loss_without_clip_and_constant_returns():
    loss, m = F.clipped_value_loss(
        torch.tensor([[1.0, 3.0]]),
        torch.zeros(1, 2),
        torch.full((1, 2), 2.0),
        torch.ones(1, 2),
        clip=None,
    )
    close(loss, 0.5)  # 0.5 * mean(1, 1)
    close(m["value_clipfrac"], 0.0)
    close(m["explained_variance"], 0.0)  # Var(R) = 0 -> 0, not nan


# --------------------------------------------------------------------------------------------
# k3 KL


def test_kl_k3_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    # d = ref - logp = -log 2, +log 2:  0.5 + log 2 - 1 = 0.1931472;  2 - log 2 - 1 = 0.3068528
    close(F.kl_k3(logp, ref, torch.ones(1, 2)), 0.25)
    close(F.kl_k3(logp, ref, torch.tensor([[1, 0]]), reduce=False), [[0.1931472, 0.0]])
    close(F.kl_k3(logp, ref, torch.tensor([[1, 0]])), 0.1931472)
    close(F.kl_k3(logp, logp, torch.ones(1, 2)), 0.0)


def test_kl_k3_gradient():
    logp = torch.tensor([[math.log(0.5)]], requires_grad=True)
    F.kl_k3(logp, torch.tensor([[math.log(0.25)]]), torch.ones(1, 1)).backward()
    close(logp.grad, [[0.5]])  # d/dlogp (e^d - d - 1) = 1 - e^d = 1 - 0.5


# --------------------------------------------------------------------------------------------
# MPO: betas, windows, united ratio


def test_mpo_betas_golden():
    betas = F.mpo_betas(5, 0.06, 0.8)
    assert betas.dtype == torch.float32 and betas.shape == (5,)
    close(betas, [0.82288, 0.06, 0.048, 0.0384, 0.03072], atol=1e-7)
    close(betas.sum(), 1.0, atol=1e-6)
    close(F.mpo_betas(1, 0.06, 0.8), [1.0])
    close(F.mpo_betas(2, 0.06, 0.8), [0.94, 0.06])
    close(F.mpo_betas(3, 0.5, 1.0), [0.0, 0.5, 0.5])  # beta_1 exactly 0 is allowed
    close(F.mpo_betas(4, 0.0, 0.8), [1.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize(
    ("k", "beta2", "decay", "match"),
    [
        (0, 0.06, 0.8, "k must"),
        (2.0, 0.06, 0.8, "k must"),
        (True, 0.06, 0.8, "k must"),
        (5, -0.01, 0.8, "beta2"),
        (5, 0.06, -0.5, "decay"),
        (5, float("nan"), 0.8, "beta2"),
        (5, 0.3, 1.0, "beta_1"),  # 1 - 4 * 0.3 < 0
    ],
)
def test_mpo_betas_errors(k, beta2, decay, match):
    with pytest.raises(ValueError, match=match):
        F.mpo_betas(k, beta2, decay)


LR = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
LR_MASK = torch.tensor([[1, 1, 1, 0]])


def test_window_log_ratios_backbone_by_hand():
    window, wmask = F.window_log_ratios(LR, None, 3, LR_MASK)
    close(window, [[[0.1, 0.2, 0.3], [0.2, 0.3, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    assert wmask.tolist() == [
        [[True, True, True], [True, True, False], [True, False, False], [False, False, False]]
    ]


def test_window_log_ratios_mtp_by_hand():
    mtp = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]])
    window, wmask = F.window_log_ratios(LR, mtp, 3, LR_MASK)
    close(window, [[[0.1, 1.0, 2.0], [0.2, 3.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    assert wmask.tolist() == [
        [[True, True, True], [True, True, False], [True, False, False], [False, False, False]]
    ]


def test_window_log_ratios_backbone_matches_direct_loop():
    g = torch.Generator().manual_seed(1)
    b, t, k = 3, 7, 4
    lr = torch.randn(b, t, generator=g)
    lengths = [7, 4, 1]
    mask = torch.tensor([[i < n for i in range(t)] for n in lengths])
    window, wmask = F.window_log_ratios(lr, None, k, mask)
    for i in range(b):
        for s in range(t):
            for n in range(1, k + 1):
                j = s + n - 1
                ok = s < lengths[i] and j < lengths[i]
                assert bool(wmask[i, s, n - 1]) == ok
                assert float(window[i, s, n - 1]) == (float(lr[i, j]) if ok else 0.0)


def test_window_log_ratios_k1_and_errors():
    window, wmask = F.window_log_ratios(LR, None, 1, LR_MASK)
    close(window, [[[0.1], [0.2], [0.3], [0.0]]])
    assert wmask.shape == (1, 4, 1)
    window, wmask = F.window_log_ratios(LR, None, 6, LR_MASK)  # K longer than the row
    close(window[0, 0], [0.1, 0.2, 0.3, 0.0, 0.0, 0.0])
    assert wmask[0, :, 3:].sum() == 0
    with pytest.raises(ValueError, match="k must"):
        F.window_log_ratios(LR, None, 0, LR_MASK)
    with pytest.raises(ValueError, match="mtp_log_ratio"):
        F.window_log_ratios(LR, torch.zeros(1, 4, 3), 3, LR_MASK)


def test_united_log_ratio_by_hand():
    window = torch.tensor([[[0.1, 0.2, 0.3]]])
    betas = torch.tensor([0.5, 0.3, 0.2])
    close(F.united_log_ratio(window, betas), [[0.17]])  # 0.05 + 0.06 + 0.06
    tail = torch.tensor([[[1, 1, 0]]])
    close(F.united_log_ratio(window, betas, tail), [[0.11]])
    close(F.united_log_ratio(window, betas, tail, renormalize_tail=True), [[0.1375]])  # 0.11 / 0.8
    close(F.united_log_ratio(window, betas, torch.zeros(1, 1, 3), renormalize_tail=True), [[0.0]])


def test_united_log_ratio_one_hot_betas_is_token_ratio():
    g = torch.Generator().manual_seed(2)
    lr = torch.randn(2, 6, generator=g)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    window, wmask = F.window_log_ratios(lr, None, 5, mask)
    united = F.united_log_ratio(window, torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0]), wmask)
    torch.testing.assert_close(united, torch.where(mask.bool(), lr, 0.0))


def test_united_log_ratio_masked_terms_contribute_zero():
    window = torch.tensor([[[0.1, float("nan"), float("inf")], [0.2, 0.4, 0.6]]])
    betas = torch.tensor([0.5, 0.3, 0.2])
    close(F.united_log_ratio(window, betas, torch.tensor([[[1, 0, 0], [1, 1, 1]]])), [[0.05, 0.34]])
    # a [B, T] mask is broadcast over the window: a masked position gives 0
    close(F.united_log_ratio(window, betas, torch.tensor([[0, 1]])), [[0.0, 0.34]])


def test_united_log_ratio_on_mpo_window_end_of_response():
    betas = F.mpo_betas(3, 0.1, 0.5)  # [0.85, 0.1, 0.05]
    window, wmask = F.window_log_ratios(LR, None, 3, LR_MASK)
    # t0: 0.85*0.1 + 0.1*0.2 + 0.05*0.3 = 0.12;  t1: 0.85*0.2 + 0.1*0.3 = 0.2;  t2: 0.85*0.3 = 0.255
    close(F.united_log_ratio(window, betas, wmask), [[0.12, 0.2, 0.255, 0.0]])
    # renormalised: t1: 0.2 / 0.95;  t2: 0.255 / 0.85
    close(
        F.united_log_ratio(window, betas, wmask, renormalize_tail=True),
        [[0.12, 0.2105263, 0.3, 0.0]],
    )


def test_united_log_ratio_dtype_and_errors():
    out = F.united_log_ratio(torch.zeros(1, 2, 3, dtype=torch.bfloat16), F.mpo_betas(3, 0.06, 0.8))
    assert out.dtype == torch.float32 and out.shape == (1, 2)
    with pytest.raises(ValueError, match="betas"):
        F.united_log_ratio(torch.zeros(1, 2, 3), torch.ones(2))
    with pytest.raises(ValueError, match="mask"):
        F.united_log_ratio(torch.zeros(1, 2, 3), torch.ones(3), torch.ones(1, 3))


def test_united_ratio_gradient_reaches_all_window_terms():
    window = torch.zeros(1, 1, 3, requires_grad=True)
    F.united_log_ratio(
        window, torch.tensor([0.5, 0.3, 0.2]), torch.tensor([[[1, 1, 0]]])
    ).sum().backward()
    close(window.grad, [[[0.5, 0.3, 0.0]]])


# --------------------------------------------------------------------------------------------
# MTP warm-up loss and clip diagnostics


def test_mtp_warmup_loss_by_hand():
    # module 1: -1 -2 -3, module 2: -4 -5 -6
    logprobs = torch.tensor([[[-1.0, -4.0], [-2.0, -5.0], [-3.0, -6.0]]])
    mask = torch.tensor([[[1, 1], [1, 0], [0, 0]]])
    loss, m = F.mtp_warmup_loss(logprobs, mask, [1.0, 0.5])
    close(m["mtp/nll_1"], 1.5)
    close(m["mtp/nll_2"], 4.0)
    close(loss, 1.5 + 0.5 * 4.0)
    with pytest.raises(ValueError, match="alphas"):
        F.mtp_warmup_loss(logprobs, mask, [1.0])


def test_clip_diagnostics_by_hand():
    # token r = [1.5, 1.0, 0.5, 1.0], united R = [1.1, 1.3, 0.9, 1.0], A = [+, +, -, +], eps 0.2
    # clip active on r: [yes, no, yes, no]; on R: [no, yes, no, no]
    token = torch.log(torch.tensor([[1.5, 1.0, 0.5, 1.0, 7.0]]))
    united = torch.log(torch.tensor([[1.1, 1.3, 0.9, 1.0, 0.01]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    d = F.clip_diagnostics(token, united, adv, mask, 0.2, 0.2)
    close(d["mpo/clipfrac_token"], 0.5)
    close(d["mpo/clipfrac_united"], 0.25)
    close(d["mpo/clip_disagreement"], 0.75)
    close(d["mpo/ratio_var_token"], 0.5 / 3)  # squared deviations 0.25 + 0 + 0.25 + 0
    close(d["mpo/ratio_var_united"], 0.0875 / 3)  # mean 1.075
    # (log(1.5/1.1) + log 1.3 + log 1.8 + 0) / 4
    close(d["mpo/abs_log_ratio_gap"], 0.2900765)
    assert all(v.dim() == 0 and not v.requires_grad for v in d.values())


def test_clip_diagnostics_agree_with_policy_loss_clipfrac():
    g = torch.Generator().manual_seed(3)
    lr = 0.3 * torch.randn(3, 8, generator=g)
    adv = torch.randn(3, 8, generator=g)
    mask = torch.rand(3, 8, generator=g) > 0.2
    _, m = F.clipped_policy_loss(lr, adv, mask, 0.2, 0.28)
    d = F.clip_diagnostics(lr, lr, adv, mask, 0.2, 0.28)
    close(d["mpo/clipfrac_token"], float(m["clipfrac"]))
    close(d["mpo/clip_disagreement"], 0.0)
    close(d["mpo/abs_log_ratio_gap"], 0.0)


# --------------------------------------------------------------------------------------------
# sequence-level ratios: GSPO and GMPO

SEQ_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_sequence_log_ratio_is_the_mean_token_log_ratio():
    lr = torch.tensor([[0.3, -0.6, 0.9], [0.2, 0.4, float("nan")]])
    close(F.sequence_log_ratio(lr, SEQ_MASK), [0.2, 0.3])  # (0.3 - 0.6 + 0.9) / 3, (0.2 + 0.4) / 2
    close(F.sequence_log_ratio(lr, torch.zeros_like(SEQ_MASK)), [0.0, 0.0])  # empty rows: s = 1


def test_gspo_loss_by_hand():
    # row 0: log s = (0.001 - 0.0002 + 0.0005) / 3, s = 1.000433 > 1 + 4e-4 and A = +1: clipped
    # row 1: log s = (0.002 + 0) / 2 = 0.001, s = e^0.001 > 1 + 4e-4 but A = -0.5: not clipped
    lr = torch.tensor([[0.001, -0.0002, 0.0005], [0.002, 0.0, 5.0]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([1.0, -0.5], dtype=torch.float64)
    loss, m = F.gspo_policy_loss(lr, adv, SEQ_MASK)
    s0, s1 = math.exp(0.0013 / 3), math.exp(0.001)
    close(loss, (-1.0 * 1.0004 + 0.5 * s1) / 2)
    close(m["clipfrac"], 3 / 5)  # the three tokens of row 0
    close(m["ratio_mean"], (s0 + s1) / 2)
    close(m["ratio_var"], (s0 - s1) ** 2 / 2)  # unbiased variance of two values
    loss.backward()
    # clipped row: no gradient; row 1: (1/2 rows) * (-A) * s1 * (1/2 tokens); padding: 0
    close(lr.grad, [[0.0, 0.0, 0.0], [0.125 * s1, 0.125 * s1, 0.0]], atol=1e-9)


def test_gspo_uses_its_small_clip_range_by_default():
    lr = torch.tensor([[0.0003, 0.0003, 0.0003], [-0.0002, -0.0002, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    _, m = F.gspo_policy_loss(lr, adv, SEQ_MASK)
    close(m["clipfrac"], 0.0)  # s = e^3e-4 < 1 + 4e-4 and s = e^-2e-4 > 1 - 3e-4
    _, m = F.gspo_policy_loss(lr, adv, SEQ_MASK, clip_low=1e-4, clip_high=1e-4)
    close(m["clipfrac"], 1.0)


def test_gspo_token_value_and_gradient_equal_gspo_for_equal_token_advantages():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]])
    base = 1e-3 * torch.randn(4, 4, dtype=torch.float64)
    base[0] += 0.01  # row 0 far above 1 + 4e-4: clipped for A > 0
    adv = torch.tensor([1.0, -2.0, 0.5, 1.5], dtype=torch.float64)
    a = base.clone().requires_grad_(True)
    b = base.clone().requires_grad_(True)
    loss_seq, m_seq = F.gspo_policy_loss(a, adv, mask)
    loss_tok, m_tok = F.gspo_token_policy_loss(b, adv[:, None].expand(4, 4), mask)
    close(loss_tok, float(loss_seq.detach()), atol=1e-12)
    loss_seq.backward()
    loss_tok.backward()
    close(b.grad, a.grad, atol=1e-12)
    assert float(m_seq["clipfrac"]) > 0 and float(m_tok["clipfrac"]) == pytest.approx(float(m_seq["clipfrac"]))


def test_gspo_token_uses_each_tokens_advantage():
    # value of every token's ratio is s_i; per-token advantages weight each token's gradient
    lr = torch.tensor([[0.0001, -0.0001, 0.0]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[1.0, 3.0, -2.0]], dtype=torch.float64)
    loss, _ = F.gspo_token_policy_loss(lr, adv, torch.ones(1, 3))
    close(loss, -(1.0 + 3.0 - 2.0) / 3)  # s = e^0 = 1
    loss.backward()
    close(lr.grad, [[-1.0 / 3, -3.0 / 3, 2.0 / 3]], atol=1e-12)


def test_one_token_responses_reduce_gspo_to_the_token_ratio():
    torch.manual_seed(1)
    mask = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 0]])
    base = torch.tensor([[0.1, 7.0], [-0.3, 7.0], [0.0001, 7.0], [-0.0001, 7.0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 2.0, -0.5], dtype=torch.float64)
    a = base.clone().requires_grad_(True)
    b = base.clone().requires_grad_(True)
    for fn in (F.gspo_policy_loss, lambda *x: F.gspo_token_policy_loss(x[0], x[1][:, None].expand(4, 2), x[2])):
        a.grad = b.grad = None
        loss_seq, m_seq = fn(a, adv, mask)
        loss_tok, m_tok = F.clipped_policy_loss(b, adv[:, None].expand(4, 2), mask, 3e-4, 4e-4, "seq-mean-token-mean")
        close(loss_seq, float(loss_tok.detach()), atol=1e-12)
        loss_seq.backward()
        loss_tok.backward()
        close(a.grad, b.grad, atol=1e-12)
        close(m_seq["clipfrac"], float(m_tok["clipfrac"]))  # rows 0 and 1 clipped


def test_gmpo_loss_by_hand():
    # row 0, A = +2: log r 0.5 -> 0.4 (clipped above), -0.1 and 0.2 kept: mean 0.5 / 3
    # row 1, A = -1: log r -0.6 -> -0.4 (clipped below), 0.1 kept: mean -0.15
    lr = torch.tensor([[0.5, -0.1, 0.2], [-0.6, 0.1, 9.0]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([2.0, -1.0], dtype=torch.float64)
    loss, m = F.gmpo_policy_loss(lr, adv, SEQ_MASK)
    g0, g1 = math.exp(0.5 / 3), math.exp(-0.15)
    close(loss, (-2.0 * g0 + 1.0 * g1) / 2)
    close(m["clipfrac"], 2 / 5)
    s0, s1 = math.exp(0.6 / 3), math.exp(-0.25)  # unclipped geometric means
    close(m["ratio_mean"], (s0 + s1) / 2)
    loss.backward()
    # d/dl_t = (1/2 rows) * (-A) * g * (1/|o|) on kept tokens, 0 on clipped ones and padding
    close(lr.grad, [[0.0, -g0 / 3, -g0 / 3], [0.0, g1 / 4, 0.0]], atol=1e-9)


def test_gmpo_clip_is_one_sided_like_ppo():
    # A > 0: a very negative log-ratio is not clipped; A < 0: a very positive one is not
    lr = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    loss, m = F.gmpo_policy_loss(lr, torch.tensor([1.0, -1.0], dtype=torch.float64), torch.ones(2, 1))
    close(loss, (-math.exp(-1.0) + math.exp(1.0)) / 2)
    close(m["clipfrac"], 0.0)


def test_one_token_gmpo_equals_ppo_with_log_space_bounds():
    eps = 0.4
    mask = torch.tensor([[1, 0]] * 4)
    base = torch.tensor([[0.6, 3.0], [-0.7, 3.0], [0.1, 3.0], [-0.2, 3.0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, -2.0, 0.5], dtype=torch.float64)
    a = base.clone().requires_grad_(True)
    b = base.clone().requires_grad_(True)
    loss_g, m_g = F.gmpo_policy_loss(a, adv, mask, eps, eps)
    loss_p, m_p = F.clipped_policy_loss(
        b, adv[:, None].expand(4, 2), mask, 1 - math.exp(-eps), math.exp(eps) - 1, "seq-mean-token-mean"
    )
    close(loss_g, float(loss_p.detach()), atol=1e-12)
    loss_g.backward()
    loss_p.backward()
    close(a.grad, b.grad, atol=1e-12)
    close(m_g["clipfrac"], 0.5)
    close(m_p["clipfrac"], 0.5)


def test_unclipped_gmpo_equals_unclipped_gspo():
    # without clipping both maximise A_i * exp(mean_t log r_t)
    torch.manual_seed(2)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    base = 0.3 * torch.randn(3, 3, dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    a = base.clone().requires_grad_(True)
    b = base.clone().requires_grad_(True)
    loss_g, _ = F.gmpo_policy_loss(a, adv, mask, 50.0, 50.0)
    loss_s, _ = F.gspo_policy_loss(b, adv, mask, 0.999, 1e6)
    close(loss_g, float(loss_s.detach()), atol=1e-12)
    loss_g.backward()
    loss_s.backward()
    close(a.grad, b.grad, atol=1e-12)


def test_sequence_losses_reject_bad_shapes():
    with pytest.raises(ValueError, match="one per response"):
        F.gspo_policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), SEQ_MASK)
    with pytest.raises(ValueError, match="one per response"):
        F.gmpo_policy_loss(torch.zeros(2, 3), torch.zeros(3), SEQ_MASK)
    with pytest.raises(ValueError, match="shape"):
        F.gspo_token_policy_loss(torch.zeros(2, 3), torch.zeros(2), SEQ_MASK)
    with pytest.raises(ValueError, match=">= 0"):
        F.gmpo_policy_loss(torch.zeros(2, 3), torch.zeros(2), SEQ_MASK, -0.1, 0.4)


def test_sequence_losses_compute_half_precision_in_float32():
    lr = torch.zeros(2, 3, dtype=torch.bfloat16, requires_grad=True)
    loss, m = F.gspo_policy_loss(lr, torch.tensor([1.0, -1.0], dtype=torch.bfloat16), SEQ_MASK)
    assert loss.dtype == torch.float32 and m["clipfrac"].dtype == torch.float32
    loss.backward()
    assert lr.grad is not None and lr.grad.dtype == torch.bfloat16


def test_sequence_clip_diagnostics_by_hand():
    # row 0 (A=+1): token log r 0.3, -0.3, 0.3 -> log s = 0.1; row 1 (A=-1): log r -0.5, 0.1 -> -0.2
    lr = torch.tensor([[0.3, -0.3, 0.3], [-0.5, 0.1, 0.0]])
    seq = F.sequence_log_ratio(lr, SEQ_MASK)
    d = F.sequence_clip_diagnostics(lr, seq, torch.tensor([1.0, -1.0]), SEQ_MASK, 0.2, 0.2, prefix="gspo")
    assert sorted(d) == sorted(
        f"gspo/{k}" for k in
        ("clipfrac_seq", "clipfrac_token", "ratio_var_seq", "ratio_var_token", "clip_disagreement", "abs_log_ratio_gap")
    )
    # sequences: e^0.1 = 1.105 < 1.2 (A>0) not clipped; e^-0.2 = 0.819 > 0.8 (A<0) not clipped
    close(d["gspo/clipfrac_seq"], 0.0)
    # tokens: e^0.3 = 1.35 > 1.2 with A>0 twice; e^-0.5 = 0.61 < 0.8 with A<0 once: 3 of 5
    close(d["gspo/clipfrac_token"], 3 / 5)
    close(d["gspo/clip_disagreement"], 3 / 5)
    close(d["gspo/ratio_var_seq"], (math.exp(0.1) - math.exp(-0.2)) ** 2 / 2)
    r = [math.exp(x) for x in (0.3, -0.3, 0.3, -0.5, 0.1)]
    mean = sum(r) / 5
    close(d["gspo/ratio_var_token"], sum((x - mean) ** 2 for x in r) / 4)
    close(d["gspo/abs_log_ratio_gap"], (0.2 + 0.4 + 0.2 + 0.3 + 0.3) / 5)


def test_sequence_clip_diagnostics_match_the_losses_clipfrac():
    # GSPO, equal lengths: the fraction of clipped responses is the loss's (token-weighted) clipfrac
    lr = torch.tensor([[1e-3, 1e-3], [-1e-3, -1e-3], [1e-4, 0.0], [-1e-3, 0.0]])
    adv = torch.tensor([1.0, -1.0, 1.0, 1.0])  # rows 0 and 1 clipped, 2 inside, 3 below with A > 0
    mask = torch.ones(4, 2)
    _, m = F.gspo_policy_loss(lr, adv, mask)
    d = F.sequence_clip_diagnostics(lr, F.sequence_log_ratio(lr, mask), adv, mask, 3e-4, 4e-4)
    close(m["clipfrac"], 0.5)
    close(d["gspo/clipfrac_seq"], 0.5)
    # GMPO: with ratio bounds e^±ε the diagnostics' token decision is GMPO's own log-space clip
    torch.manual_seed(3)
    lr = 0.5 * torch.randn(4, 3)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    _, m = F.gmpo_policy_loss(lr, adv, mask, 0.4, 0.4)
    d = F.sequence_clip_diagnostics(lr, F.sequence_log_ratio(lr, mask), adv, mask,
                                    1 - math.exp(-0.4), math.exp(0.4) - 1, prefix="gmpo")
    assert float(m["clipfrac"]) > 0
    close(d["gmpo/clipfrac_token"], float(m["clipfrac"]))
