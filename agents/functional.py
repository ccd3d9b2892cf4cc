"""Pure tensor functions for the agents: masked statistics, advantages, clipped losses, MPO ratios.

Every function here is stateless and shape-documented; the agents (``ppo.py``, ``mpo.py``,
``grpo.py``, ``gspo.py``, ``gmpo.py``, ``rloo.py``, ``reinforcepp.py``, ``dapo.py``, ``cispo.py``,
``wgmpo.py``) compose them. Conventions shared by all of them:

- **Shapes.** ``B`` rows (responses), ``T`` token positions (right-padded), ``K`` tokens per MPO
  window, ``M`` MTP modules, ``N`` responses in a flat batch of group rewards.
- **Masks** are bool tensors or ``{0, 1}`` numbers; any non-zero entry means "valid". Masked
  entries are *selected away* (``torch.where``), never multiplied by zero, so padding that holds
  ``nan``/``inf`` (e.g. the log-ratio of a pad token) cannot leak into a result or a gradient.
- **Precision.** Half-precision inputs (``bfloat16``, ``float16``) are computed in ``float32``
  and results come back in ``float32``; ``float64`` inputs stay ``float64`` (handy for
  ``torch.autograd.gradcheck``). Gradients still flow back to the half-precision inputs.
- **Empty masks** give ``0`` for means (and variances), never ``nan``.
- **Losses** return ``(loss, metrics)``: ``loss`` is a 0-dim tensor to minimise, ``metrics`` a
  dict of detached 0-dim ``float32`` tensors (call ``float()`` when logging).
- **Signs.** ``log_ratio = logp_new - logp_old``; advantages are "higher is better"; every loss
  is a quantity to *minimise* (the policy loss is the negated PPO surrogate).

What this module does not do: it never reads a model, samples, or holds state; it does not
clamp log-ratios or KL values (a caller who wants a guard adds one); and the GAE scan is a
Python loop over ``T`` (fine for ``T`` in the thousands, not a fused kernel).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "AGGREGATIONS",
    "aggregate_loss",
    "clip_diagnostics",
    "clipped_policy_loss",
    "cispo_policy_loss",
    "clipped_value_loss",
    "gae",
    "gmpo_policy_loss",
    "group_advantages",
    "gspo_policy_loss",
    "gspo_token_policy_loss",
    "kl_k3",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "mpo_betas",
    "mtp_warmup_loss",
    "overlong_penalty",
    "reinforcepp_returns",
    "sequence_clip_diagnostics",
    "sequence_log_ratio",
    "united_log_ratio",
    "varied_groups",
    "wgmpo_log_ratio",
    "wgmpo_policy_loss",
    "window_log_ratios",
]

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
"""Loss aggregation modes accepted by :func:`aggregate_loss` and :func:`clipped_policy_loss`."""

Metrics = dict[str, Tensor]


# --------------------------------------------------------------------------------------------
# helpers


def _compute_dtype(*xs: Tensor) -> torch.dtype:
    """``float64`` if any input is ``float64``, else ``float32``."""
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def _up(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``x`` in its compute dtype (half precision and integers become ``float32``)."""
    return x.to(dtype or _compute_dtype(x))


def _valid(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def _same_shape(**tensors: Tensor | None) -> None:
    named = [(k, v) for k, v in tensors.items() if v is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.shape != first.shape:
            raise ValueError(
                f"{name} must have the shape of {first_name} {tuple(first.shape)}; got {tuple(t.shape)}"
            )


def _window_size(k: object) -> int:
    """``k`` as a window length >= 1 (numpy ints accepted, bools and floats rejected)."""
    try:
        size = operator.index(k)  # type: ignore[arg-type]
    except TypeError:
        size = 0
    if isinstance(k, bool) or size < 1:
        raise ValueError(f"k must be an int >= 1; got {k!r}")
    return size


def _metric(x: Tensor) -> Tensor:
    return x.detach().to(torch.float32)


def _check_clip(clip_low: float, clip_high: float) -> None:
    if not 0.0 <= clip_low < 1.0:
        raise ValueError(
            f"clip_low must be in [0, 1) (the ratio floor is 1 - clip_low); got {clip_low}"
        )
    if not clip_high >= 0.0:
        raise ValueError(f"clip_high must be >= 0; got {clip_high}")


def _clip_active(ratio: Tensor, advantages: Tensor, clip_low: float, clip_high: float) -> Tensor:
    """Where the PPO min picks the clipped term and it differs (the token's gradient is dropped)."""
    above = (advantages > 0) & (ratio > 1.0 + clip_high)  # [B, T]
    below = (advantages < 0) & (ratio < 1.0 - clip_low)  # [B, T]
    return above | below  # [B, T]


# --------------------------------------------------------------------------------------------
# masked statistics


def masked_sum(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Sum of the valid entries of ``x``.

    Args:
        x: values, any shape ``[*S]``.
        mask: validity, broadcastable to ``[*S]``.
        dim: dimension(s) to reduce; ``None`` reduces everything.

    Returns:
        The sum over ``dim`` (a 0-dim tensor when ``dim`` is ``None``), in the compute dtype.
    """
    x = _up(x)  # [*S]
    picked = torch.where(_valid(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))  # [*S]
    return picked.sum() if dim is None else picked.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean of the valid entries of ``x``; ``0`` where nothing is valid.

    Args:
        x: values, any shape ``[*S]``.
        mask: validity, broadcastable to ``[*S]``.
        dim: dimension(s) to reduce; ``None`` reduces everything.

    Returns:
        The mean over ``dim`` (0-dim when ``dim`` is ``None``), in the compute dtype.
    """
    x = _up(x)  # [*S]
    valid = torch.broadcast_to(_valid(mask), x.shape)  # [*S]
    total = masked_sum(x, valid, dim)  # reduced shape
    count = valid.sum() if dim is None else valid.sum(dim)  # reduced shape
    return total / count.clamp_min(1).to(total.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of all valid entries of ``x`` (one number).

    Args:
        x: values, any shape ``[*S]``.
        mask: validity, broadcastable to ``[*S]``.
        unbiased: divide by ``n - 1`` (Bessel) instead of ``n``.

    Returns:
        0-dim variance; ``0`` when fewer than 2 entries are valid (``unbiased``) or none are.
    """
    x = _up(x)  # [*S]
    valid = torch.broadcast_to(_valid(mask), x.shape)  # [*S]
    mean = masked_mean(x, valid)  # []
    sq = masked_sum((x - mean) ** 2, valid)  # []
    n = valid.sum().to(sq.dtype)  # []
    denom = (n - 1.0) if unbiased else n  # []
    return torch.where(denom > 0, sq / denom.clamp_min(1.0), torch.zeros_like(sq))


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise the valid entries of ``x`` to unit (unbiased) variance, and zero mean.

    Args:
        x: values, any shape ``[*S]``.
        mask: validity, broadcastable to ``[*S]``.
        shift_mean: subtract the mean; ``False`` keeps the original mean (scale only).
        eps: added to the variance before the square root.

    Returns:
        ``[*S]`` whitened values; masked entries are ``0``.
    """
    x = _up(x)  # [*S]
    valid = torch.broadcast_to(_valid(mask), x.shape)  # [*S]
    mean = masked_mean(x, valid)  # []
    var = masked_var(x, valid)  # []
    out = (x - mean) * torch.rsqrt(var + eps)  # [*S]
    if not shift_mean:
        out = out + mean  # [*S]
    return torch.where(valid, out, torch.zeros_like(out))  # [*S]


# --------------------------------------------------------------------------------------------
# advantages


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float,
    lam: float,
    last_values: Tensor | None = None,
    truncated: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over right-padded token rows.

    ``delta_t = r_t + gamma * V_next - V_t`` and ``A_t = delta_t + gamma * lam * A_next``, where
    "next" is the next *valid* position of the row. After a row's last valid token,
    ``V_next`` is ``0`` for a terminated row and ``last_values[b]`` for a truncated row
    (``A_next`` is ``0`` either way). Rewards sit on token positions: the verifier's reward on
    the last real token, per-block rewards (if the env pays them) on each block's last token.
    Rewards on masked positions are ignored. Masked positions in the middle of a row are skipped
    (the recursion passes over them), so holes are allowed, though rows are normally contiguous.

    Args:
        rewards: ``[B, T]`` per-token rewards.
        values: ``[B, T]`` critic values ``V(s_t)`` (the value *before* token t is emitted).
        mask: ``[B, T]`` valid response tokens.
        gamma: discount in ``[0, 1]``.
        lam: GAE lambda in ``[0, 1]`` (``gamma = lam = 1`` gives ``A_t = R - V_t``).
        last_values: ``[B]`` value of the state after the last token, used by truncated rows.
        truncated: ``[B]`` bool, rows cut by the token budget; required with ``last_values``.

    Returns:
        ``(advantages [B, T], returns [B, T])``, detached, ``returns = advantages + values`` on
        valid positions, both ``0`` on masked ones. No normalisation (see :func:`masked_whiten`).

    Raises:
        ValueError: on shape mismatch, ``gamma``/``lam`` out of range, or ``truncated`` and
            ``last_values`` not given together.
    """
    _same_shape(rewards=rewards, values=values, mask=mask)
    if rewards.dim() != 2:
        raise ValueError(f"gae expects [B, T] tensors; got shape {tuple(rewards.shape)}")
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1]; got gamma={gamma}, lam={lam}")
    if (last_values is None) != (truncated is None):
        raise ValueError(
            "pass last_values and truncated together (truncated rows bootstrap from last_values)"
        )
    n_rows, n_steps = rewards.shape
    dtype = _compute_dtype(rewards, values)
    with torch.no_grad():
        r = _up(rewards.detach(), dtype)  # [B, T]
        v = _up(values.detach(), dtype)  # [B, T]
        valid = _valid(mask)  # [B, T]
        next_value = torch.zeros(n_rows, dtype=dtype, device=r.device)  # [B]
        if truncated is not None and last_values is not None:
            if truncated.shape != (n_rows,) or last_values.shape != (n_rows,):
                raise ValueError(
                    f"truncated and last_values must have shape ({n_rows},); got "
                    f"{tuple(truncated.shape)} and {tuple(last_values.shape)}"
                )
            boot = _up(last_values.detach(), dtype)  # [B]
            next_value = torch.where(_valid(truncated), boot, next_value)  # [B]
        next_adv = torch.zeros_like(next_value)  # [B]
        adv = torch.zeros_like(v)  # [B, T]
        for t in reversed(range(n_steps)):
            ok = valid[:, t]  # [B]
            delta = r[:, t] + gamma * next_value - v[:, t]  # [B]
            a_t = delta + gamma * lam * next_adv  # [B]
            adv[:, t] = torch.where(ok, a_t, torch.zeros_like(a_t))  # [B]
            next_value = torch.where(ok, v[:, t], next_value)  # [B]
            next_adv = torch.where(ok, a_t, next_adv)  # [B]
        returns = torch.where(valid, adv + v, torch.zeros_like(v))  # [B, T]
    return adv, returns


def group_advantages(
    rewards: Tensor,
    groups: Tensor | int,
    normalize_std: bool = True,
    eps: float = 1e-6,
    baseline: str = "mean",
) -> Tensor:
    """Group-relative advantages: GRPO, Dr.GRPO and RLOO.

    ``baseline="mean"``: ``A_i = R_i - mean_g(R)`` (GRPO; Dr.GRPO with ``normalize_std=False``).
    ``baseline="loo"``: ``A_i = R_i - mean_{j != i, j in g}(R_j)`` (RLOO; use it with
    ``normalize_std=False`` for RLOO proper). With ``normalize_std`` the result is divided by
    ``std_g(R) + eps``, the *unbiased* group standard deviation (as in GRPO implementations).
    A group whose rewards are all equal gets zeros; a group of one gets ``0``.

    Args:
        rewards: ``[N]`` one scalar reward per response.
        groups: ``[N]`` group ids (any integers, any order), or an int ``G``: consecutive
            groups of ``G`` (``rewards[0:G]`` is group 0, ...; ``N`` must be divisible by ``G``).
        normalize_std: divide by the group standard deviation.
        eps: added to the standard deviation.
        baseline: ``"mean"`` or ``"loo"``.

    Returns:
        ``[N]`` advantages (``float32``, or ``float64`` for ``float64`` rewards), detached;
        broadcast them over a row's tokens yourself.

    Raises:
        ValueError: on a bad ``baseline``, group size, or shape.
    """
    if baseline not in ("mean", "loo"):
        raise ValueError(f"baseline must be 'mean' or 'loo'; got {baseline!r}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N]; got shape {tuple(rewards.shape)}")
    n = rewards.shape[0]
    out_dtype = _compute_dtype(rewards)
    if not isinstance(groups, Tensor):
        if isinstance(groups, bool) or not hasattr(groups, "__index__"):
            raise ValueError(
                f"groups must be an int group size or a [N] tensor of ids; got {groups!r}"
            )
        groups = operator.index(groups)
    if isinstance(groups, int):
        if groups < 1 or n % groups:
            raise ValueError(f"group size must be >= 1 and divide N={n}; got {groups}")
        ids = torch.arange(n, device=rewards.device) // groups  # [N]
    else:
        if groups.shape != (n,):
            raise ValueError(f"group ids must have shape ({n},); got {tuple(groups.shape)}")
        ids = torch.unique(groups, return_inverse=True)[1].to(rewards.device)  # [N]
    if n == 0:
        return torch.zeros(0, dtype=out_dtype, device=rewards.device)
    r = rewards.detach().to(torch.float64)  # [N]
    n_groups = int(ids.max()) + 1
    zeros = torch.zeros(n_groups, dtype=torch.float64, device=r.device)  # [G]
    count = zeros.index_add(0, ids, torch.ones_like(r))  # [G]
    total = zeros.index_add(0, ids, r)  # [G]
    centered = r - (total / count)[ids]  # [N]
    size = count[ids]  # [N]
    if baseline == "loo":
        loo = centered * size / (size - 1).clamp_min(1)  # [N]  R_i - mean of the others
        adv = torch.where(size > 1, loo, torch.zeros_like(r))  # [N]
    else:
        adv = torch.where(size > 1, centered, torch.zeros_like(r))  # [N]
    if normalize_std:
        sq = zeros.index_add(0, ids, centered**2)  # [G]
        std = (sq / (count - 1).clamp_min(1)).sqrt()  # [G]
        adv = adv / (std[ids] + eps)  # [N]
    return adv.to(out_dtype)


# --------------------------------------------------------------------------------------------
# losses


def aggregate_loss(
    per_token: Tensor, mask: Tensor, aggregation: str = "token-mean", max_len: int | None = None
) -> Tensor:
    """Reduce a per-token loss to a scalar.

    - ``"token-mean"``: sum over all valid tokens of the batch / number of valid tokens
      (PPO/DAPO/MPO Eq. 11).
    - ``"seq-mean-token-mean"``: mean over tokens within each row, then mean over the rows that
      have at least one valid token (GRPO).
    - ``"seq-mean-token-sum-norm"``: each row's token *sum* divided by the constant ``max_len``,
      then mean over all ``B`` rows (Dr.GRPO). ``max_len=None`` uses ``T``; pass the generation
      budget to keep the normaliser constant across batches. (Older verl releases omit the 1/B.)

    Args:
        per_token: ``[B, T]`` loss per token.
        mask: ``[B, T]`` valid tokens.
        aggregation: one of :data:`AGGREGATIONS`.
        max_len: the Dr.GRPO constant; ignored by the other modes.

    Returns:
        0-dim loss; ``0`` when nothing is valid.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}; got {aggregation!r}")
    if per_token.dim() != 2:
        raise ValueError(f"per-token loss must be [B, T]; got shape {tuple(per_token.shape)}")
    valid = _valid(mask)  # [B, T]
    if aggregation == "token-mean":
        return masked_mean(per_token, valid)
    if aggregation == "seq-mean-token-mean":
        row_mean = masked_mean(per_token, valid, dim=-1)  # [B]
        return masked_mean(row_mean, valid.any(dim=-1))
    norm = per_token.shape[-1] if max_len is None else max_len
    if norm <= 0:
        raise ValueError(f"max_len must be a positive int; got {max_len}")
    row_sum = masked_sum(per_token, valid, dim=-1)  # [B]
    return row_sum.sum() / (norm * max(per_token.shape[0], 1))


def clipped_policy_loss(
    log_ratio: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token-mean",
    max_len: int | None = None,
) -> tuple[Tensor, Metrics]:
    """PPO clipped surrogate, negated: ``-agg(min(r A, clip(r, 1 - clip_low, 1 + clip_high) A))``.

    Works for any ratio: the token ratio (PPO/GRPO/DAPO) or MPO's united ratio R̃ (pass
    :func:`united_log_ratio`'s output as ``log_ratio``). Its gradient is the standard PPO
    gradient: ``-A r grad(log r)`` on tokens where clipping is inactive, ``0`` where it is active.

    Args:
        log_ratio: ``[B, T]`` ``logp_new - logp_old`` (carries the gradient).
        advantages: ``[B, T]`` advantages (treated as constants: detached).
        mask: ``[B, T]`` valid tokens.
        clip_low: ε_low, the ratio floor is ``1 - clip_low``.
        clip_high: ε_high, the ratio ceiling is ``1 + clip_high`` (DAPO "clip-higher": 0.28).
        aggregation: see :func:`aggregate_loss`.
        max_len: Dr.GRPO constant for ``"seq-mean-token-sum-norm"``.

    Returns:
        ``(loss, metrics)``; metrics over valid tokens: ``clipfrac`` (fraction where the clipped
        term is chosen and differs), ``approx_kl`` (mean of ``(r - 1) - log r``, the k3 estimator
        of KL(old || new)), ``ratio_mean``, ``ratio_var`` (unbiased). Metrics always use token
        means, whatever the aggregation.
    """
    _same_shape(log_ratio=log_ratio, advantages=advantages, mask=mask)
    _check_clip(clip_low, clip_high)
    valid = _valid(mask)  # [B, T]
    log_ratio = _up(log_ratio)  # [B, T]
    log_ratio = torch.where(valid, log_ratio, torch.zeros_like(log_ratio))  # [B, T]
    adv = _up(advantages.detach(), log_ratio.dtype)  # [B, T]
    adv = torch.where(valid, adv, torch.zeros_like(adv))  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    surrogate = -adv * ratio  # [B, T]
    surrogate_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [B, T]
    per_token = torch.maximum(surrogate, surrogate_clipped)  # [B, T]
    loss = aggregate_loss(per_token, valid, aggregation, max_len)  # []
    with torch.no_grad():
        active = _clip_active(ratio, adv, clip_low, clip_high)  # [B, T]
        metrics = {
            "clipfrac": _metric(masked_mean(active, valid)),
            "approx_kl": _metric(masked_mean((ratio - 1.0) - log_ratio, valid)),
            "ratio_mean": _metric(masked_mean(ratio, valid)),
            "ratio_var": _metric(masked_var(ratio, valid)),
        }
    return loss, metrics


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float | None = 0.5
) -> tuple[Tensor, Metrics]:
    """PPO clipped value loss: ``0.5 * token-mean(max((V - R)^2, (V_clip - R)^2))``.

    ``V_clip = V_old + clamp(V - V_old, -clip, clip)``; ``clip=None`` gives the plain
    ``0.5 * token-mean((V - R)^2)``.

    Args:
        values: ``[B, T]`` current critic values (carry the gradient).
        old_values: ``[B, T]`` values recorded at rollout time.
        returns: ``[B, T]`` targets (e.g. from :func:`gae`).
        mask: ``[B, T]`` valid tokens.
        clip: value clip range, or ``None``.

    Returns:
        ``(loss, metrics)``: ``value_clipfrac`` (fraction of valid tokens where the clipped error
        is the larger one) and ``explained_variance`` ``1 - Var(R - V) / Var(R)`` of the current
        ``values`` (``0`` when the returns have no variance, rather than ``nan``).
    """
    _same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    if clip is not None and clip < 0:
        raise ValueError(f"value clip must be >= 0 or None; got {clip}")
    valid = _valid(mask)  # [B, T]
    v = _up(values)  # [B, T]
    zero = torch.zeros_like(v)  # [B, T]
    v = torch.where(valid, v, zero)  # [B, T]
    v_old = torch.where(valid, _up(old_values.detach(), v.dtype), zero)  # [B, T]
    ret = torch.where(valid, _up(returns.detach(), v.dtype), zero)  # [B, T]
    err = (v - ret) ** 2  # [B, T]
    if clip is None:
        per_token = err  # [B, T]
        active = torch.zeros_like(valid)  # [B, T]
    else:
        v_clipped = v_old + (v - v_old).clamp(-clip, clip)  # [B, T]
        err_clipped = (v_clipped - ret) ** 2  # [B, T]
        per_token = torch.maximum(err, err_clipped)  # [B, T]
        active = err_clipped > err  # [B, T]
    loss = 0.5 * masked_mean(per_token, valid)  # []
    with torch.no_grad():
        var_ret = masked_var(ret, valid)  # []
        var_res = masked_var(ret - v, valid)  # []
        ev = 1.0 - var_res / var_ret.clamp_min(1e-30)  # []
        ev = torch.where(var_ret > 0, ev, torch.zeros_like(ev))  # []
        metrics = {
            "value_clipfrac": _metric(masked_mean(active, valid)),
            "explained_variance": _metric(ev),
        }
    return loss, metrics


def kl_k3(logp: Tensor, ref_logp: Tensor, mask: Tensor, reduce: bool = True) -> Tensor:
    """k3 estimator of KL(π || π_ref) on the sampled tokens: ``exp(d) - d - 1``, ``d = ref - logp``.

    Unbiased and non-negative per token for samples from π (GRPO's KL term). Not clamped.

    Args:
        logp: ``[B, T]`` log-probs of the current policy (carry the gradient).
        ref_logp: ``[B, T]`` log-probs of the reference policy (detached).
        mask: ``[B, T]`` valid tokens.
        reduce: ``True`` returns the token-mean over valid tokens (0-dim); ``False`` the
            ``[B, T]`` per-token values (``0`` on masked positions), e.g. to aggregate yourself.

    Returns:
        0-dim mean, or ``[B, T]`` per-token KL.
    """
    _same_shape(logp=logp, ref_logp=ref_logp, mask=mask)
    valid = _valid(mask)  # [B, T]
    lp = _up(logp)  # [B, T]
    d = _up(ref_logp.detach(), lp.dtype) - lp  # [B, T]
    d = torch.where(valid, d, torch.zeros_like(d))  # [B, T]
    per_token = torch.exp(d) - d - 1.0  # [B, T]
    return masked_mean(per_token, valid) if reduce else per_token


# --------------------------------------------------------------------------------------------
# MPO (Multi-token Policy Optimization)


def mpo_betas(k: int, beta2: float, decay: float) -> Tensor:
    """MPO window weights: ``β_n = beta2 * decay^(n-2)`` for ``n >= 2``, ``β_1 = 1 - Σ_{n>=2} β_n``.

    Computed in ``float64``, returned as ``float32`` (β_1 first; sums to 1 within 1e-7).
    ``mpo_betas(5, 0.06, 0.8) = [0.82288, 0.06, 0.048, 0.0384, 0.03072]``. ``decay > 1`` is
    accepted as long as β_1 stays non-negative (the paper uses ``0 <= decay <= 1``).

    Args:
        k: window length K (``1`` gives ``[1.0]``: plain PPO).
        beta2: weight of the first MTP term (n = 2), ``>= 0``.
        decay: geometric decay λ of the later terms, ``>= 0`` (not GAE's lambda).

    Returns:
        ``[K]`` ``float32`` weights.

    Raises:
        ValueError: ``k < 1`` or not an int, ``beta2 < 0``, ``decay < 0``, or β_1 < 0.
    """
    k = _window_size(k)
    if not (beta2 >= 0.0 and decay >= 0.0) or beta2 == float("inf") or decay == float("inf"):
        raise ValueError(
            f"beta2 and decay must be finite and >= 0; got beta2={beta2}, decay={decay}"
        )
    powers = torch.arange(k - 1, dtype=torch.float64)  # [K-1]
    tail = beta2 * torch.tensor(float(decay), dtype=torch.float64) ** powers  # [K-1]
    beta1 = 1.0 - float(tail.sum())
    if beta1 < -1e-12:
        raise ValueError(
            f"beta_1 = 1 - sum(beta_2..beta_K) = {beta1:.6g} < 0 for k={k}, beta2={beta2}, decay={decay}; "
            "lower beta2 or decay"
        )
    head = torch.tensor([max(beta1, 0.0)], dtype=torch.float64)  # [1]
    return torch.cat([head, tail]).to(torch.float32)  # [K]


def window_log_ratios(
    token_log_ratio: Tensor, mtp_log_ratio: Tensor | None, k: int, mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Lay out the K per-token log-ratios of each position's window, for :func:`united_log_ratio`.

    ``window[b, t, n-1]`` is log r of the n-th token of the window at t, i.e. of token
    ``t + n - 1``:

    - ``n = 1``: ``token_log_ratio[b, t]`` (the backbone's own token);
    - ``n >= 2``, ``mtp_log_ratio`` given (``ratio_source="mtp"``, the paper):
      ``mtp_log_ratio[b, t, n-2]``, MTP module n-1's log-ratio of token ``t + n - 1``, scored
      at the position that predicts token t;
    - ``n >= 2``, ``mtp_log_ratio=None`` (``ratio_source="backbone"``, mpo-method A2):
      ``token_log_ratio[b, t + n - 1]``, the backbone's exact teacher-forced ratio of that
      token. The gradient then also flows into future tokens' log-probs; detach
      ``token_log_ratio`` beforehand if that is not wanted.

    ``window_mask[b, t, n-1]`` is ``mask[b, t] & mask[b, t + n - 1]`` (``False`` past ``T``):
    the term's token lies inside the row's response. Masked entries of ``window`` are ``0``.

    Args:
        token_log_ratio: ``[B, T]`` backbone ``logp_new - logp_old`` per token.
        mtp_log_ratio: ``[B, T, K-1]`` MTP log-ratios, or ``None`` for the backbone source.
        k: window length K ``>= 1``.
        mask: ``[B, T]`` valid response tokens.

    Returns:
        ``(window [B, T, K], window_mask [B, T, K] bool)``; ``window`` in the compute dtype.
    """
    _same_shape(token_log_ratio=token_log_ratio, mask=mask)
    k = _window_size(k)
    if token_log_ratio.dim() != 2:
        raise ValueError(
            f"token_log_ratio must be [B, T]; got shape {tuple(token_log_ratio.shape)}"
        )
    n_rows, n_steps = token_log_ratio.shape
    if mtp_log_ratio is not None and mtp_log_ratio.shape != (n_rows, n_steps, k - 1):
        raise ValueError(
            f"mtp_log_ratio must have shape ({n_rows}, {n_steps}, {k - 1}) for k={k}; "
            f"got {tuple(mtp_log_ratio.shape)} (slice the modules you use)"
        )
    valid = _valid(mask)  # [B, T]
    lr = _up(token_log_ratio)  # [B, T]
    terms, term_masks = [lr], [valid]
    for n in range(2, k + 1):
        shift = n - 1
        later = torch.zeros_like(valid)  # [B, T]
        later[:, : max(n_steps - shift, 0)] = valid[:, shift:]  # [B, T]
        term_masks.append(valid & later)  # [B, T]
        if mtp_log_ratio is not None:
            terms.append(_up(mtp_log_ratio[:, :, n - 2], lr.dtype))  # [B, T]
        else:
            shifted = torch.zeros_like(lr)  # [B, T]
            shifted[:, : max(n_steps - shift, 0)] = lr[:, shift:]  # [B, T]
            terms.append(shifted)  # [B, T]
    window = torch.stack(terms, dim=-1)  # [B, T, K]
    window_mask = torch.stack(term_masks, dim=-1)  # [B, T, K]
    window = torch.where(window_mask, window, torch.zeros_like(window))  # [B, T, K]
    return window, window_mask


def united_log_ratio(
    token_log_ratio: Tensor,
    betas: Tensor,
    mask: Tensor | None = None,
    renormalize_tail: bool = False,
) -> Tensor:
    """MPO's united log-ratio ``log R̃_t = Σ_n β_n · token_log_ratio[..., t, n-1]`` (Eq. 9).

    ``exp`` of it is R̃, the weighted geometric mean of the window's K token ratios. Masked
    terms (windows running past the end of the response) contribute ``0`` (mpo-method A6), so
    positions near the end degrade towards ``β_1 · log r``; with ``renormalize_tail=True`` the sum
    is divided by the sum of the valid terms' β instead (``0`` where no term is valid).

    Args:
        token_log_ratio: ``[B, T, K]``; ``[..., n-1]`` is log r of the n-th token of the window
            (n = 1 backbone, n >= 2 MTP module n-1); see :func:`window_log_ratios`.
        betas: ``[K]`` weights (:func:`mpo_betas`), cast to the compute dtype.
        mask: ``[B, T, K]`` valid terms, or ``[B, T]`` broadcast over K (that masks whole
            positions, not the tail: use ``window_log_ratios``'s mask for that), or ``None``.
        renormalize_tail: divide by ``Σ`` of the valid terms' β.

    Returns:
        ``[B, T]`` log R̃, in the compute dtype (``float32`` for half-precision input).
    """
    if token_log_ratio.dim() < 1 or betas.shape != token_log_ratio.shape[-1:]:
        raise ValueError(
            f"betas must have shape ({token_log_ratio.shape[-1]},) matching token_log_ratio's last dim; "
            f"got {tuple(betas.shape)}"
        )
    lr = _up(token_log_ratio)  # [B, T, K]
    w = betas.to(device=lr.device, dtype=lr.dtype)  # [K]
    if mask is None:
        valid = torch.ones_like(lr, dtype=torch.bool)  # [B, T, K]
    elif mask.shape == lr.shape:
        valid = _valid(mask)  # [B, T, K]
    elif mask.shape == lr.shape[:-1]:
        valid = _valid(mask).unsqueeze(-1).expand_as(lr)  # [B, T, K]
    else:
        raise ValueError(
            f"mask must have shape {tuple(lr.shape)} or {tuple(lr.shape[:-1])}; got {tuple(mask.shape)}"
        )
    terms = torch.where(valid, lr * w, torch.zeros_like(lr))  # [B, T, K]
    out = terms.sum(dim=-1)  # [B, T]
    if renormalize_tail:
        wsum = torch.where(valid, w.expand_as(lr), torch.zeros_like(lr)).sum(dim=-1)  # [B, T]
        out = torch.where(wsum > 0, out / wsum.clamp_min(1e-30), torch.zeros_like(out))  # [B, T]
    return out


def mtp_warmup_loss(
    mtp_logprobs: Tensor, mtp_mask: Tensor, alphas: Tensor | Sequence[float],
    valid_counts: Tensor | None = None,
) -> tuple[Tensor, Metrics]:
    """Supervised MTP warm-up loss ``-Σ_j α_j · mean_valid(log p_j)`` (mpo-method §1.8, A8).

    Each module's NLL is a token-mean over its own valid entries (a module's last j positions
    have no target), then the modules are weighted by ``alphas``.

    Args:
        mtp_logprobs: ``[B, T, M]`` log-prob module j (``[..., j-1]``) gives its target token.
        mtp_mask: ``[B, T, M]`` valid entries.
        alphas: ``[M]`` per-module weights (e.g. ones, or a decay).
        valid_counts: ``[M]`` valid entries per module in the *whole* batch when this call sees
            one shard of it (data parallel): each module's log-prob sum is divided by it, so
            the shards' losses add up to the whole batch's. Default: this batch's counts.

    Returns:
        ``(loss, metrics)`` with ``mtp/nll_{j}`` for j = 1..M (1-based module index; ``0`` for a
        module with no valid entry).
    """
    _same_shape(mtp_logprobs=mtp_logprobs, mtp_mask=mtp_mask)
    if mtp_logprobs.dim() != 3:
        raise ValueError(f"mtp_logprobs must be [B, T, M]; got shape {tuple(mtp_logprobs.shape)}")
    lp = _up(mtp_logprobs)  # [B, T, M]
    a = torch.as_tensor(alphas, dtype=lp.dtype, device=lp.device)  # [M]
    if a.shape != lp.shape[-1:]:
        raise ValueError(
            f"alphas must have shape ({lp.shape[-1]},), one per module; got {tuple(a.shape)}"
        )
    if valid_counts is None:
        nll = -masked_mean(lp, _valid(mtp_mask), dim=(0, 1))  # [M]
    else:
        counts = torch.as_tensor(valid_counts, dtype=lp.dtype, device=lp.device).clamp(min=1)  # [M]
        nll = -(lp * _valid(mtp_mask)).sum(dim=(0, 1)) / counts  # [M]
    loss = (a * nll).sum()  # []
    metrics = {f"mtp/nll_{j + 1}": _metric(nll[j]) for j in range(nll.shape[0])}
    return loss, metrics


def clip_diagnostics(
    token_log_ratio: Tensor,
    united_log_ratio: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> Metrics:
    """MPO's clipping diagnostics (paper Fig. 4; mpo-method A11), over valid tokens.

    A token's clip decision is "active" when the PPO min picks the clipped term and it differs:
    ``A > 0 and ratio > 1 + clip_high`` or ``A < 0 and ratio < 1 - clip_low``.

    Args:
        token_log_ratio: ``[B, T]`` log r of the token (the backbone, n = 1).
        united_log_ratio: ``[B, T]`` log R̃ (:func:`united_log_ratio`).
        advantages: ``[B, T]``.
        mask: ``[B, T]`` valid tokens.
        clip_low: ε_low.
        clip_high: ε_high.

    Returns:
        Detached 0-dim tensors: ``mpo/clipfrac_united``, ``mpo/clipfrac_token``,
        ``mpo/ratio_var_united``, ``mpo/ratio_var_token`` (unbiased variances of R̃ and r),
        ``mpo/clip_disagreement`` (fraction where the decision on R̃ differs from the one on r)
        and ``mpo/abs_log_ratio_gap`` (mean ``|log R̃ - log r|``).
    """
    _same_shape(
        token_log_ratio=token_log_ratio,
        united_log_ratio=united_log_ratio,
        advantages=advantages,
        mask=mask,
    )
    _check_clip(clip_low, clip_high)
    with torch.no_grad():
        valid = _valid(mask)  # [B, T]
        zero = torch.zeros_like(_up(token_log_ratio))  # [B, T]
        log_r = torch.where(valid, _up(token_log_ratio), zero)  # [B, T]
        log_u = torch.where(valid, _up(united_log_ratio, log_r.dtype), zero)  # [B, T]
        adv = torch.where(valid, _up(advantages, log_r.dtype), zero)  # [B, T]
        r, u = log_r.exp(), log_u.exp()  # [B, T]
        on_token = _clip_active(r, adv, clip_low, clip_high)  # [B, T]
        on_united = _clip_active(u, adv, clip_low, clip_high)  # [B, T]
        out = {
            "mpo/clipfrac_united": masked_mean(on_united, valid),
            "mpo/clipfrac_token": masked_mean(on_token, valid),
            "mpo/ratio_var_united": masked_var(u, valid),
            "mpo/ratio_var_token": masked_var(r, valid),
            "mpo/clip_disagreement": masked_mean(on_united != on_token, valid),
            "mpo/abs_log_ratio_gap": masked_mean((log_u - log_r).abs(), valid),
        }
    return {k: _metric(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# sequence-level ratios: GSPO (Zheng et al. 2025) and GMPO (Zhao et al. 2025)


def _seq_rows(log_ratio: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Checked ``(valid [B, T], log_ratio [B, T] in the compute dtype with 0 on padding)``."""
    _same_shape(log_ratio=log_ratio, mask=mask)
    if log_ratio.dim() != 2:
        raise ValueError(f"log_ratio must be [B, T]; got shape {tuple(log_ratio.shape)}")
    valid = _valid(mask)  # [B, T]
    lr = _up(log_ratio)  # [B, T]
    return valid, torch.where(valid, lr, torch.zeros_like(lr))


def _seq_advantages(seq_advantages: Tensor, lr: Tensor) -> Tensor:
    """``[B]`` advantages, one per response, detached, in ``lr``'s dtype."""
    if seq_advantages.shape != lr.shape[:1]:
        raise ValueError(
            f"advantages must be one per response, shape ({lr.shape[0]},); got {tuple(seq_advantages.shape)}"
        )
    return _up(seq_advantages.detach(), lr.dtype)


def _sequence_metrics(lr: Tensor, seq_ratio: Tensor, valid: Tensor, token_clipped: Tensor) -> Metrics:
    """The four ``clipped_policy_loss`` metric names, for a loss whose ratio is one per response."""
    rows = valid.any(dim=-1)  # [B]
    with torch.no_grad():
        r = lr.detach().exp()  # [B, T]
        return {
            "clipfrac": _metric(masked_mean(token_clipped, valid)),
            "approx_kl": _metric(masked_mean((r - 1.0) - lr.detach(), valid)),
            "ratio_mean": _metric(masked_mean(seq_ratio.detach(), rows)),
            "ratio_var": _metric(masked_var(seq_ratio.detach(), rows)),
        }


def sequence_log_ratio(log_ratio: Tensor, mask: Tensor) -> Tensor:
    """GSPO's length-normalised sequence log-ratio ``log s_i = (1/|o_i|) Σ_t log r_{i,t}``.

    ``s_i = (π_θ(o_i|q) / π_old(o_i|q))^(1/|o_i|)`` is the geometric mean of the response's
    token ratios (Zheng et al. 2025, Eq. 7). A row with no valid token gets ``0`` (``s = 1``).

    Args:
        log_ratio: ``[B, T]`` ``logp_new - logp_old`` per token (carries the gradient).
        mask: ``[B, T]`` valid response tokens.

    Returns:
        ``[B]`` log s_i, in the compute dtype.
    """
    _same_shape(log_ratio=log_ratio, mask=mask)
    if log_ratio.dim() != 2:
        raise ValueError(f"log_ratio must be [B, T]; got shape {tuple(log_ratio.shape)}")
    return masked_mean(log_ratio, mask, dim=-1)


def gspo_policy_loss(
    log_ratio: Tensor,
    seq_advantages: Tensor,
    mask: Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[Tensor, Metrics]:
    """GSPO's sequence-level clipped objective, negated (Zheng et al. 2025, Eq. 5):

    ``loss = -mean_i min(s_i A_i, clip(s_i, 1 - clip_low, 1 + clip_high) A_i)``, with ``s_i`` from
    :func:`sequence_log_ratio`. One ratio, one advantage and one clip decision per response; the
    mean runs over the responses that have at least one valid token. The paper's ranges are
    ``3e-4`` below and ``4e-4`` above (§5.1), not PPO's 0.2: ``s_i`` is a geometric mean, so it
    stays far closer to 1 than a token ratio does.

    Gradient (unclipped rows): ``-A_i s_i (1/|o_i|) Σ_t ∇ log π(o_{i,t})``; a clipped row gives 0.

    Args:
        log_ratio: ``[B, T]`` per-token ``logp_new - logp_old`` (carries the gradient).
        seq_advantages: ``[B]`` one advantage per response (detached).
        mask: ``[B, T]`` valid tokens.
        clip_low: ε_low; the floor of ``s`` is ``1 - clip_low``.
        clip_high: ε_high; the ceiling of ``s`` is ``1 + clip_high``.

    Returns:
        ``(loss, metrics)`` with ``clipfrac`` (fraction of valid *tokens* in clipped responses,
        the quantity GSPO's Fig. 2 plots), ``approx_kl`` (token-level k3 of KL(old || new)),
        ``ratio_mean`` and ``ratio_var`` (of s_i over responses, unbiased).
    """
    valid, lr = _seq_rows(log_ratio, mask)
    adv = _seq_advantages(seq_advantages, lr)  # [B]
    _check_clip(clip_low, clip_high)
    seq = masked_mean(lr, valid, dim=-1)  # [B] log s_i
    ratio = torch.exp(seq)  # [B]
    surrogate = -adv * ratio  # [B]
    surrogate_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [B]
    per_seq = torch.maximum(surrogate, surrogate_clipped)  # [B]
    loss = masked_mean(per_seq, valid.any(dim=-1))  # []
    with torch.no_grad():
        active = _clip_active(ratio, adv, clip_low, clip_high)  # [B]
        metrics = _sequence_metrics(lr, ratio, valid, active[:, None].expand_as(valid))
    return loss, metrics


def gspo_token_policy_loss(
    log_ratio: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[Tensor, Metrics]:
    """GSPO-token, negated (Zheng et al. 2025, Eq. 13-14): per-token advantages, sequence ratio.

    Each token's ratio is ``s_{i,t} = sg[s_i] · π_θ(o_{i,t}) / sg[π_θ(o_{i,t})]``: numerically
    ``s_i``, but with the gradient of the token's own log-prob. The loss is the clipped
    surrogate on ``s_{i,t}`` with ``A_{i,t}``, averaged over each response's tokens, then over
    responses (``seq-mean-token-mean``). With ``A_{i,t} = A_i`` for every token its value *and*
    gradient equal :func:`gspo_policy_loss`'s (the paper's Eq. 17 = Eq. 11).

    Args:
        log_ratio: ``[B, T]`` per-token ``logp_new - logp_old`` (carries the gradient).
        advantages: ``[B, T]`` per-token advantages (detached).
        mask: ``[B, T]`` valid tokens.
        clip_low: ε_low (paper 3e-4).
        clip_high: ε_high (paper 4e-4).

    Returns:
        ``(loss, metrics)`` as :func:`gspo_policy_loss` (``clipfrac`` over valid tokens).
    """
    _same_shape(log_ratio=log_ratio, advantages=advantages, mask=mask)
    valid, lr = _seq_rows(log_ratio, mask)
    _check_clip(clip_low, clip_high)
    adv = _up(advantages.detach(), lr.dtype)  # [B, T]
    adv = torch.where(valid, adv, torch.zeros_like(adv))  # [B, T]
    seq = masked_mean(lr, valid, dim=-1)  # [B] log s_i
    log_token = seq.detach()[:, None] + lr - lr.detach()  # [B, T] value log s_i, gradient of log π_t
    ratio = torch.exp(log_token)  # [B, T]
    surrogate = -adv * ratio  # [B, T]
    surrogate_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [B, T]
    per_token = torch.maximum(surrogate, surrogate_clipped)  # [B, T]
    loss = aggregate_loss(per_token, valid, "seq-mean-token-mean")  # []
    with torch.no_grad():
        active = _clip_active(ratio, adv, clip_low, clip_high)  # [B, T]
        metrics = _sequence_metrics(lr, torch.exp(seq), valid, active)
    return loss, metrics


def gmpo_policy_loss(
    log_ratio: Tensor,
    seq_advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.4,
    clip_high: float = 0.4,
) -> tuple[Tensor, Metrics]:
    """GMPO's objective, negated (Zhao et al. 2025, Eq. 4): the geometric mean of token terms.

    ``J_i = {Π_t |min(r_t A_i, clip(r_t, e^-clip_low, e^clip_high) A_i)|}^(1/|o_i|) · sgn(A_i)``,
    which is ``A_i · exp(mean_t l̃_t)`` with the token log-ratio ``l_t = log r_t`` clipped in
    *log space*, one-sided as in PPO: ``l̃_t = min(l_t, clip(l_t, -clip_low, clip_high))`` when
    ``A_i >= 0`` and ``max(...)`` when ``A_i < 0``. The loss is ``-mean_i J_i`` over responses
    with a valid token. The paper's range is ``(e^-0.4, e^0.4)``, i.e. ``clip_low = clip_high =
    0.4`` here (log units; a token ratio may move by a factor of about 1.49 either way).

    Gradient: ``-A_i exp(mean_t l̃_t) (1/|o_i|) Σ_{t unclipped} ∇ log π(o_{i,t})``; a clipped
    token drops out of the sum but its clipped value still scales the rest.

    Args:
        log_ratio: ``[B, T]`` per-token ``logp_new - logp_old`` (carries the gradient).
        seq_advantages: ``[B]`` one advantage per response (detached).
        mask: ``[B, T]`` valid tokens.
        clip_low: ε_low in log units (``log r`` floor is ``-clip_low`` for ``A < 0``).
        clip_high: ε_high in log units (``log r`` ceiling is ``clip_high`` for ``A > 0``).

    Returns:
        ``(loss, metrics)``: ``clipfrac`` (fraction of valid tokens whose log-ratio the clip
        replaced, ``A != 0``), ``approx_kl`` (token-level k3), ``ratio_mean`` and ``ratio_var``
        of the *unclipped* geometric mean ``s_i = exp(mean_t l_t)`` over responses (as GSPO's,
        so the two compare).
    """
    valid, lr = _seq_rows(log_ratio, mask)
    adv = _seq_advantages(seq_advantages, lr)  # [B]
    if not (clip_low >= 0.0 and clip_high >= 0.0):
        raise ValueError(f"GMPO's log-space clip ranges must be >= 0; got {clip_low}, {clip_high}")
    a = adv[:, None].expand_as(lr)  # [B, T]
    # min(l, clip(l, -lo, hi)) = min(l, hi) and max(l, clip(l, -lo, hi)) = max(l, -lo)
    clipped = torch.where(a >= 0, lr.clamp(max=clip_high), lr.clamp(min=-clip_low))  # [B, T]
    ratio = torch.exp(masked_mean(clipped, valid, dim=-1))  # [B]
    per_seq = -adv * ratio  # [B]
    loss = masked_mean(per_seq, valid.any(dim=-1))  # []
    with torch.no_grad():
        active = ((a > 0) & (lr > clip_high)) | ((a < 0) & (lr < -clip_low))  # [B, T]
        metrics = _sequence_metrics(lr, torch.exp(masked_mean(lr, valid, dim=-1)), valid, active)
    return loss, metrics


def sequence_clip_diagnostics(
    token_log_ratio: Tensor,
    seq_log_ratio: Tensor,
    seq_advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    prefix: str = "gspo",
) -> Metrics:
    """Clip diagnostics of a sequence ratio against the token ratio, named as MPO's.

    The sequence-level counterpart of :func:`clip_diagnostics` (paper Fig. 4 of the MPO paper:
    ratio variance and clip fraction), with ``seq`` in place of ``united``. A decision is
    "active" as in PPO: ``A > 0 and ratio > 1 + clip_high`` or ``A < 0 and ratio < 1 - clip_low``;
    the sequence's decision applies to all its tokens. For GMPO (log-space token clip ±ε) pass
    ``clip_low = 1 - e^-ε`` and ``clip_high = e^ε - 1`` so the token decisions are GMPO's own.

    Args:
        token_log_ratio: ``[B, T]`` log r of each token.
        seq_log_ratio: ``[B]`` log s_i (:func:`sequence_log_ratio`).
        seq_advantages: ``[B]`` one advantage per response.
        mask: ``[B, T]`` valid tokens.
        clip_low: ε_low of the ratio (not in log units).
        clip_high: ε_high of the ratio.
        prefix: metric namespace (``"gspo"``, ``"gmpo"``).

    Returns:
        Detached 0-dim tensors ``{prefix}/clipfrac_seq`` (fraction of responses, with a valid
        token, whose sequence decision is active), ``{prefix}/clipfrac_token`` (fraction of valid
        tokens whose token decision would be active), ``{prefix}/ratio_var_seq`` (unbiased
        variance of s_i over responses), ``{prefix}/ratio_var_token`` (of r over valid tokens),
        ``{prefix}/clip_disagreement`` (fraction of valid tokens where the two decisions differ)
        and ``{prefix}/abs_log_ratio_gap`` (mean ``|log s_i - log r_t|`` over valid tokens).
    """
    valid, log_r = _seq_rows(token_log_ratio, mask)
    adv = _seq_advantages(seq_advantages, log_r)  # [B]
    if seq_log_ratio.shape != adv.shape:
        raise ValueError(f"seq_log_ratio must have shape {tuple(adv.shape)}; got {tuple(seq_log_ratio.shape)}")
    _check_clip(clip_low, clip_high)
    with torch.no_grad():
        log_r = log_r.detach()  # [B, T]
        log_s = _up(seq_log_ratio.detach(), log_r.dtype)  # [B]
        rows = valid.any(dim=-1)  # [B]
        a = adv[:, None].expand_as(log_r)  # [B, T]
        s = log_s.exp()  # [B]
        on_seq = _clip_active(s, adv, clip_low, clip_high)  # [B]
        on_token = _clip_active(log_r.exp(), a, clip_low, clip_high)  # [B, T]
        out = {
            f"{prefix}/clipfrac_seq": masked_mean(on_seq, rows),
            f"{prefix}/clipfrac_token": masked_mean(on_token, valid),
            f"{prefix}/ratio_var_seq": masked_var(s, rows),
            f"{prefix}/ratio_var_token": masked_var(log_r.exp(), valid),
            f"{prefix}/clip_disagreement": masked_mean(on_seq[:, None] != on_token, valid),
            f"{prefix}/abs_log_ratio_gap": masked_mean((log_s[:, None] - log_r).abs(), valid),
        }
    return {k: _metric(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# the third wave's baselines: REINFORCE++, DAPO, CISPO, windowed GMPO


def reinforcepp_returns(rewards: Tensor, kl: Tensor, mask: Tensor, kl_coef: float, gamma: float = 1.0) -> Tensor:
    """REINFORCE++'s token returns with the KL penalty in the reward (Hu et al. 2025, Eq. 8-9).

    ``G_t = Σ_{s >= t} γ^(s-t) (r_s - kl_coef · kl_s)`` over the row's valid positions, where
    ``r_s`` is the env's reward on token s (the verifier's on the last token) and ``kl_s`` the
    per-token KL estimate, in the paper ``log π_old(o_s) - log π_ref(o_s)`` (k1). No
    normalisation here: REINFORCE++ whitens ``G`` over the global batch afterwards
    (:func:`masked_whiten`). This is :func:`gae` with zero values and ``lam = 1``.

    Args:
        rewards: ``[B, T]`` per-token env rewards.
        kl: ``[B, T]`` per-token KL to the reference (detached).
        mask: ``[B, T]`` valid response tokens.
        kl_coef: β >= 0.
        gamma: discount in ``[0, 1]`` (1 in the paper).

    Returns:
        ``[B, T]`` returns (detached, ``0`` on masked positions).
    """
    _same_shape(rewards=rewards, kl=kl, mask=mask)
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0; got {kl_coef}")
    valid = _valid(mask)  # [B, T]
    r = _up(rewards.detach())  # [B, T]
    d = torch.where(valid, _up(kl.detach(), r.dtype), torch.zeros_like(r))  # [B, T]
    shaped = r - kl_coef * d  # [B, T]
    returns, _ = gae(shaped, torch.zeros_like(shaped), valid, gamma, 1.0)  # [B, T]
    return returns


def varied_groups(rewards: Tensor, group_size: int) -> Tensor:
    """DAPO's dynamic-sampling test: which groups' rewards are not all equal (Yu et al. 2025, Eq. 11).

    A group whose G rewards are equal (all correct, all wrong) has zero group-relative
    advantage everywhere, so it carries no gradient; DAPO drops it. Exact comparison.

    Args:
        rewards: ``[N]`` one reward per response, consecutive groups of ``group_size``.
        group_size: G >= 1 dividing N.

    Returns:
        ``[N / G]`` bool, True where the group's rewards differ.
    """
    g = _window_size(group_size)
    if rewards.dim() != 1 or rewards.shape[0] % g:
        raise ValueError(f"rewards must be [N] with N a multiple of {g}; got shape {tuple(rewards.shape)}")
    groups = rewards.detach().reshape(-1, g)  # [N/G, G]
    return groups.amax(dim=1) > groups.amin(dim=1)  # [N/G]


def overlong_penalty(length: int, max_length: int, cache_length: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13), times ``factor``.

    ``0`` for ``length <= max_length - cache_length``; ``((max_length - cache_length) - length) /
    cache_length`` inside the last ``cache_length`` tokens (falling linearly from 0 to -1);
    ``-1`` past ``max_length``.

    Args:
        length: response length |y| in tokens.
        max_length: L_max.
        cache_length: L_cache, the punished stretch before L_max (``0 < cache_length <= max_length``).
        factor: scale of the penalty (1 in the paper).

    Returns:
        The penalty (<= 0), added to the episode's reward.
    """
    if not 0 < cache_length <= max_length:
        raise ValueError(f"need 0 < cache_length <= max_length; got {cache_length} and {max_length}")
    expected = max_length - cache_length
    if length <= expected:
        return 0.0
    if length <= max_length:
        return factor * (expected - length) / cache_length
    return -factor


def cispo_policy_loss(
    log_ratio: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 1.0,
    clip_high: float = 5.0,
    aggregation: str = "token-mean",
    max_len: int | None = None,
) -> tuple[Tensor, Metrics]:
    """CISPO, negated (MiniMax-M1, Chen et al. 2025, Eq. 4-5): REINFORCE with a clipped,
    gradient-stopped importance weight on every token.

    ``loss = -agg( sg(ŵ_t) · A_t · log r_t )``, ``ŵ_t = clip(r_t, 1 - clip_low, 1 + clip_high)``.
    Its gradient is ``-agg(ŵ_t A_t ∇ log π(o_t))``: every token keeps a gradient (PPO's clip
    drops the clipped tokens'), only its weight is bounded. The paper writes ``log π_θ(o_t)``
    where this uses ``log r_t = log π_θ - log π_old``: the same gradient, and a value that is 0
    on-policy. The paper sets no lower bound (``clip_low = 1``: the floor is 0) and tunes
    ``clip_high`` only; ``clip_high = inf`` is no clip (plain importance weights).

    Args:
        log_ratio: ``[B, T]`` ``logp_new - logp_old`` (carries the gradient).
        advantages: ``[B, T]`` (detached).
        mask: ``[B, T]`` valid tokens.
        clip_low: ε_low in ``[0, 1]``; the weight floor is ``1 - clip_low``.
        clip_high: ε_high ``>= 0`` (``inf`` allowed); the weight ceiling is ``1 + clip_high``.
        aggregation: see :func:`aggregate_loss` (the paper: ``"token-mean"``).
        max_len: the Dr.GRPO constant for ``"seq-mean-token-sum-norm"``.

    Returns:
        ``(loss, metrics)``: ``clipfrac`` (fraction of valid tokens whose weight the clip
        changed, either side, whatever the advantage), ``approx_kl``, ``ratio_mean``, ``ratio_var``.
    """
    _same_shape(log_ratio=log_ratio, advantages=advantages, mask=mask)
    if not (0.0 <= clip_low <= 1.0 and clip_high >= 0.0):
        raise ValueError(f"CISPO needs 0 <= clip_low <= 1 and clip_high >= 0; got {clip_low}, {clip_high}")
    valid = _valid(mask)  # [B, T]
    lr = _up(log_ratio)  # [B, T]
    lr = torch.where(valid, lr, torch.zeros_like(lr))  # [B, T]
    adv = _up(advantages.detach(), lr.dtype)  # [B, T]
    adv = torch.where(valid, adv, torch.zeros_like(adv))  # [B, T]
    ratio = torch.exp(lr.detach())  # [B, T]
    weight = ratio.clamp(min=1.0 - clip_low, max=1.0 + clip_high)  # [B, T] sg(ŵ)
    per_token = -weight * adv * lr  # [B, T]
    loss = aggregate_loss(per_token, valid, aggregation, max_len)  # []
    with torch.no_grad():
        metrics = {
            "clipfrac": _metric(masked_mean(weight != ratio, valid)),
            "approx_kl": _metric(masked_mean((ratio - 1.0) - lr.detach(), valid)),
            "ratio_mean": _metric(masked_mean(ratio, valid)),
            "ratio_var": _metric(masked_var(ratio, valid)),
        }
    return loss, metrics


def wgmpo_log_ratio(
    log_ratio: Tensor, advantages: Tensor, mask: Tensor, k: int, clip_low: float = 0.4, clip_high: float = 0.4
) -> tuple[Tensor, Tensor]:
    """Windowed GMPO's log-ratio: the mean of the K log-clipped token log-ratios of each window.

    For position t with advantage ``A_t``, each term ``l_{t+n-1}`` (n = 1..K, the tokens of the
    window inside the response) is clipped in log space on the side PPO clips, as GMPO clips a
    token (Zhao et al. 2025, Eq. 4): ``min(l, clip_high)`` for ``A_t >= 0``, ``max(l, -clip_low)``
    for ``A_t < 0``; then ``log R_t = mean_n l̃_{t,n}`` over the valid terms (a geometric mean of
    the clipped window ratios). ``k = 1``: ``log R_t = l̃_t``, GMPO's token term alone.

    Args:
        log_ratio: ``[B, T]`` ``logp_new - logp_old`` (carries the gradient, into every term).
        advantages: ``[B, T]`` per-token advantages (detached; only their sign is read here).
        mask: ``[B, T]`` valid tokens.
        k: window length K >= 1.
        clip_low: ε_low in log units (>= 0).
        clip_high: ε_high in log units (>= 0).

    Returns:
        ``(log R [B, T], clipped [B, T, K] bool)``: the combined log-ratio (``0`` on padding) and
        which valid window terms the clip replaced (``A != 0``).
    """
    _same_shape(log_ratio=log_ratio, advantages=advantages, mask=mask)
    if not (clip_low >= 0.0 and clip_high >= 0.0):
        raise ValueError(f"windowed GMPO's log-space clip ranges must be >= 0; got {clip_low}, {clip_high}")
    valid, lr = _seq_rows(log_ratio, mask)
    adv = _up(advantages.detach(), lr.dtype)  # [B, T]
    a = torch.where(valid, adv, torch.zeros_like(adv))[..., None]  # [B, T, 1]
    window, window_mask = window_log_ratios(lr, None, k, valid)  # [B, T, K] x2
    clipped = torch.where(a >= 0, window.clamp(max=clip_high), window.clamp(min=-clip_low))  # [B, T, K]
    weights = torch.ones(window.shape[-1], dtype=lr.dtype, device=lr.device)  # [K] a plain mean
    combined = united_log_ratio(clipped, weights, window_mask, renormalize_tail=True)  # [B, T]
    with torch.no_grad():
        active = window_mask & (((a > 0) & (window > clip_high)) | ((a < 0) & (window < -clip_low)))  # [B, T, K]
    return combined, active


def wgmpo_policy_loss(
    log_ratio: Tensor,
    advantages: Tensor,
    mask: Tensor,
    k: int,
    clip_low: float = 0.4,
    clip_high: float = 0.4,
    aggregation: str = "seq-mean-token-mean",
    max_len: int | None = None,
) -> tuple[Tensor, Metrics]:
    """Windowed GMPO, negated: ``loss = -agg(A_t · exp(log R_t))`` with :func:`wgmpo_log_ratio`.

    ``k = 1`` is GMPO's objective per token, ``-agg(A_t · exp(l̃_t))``: the PPO clipped
    surrogate with the ratio bounds ``(e^-clip_low, e^clip_high)`` (value and gradient; tested).
    A clipped term is a constant: it passes no gradient but still scales its window.

    Args:
        log_ratio: ``[B, T]`` ``logp_new - logp_old`` (carries the gradient).
        advantages: ``[B, T]`` (detached).
        mask: ``[B, T]`` valid tokens.
        k: window length K >= 1.
        clip_low: ε_low in log units.
        clip_high: ε_high in log units.
        aggregation: see :func:`aggregate_loss` (default GMPO's mean over responses).
        max_len: the Dr.GRPO constant for ``"seq-mean-token-sum-norm"``.

    Returns:
        ``(loss, metrics)``: ``clipfrac`` (fraction of valid window terms clipped),
        ``approx_kl`` (token-level k3), ``ratio_mean`` and ``ratio_var`` of the combined ratio R_t.
    """
    combined, active = wgmpo_log_ratio(log_ratio, advantages, mask, k, clip_low, clip_high)
    valid, lr = _seq_rows(log_ratio, mask)
    adv = torch.where(valid, _up(advantages.detach(), lr.dtype), torch.zeros_like(lr))  # [B, T]
    ratio = torch.exp(combined)  # [B, T]
    per_token = -adv * ratio  # [B, T]
    loss = aggregate_loss(per_token, valid, aggregation, max_len)  # []
    with torch.no_grad():
        terms = window_log_ratios(lr, None, k, valid)[1]  # [B, T, K] valid window terms
        r = lr.detach().exp()  # [B, T]
        metrics = {
            "clipfrac": _metric(masked_mean(active, terms)),
            "approx_kl": _metric(masked_mean((r - 1.0) - lr.detach(), valid)),
            "ratio_mean": _metric(masked_mean(ratio.detach(), valid)),
            "ratio_var": _metric(masked_var(ratio.detach(), valid)),
        }
    return loss, metrics
