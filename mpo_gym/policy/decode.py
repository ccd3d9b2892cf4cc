"""A decode loop without per-step overhead, for Llama-like decoders (Llama, Mistral, Qwen2).

:class:`StaticDecoder` is the engine :class:`~mpo_gym.policy.BlockSampler` uses by default
(``engine="static"``; ``engine="hf"`` is the ``transformers`` forward with its
``DynamicCache``). Per generated token it runs one hand-written forward of the decoder:

- a **preallocated KV cache** (one ``[layers, 2, B, kv_heads, capacity, head_dim]`` tensor):
  each step writes one column in place, where ``DynamicCache`` concatenates (copies) every
  layer's whole cache; the capacity doubles when full (amortised, rare);
- the **weights as the loop reads them** (:class:`DecodeWeights`): q/k/v and gate/up fused into
  one matrix each (two products per layer fewer), in the compute dtype (a ``bfloat16`` copy
  under bf16, so no autocast cast per rollout). The copy is scoped to the weights it was made
  from: :meth:`DecodeWeights.matches` compares each parameter's storage and in-place version
  counter (an optimizer step, ``load_state_dict`` or an edit under ``no_grad`` all bump it), and
  :func:`decode_weights` rebuilds a stale copy (timed as the ``weight_refresh`` phase);
- one rotary table, one attention mask and one position vector per step for all layers, and no
  module dispatch, kwargs plumbing or mask building per layer.

Numerics follow ``transformers``' own code for these models, operation by operation, in
both dtypes: the residual stream and RMSNorm in the parameters' dtype (float32 under bf16
autocast), products and attention in the compute dtype, rotary in float32 for float32
keys. The logits equal the ``transformers`` forward's up to floating-point reduction order (a
fused product may block its sums differently): ~1e-6 in float32.

The prefill runs the same code over many positions (causal + padding mask, each query also sees
itself, so a left-padding row stays finite). The prompts' common head is encoded once and its
cache repeated per row, as the ``hf`` engine does.

What it does not do: other architectures (Gemma's norms, Qwen3's q/k norms, sliding windows,
soft-capping), peft-wrapped layers (LoRA: use ``engine="hf"``, which the default picks), FSDP
or tensor-parallel (DTensor) weights, gradients (inference only).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .. import timing

__all__ = ["DecodeWeights", "StaticDecoder", "decode_weights", "unsupported_reason"]

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
MIN_RESERVE = 64  # cache columns allocated beyond the prefill when no budget is known


def unsupported_reason(lm: Any) -> str | None:
    """Why :class:`StaticDecoder` cannot run ``lm`` (a ``transformers`` causal LM), or ``None``."""
    config = getattr(lm, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {SUPPORTED_MODEL_TYPES}"
    if getattr(config, "hidden_act", None) != "silu":
        return f"activation {getattr(config, 'hidden_act', None)!r} is not silu"
    if getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    try:
        decoder = lm.get_decoder()
        head = lm.get_output_embeddings()
        layers = list(decoder.layers[: config.num_hidden_layers])  # type: ignore[union-attr]
        parts = [decoder.embed_tokens, decoder.norm, decoder.rotary_emb, head]
    except AttributeError as exc:
        return f"not a Llama-like decoder ({exc})"
    if type(head) is not nn.Linear:
        return f"output head is a {type(head).__name__}"
    if any(not _is_rms_norm(n) for n in [decoder.norm] + [ln for layer in layers for ln in
                                                          (layer.input_layernorm, layer.post_attention_layernorm)]):
        return "a norm that is not Llama's RMSNorm"
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        if any(type(m) is not nn.Linear for m in linears):
            return "a projection that is not a plain nn.Linear (peft adapters?)"
        if any(hasattr(attn, name) for name in ("q_norm", "k_norm")):
            return "query/key norms"
    for p in [p for m in parts + layers for p in m.parameters()]:
        if type(p.data) is not torch.Tensor:
            return f"a {type(p.data).__name__} parameter (sharded?)"
    if any(type(m).__module__.startswith("torch.distributed") for m in lm.modules()):
        return "a distributed (FSDP) module"
    return None


def _is_rms_norm(norm: Any) -> bool:
    return (type(norm).__name__.endswith("RMSNorm") and "Gemma" not in type(norm).__name__
            and hasattr(norm, "variance_epsilon") and isinstance(getattr(norm, "weight", None), torch.Tensor))


@dataclass
class _Layer:
    ln1: torch.Tensor  # [d] in the parameter dtype
    eps1: float
    wqkv: torch.Tensor  # [(H + 2 KV) hd, d] in the compute dtype
    bqkv: torch.Tensor | None
    wo: torch.Tensor  # [d, H hd]
    bo: torch.Tensor | None
    ln2: torch.Tensor
    eps2: float
    wgu: torch.Tensor  # [2 I, d]
    bgu: torch.Tensor | None
    wd: torch.Tensor  # [d, I]
    bd: torch.Tensor | None


def _cat(tensors: list[torch.Tensor | None], rows: list[int], dtype: torch.dtype) -> torch.Tensor | None:
    """Row-wise concatenation in ``dtype`` (biases: ``None`` when none has one, zeros for missing)."""
    if all(t is None for t in tensors):
        return None
    ref = next(t for t in tensors if t is not None)
    parts = [t.detach().to(dtype) if t is not None else ref.new_zeros((n, *ref.shape[1:]), dtype=dtype)
             for t, n in zip(tensors, rows)]
    return torch.cat(parts, 0)


def _as(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``t`` detached in ``dtype`` (a view of the parameter when it already is)."""
    return None if t is None else t.detach().to(dtype)


class DecodeWeights:
    """The decoder's weights as :class:`StaticDecoder` reads them (see module doc).

    Args:
        lm: a supported causal LM (:func:`unsupported_reason` is ``None``).
        compute_dtype: the products' dtype (``torch.float32`` or ``torch.bfloat16``). The
            residual stream and the norms stay in the parameters' dtype, as under autocast.

    Attributes:
        nbytes: bytes held beyond the model's own parameters (fused and cast copies).
    """

    def __init__(self, lm: Any, compute_dtype: torch.dtype):
        config = lm.config
        decoder = lm.get_decoder()
        self.params = [p for p in lm.parameters()]
        self.key = _weights_key(self.params)
        self.compute_dtype = compute_dtype
        self.residual_dtype = decoder.embed_tokens.weight.dtype
        mm = compute_dtype
        layers = list(decoder.layers[: config.num_hidden_layers])
        attn0 = layers[0].self_attn
        self.head_dim = int(getattr(attn0, "head_dim", config.hidden_size // config.num_attention_heads))
        self.n_heads = int(config.num_attention_heads)
        self.n_kv = int(config.num_key_value_heads)
        self.scaling = float(attn0.scaling)
        self.embed = decoder.embed_tokens.weight.detach()  # [V, d]
        self.rotary = decoder.rotary_emb
        self.norm, self.norm_eps = decoder.norm.weight.detach(), float(decoder.norm.variance_epsilon)
        head = lm.get_output_embeddings()
        self.head: torch.Tensor = head.weight.detach().to(mm)  # [V, d]
        self.head_bias = _as(head.bias, mm)
        self.layers: list[_Layer] = []
        for layer in layers:
            a, m = layer.self_attn, layer.mlp
            qkv_rows = [a.q_proj.out_features, a.k_proj.out_features, a.v_proj.out_features]
            gu_rows = [m.gate_proj.out_features, m.up_proj.out_features]
            self.layers.append(_Layer(
                ln1=layer.input_layernorm.weight.detach(), eps1=float(layer.input_layernorm.variance_epsilon),
                wqkv=_cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], qkv_rows, mm),  # type: ignore[arg-type]
                bqkv=_cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias], qkv_rows, mm),
                wo=_as(a.o_proj.weight, mm), bo=_as(a.o_proj.bias, mm),  # type: ignore[arg-type]
                ln2=layer.post_attention_layernorm.weight.detach(),
                eps2=float(layer.post_attention_layernorm.variance_epsilon),
                wgu=_cat([m.gate_proj.weight, m.up_proj.weight], gu_rows, mm),  # type: ignore[arg-type]
                bgu=_cat([m.gate_proj.bias, m.up_proj.bias], gu_rows, mm),
                wd=_as(m.down_proj.weight, mm), bd=_as(m.down_proj.bias, mm),  # type: ignore[arg-type]
            ))
        own = {p.data_ptr() for p in self.params}
        tensors = [self.head, self.head_bias] + [t for layer in self.layers for t in vars(layer).values()
                                                 if isinstance(t, torch.Tensor)]
        self.nbytes = sum(t.numel() * t.element_size() for t in tensors
                          if t is not None and t.data_ptr() not in own)

    def matches(self, lm: Any) -> bool:
        """Whether ``lm``'s parameters are still the ones (storage and version) this was made from."""
        params = [p for p in lm.parameters()]
        return len(params) == len(self.params) and all(a is b for a, b in zip(params, self.params)) \
            and _weights_key(params) == self.key


def _weights_key(params: list[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    """Each parameter's storage address and in-place version: changes with any weight update."""
    return tuple((p.data_ptr(), p._version) for p in params)


def decode_weights(policy: Any, compute_dtype: torch.dtype) -> DecodeWeights:
    """The policy's :class:`DecodeWeights`, rebuilt when its weights or dtype changed.

    Kept on the policy (``policy._decode_weights``) so that all samplers of the same weights
    share one copy; the rebuild is timed as the ``weight_refresh`` phase."""
    lm = policy.causal_lm
    cached = getattr(policy, "_decode_weights", None)
    if cached is not None and cached.compute_dtype == compute_dtype and cached.matches(lm):
        return cached
    with timing.phase("weight_refresh"), torch.no_grad():
        weights = DecodeWeights(lm, compute_dtype)
    with contextlib.suppress(AttributeError):
        policy._decode_weights = weights  # a plain attribute: not a submodule, not in the state dict
    return weights


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``transformers``' Llama RMSNorm, operation by operation."""
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x [b, q, heads, hd]`` with ``cos, sin [b, q, 1, hd]``."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class StaticDecoder:
    """Prefill and one-token decode steps over a preallocated KV cache (see module doc).

    The rows of the cache are aligned: step ``s`` writes cache column ``S`` of every row; a
    row that takes no token at a step gets a masked column (its logits are not read). The
    caller keeps the per-row state (which rows are live, their tokens).

    Args:
        weights: from :func:`decode_weights`.
        device: where the cache lives.
    """

    def __init__(self, weights: DecodeWeights, device: torch.device):
        self.w = weights
        self.device = device
        self.kv: torch.Tensor | None = None  # [layers, 2, b, KV, capacity, hd]
        self.mask = torch.zeros(0, 0, dtype=torch.bool, device=device)  # [b, capacity] valid columns
        self.pos = torch.zeros(0, dtype=torch.long, device=device)  # [b] next position id
        self.length = 0  # columns in use

    # ------------------------------------------------------------------ cache
    @property
    def capacity(self) -> int:
        return 0 if self.kv is None else int(self.kv.shape[4])

    def _alloc(self, batch: int, capacity: int) -> None:
        w = self.w
        self.kv = torch.zeros(len(w.layers), 2, batch, w.n_kv, capacity, w.head_dim, dtype=w.compute_dtype,
                              device=self.device)
        self.mask = torch.zeros(batch, capacity, dtype=torch.bool, device=self.device)
        self.length = 0

    def reserve(self, columns: int) -> None:
        """Make room for ``columns`` more columns (at least doubling the capacity when it grows)."""
        need = self.length + columns
        if self.kv is None or need <= self.capacity:
            return
        kv, mask, length = self.kv, self.mask, self.length
        self._alloc(int(kv.shape[2]), max(need, 2 * self.capacity))
        assert self.kv is not None
        self.kv[:, :, :, :, :length] = kv[:, :, :, :, :length]
        self.mask[:, :length] = mask[:, :length]
        self.length = length

    def select(self, index: torch.Tensor) -> None:
        """Keep the cache rows ``index`` (in that order)."""
        assert self.kv is not None
        self.kv = self.kv.index_select(2, index)
        self.mask, self.pos = self.mask[index], self.pos[index]

    def repeat(self, batch: int) -> None:
        """Repeat a one-row cache ``batch`` times (a shared prompt head)."""
        assert self.kv is not None and self.kv.shape[2] == 1
        self.kv = self.kv.expand(-1, -1, batch, -1, -1, -1).contiguous()
        self.mask, self.pos = self.mask.expand(batch, -1).contiguous(), self.pos.expand(batch).contiguous()

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, reserve: int) -> torch.Tensor:
        """Append ``ids [b, q]`` (``mask [b, q]`` bool, position ids ``pos [b, q]``) to the cache
        (allocated here when empty, with ``reserve`` more columns); returns the last position's
        logits ``[b, V]`` (float32)."""
        b, q = ids.shape
        if self.kv is None:
            self._alloc(b, q + max(int(reserve), 1))
        self.reserve(q)
        self.mask[:, self.length:self.length + q] = mask
        self.pos = pos[:, -1] + 1
        return self._forward(ids, pos)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, fed: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (``fed [b]`` bool: rows that take one; the others get a
        masked column) and return the next-token logits ``[b, V]`` (float32)."""
        self.reserve(1)
        self.mask[:, self.length] = fed
        pos = self.pos[:, None]
        self.pos = self.pos + fed.long()
        return self._forward(tokens[:, None], pos)

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self._layers(ids, pos)

    def _layers(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        w, kv = self.w, self.kv
        assert kv is not None
        b, q = ids.shape
        S, E = self.length, self.length + q  # columns before / after this call
        H, KV, hd, mm = w.n_heads, w.n_kv, w.head_dim, w.compute_dtype
        x = F.embedding(ids, w.embed)  # [b, q, d]
        cos, sin = w.rotary(x, pos)  # [b, q, hd]
        cos, sin = cos[:, :, None], sin[:, :, None]  # [b, q, 1, hd]
        keys_ok = self.mask[:, :E]  # [b, E]
        if q == 1:
            attn_mask = keys_ok[:, None, None, :]  # [b, 1, 1, E]
        else:
            cols = torch.arange(E, device=self.device)
            rows = torch.arange(S, E, device=self.device)[:, None]  # [q, 1] each query's own column
            allowed = keys_ok[:, None, :] & (cols[None] <= rows)[None]  # [b, q, E] causal, padding hidden
            attn_mask = (allowed | (cols[None] == rows)[None])[:, None]  # sees itself: finite everywhere
        self.length = E
        for i, layer in enumerate(w.layers):
            x = _layer(x, cos, sin, kv[i, 0], kv[i, 1], S, E, attn_mask, layer, H, KV, hd, w.scaling, mm)
        last = _rms_norm(x[:, -1], w.norm, w.norm_eps).to(mm)  # [b, d]
        return F.linear(last, w.head, w.head_bias).float()  # [b, V]


def _layer(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, S: int,
           E: int, attn_mask: torch.Tensor, layer: _Layer, H: int, KV: int, hd: int, scaling: float,
           mm: torch.dtype) -> torch.Tensor:
    """One decoder layer over ``x [b, q, d]`` (positions ``S..E-1``), writing their keys and
    values into the cache ``kc, vc [b, KV, capacity, hd]``; returns the new residual stream."""
    b, q = x.shape[:2]
    rep = H // KV
    h = _rms_norm(x, layer.ln1, layer.eps1).to(mm)
    qkv = F.linear(h, layer.wqkv, layer.bqkv).view(b, q, H + 2 * KV, hd)  # [b, q, H+2KV, hd]
    qk = _rotate(qkv[:, :, : H + KV], cos, sin).to(mm)  # [b, q, H+KV, hd]
    kc[:, :, S:E] = qk[:, :, H:].transpose(1, 2)
    vc[:, :, S:E] = qkv[:, :, H + KV:].transpose(1, 2)
    if q == 1:  # the query heads of a kv head act as its queries: no repeated keys
        query = qk[:, 0, :H].view(b, KV, rep, hd)  # [b, KV, rep, hd]
        out = F.scaled_dot_product_attention(query, kc[:, :, :E], vc[:, :, :E], attn_mask=attn_mask,
                                             scale=scaling)  # [b, KV, rep, hd]
        out = out.reshape(b, 1, H * hd)
    else:
        keys, values = kc[:, :, :E], vc[:, :, :E]
        if rep > 1:
            keys = keys[:, :, None].expand(b, KV, rep, E, hd).reshape(b, H, E, hd)
            values = values[:, :, None].expand(b, KV, rep, E, hd).reshape(b, H, E, hd)
        out = F.scaled_dot_product_attention(qk[:, :, :H].transpose(1, 2), keys, values,
                                             attn_mask=attn_mask, scale=scaling)  # [b, H, q, hd]
        out = out.transpose(1, 2).reshape(b, q, H * hd)
    x = x + F.linear(out, layer.wo, layer.bo)
    h = _rms_norm(x, layer.ln2, layer.eps2).to(mm)
    gate, up = F.linear(h, layer.wgu, layer.bgu).chunk(2, dim=-1)
    return x + F.linear(F.silu(gate) * up, layer.wd, layer.bd)
