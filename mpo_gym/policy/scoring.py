"""Chunked log-softmax + gather over selected positions, and value/critic heads.

:func:`chunked_token_logprobs` applies an LM head to a few hundred positions at a time, so the
full ``[B, T, V]`` logits tensor never exists. Under autograd, when the positions span more
than one chunk, each chunk is checkpointed (its logits are recomputed in the backward pass), so
peak memory stays ``O(chunk * V)`` for the backward too; a single chunk keeps its logits for the
backward instead (the same ``O(chunk * V)``, without a second head product).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["CriticModel", "LinearHead", "ValueHead", "chunked_token_logprobs", "decoder_hidden_states",
           "position_ids_from_mask", "shared_head_length"]

MIN_SHARED_HEAD = 8  # shortest common prompt head worth encoding once for all rows


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` position ids ``cumsum(mask) - 1`` (0 on left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def shared_head_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                       min_len: int = MIN_SHARED_HEAD) -> int:
    """Tokens at the start of every row's prompt that all rows share (0 if fewer than ``min_len``).

    The prompts are left-padded to ``prompt_len``; every row keeps at least one prompt token of
    its own (so the position that predicts the first response token is a row's own). A batch
    of one row shares nothing.
    """
    if input_ids.shape[0] < 2:
        return 0
    lengths = attention_mask[:, :prompt_len].long().sum(-1)  # [B] prompt tokens per row
    width = int(lengths.min()) - 1
    if width < min_len:
        return 0
    start = prompt_len - lengths  # [B] first prompt token of each row
    cols = start[:, None] + torch.arange(width, device=input_ids.device)[None]  # [B, width]
    aligned = input_ids.gather(1, cols)  # [B, width] each row's prompt from its first token
    same = (aligned == aligned[:1]).all(0)  # [width]
    shared = int(same.long().cumprod(0).sum())
    return shared if shared >= min_len else 0


def cache_kwarg(module: Any) -> str:
    """The name ``module.forward`` takes a KV cache under (``cache``, or ``past_key_values``
    in older ``transformers``)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def decoder_hidden_states(decoder: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          position_ids: torch.Tensor, prompt_len: int, share_head: bool = True) -> torch.Tensor:
    """The decoder's last hidden states ``[B, L, d]`` of left-padded prompts + responses.

    When the rows' prompts start with a common head (a system prompt, an example turn; see
    :func:`shared_head_length`), the head is encoded once and its KV cache repeated for every
    row; the rest of each row (its padding, own prompt tail and response) follows it, so the
    mask has a hole where the padding is and positions count only unmasked tokens. Under
    autograd the head's gradient is the sum over the rows, as in a full forward: the hidden
    states and their gradients equal those of one forward over every row up to floating-point
    reduction order, for a fraction of the compute when the head is most of the sequence.
    Falls back to the full forward for a cache type without batch expansion.
    """
    H = shared_head_length(input_ids, attention_mask, prompt_len) if share_head else 0
    full = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, "use_cache": False}
    if H == 0:
        return decoder(**full).last_hidden_state
    B, L = input_ids.shape
    device = input_ids.device
    start = prompt_len - attention_mask[:, :prompt_len].long().sum(-1)  # [B] where each row's prompt starts
    cols = torch.arange(L, device=device)[None]  # [1, L]
    in_head = (cols >= start[:, None]) & (cols < start[:, None] + H)  # [B, L]
    first = int(start[0])
    head = input_ids[:1, first:first + H]  # [1, H]
    out = decoder(input_ids=head, attention_mask=torch.ones_like(head),
                  position_ids=torch.arange(H, device=device)[None], use_cache=True)
    cache_kw = cache_kwarg(decoder)
    cache = getattr(out, cache_kw, None)
    cache = out.past_key_values if cache is None else cache
    if not hasattr(cache, "batch_repeat_interleave"):
        return decoder(**full).last_hidden_state
    cache.batch_repeat_interleave(B)
    keep = ~in_head
    rest_ids = input_ids[keep].view(B, L - H)  # [B, L-H] the rows with their head taken out
    mask = torch.cat([torch.ones(B, H, dtype=attention_mask.dtype, device=device),
                      attention_mask[keep].view(B, L - H)], dim=1)  # [B, L]
    rest = decoder(input_ids=rest_ids, attention_mask=mask, position_ids=position_ids[keep].view(B, L - H),
                   use_cache=True, **{cache_kw: cache}).last_hidden_state  # [B, L-H, d]
    d = rest.shape[-1]
    source = torch.cat([out.last_hidden_state.expand(B, H, d), rest], dim=1)  # [B, H + L-H, d]
    # back to the input's layout: a head position reads the head, any other its slot in `rest`
    index = torch.where(in_head, cols - start[:, None], torch.where(cols < start[:, None], H + cols, cols))  # [B, L]
    return source.gather(1, index[:, :, None].expand(B, L, d))


class LinearHead:
    """An LM head given by its weight ``[V, d]`` and bias (e.g. detached views of a shared head)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight, self.bias = weight, bias

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(h, self.weight, self.bias)


class _LinearLogprob(torch.autograd.Function):
    """``log softmax((h W^T + b) / τ)[target]`` with a hand-written backward.

    Autograd would keep the logits and build the softmax, a scatter of the target and their
    sum as separate ``[N, V]`` tensors in the backward; this keeps the softmax (one float32
    ``[N, V]`` tensor) and the backward is ``(onehot - p) / τ`` and two matrix products. The
    products run in the dtype the forward's ``linear`` ran in (bf16 under autocast).
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, temperature: float) -> torch.Tensor:
        logits = nn.functional.linear(h, weight, bias)  # [N, V], autocast applies here
        ctx.compute_dtype = logits.dtype
        logits = logits.float()
        if temperature != 1.0:
            logits = logits.div_(temperature)
        lse = logits.logsumexp(-1)  # [N]
        logp = logits.gather(-1, targets[:, None]).squeeze(-1) - lse  # [N]
        probs = logits.sub_(lse[:, None]).exp_()  # [N, V] softmax, in place of the logits
        ctx.save_for_backward(h, weight, probs, targets)
        ctx.has_bias, ctx.temperature = bias is not None, temperature
        return logp

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, weight, probs, targets = ctx.saved_tensors
        grad = grad.float()
        dlogits = probs * -grad[:, None]  # [N, V]
        dlogits.scatter_add_(1, targets[:, None], grad[:, None])  # (onehot - p) * grad
        if ctx.temperature != 1.0:
            dlogits.div_(ctx.temperature)
        dl = dlogits.to(ctx.compute_dtype)
        dh = dw = db = None
        if ctx.needs_input_grad[0]:
            dh = (dl @ weight.to(ctx.compute_dtype)).to(h.dtype)  # [N, d]
        if ctx.needs_input_grad[1]:
            dw = (dl.t() @ h.to(ctx.compute_dtype)).to(weight.dtype)  # [V, d]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dlogits.sum(0).to(weight.dtype)  # [V]
        return dh, dw, db, None, None


def _linear_parts(head: Any) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(weight, bias)`` of a plain linear head, or ``None`` for any other module."""
    if type(head) is nn.Linear or isinstance(head, LinearHead):
        return head.weight, head.bias
    return None


def _logprob_chunk(head: nn.Module, h: torch.Tensor, targets: torch.Tensor, temperature: float,
                   want_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    parts = _linear_parts(head)
    if parts is not None and not want_entropy:
        logp = _LinearLogprob.apply(h, parts[0], parts[1], targets, temperature)  # [N]
        return logp, torch.zeros_like(logp)
    logits = head(h).float()  # [N, V]
    if temperature != 1.0:
        logits = logits / temperature
    lse = logits.logsumexp(-1)  # [N]
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - lse  # [N]
    if not want_entropy:
        return logp, torch.zeros_like(logp)
    probs = (logits - lse[:, None]).exp()  # [N, V]
    return logp, lse - (probs * logits).sum(-1)


def chunked_token_logprobs(
    head: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    entropy: bool = False,
    chunk_size: int = 512,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropy) of ``targets`` under ``softmax(head(hidden) / temperature)``.

    Args:
        head: maps ``[N, d]`` hidden states to ``[N, V]`` logits.
        hidden: ``[B, T, d]``.
        targets: ``[B, T]`` token ids.
        mask: ``[B, T]`` bool, positions to compute; the others are 0 in the outputs.
        temperature: logits are divided by it.
        entropy: also return the entropy of each position's distribution.
        chunk_size: positions per head application (with several chunks under autograd, each
            chunk's logits are recomputed in the backward pass).

    Returns:
        ``(logprobs [B, T] float32, entropy [B, T] float32 or None)``.
    """
    sel_h = hidden[mask]  # [N, d]
    sel_t = targets[mask]  # [N]
    needs_grad = torch.is_grad_enabled() and (sel_h.requires_grad or _has_grad_params(head))
    use_ckpt = needs_grad and sel_h.shape[0] > chunk_size  # one chunk: keep its logits instead
    lps, ents = [], []
    for start in range(0, sel_h.shape[0], chunk_size):
        args = (head, sel_h[start:start + chunk_size], sel_t[start:start + chunk_size],
                temperature, entropy)
        lp, ent = checkpoint(_logprob_chunk, *args, use_reentrant=False) if use_ckpt else _logprob_chunk(*args)  # type: ignore[arg-type]
        lps.append(lp)
        ents.append(ent)
    out_lp = hidden.new_zeros(mask.shape, dtype=torch.float32)  # [B, T]
    if lps:
        out_lp = out_lp.masked_scatter(mask, torch.cat(lps))
    if not entropy:
        return out_lp, None
    out_ent = hidden.new_zeros(mask.shape, dtype=torch.float32)  # [B, T]
    if ents:
        out_ent = out_ent.masked_scatter(mask, torch.cat(ents))
    return out_lp, out_ent


def _has_grad_params(module: Any) -> bool:
    if isinstance(module, LinearHead):
        return module.weight.requires_grad or (module.bias is not None and module.bias.requires_grad)
    return isinstance(module, nn.Module) and any(p.requires_grad for p in module.parameters())


class ValueHead(nn.Module):
    """``Linear(d -> 1)`` on the backbone's final (normed) hidden state (kept in float32)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        with torch.no_grad():
            nn.init.normal_(self.linear.weight, std=hidden_size**-0.5 * 0.1)
            self.linear.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, L, d]`` -> ``[B, L]`` float32 values."""
        return self.linear(hidden.to(self.linear.weight.dtype)).float().squeeze(-1)


class CriticModel(nn.Module):
    """A separate critic: a small decoder (own weights) plus a :class:`ValueHead`.

    Built either from a given model (its decoder is used), or as a copy of the backbone's
    config with ``num_layers`` layers, initialised from the backbone's embedding, first
    ``num_layers`` layers and final norm.
    """

    def __init__(self, backbone: Any, num_layers: int = 2, model: Any | None = None):
        super().__init__()
        if model is not None:
            self.body = model.get_decoder() if hasattr(model, "get_decoder") else model
        else:
            self.body = _truncated_decoder(backbone, num_layers)
        self.head = ValueHead(int(self.body.config.hidden_size))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, prompt_len: int = 0, share_head: bool = True) -> torch.Tensor:
        """``[B, L]`` ids -> ``[B, L]`` values (value of the state after each position).

        With ``prompt_len`` the prompts' common head is encoded once (:func:`decoder_hidden_states`).
        """
        return self.head(decoder_hidden_states(self.body, input_ids, attention_mask, position_ids,
                                               prompt_len, share_head))


def _truncated_decoder(backbone: Any, num_layers: int) -> nn.Module:
    decoder = backbone.get_decoder()
    config = copy.deepcopy(decoder.config)
    config.num_hidden_layers = max(1, min(int(num_layers), config.num_hidden_layers))
    if hasattr(config, "layer_types") and config.layer_types is not None:
        config.layer_types = config.layer_types[: config.num_hidden_layers]
    body = type(decoder)(config)
    body.load_state_dict(decoder.state_dict(), strict=False)
    return body.to(next(decoder.parameters()).dtype)
