"""Multi-token-prediction (MTP) modules, DeepSeek-V3 style, as used by MPO.

Module ``j`` (``j = 1 .. K-1``) at sequence position ``i`` combines the previous hidden state
``h_i^{(j-1)}`` with the embedding of the real token ``x_{i+j}`` and predicts ``x_{i+j+1}``::

    h_i^{(j)} = Norm_j( TRM_j( M_j [ RMSNorm(h_i^{(j-1)}) ; RMSNorm(Emb(x_{i+j})) ] ) )
    p(x_{i+j+1} | x_{<=i+j}) = softmax( LMHead_j(h_i^{(j)}) )

``h^{(0)}`` is the backbone's final hidden state *after* its final norm (what the backbone's
LM head sees), and every module likewise hands on its normed output, so each stage passes the
hidden state its own head reads. ``TRM_j`` is a deep copy of the backbone's last decoder layer
(causal self-attention over the whole sequence with the backbone's rotary embeddings),
``Norm_j`` a copy of the backbone's final norm, ``LMHead_j`` a copy of its LM head (or the
backbone's own head with ``share_lm_head=True``). ``M_j`` is ``Linear(2d -> d)`` initialised
so that the hidden half is the identity and the embedding half is zero. The embedding table is
the backbone's and is not owned by the module.

What this does not do: no KV cache (the modules score teacher-forced sequences only; MPO
decodes with the backbone alone), no speculative decoding.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["MTPModule", "RMSNorm", "build_mtp_modules", "causal_padding_mask"]


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned scale (computed in float32)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * x32).to(dtype)


class MTPModule(nn.Module):
    """One sequential MTP module (see module doc).

    Args:
        decoder_layer: the backbone's last decoder layer (deep-copied here).
        final_norm: the backbone's final norm (deep-copied here).
        lm_head: the backbone's LM head to deep-copy, or ``None`` to share it at call time.
        hidden_size: ``d``.
        eps: RMSNorm epsilon for the two input norms.
    """

    def __init__(self, decoder_layer: nn.Module, final_norm: nn.Module, lm_head: nn.Module | None,
                 hidden_size: int, eps: float = 1e-6):
        super().__init__()
        d = hidden_size
        self.hnorm = RMSNorm(d, eps)
        self.enorm = RMSNorm(d, eps)
        self.proj = nn.Linear(2 * d, d, bias=False)
        with torch.no_grad():
            self.proj.weight.zero_()
            self.proj.weight[:, :d].copy_(torch.eye(d))
        self.layer = copy.deepcopy(decoder_layer)
        attn_config = getattr(getattr(self.layer, "self_attn", None), "config", None)
        if attn_config is not None and attn_config._attn_implementation not in ("eager", "sdpa"):
            attn_config._attn_implementation = "sdpa"  # the module passes an explicit 4-D mask
        self.norm = copy.deepcopy(final_norm)
        self.lm_head = copy.deepcopy(lm_head) if lm_head is not None else None
        dtype = next(decoder_layer.parameters()).dtype
        self.hnorm.to(dtype), self.enorm.to(dtype), self.proj.to(dtype)

    def forward(self, hidden: torch.Tensor, token_emb: torch.Tensor, mask: torch.Tensor,
                position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Next hidden state.

        Args:
            hidden: ``[B, L, d]`` previous stage's normed hidden states ``h^{(j-1)}``.
            token_emb: ``[B, L, d]`` embeddings of ``x_{i+j}`` at each position ``i``.
            mask: ``[B, 1, L, L]`` additive attention mask (see :func:`causal_padding_mask`).
            position_embeddings: the backbone rotary module's ``(cos, sin)`` for these positions.

        Returns:
            ``[B, L, d]`` normed hidden ``h^{(j)}`` (apply the LM head to get logits).
        """
        x = self.proj(torch.cat([self.hnorm(hidden), self.enorm(token_emb)], dim=-1))  # [B, L, d]
        out = self.layer(x, attention_mask=mask, position_embeddings=position_embeddings)
        out = out[0] if isinstance(out, tuple) else out  # [B, L, d]
        return self.norm(out)


def causal_padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive ``[B, 1, L, L]`` mask: causal, padding keys hidden, each query sees itself.

    Letting padding queries attend to themselves keeps every softmax row finite; their outputs
    are never read.
    """
    B, L = attention_mask.shape
    device = attention_mask.device
    causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()  # [L, L]
    allowed = causal[None] & attention_mask[:, None, :].bool()  # [B, L, L]
    allowed = allowed | torch.eye(L, dtype=torch.bool, device=device)[None]
    mask = torch.zeros(B, 1, L, L, dtype=dtype, device=device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def build_mtp_modules(causal_lm: Any, num_modules: int, share_lm_head: bool = False) -> nn.ModuleList:
    """``num_modules`` MTP modules initialised from a ``transformers`` causal LM."""
    decoder = causal_lm.get_decoder()
    config = causal_lm.config
    d = int(config.hidden_size)
    eps = float(getattr(config, "rms_norm_eps", 1e-6))
    head = None if share_lm_head else causal_lm.get_output_embeddings()
    return nn.ModuleList(
        MTPModule(decoder.layers[-1], decoder.norm, head, d, eps) for _ in range(num_modules)
    )
