"""``BlockSampler``: KV-cached sampling of K-token blocks across env steps.

One sampler holds one batch of sequences. It prefills all prompts as a single left-padded
batch (their common head encoded once), then each :meth:`BlockSampler.sample` call draws up to ``n_i`` tokens for each live row,
stopping a row's block at EOS. The KV cache is kept between calls, so a whole episode costs
about one ``model.generate`` call: one forward per generated token, never re-encoding the
prefix. A sampled token is fed to the model lazily (at the start of the next draw), so no
forward is spent after a row's last token.

Log-probs: ``log softmax(logits / temperature)`` of the drawn token, i.e. under the tempered
distribution *before* top-p truncation (top-p only restricts the support), which is what
``LMPolicy.score(..., temperature=temperature)`` recomputes. With ``greedy=True`` the argmax is
taken and the recorded log-prob is that of ``softmax(logits)`` (temperature 1).

Randomness: every row draws from its own stream (a ``torch.Generator`` seeded from
``(seed, first_index + row)`` through ``numpy.random.SeedSequence``), one uniform per token, and
takes the token where that uniform falls in the cumulative distribution. So what row ``i``
samples depends only on the seed, its index and its own logits, not on which other rows share
the batch: a batch split across chunks or data-parallel ranks samples the same episodes.

Rows may finish at different steps (:meth:`finish`); finished rows are pruned from the cache
(:meth:`compact`), so they cost nothing afterwards.

What it does not do: no beam search, no repetition penalties, no stop strings (the env checks
those and the caller marks the row finished).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .decode import MIN_RESERVE, DecodeWeights, StaticDecoder, decode_weights, unsupported_reason
from .scoring import MIN_SHARED_HEAD, cache_kwarg, position_ids_from_mask

__all__ = ["ENGINES", "BlockSampler", "obs_rows", "row_seed"]

ENGINES = ("auto", "static", "hf")  # BlockSampler(engine=...): the decode loops

_UNIFORMS_PER_REFILL = 64  # uniforms drawn at once from a row's stream
DRAW_BLOCK = 256  # logits per block of draw_blocked


def row_seed(seed: int, index: int) -> int:
    """The seed of row ``index``'s stream for base ``seed`` (independent streams per index)."""
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(index),)).generate_state(2, np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


class BlockSampler:
    """Block generation for a fixed batch of prompts (see module doc).

    Args:
        policy: an :class:`~mpo_gym.policy.LMPolicy`.
        prompts: token ids of each row's prompt (rows may differ in length).
        seed: base seed of the rows' streams (``None``: fresh entropy; global RNG is never used).
        first_index: index of row 0 in the whole batch (row ``j`` draws from the stream of
            ``first_index + j``), so shards of a batch sample what the whole batch would.
        temperature, top_p, greedy: the sampling distribution.
        responses: optional response tokens already produced per row (prefilled with the
            prompt; e.g. to resume episodes from observations).
        engine: the decode loop: ``"static"`` (:class:`~mpo_gym.policy.decode.StaticDecoder`:
            preallocated KV cache, fused weights in the compute dtype, no per-step overhead),
            ``"hf"`` (the ``transformers`` forward with its ``DynamicCache``), or ``"auto"``
            (the default: ``"static"`` where the model is supported, else ``"hf"``). Both
            draw the same tokens from the same streams; their logits agree up to
            floating-point reduction order.
        reserve: KV-cache columns to allocate beyond the prefill (``"static"``; the cache
            grows when they run out). :meth:`from_obs` passes the envs' remaining budget.

    Weights: the KV cache is scoped to the weights it was made from. When they change
    (:meth:`LMPolicy.weights_changed <mpo_gym.policy.LMPolicy.weights_changed>`, or any
    in-place update of a parameter for ``"static"``), the next :meth:`sample` re-encodes the
    live rows (prompt and response so far) with the new weights before drawing.
    """

    def __init__(self, policy: Any, prompts: Sequence[Sequence[int]], *, seed: int | None = None,
                 first_index: int = 0, temperature: float = 1.0,
                 top_p: float = 1.0, greedy: bool = False,
                 responses: Sequence[Sequence[int]] | None = None, engine: str = "auto",
                 reserve: int | None = None):
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("need at least one prompt, each with at least one token")
        if temperature <= 0 and not greedy:
            raise ValueError(f"temperature must be > 0 (or use greedy=True); got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1]; got {top_p}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}; got {engine!r}")
        self.policy = policy
        self.lm = policy.causal_lm
        reason = unsupported_reason(self.lm)
        if engine == "static" and reason is not None:
            raise ValueError(f"engine='static' cannot run this model: {reason}")
        self.engine = "static" if engine == "auto" and reason is None else ("hf" if engine == "auto" else engine)
        self._reserve = MIN_RESERVE if reserve is None else max(int(reserve), 1)
        self._autocast = getattr(policy, "autocast", contextlib.nullcontext)  # the policy's numerics
        self.device = policy.device
        self.pad_id = policy.pad_token_id
        self.eos_id = policy.eos_token_id
        self.temperature, self.top_p, self.greedy = float(temperature), float(top_p), greedy
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])  # fresh entropy, global RNG untouched
        self.seed, self.first_index = int(seed), int(first_index)
        self._streams: list[torch.Generator] | None = None  # per user row, made on the first draw
        self._uniforms = np.zeros((0, 0))  # [B, R] uniforms drawn per user row, R at a time
        self._used = np.zeros(0, dtype=np.int64)  # [B] how many of them each row used
        self.prompts = [list(map(int, p)) for p in prompts]
        self.responses = [list(map(int, r)) for r in (responses or [[] for _ in prompts])]
        self._last_blocks: list[list[int]] = [r[-1:] for r in self.responses]  # checked by act
        self.finished = np.zeros(len(prompts), dtype=bool)
        self._cache_kw, self._keep_kw = _forward_kwarg_names(self.lm)
        self._decoder: StaticDecoder | None = None
        self._weights: DecodeWeights | None = None
        self._version = _weights_version(policy)
        self._prefill()

    # ------------------------------------------------------------------ state
    @property
    def batch_size(self) -> int:
        return len(self.prompts)

    @torch.no_grad()
    def _prefill(self) -> None:
        """One forward over the prompts (plus any given responses).

        Prompts of one env usually share a long head (system prompt, example turn): that head
        (the rows' longest common prefix, when at least ``MIN_SHARED_HEAD`` tokens) is encoded
        once and its KV cache repeated per row; the rest of each row follows it left-padded, so
        the mask may have a hole between the two (positions count only unmasked tokens). The
        logits equal those of a full prefill up to floating-point reduction order.
        """
        seqs = [p + r for p, r in zip(self.prompts, self.responses)]
        shared = len(os.path.commonprefix(seqs)) if self.batch_size > 1 else 0
        shared = min(shared, min(len(s) for s in seqs) - 1)  # every row keeps >= 1 own token
        shared = shared if shared >= MIN_SHARED_HEAD else 0
        self._pending: torch.Tensor | None = None  # [b] tokens not yet fed
        self._pending_mask: torch.Tensor | None = None  # [b] bool
        if self.engine == "static":
            self._static_prefill(seqs, shared)
            return
        cache: Any = None
        if shared:
            head = torch.tensor([seqs[0][:shared]], device=self.device)  # [1, P]
            self._forward(head, torch.ones_like(head), torch.arange(shared, device=self.device)[None], None)
            cache = self._cache
            if hasattr(cache, "batch_repeat_interleave"):
                cache.batch_repeat_interleave(self.batch_size)
            else:  # a cache type without batch expansion: encode everything per row
                cache, shared = None, 0
        tails = [s[shared:] for s in seqs]
        width = max(len(t) for t in tails)
        ids = torch.full((self.batch_size, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((self.batch_size, shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for i, t in enumerate(tails):
            ids[i, width - len(t):] = torch.tensor(t)
            mask[i, shared + width - len(t):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)  # [B, Lp - P], [B, Lp]
        self._rows = torch.arange(self.batch_size)  # cache row -> user row
        self._mask = mask  # [b, S]
        self._pos = mask.sum(-1)  # [b] next position id
        out = self._forward(ids, mask, position_ids_from_mask(mask)[:, shared:], cache)
        self._logits = out.logits[:, -1].float()  # [b, V]

    def _static_prefill(self, seqs: list[list[int]], shared: int) -> None:
        """:meth:`_prefill` on the static engine: the same rows, mask and positions."""
        self._weights = decode_weights(self.policy, self._compute_dtype())
        decoder = self._decoder = StaticDecoder(self._weights, self.device)
        tails = [s[shared:] for s in seqs]
        width = max(len(t) for t in tails)
        if shared:
            head = torch.tensor([seqs[0][:shared]], device=self.device)  # [1, P]
            decoder.prefill(head, torch.ones_like(head, dtype=torch.bool), torch.arange(shared, device=self.device)[None],
                            reserve=width + self._reserve)
            decoder.repeat(self.batch_size)
        ids = torch.full((self.batch_size, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((self.batch_size, width), dtype=torch.bool)
        for i, t in enumerate(tails):
            ids[i, width - len(t):] = torch.tensor(t)
            mask[i, width - len(t):] = True
        ids, mask = ids.to(self.device), mask.to(self.device)  # [B, W]
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0) + shared  # [B, W] positions count unmasked tokens
        self._rows = torch.arange(self.batch_size)
        self._logits = decoder.prefill(ids, mask, pos, reserve=self._reserve)  # [b, V]

    def _compute_dtype(self) -> torch.dtype:
        """The products' dtype: bf16 under a bf16 policy, else the parameters' own dtype."""
        if getattr(self.policy, "compute_dtype", "float32") == "bfloat16":
            return torch.bfloat16
        return self.lm.get_input_embeddings().weight.dtype

    def _stale(self) -> bool:
        """Whether the weights changed since the KV cache was made."""
        if _weights_version(self.policy) != self._version:
            return True
        return self._weights is not None and not self._weights.matches(self.lm)

    def _reencode(self) -> None:
        """Rebuild the cache of the live rows from their tokens with the current weights."""
        self._version = _weights_version(self.policy)
        self._prefill()
        self.compact()

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any) -> Any:
        kwargs = {self._cache_kw: cache, self._keep_kw: 1}
        with self._autocast():  # nested in a rollout's region: the weights' copies are made once per rollout
            out = self.lm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **kwargs)
        self._cache = getattr(out, self._cache_kw, None)
        if self._cache is None:
            self._cache = out.past_key_values
        return out

    @torch.no_grad()
    def _next_logits(self) -> torch.Tensor:
        """Feed pending tokens (one forward for the batch) and return ``[b, V]`` logits."""
        if self._pending is not None:
            fed = self._pending_mask  # [b]
            if self._decoder is not None:
                new = self._decoder.step(self._pending, fed)  # type: ignore[arg-type]  # [b, V]
            else:
                self._mask = torch.cat([self._mask, fed[:, None].long()], dim=1)  # type: ignore[index]  # [b, S+1]
                out = self._forward(self._pending[:, None], self._mask, self._pos[:, None], self._cache)
                self._pos = self._pos + fed.long()  # type: ignore[union-attr]
                new = out.logits[:, -1].float()  # [b, V]
            if bool(fed.all()):  # type: ignore[union-attr]
                self._logits = new
            else:  # rows that drew nothing keep their logits
                self._logits[fed] = new[fed]  # type: ignore[index]
            self._pending = self._pending_mask = None
        return self._logits

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def _draw(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[b, V]`` logits -> ``(tokens [b], logprobs [b])``.

        The token is where the row's uniform falls in the CDF of ``softmax(z)``, ``z = logits /
        temperature``, and its log-prob is ``z_token - logsumexp(z)``. The static engine without
        top-p reads the vocabulary once (:func:`draw_blocked`); otherwise one pass of ``exp``
        and one cumulative sum over the vocabulary (plus a sort for top-p).
        """
        if self.greedy:
            tokens = logits.argmax(-1)  # [b]
            lse = torch.logsumexp(logits, -1)  # [b]
            return tokens, logits.gather(-1, tokens[:, None]).squeeze(-1) - lse
        z = logits if self.temperature == 1.0 else logits / self.temperature  # [b, V]
        if self.engine == "static" and self.top_p == 1.0:
            u = torch.as_tensor(self._next_uniforms(), dtype=torch.float64, device=z.device)  # [b]
            return draw_blocked(z, u)
        peak = z.max(-1, keepdim=True).values  # [b, 1]
        weights = (z - peak).exp_()  # [b, V] unnormalised probabilities
        lse = peak.squeeze(-1) + weights.sum(-1).log()  # [b]
        if self.top_p < 1.0:
            weights = _top_p_filter(weights / weights.sum(-1, keepdim=True), self.top_p)
        cdf = weights.cumsum_(-1)  # [b, V]
        u = torch.as_tensor(self._next_uniforms(), dtype=cdf.dtype, device=cdf.device)  # [b]
        total = cdf[:, -1]  # [b]
        x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))  # [b] in [0, total)
        tokens = torch.searchsorted(cdf, x[:, None], right=True).squeeze(-1)  # [b] first cdf > x
        return tokens, z.gather(-1, tokens[:, None]).squeeze(-1) - lse

    def _next_uniforms(self) -> np.ndarray:
        """One uniform in [0, 1) per cache row, the next of its user row's own stream."""
        rows = self._rows.numpy()
        if self._streams is None:
            self._streams = [torch.Generator(device="cpu").manual_seed(row_seed(self.seed, self.first_index + i))
                             for i in range(self.batch_size)]
            self._uniforms = np.zeros((self.batch_size, _UNIFORMS_PER_REFILL))
            self._used = np.full(self.batch_size, _UNIFORMS_PER_REFILL)
        for i in rows[self._used[rows] == _UNIFORMS_PER_REFILL]:
            self._uniforms[i] = torch.rand(_UNIFORMS_PER_REFILL, generator=self._streams[i], dtype=torch.float64).numpy()
            self._used[i] = 0
        u = self._uniforms[rows, self._used[rows]]
        self._used[rows] += 1
        return u

    def sample(self, n_tokens: int | Sequence[int]) -> tuple[list[list[int]], list[list[float]]]:
        """Draw the next block of every live row.

        Args:
            n_tokens: most tokens per row this block (an int, or one per user row; rows with
                0 or finished rows get an empty block). A row's block ends early at EOS.

        Returns:
            ``(blocks, logprobs)``: per user row, the drawn token ids and their log-probs.
        """
        n = np.broadcast_to(np.asarray(n_tokens, dtype=np.int64), (self.batch_size,)).copy()
        n[self.finished] = 0
        if n.any() and self._stale():
            self._reencode()
        blocks: list[list[int]] = [[] for _ in range(self.batch_size)]
        logps: list[list[float]] = [[] for _ in range(self.batch_size)]
        rows = self._rows.tolist()
        budget = torch.as_tensor(n[rows], device=self.device)  # [b]
        open_ = budget > 0  # [b] rows still drawing this block
        for _ in range(int(n.max(initial=0))):
            if not bool(open_.any()):
                break
            tokens, lp = self._draw(self._next_logits())  # [b], [b]
            tok_list, lp_list = tokens.tolist(), lp.tolist()
            for r in open_.nonzero().flatten().tolist():
                blocks[rows[r]].append(tok_list[r])
                logps[rows[r]].append(lp_list[r])
            self._pending = torch.where(open_, tokens, torch.full_like(tokens, self.pad_id))
            self._pending_mask = open_.clone()
            budget = budget - open_.long()
            open_ = open_ & (budget > 0) & (tokens != self.eos_id)
        for user_row, block in enumerate(blocks):
            self.responses[user_row].extend(block)
            if block:
                self._last_blocks[user_row] = block
        return blocks, logps

    def finish(self, user_rows: Sequence[int] | np.ndarray) -> None:
        """Mark rows finished (their next blocks are empty) and prune them from the cache."""
        self.finished[np.asarray(user_rows, dtype=np.int64)] = True
        self.compact()

    def compact(self) -> None:
        """Drop finished rows from the KV cache and the per-row state."""
        keep = torch.as_tensor(~self.finished[self._rows.numpy()])  # [b] bool
        if bool(keep.all()):
            return
        if not bool(keep.any()):
            self._cache = self._decoder = None
            self._rows = self._rows[:0]
            return
        idx = keep.nonzero().flatten().to(self.device)
        if self._decoder is not None:
            self._decoder.select(idx)
        else:
            self._cache.batch_select_indices(idx)  # type: ignore[union-attr]
            self._mask, self._pos = self._mask[idx], self._pos[idx]
        self._rows = self._rows[keep]
        self._logits = self._logits[idx]
        if self._pending is not None:
            self._pending, self._pending_mask = self._pending[idx], self._pending_mask[idx]  # type: ignore[index]

    # ------------------------------------------------------------------ env observations
    @classmethod
    def from_obs(cls, policy: Any, obs: Any, **kwargs: Any) -> BlockSampler:
        """A batch for the rows of a ``ReasoningEnv`` observation batch (prompt and any
        response so far are prefilled); ``kwargs`` as for the constructor."""
        rows = obs_rows(obs)
        kwargs.setdefault("reserve", max(budget - len(r) for _, r, budget in rows))
        return cls(policy, [r[0] for r in rows], responses=[r[1] for r in rows], **kwargs)

    def act(self, obs: Any, block_size: int, *, done: Any = None) -> tuple[list[np.ndarray], list[list[float]]]:
        """One block per row from ``ReasoningEnv`` observations (the one generation entry point:
        :func:`mpo_gym.rollout.rollout` and :meth:`LMPolicy.act` both call it).

        Contract: ``obs`` (a batched observation dict, as from a vector env, or a list of
        observation dicts) describes the same rows, in the same order, as this sampler's
        prompts, and each live row's ``response_ids[:response_length]`` equals the tokens this
        sampler produced for it so far (checked cheaply: the length and the last block);
        otherwise ``ValueError`` (start a new batch). Rows in ``done`` (bool per row) are
        finished and get an empty block. Each row's block is at most ``min(block_size, room)``
        tokens, where ``room`` is the env's remaining token budget, so the env accepts every
        sampled token (up to an EOS).
        """
        lengths, budget, responses = _obs_arrays(obs)
        if lengths.shape[0] != self.batch_size:
            raise ValueError(f"obs has {lengths.shape[0]} rows; this batch has {self.batch_size}")
        if done is not None:
            newly = np.flatnonzero(np.asarray(done, dtype=bool) & ~self.finished)
            if newly.size:
                self.finish(newly)
        n = np.zeros(self.batch_size, dtype=np.int64)
        for i in np.flatnonzero(~self.finished):
            mine = self.responses[i]
            have = int(lengths[i])
            tail = len(mine) - len(self._last_blocks[i])
            if have != len(mine) or not np.array_equal(responses[i][tail:have], self._last_blocks[i]):
                raise ValueError(
                    f"obs row {i} does not continue this batch's cached sequence; call "
                    "policy.end() or policy.begin(prompts) to start a new batch"
                )
            n[i] = min(int(block_size), budget - have)
        blocks, logps = self.sample(n.tolist())
        return [np.asarray(b, dtype=np.int64) for b in blocks], logps


def _obs_arrays(obs: Any) -> tuple[np.ndarray, int, Any]:
    """``(response lengths [B], max_new_tokens, per-row response id arrays)`` of an obs batch."""
    responses: Any
    if isinstance(obs, dict):
        lengths = np.atleast_1d(np.asarray(obs["response_length"]))
        responses = np.atleast_2d(np.asarray(obs["response_ids"]))
    else:
        lengths = np.asarray([int(o["response_length"]) for o in obs])
        responses = [np.asarray(o["response_ids"]) for o in obs]
    return lengths, int(np.shape(responses[0])[-1]), responses


def obs_rows(obs: Any) -> list[tuple[list[int], list[int], int]]:
    """``(prompt ids, response ids, max_new_tokens)`` per row of an observation batch."""
    if isinstance(obs, dict):
        prompt_ids = np.atleast_2d(obs["prompt_ids"])
        n = prompt_ids.shape[0]
        items = [{k: np.asarray(v)[i] if np.ndim(v) else v for k, v in obs.items()} for i in range(n)]
    else:
        items = list(obs)
    rows = []
    for o in items:
        p, r = int(o["prompt_length"]), int(o["response_length"])
        response = np.asarray(o["response_ids"])
        rows.append(([int(t) for t in np.asarray(o["prompt_ids"])[:p]],
                     [int(t) for t in response[:r]], int(response.shape[-1])))
    return rows


def draw_blocked(z: torch.Tensor, u: torch.Tensor, block: int = DRAW_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF draw from ``softmax(z)`` that reads the vocabulary once.

    Args:
        z: ``[b, V]`` (tempered) logits.
        u: ``[b]`` uniforms in [0, 1), one per row (float64).

    Returns:
        ``(tokens [b], log softmax(z)[token] [b])``.

    The vocabulary is cut into blocks of ``block`` logits: one fused ``logsumexp`` per block
    (the only pass over all ``V`` logits) gives the block masses; the row's uniform picks a
    block on their cumulative sum (``V / block`` numbers) and then a token on the cumulative
    sum inside that block (``block`` numbers). This is the same inverse-CDF rule, with the same
    uniform, as one cumulative sum over the whole vocabulary: the token differs only where
    ``u`` falls within float rounding of a CDF boundary (the sums are grouped differently).
    """
    b, V = z.shape
    nblk = -(-V // block)
    if nblk * block != V:  # pad with zero-probability logits to whole blocks
        z = F.pad(z, (0, nblk * block - V), value=float("-inf"))
    zb = z.view(b, nblk, block)
    blk_lse = torch.logsumexp(zb, -1).double()  # [b, nblk]  the one pass over the vocabulary
    lse = torch.logsumexp(blk_lse, -1)  # [b]  (the short sums run in float64)
    mass = (blk_lse - lse[:, None]).exp_()  # [b, nblk] block probabilities
    cdf = mass.cumsum(-1)  # [b, nblk]
    x = u.double() * cdf[:, -1]  # [b] in [0, total)
    j = torch.searchsorted(cdf, x[:, None], right=True).clamp_(max=nblk - 1)  # [b, 1] the block
    rows = torch.arange(b, device=z.device)
    inner = (zb[rows, j[:, 0]].double() - lse[:, None]).exp_().cumsum_(-1)  # [b, block] CDF inside it
    rest = (x - (cdf.gather(1, j) - mass.gather(1, j)).squeeze(1)).clamp_(min=0)  # [b] mass left to cover
    rest = torch.minimum(rest, torch.nextafter(inner[:, -1], torch.zeros_like(rest)))  # a token of weight > 0
    t = torch.searchsorted(inner, rest[:, None], right=True).squeeze(1)  # [b] first inner cdf > rest
    tokens = j[:, 0] * block + t
    return tokens, z.gather(1, tokens[:, None]).squeeze(1) - lse.to(z.dtype)


def _weights_version(policy: Any) -> int:
    """The policy's weight version (:meth:`LMPolicy.weights_changed` bumps it)."""
    return int(getattr(policy, "weights_version", 0))


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail outside the smallest set with mass >= ``top_p`` (keeps >= 1 token)."""
    sorted_p, order = probs.sort(-1, descending=True)  # [b, V]
    cum = sorted_p.cumsum(-1)  # [b, V]
    drop = (cum - sorted_p) >= top_p  # [b, V]
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_p)


def _forward_kwarg_names(lm: Any) -> tuple[str, str]:
    """Names of the cache and keep-last-logits kwargs across ``transformers`` versions."""
    params = inspect.signature(lm.forward).parameters
    cache_kw = cache_kwarg(lm)
    keep_kw = "logits_to_keep" if "logits_to_keep" in params else "num_logits_to_keep"
    return cache_kw, keep_kw
