"""``LMPolicy``: a causal LM with an optional value head / critic and MTP modules.

Teacher-forced scoring (:meth:`LMPolicy.score`) takes a batch of prompts LEFT-padded to a
common ``prompt_len`` followed by responses RIGHT-padded to ``T``; position ids come from the
attention mask, so the amount of left padding does not change any result. Generation lives in
:class:`~mpo_gym.policy.sampling.BlockSampler` (KV-cached block sampling across env steps).
"""

from __future__ import annotations

import contextlib
import copy
import json
import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .models import load_model, resolve_dtype
from .mtp import build_mtp_modules, causal_padding_mask
from .scoring import (
    CriticModel,
    LinearHead,
    ValueHead,
    chunked_token_logprobs,
    decoder_hidden_states,
    position_ids_from_mask,
)

__all__ = ["COMPUTE_DTYPES", "LMPolicy", "ScoreOutput"]

COMPUTE_DTYPES = ("float32", "bfloat16")  # what an LMPolicy's products may run in


@dataclass
class ScoreOutput:
    """Teacher-forced scores of a batch of responses (``T = L - prompt_len``).

    Attributes:
        logprobs: ``[B, T]`` log pi(resp_t | prompt, resp_<t) (float32; 0 on padding).
        mask: ``[B, T]`` bool, real response tokens.
        values: ``[B, T]`` V(s_t), the value of the state before response token t, or None.
        last_values: ``[B]`` value of the state after each row's last real token, or None.
        mtp_logprobs: ``[B, T, M]``; ``[b, t, j-1]`` is MTP module j's log-prob of response
            token ``t+j``, read at the position that predicts token t; 0 where invalid. Or None.
        mtp_mask: ``[B, T, M]`` bool, valid entries of ``mtp_logprobs`` (``t + j`` in the row).
        entropy: ``[B, T]`` entropy of the backbone's (tempered) next-token distribution, or None.
    """

    logprobs: torch.Tensor
    mask: torch.Tensor
    values: torch.Tensor | None = None
    last_values: torch.Tensor | None = None
    mtp_logprobs: torch.Tensor | None = None
    mtp_mask: torch.Tensor | None = None
    entropy: torch.Tensor | None = None


# a pytree node, so that hooks on a method returning it see its tensors (FSDP2's pre-backward
# hook on a registered forward method such as ``score``)
torch.utils._pytree.register_dataclass(ScoreOutput)


class LMPolicy(nn.Module):
    """A ``transformers`` causal LM as an RL policy (+ optional critic and MTP modules).

    Args:
        model: a causal LM (``LlamaForCausalLM``-like: ``get_decoder()`` with ``layers``,
            ``norm`` and ``rotary_emb``; ``get_output_embeddings()``), possibly peft-wrapped.
        tokenizer: its tokenizer (``eos_token_id``, ``pad_token_id``).
        value_head: ``False`` (none), ``True``/``"head"`` (``Linear`` on the final hidden
            state) or ``"separate"`` (a :class:`CriticModel` with ``critic_layers`` layers, or
            ``critic_model`` if given).
        num_mtp_modules: number of MTP modules (K-1 for MPO with window K).
        share_lm_head: MTP modules use the backbone's LM head instead of their own copies.
        mtp_detach_backbone: MTP modules see ``h.detach()`` and detached embeddings, so no MTP
            gradient reaches the backbone.
        critic_layers: layers of the separate critic built from the backbone.
        critic_model: a model whose decoder becomes the separate critic's body.
        chunk_size: positions per LM-head application in :meth:`score`.
        share_prompt_head: in :meth:`score`, encode the prompts' common head (system prompt,
            example turns) once per batch instead of once per row; the results equal the
            per-row forward's up to floating-point reduction order (``False``: per row).
        compute_dtype: what the matrix products run in: ``"float32"``, or ``"bfloat16"``
            (autocast over the fp32 master weights). Every forward (:meth:`score`,
            :meth:`score_mtp`, sampling) opens its own autocast region (:meth:`autocast`), so
            no bf16 copy of a weight outlives an optimizer step (see :meth:`weights_changed`).

    What it does not do: no tensor/pipeline parallelism; MTP modules need a Llama-like decoder.
    """

    def __init__(self, model: Any, tokenizer: Any, *, value_head: bool | str = False,
                 num_mtp_modules: int = 0, share_lm_head: bool = False,
                 mtp_detach_backbone: bool = True, critic_layers: int = 2,
                 critic_model: Any | None = None, chunk_size: int = 512, share_prompt_head: bool = True,
                 compute_dtype: str = "float32"):
        super().__init__()
        self.compute_dtype = _check_compute_dtype(compute_dtype)
        if value_head not in (False, True, "head", "separate"):
            raise ValueError(f"value_head must be False, True, 'head' or 'separate'; got {value_head!r}")
        if num_mtp_modules < 0:
            raise ValueError(f"num_mtp_modules must be >= 0; got {num_mtp_modules}")
        self.model = model
        self.tokenizer = tokenizer
        self.share_lm_head = share_lm_head
        self.mtp_detach_backbone = mtp_detach_backbone
        self.chunk_size = int(chunk_size)
        self.share_prompt_head = bool(share_prompt_head)
        self.value_kind = "separate" if value_head == "separate" else ("head" if value_head else None)
        self._options = {"value_head": value_head, "num_mtp_modules": num_mtp_modules,
                         "share_lm_head": share_lm_head, "mtp_detach_backbone": mtp_detach_backbone,
                         "critic_layers": critic_layers}
        lm = self.causal_lm
        self.value_head: nn.Module | None = None
        if self.value_kind == "head":
            self.value_head = ValueHead(int(lm.config.hidden_size)).to(self.device)
        elif self.value_kind == "separate":
            self.value_head = CriticModel(lm, critic_layers, critic_model).to(self.device)
        self.mtp = build_mtp_modules(lm, num_mtp_modules, share_lm_head).to(self.device)
        self.pad_token_id = int(getattr(tokenizer, "pad_token_id", None) or 0)
        self.eos_token_id = int(tokenizer.eos_token_id)
        self._sampler: Any = None
        self.weights_version = 0  # bumped by weights_changed: samplers re-encode their rows
        self._decode_weights: Any = None  # the static decode loop's copy (policy.decode.decode_weights)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, name_or_path: str = "default", *, dtype: str | torch.dtype = "float32",
                        device: str | None = None, lora: dict[str, Any] | None = None,
                        **kwargs: Any) -> LMPolicy:
        """Load ``"default"`` (embedded SmolLM2), a local directory, or a hub id (online).

        Args:
            lora: if given, ``peft.LoraConfig`` kwargs (e.g. ``{"r": 8}``); the backbone is
                wrapped so only adapters train, while the value head and MTP modules (built from
                the unwrapped model) stay fully trainable.
            **kwargs: :class:`LMPolicy` options (``value_head``, ``num_mtp_modules``, ...).
        """
        model, tok = load_model(name_or_path, dtype=dtype, device=device)
        policy = cls(model, tok, **kwargs)
        if lora is not None:
            policy.apply_lora(**lora)
        return policy

    def apply_lora(self, **lora: Any) -> None:
        """Wrap the backbone with peft LoRA adapters (value head and MTP stay trainable)."""
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:
            raise ImportError("LoRA needs peft: `pip install peft`") from exc
        lora.setdefault("task_type", "CAUSAL_LM")
        self.model = get_peft_model(self.model, LoraConfig(**lora))

    def frozen_copy(self) -> LMPolicy:
        """A frozen (no-grad, eval) copy of the backbone only, e.g. a KL reference policy."""
        model = copy.deepcopy(self.model).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return LMPolicy(model, self.tokenizer, chunk_size=self.chunk_size, share_prompt_head=self.share_prompt_head,
                        compute_dtype=self.compute_dtype)

    # ------------------------------------------------------------------ numerics
    def set_compute_dtype(self, dtype: str) -> LMPolicy:
        """Run the products in ``dtype`` (``"float32"`` or ``"bfloat16"``); returns self."""
        self.compute_dtype = _check_compute_dtype(dtype)
        self.weights_changed()
        return self

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """A new region running this policy's products in its :attr:`compute_dtype`.

        Autocast keeps the low-precision copy of each weight for the whole outermost region,
        so a region must never span an optimizer step: the policy opens one per forward
        (:meth:`score`, :meth:`score_mtp`) and one per rollout (no weight changes while a
        batch is generated). :meth:`weights_changed` also clears the copies, for a caller that
        wraps an update in a region of its own.
        """
        if self.compute_dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def weights_changed(self) -> None:
        """Drop every cache made from the current weights: the autocast copies of the weights,
        the sampler's KV cache and the decode loop's copy of the weights (rebuilt, timed as
        ``weight_refresh``, when the next batch starts). A sampler still held elsewhere
        re-encodes its rows before its next block. Agents call it after each optimizer step."""
        self._sampler = None
        self._decode_weights = None
        self.weights_version += 1
        torch.clear_autocast_cache()

    # ------------------------------------------------------------------ properties
    @property
    def causal_lm(self) -> Any:
        """The underlying ``transformers`` causal LM (peft wrapper removed, adapters active)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the LM (only adapters under LoRA)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def value_parameters(self) -> list[nn.Parameter]:
        return [] if self.value_head is None else list(self.value_head.parameters())

    def mtp_parameters(self) -> list[nn.Parameter]:
        """MTP parameters (excluding the shared embedding table and shared LM head)."""
        return list(self.mtp.parameters())

    # ------------------------------------------------------------------ scoring
    def _decoder_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         position_ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
        return decoder_hidden_states(self.causal_lm.get_decoder(), input_ids, attention_mask, position_ids,
                                     prompt_len, self.share_prompt_head)  # [B, L, d]

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, *,
              values: bool = False, mtp: bool = False, entropy: bool = False,
              temperature: float = 1.0) -> ScoreOutput:
        """Teacher-forced log-probs (+ values, MTP log-probs, entropy) in one backbone pass.

        Args:
            input_ids: ``[B, L]`` prompts left-padded to ``prompt_len``, then responses
                right-padded to ``T = L - prompt_len``.
            attention_mask: ``[B, L]``, 0 on padding.
            prompt_len: the common (padded) prompt length, ``>= 1``.
            values: compute ``values``/``last_values`` (needs a value head).
            mtp: compute MTP log-probs (needs ``num_mtp_modules > 0``).
            entropy: compute the backbone's per-position entropy.
            temperature: divides the backbone logits (MTP logits are not tempered).

        Gradients flow when called with grad enabled. Logits are computed chunk by chunk, in
        a region of their own in :attr:`compute_dtype` (the backward runs in the same dtypes).
        """
        with self.autocast():
            return self._score(input_ids, attention_mask, prompt_len, values=values, mtp=mtp, entropy=entropy,
                               temperature=temperature)

    def _score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, *,
               values: bool, mtp: bool, entropy: bool, temperature: float) -> ScoreOutput:
        if not 1 <= prompt_len <= input_ids.shape[1]:
            raise ValueError(f"prompt_len must be in 1..{input_ids.shape[1]}; got {prompt_len}")
        if values and self.value_head is None:
            raise ValueError("values=True needs a policy built with value_head=True or 'separate'")
        if mtp and len(self.mtp) == 0:
            raise ValueError("mtp=True needs a policy built with num_mtp_modules > 0")
        L = input_ids.shape[1]
        position_ids = position_ids_from_mask(attention_mask)  # [B, L]
        hidden = self._decoder_forward(input_ids, attention_mask, position_ids, prompt_len)  # [B, L, d]
        targets = input_ids[:, prompt_len:]  # [B, T]
        mask = attention_mask[:, prompt_len:].bool()  # [B, T]
        h_resp = hidden[:, prompt_len - 1:L - 1]  # [B, T, d]
        head = self.causal_lm.get_output_embeddings()
        logprobs, ent = chunked_token_logprobs(head, h_resp, targets, mask, temperature=temperature,
                                               entropy=entropy, chunk_size=self.chunk_size)
        out = ScoreOutput(logprobs=logprobs, mask=mask, entropy=ent)
        if values:
            out.values, out.last_values = self._values(hidden, input_ids, attention_mask,
                                                       position_ids, prompt_len)
        if mtp:
            out.mtp_logprobs, out.mtp_mask = self._mtp_logprobs(hidden, input_ids, attention_mask,
                                                                position_ids, prompt_len)
        return out

    def _values(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.value_kind == "separate":
            v_all = self.value_head(input_ids, attention_mask, position_ids, prompt_len,  # type: ignore[misc]
                                    self.share_prompt_head)  # [B, L]
        else:
            v_all = self.value_head(hidden)  # type: ignore[misc]  # [B, L]
        L = input_ids.shape[1]
        lengths = attention_mask[:, prompt_len:].long().sum(-1)  # [B]
        last = v_all.gather(1, (prompt_len - 1 + lengths)[:, None]).squeeze(1)  # [B]
        return v_all[:, prompt_len - 1:L - 1], last

    def _mtp_logprobs(self, hidden: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor, position_ids: torch.Tensor,
                      prompt_len: int, detach: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        lm = self.causal_lm
        L = input_ids.shape[1]
        detach = self.mtp_detach_backbone if detach is None else detach
        h = hidden.detach() if detach else hidden  # [B, L, d]
        attn = causal_padding_mask(attention_mask, h.dtype)  # [B, 1, L, L]
        rope = lm.get_decoder().rotary_emb(h, position_ids=position_ids)
        embed = lm.get_input_embeddings()
        resp_mask = attention_mask[:, prompt_len:].bool()  # [B, T]
        targets = input_ids[:, prompt_len:]  # [B, T]
        lps, masks = [], []
        for j, module in enumerate(self.mtp, start=1):
            emb = embed(_shift_left(input_ids, j, self.pad_token_id))  # [B, L, d]
            h = module(h, emb.detach() if detach else emb, attn, rope)  # [B, L, d]
            valid = resp_mask & _shift_left(resp_mask, j, False)  # [B, T]
            head = module.lm_head if module.lm_head is not None else self._shared_head(detach)
            lp, _ = chunked_token_logprobs(head, h[:, prompt_len - 1:L - 1],  # type: ignore[arg-type]
                                           _shift_left(targets, j, self.pad_token_id), valid,
                                           chunk_size=self.chunk_size)
            lps.append(lp)
            masks.append(valid)
        return torch.stack(lps, -1), torch.stack(masks, -1)  # [B, T, M]

    def _shared_head(self, detach: bool) -> Any:
        """The backbone's LM head for ``share_lm_head`` modules; detached with the backbone."""
        head = self.causal_lm.get_output_embeddings()
        if not detach:
            return head
        bias = head.bias.detach() if getattr(head, "bias", None) is not None else None
        return LinearHead(head.weight.detach(), bias)

    def score_mtp(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mtp_logprobs [B, T, M], mtp_mask [B, T, M])`` of :meth:`score` with the backbone
        frozen: the backbone runs without grad and the main head is skipped, so only the MTP
        modules cost a backward (MPO's warm-up)."""
        if len(self.mtp) == 0:
            raise ValueError("score_mtp needs a policy built with num_mtp_modules > 0")
        with self.autocast():
            with torch.no_grad():
                position_ids = position_ids_from_mask(attention_mask)
                hidden = self._decoder_forward(input_ids, attention_mask, position_ids, prompt_len)
            return self._mtp_logprobs(hidden, input_ids, attention_mask, position_ids, prompt_len, detach=True)

    def mtp_warmup_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        prompt_len: int, alphas: list[float] | None = None) -> torch.Tensor:
        """Supervised MTP loss ``-sum_j alpha_j mean log p_j`` on teacher-forced solutions.

        The backbone runs without grad; only MTP parameters receive gradients.
        """
        alphas = alphas or [1.0] * len(self.mtp)
        lp, mask = self.score_mtp(input_ids, attention_mask, prompt_len)
        weights = torch.tensor(alphas, dtype=lp.dtype, device=lp.device)  # [M]
        per_module = (lp * mask).sum((0, 1)) / mask.sum((0, 1)).clamp(min=1)  # [M]
        return -(weights * per_module).sum()

    # ------------------------------------------------------------------ generation
    def begin(self, prompts: list[list[int]] | list[np.ndarray], **kwargs: Any) -> Any:
        """Start a new generation batch (prefill). ``kwargs`` go to ``BlockSampler``."""
        from .sampling import BlockSampler

        self._sampler = BlockSampler(self, prompts, **kwargs)  # type: ignore[arg-type]
        return self._sampler

    def act(self, obs: Any, block_size: int, *, done: Any = None, return_logprobs: bool = False,
            **kwargs: Any) -> Any:
        """Sample one block per env from a batch of ``ReasoningEnv`` observations.

        See :meth:`BlockSampler.act` for the contract. The first call (or any call after
        :meth:`end`) starts a new batch from the observations (prompt and any response so far
        are prefilled); ``kwargs``
        (``seed``, ``temperature``, ``top_p``, ``greedy``) apply when a batch starts.
        """
        from .sampling import BlockSampler

        if self._sampler is None:
            self._sampler = BlockSampler.from_obs(self, obs, **kwargs)
        blocks, logprobs = self._sampler.act(obs, block_size, done=done)
        return (blocks, logprobs) if return_logprobs else blocks

    def end(self) -> None:
        """Drop the current generation batch (its KV cache)."""
        self._sampler = None

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | pathlib.Path) -> None:
        """Write ``model/`` (HF format; adapters only under LoRA), ``heads.pt`` and ``policy.json``."""
        path = pathlib.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path / "model"))
        if hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(str(path / "model"))
        heads = {"value_head": self.value_head.state_dict() if self.value_head is not None else None,
                 "mtp": self.mtp.state_dict()}
        torch.save(heads, path / "heads.pt")
        (path / "policy.json").write_text(json.dumps({**self._options, "compute_dtype": self.compute_dtype}, indent=2))

    @classmethod
    def load_checkpoint(cls, path: str | pathlib.Path, *, dtype: str | torch.dtype = "float32",
                        device: str | None = None, tokenizer: Any = None) -> LMPolicy:
        """Load a directory written by :meth:`save_pretrained` (not LoRA checkpoints)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = pathlib.Path(path)
        options = json.loads((path / "policy.json").read_text())
        model = AutoModelForCausalLM.from_pretrained(str(path / "model"), dtype=resolve_dtype(dtype))
        tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(str(path / "model"))
        policy = cls(model.to(device) if device else model, tok, **options)  # type: ignore[arg-type]
        heads = torch.load(path / "heads.pt", map_location=policy.device, weights_only=True)
        if policy.value_head is not None and heads["value_head"] is not None:
            policy.value_head.load_state_dict(heads["value_head"])
        policy.mtp.load_state_dict(heads["mtp"])
        return policy


def _check_compute_dtype(dtype: str) -> str:
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}; got {dtype!r}")
    return dtype


def _shift_left(x: torch.Tensor, j: int, fill: Any) -> torch.Tensor:
    """``out[:, i] = x[:, i + j]``, ``fill`` past the end."""
    out = torch.full_like(x, fill)
    if j < x.shape[1]:
        out[:, : x.shape[1] - j] = x[:, j:]
    return out
