"""What every agent shares: configs, ``RolloutBatch``, collection, mini-batching, the registry.

An agent implements ``collect(envs, policy) -> RolloutBatch`` and ``update(batch) -> metrics``.
Swapping the agent changes nothing else: the env, verifier, seeds and budget stay the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from mpo_gym.distributed import SINGLE, Dist, full_tensor, local_tensor, shard
from mpo_gym.policy import LMPolicy, ScoreOutput
from mpo_gym.rollout import Episode, rollout, task_count

from . import functional as F

__all__ = ["AgentConfig", "BaseAgent", "PolicySpec", "RolloutBatch", "Selection", "build_batch"]


@dataclass(frozen=True)
class PolicySpec:
    """What an agent needs from the :class:`~mpo_gym.policy.LMPolicy` it trains.

    Declared by the agent's config (:meth:`AgentConfig.policy_spec`); the trainer builds the
    policy from it and the agent checks the policy it is given against it.

    Attributes:
        critic: a value head (or separate critic) is trained and scored.
        num_mtp_modules: MTP modules scored (and trained) by the agent.
        share_lm_head: the MTP modules use the backbone's LM head.
    """

    critic: bool = False
    num_mtp_modules: int = 0
    share_lm_head: bool = False

    def policy_kwargs(self, value_head: str = "head") -> dict[str, Any]:
        """``LMPolicy`` keyword options for this spec (``value_head`` is the critic's form)."""
        return {"value_head": value_head if self.critic else False,
                "num_mtp_modules": self.num_mtp_modules, "share_lm_head": self.share_lm_head}


@dataclass(frozen=True)
class AgentConfig:
    """Settings shared by every agent (CleanRL-style: one docstring line per field).

    Attributes:
        seed: seeds task choice and sampling.
        lr: actor learning rate (AdamW).
        weight_decay: AdamW weight decay.
        adam_eps: AdamW epsilon.
        temperature: rollout sampling temperature.
        top_p: rollout nucleus sampling.
        minibatch_size: episodes per optimizer step (the batch is ``len(envs)`` episodes).
        micro_batch_size: episodes per forward/backward pass (gradient accumulation).
        ppo_epochs: passes over each rollout batch.
        clip_low: ε below 1 for the ratio clip.
        clip_high: ε above 1 (``> clip_low`` gives DAPO's "clip-higher").
        max_grad_norm: gradient-norm clip (0 disables).
        kl_coef: weight of the k3 KL-to-reference loss (0 disables; a frozen copy of the
            initial policy is kept when > 0, see :meth:`needs_reference_model`).
        entropy_coef: entropy bonus weight (0 disables).
        loss_aggregation: ``"token-mean"``, ``"seq-mean-token-mean"`` or ``"seq-mean-token-sum-norm"``.
        whiten_advantages: normalise advantages over the batch (mean 0, std 1).
    """

    seed: int = 0
    lr: float = 1e-5
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    temperature: float = 1.0
    top_p: float = 1.0
    minibatch_size: int = 8
    micro_batch_size: int = 4
    ppo_epochs: int = 1
    clip_low: float = 0.2
    clip_high: float = 0.2
    max_grad_norm: float = 1.0
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    loss_aggregation: str = "token-mean"
    whiten_advantages: bool = True

    def __post_init__(self) -> None:
        positive = ("lr", "minibatch_size", "micro_batch_size", "ppo_epochs", "temperature")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{type(self).__name__}.{name} must be > 0; got {getattr(self, name)}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1]; got {self.top_p}")
        self.check_clip()
        if self.micro_batch_size > self.minibatch_size:
            raise ValueError("micro_batch_size must be <= minibatch_size")
        aggregations = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
        if self.loss_aggregation not in aggregations:
            raise ValueError(f"loss_aggregation must be one of {aggregations}")
        for name in ("kl_coef", "entropy_coef", "max_grad_norm", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    def check_clip(self) -> None:
        """Validate ``clip_low``/``clip_high`` (a ratio floor ``1 - clip_low`` above 0 here; an
        agent whose clip means something else overrides this)."""
        if self.clip_low < 0 or self.clip_high < 0 or self.clip_low >= 1:
            raise ValueError("need 0 <= clip_low < 1 and clip_high >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ what the trainer needs
    def policy_spec(self) -> PolicySpec:
        """The policy this agent needs: a bare LM unless a subclass says otherwise."""
        return PolicySpec()

    def batch_group_size(self) -> int:
        """Episodes per group: a batch (and each rank's share of it) holds whole multiples of
        this. 1 for agents without groups."""
        return 1

    def needs_reference_model(self) -> bool:
        """True where the agent needs a frozen copy of the initial policy (a KL term in the loss
        or in the reward); :meth:`BaseAgent.bind` builds it then."""
        return self.kl_coef > 0


@dataclass
class RolloutBatch:
    """One rollout batch as right-padded per-token tensors (B episodes, T response positions).

    The sequence layout is ``[left-padded prompt (P) | right-padded response (T)]`` so that
    response position t is column ``P + t`` of ``input_ids``.
    """

    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T]
    prompt_len: int  # P
    mask: torch.Tensor  # [B, T] bool, real response tokens
    rewards: torch.Tensor  # [B, T] env step rewards at the last token of each block
    scores: torch.Tensor  # [B] episode return
    truncated: torch.Tensor  # [B] bool
    group_ids: torch.Tensor  # [B] episodes sharing a task (GRPO groups)
    sample_logprobs: torch.Tensor  # [B, T] log-probs recorded while sampling (checked against old_logprobs)
    old_logprobs: torch.Tensor | None = None  # [B, T] teacher-forced, before the update
    old_values: torch.Tensor | None = None  # [B, T]
    last_values: torch.Tensor | None = None  # [B]
    old_mtp_logprobs: torch.Tensor | None = None  # [B, T, M]
    mtp_mask: torch.Tensor | None = None  # [B, T, M]
    ref_logprobs: torch.Tensor | None = None  # [B, T]
    advantages: torch.Tensor | None = None  # [B, T]
    returns: torch.Tensor | None = None  # [B, T]
    statuses: list[str] = field(default_factory=list)  # [B] verdict statuses
    episodes: list[Episode] = field(default_factory=list)
    max_len: int = 0  # longest response of the whole rollout batch (kept by select; Dr.GRPO's constant)
    sampled: list[Episode] | None = None  # every episode sampled this update when a selection kept fewer
    selection_metrics: dict[str, float] = field(default_factory=dict)  # the selection hook's ``select/...``

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, rows: Sequence[int] | torch.Tensor) -> RolloutBatch:
        """The sub-batch of ``rows``, trimmed of columns that are padding in every row."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        attn = self.attention_mask[rows]  # [b, P + T]
        first = int(attn[:, : self.prompt_len].any(0).long().argmax()) if self.prompt_len else 0
        t_len = int(self.mask[rows].any(0).nonzero().max()) + 1 if self.mask[rows].any() else 1
        out: dict[str, Any] = {"prompt_len": self.prompt_len - first, "statuses": [], "episodes": [],
                               "max_len": self.max_len, "sampled": None, "selection_metrics": {}}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, torch.Tensor):
                continue
            value = value[rows]
            if f.name in ("input_ids", "attention_mask"):
                value = value[:, first : self.prompt_len + t_len]
            elif value.dim() >= 2:
                value = value[:, :t_len]
            out[f.name] = value
        return RolloutBatch(**out)


@dataclass
class Selection:
    """What :meth:`BaseAgent.select_episodes` keeps of the episodes sampled for one update.

    Attributes:
        episodes: the kept episodes, whole groups of ``group_size`` in group-major order (the
            order groups are numbered in); empty: the update is skipped.
        sampled: every episode sampled for this update, over all sampling rounds; ``charts/``
            and ``verdicts/`` describe these, so filtering never changes what is measured.
        weights: ``[len(episodes)]`` factors on each kept episode's advantages (reweighting),
            or None (all 1).
        metrics: the hook's own metrics (``select/...``), logged with the update.
    """

    episodes: list[Episode]
    sampled: list[Episode]
    weights: list[float] | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def pad_sequences(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``[left-padded prompt | right-padded response]`` ids, attention mask, response mask, P."""
    b = len(prompts)
    p = max(len(x) for x in prompts)
    t = max(max(len(r) for r in responses), 1)
    input_ids = torch.full((b, p + t), pad_id, dtype=torch.long)  # [B, P + T]
    attention = torch.zeros((b, p + t), dtype=torch.long)  # [B, P + T]
    mask = torch.zeros((b, t), dtype=torch.bool)  # [B, T]
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        n_p, n_r = len(prompt), len(response)
        input_ids[i, p - n_p : p] = torch.as_tensor(list(prompt), dtype=torch.long)
        input_ids[i, p : p + n_r] = torch.as_tensor(list(response), dtype=torch.long)
        attention[i, p - n_p : p + n_r] = 1
        mask[i, :n_r] = True
    return input_ids, attention, mask, p


def build_batch(episodes: Sequence[Episode], pad_id: int, group_ids: Sequence[int] | None = None) -> RolloutBatch:
    """Pad episodes into a :class:`RolloutBatch` (rewards placed at each block's last token).

    No episodes give an empty batch (0 rows, 1 column): a skipped update."""
    b = len(episodes)
    if b == 0:
        return RolloutBatch(
            input_ids=torch.zeros((0, 1), dtype=torch.long), attention_mask=torch.zeros((0, 1), dtype=torch.long),
            prompt_len=0, mask=torch.zeros((0, 1), dtype=torch.bool), rewards=torch.zeros((0, 1)),
            scores=torch.zeros(0), truncated=torch.zeros(0, dtype=torch.bool),
            group_ids=torch.zeros(0, dtype=torch.long), sample_logprobs=torch.zeros((0, 1)), max_len=1,
        )
    input_ids, attention, mask, p = pad_sequences(
        [e.prompt_ids for e in episodes], [e.response_ids for e in episodes], pad_id
    )
    t = mask.shape[1]
    rewards = torch.zeros((b, t))  # [B, T]
    sample_logprobs = torch.zeros((b, t))  # [B, T]
    for i, e in enumerate(episodes):
        sample_logprobs[i, : len(e.logprobs)] = torch.tensor(e.logprobs, dtype=torch.float32)
        ends = np.cumsum(e.block_lengths) - 1
        for end, r in zip(ends, e.step_rewards):
            rewards[i, int(end)] += float(r)
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention,
        prompt_len=p,
        mask=mask,
        rewards=rewards,
        scores=torch.tensor([e.reward for e in episodes], dtype=torch.float32),
        truncated=torch.tensor([e.truncated for e in episodes]),
        group_ids=torch.tensor(list(group_ids) if group_ids is not None else range(b)),
        sample_logprobs=sample_logprobs,
        statuses=[e.verdict.status if e.verdict is not None else "error" for e in episodes],
        episodes=list(episodes),
        max_len=t,
    )


class BaseAgent:
    """Collection, old-log-prob scoring, mini-batching and the optimizer step.

    Subclasses declare what they need in their config (:meth:`AgentConfig.policy_spec`,
    :meth:`AgentConfig.batch_group_size`, :meth:`AgentConfig.needs_reference_model`) and
    implement ``compute_advantages`` and ``loss``; :meth:`select_episodes` is the hook between
    sampling and batch building. The policy is bound on
    the first ``collect`` (or by :meth:`bind`) and checked against the spec.

    Data parallel (``dist``, a :class:`~mpo_gym.distributed.Dist`; the trainer sets it): the
    envs given to ``collect`` are this rank's shard of the batch. Each rank rolls out and scores
    its shard, the episodes and scores are gathered so every rank holds the whole batch (and
    computes the same advantages), each mini-batch is split across ranks with weights over the
    whole mini-batch, and gradients are summed over ranks before one identical optimizer step.
    N ranks with B/N envs each compute the update of one process with B envs.
    """

    name: ClassVar[str] = "base"

    def __init__(self, config: AgentConfig, policy: LMPolicy | None = None):
        self.config = config
        self.spec = config.policy_spec()
        self.uses_critic = self.spec.critic  # records values and trains a critic
        self.needs_mtp = self.spec.num_mtp_modules > 0  # scores MTP log-probs
        self.rng = np.random.default_rng(config.seed)
        self.torch_rng = torch.Generator().manual_seed(config.seed)
        self._policy: LMPolicy | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.reference: LMPolicy | None = None
        self.rollout_calls = 0
        self.dist: Dist = SINGLE
        self.bytes_reduced = 0  # gradient bytes all-reduced in the last update (data parallel)
        if policy is not None:
            self.bind(policy)

    # ------------------------------------------------------------------ setup
    @property
    def policy(self) -> LMPolicy:
        if self._policy is None:
            raise RuntimeError("bind a policy (or call collect) first")
        return self._policy

    def bind(self, policy: LMPolicy) -> None:
        """Check ``policy`` against the spec, attach it and build the optimizer."""
        if self._policy is policy:
            return
        if self.spec.critic and policy.value_head is None:
            raise ValueError(f"{type(self).__name__} needs a critic: build LMPolicy(..., value_head=True)")
        if len(policy.mtp) < self.spec.num_mtp_modules:
            raise ValueError(
                f"{type(self).__name__} needs LMPolicy(num_mtp_modules={self.spec.num_mtp_modules}); "
                f"the policy has {len(policy.mtp)}"
            )
        self._policy = policy
        groups = self.param_groups(policy)
        self.optimizer = adamw(groups, lr=self.config.lr, weight_decay=self.config.weight_decay,
                               eps=self.config.adam_eps)
        if self.config.needs_reference_model():
            self.reference = policy.frozen_copy()

    def param_groups(self, policy: LMPolicy) -> list[dict[str, Any]]:
        return [{"params": [p for p in policy.backbone_parameters() if p.requires_grad]}]

    def warmup(self, envs: Any, policy: LMPolicy) -> list[dict[str, float]]:
        """A stage before RL (MPO trains its MTP modules here); returns per-step metrics.

        The base agent has none: it binds the policy and returns ``[]``.
        """
        self.bind(policy)
        return []

    @property
    def group_size(self) -> int:
        """Episodes per group (the config's :meth:`AgentConfig.batch_group_size`)."""
        return self.config.batch_group_size()

    # ------------------------------------------------------------------ collect
    def choose_tasks(self, envs: Any) -> list[int]:
        """Task indices for the whole batch (every rank's envs): distinct tasks, or G copies of
        each for groups. Depends only on the seed and the update, not on the number of ranks."""
        g = self.group_size
        n_envs, n_tasks = task_count(envs)
        if n_envs % g:
            raise ValueError(f"{n_envs} envs is not a multiple of the group size {g}"
                             + (" (on each rank)" if self.dist.active else ""))
        picks = self.rng.integers(n_tasks, size=n_envs * self.dist.world_size // g)
        return [int(i) for i in np.repeat(picks, g)]

    def collect(self, envs: Any, policy: LMPolicy) -> RolloutBatch:
        """Sample, select, build: one episode per env (:meth:`sample`), the selection hook
        (:meth:`select_episodes`), then the batch with old log-probs (and values, MTP,
        reference) and advantages (:meth:`build`).

        ``envs``: anything :func:`mpo_gym.rollout.rollout` steps (a list of (wrapped) envs or a
        vector env); the batch holds what the outermost wrapper returned.
        """
        self.bind(policy)
        return self.build(self.select_episodes(self.sample(envs, policy), envs, policy))

    def sample(self, envs: Any, policy: LMPolicy) -> list[Episode]:
        """One sampling round: an episode per env of every rank, in episode order, on every rank.

        Each rank rolls out its equal share (its ``envs``) of the round's tasks; the episodes are
        gathered, so every rank returns the same list. A selection hook may call it again to
        sample more (each call draws new tasks and a new sampling seed)."""
        tasks = self.choose_tasks(envs)
        seed = int(self.rng.integers(2**31 - 1))
        mine = self.dist.shard(len(tasks))
        with self.dist.gathered(policy):  # sharded (fsdp): ranks generate different token counts
            episodes = rollout(
                envs, policy, task_indices=[tasks[i] for i in mine], seed=seed, first_index=mine.start,
                temperature=self.config.temperature, top_p=self.config.top_p,
            )
        if self.dist.active:  # every rank holds the whole batch, in episode order
            episodes = [e for part in self.dist.all_gather_objects(episodes) for e in part]
        self.rollout_calls += 1
        return episodes

    def select_episodes(self, episodes: list[Episode], envs: Any, policy: LMPolicy) -> Selection:
        """The selection hook between sampling and batch building: filter, resample or reweight.

        The base agent keeps every episode. An override returns whole groups (any number of
        them, none included) and may call :meth:`sample` for more episodes (DAPO's dynamic
        sampling does). Data parallel: it runs on every rank with the same gathered
        ``episodes`` and the same random state, so it must decide from them alone (no
        rank-local state): every rank then keeps the same episodes. The kept batch is *re-sharded*:
        advantages and whitening are computed over the whole kept batch on every rank, and its
        rows are split into near-equal shares (sizes differ by at most one) for scoring and for
        each mini-batch, the gradient weights computed over the whole mini-batch; under ``fsdp``
        the rank with fewer rows runs zero-weight padding passes so that every forward and
        backward stays a collective. No kept group (an empty selection) skips the update: it
        is logged with ``select/skipped = 1`` and makes no optimizer step.
        """
        return Selection(episodes=episodes, sampled=episodes)

    def build(self, selection: Selection) -> RolloutBatch:
        """The batch of the kept episodes: padded, scored (old log-probs, values, MTP,
        reference) and given advantages (times the selection's weights, if any)."""
        kept, g = selection.episodes, self.group_size
        if len(kept) % g:
            raise ValueError(f"the selection kept {len(kept)} episodes: not whole groups of {g}")
        groups = [i // g for i in range(len(kept))]
        batch = build_batch(kept, pad_id=_pad_id(self.policy), group_ids=groups)
        if selection.sampled is not kept:
            batch.sampled = list(selection.sampled)
        batch.selection_metrics = dict(selection.metrics)
        if batch.size == 0:
            return batch
        self.score_old(batch)
        self.compute_advantages(batch)
        if selection.weights is not None:
            if len(selection.weights) != len(kept):
                raise ValueError(f"the selection gave {len(selection.weights)} weights for {len(kept)} episodes")
            w = torch.tensor(selection.weights, dtype=torch.float32)  # [B]
            assert batch.advantages is not None
            batch.advantages = batch.advantages * w[:, None].to(batch.advantages.dtype)  # [B, T]
        return batch

    @torch.no_grad()
    def score_old(self, batch: RolloutBatch) -> None:
        """Teacher-forced log-probs (and values / MTP log-probs) of the sampling policy.

        Each rank scores its shard of the rows; the results are gathered (data parallel). The
        shards may differ by a row (a selection kept an odd number of rows): sharded
        (``fsdp``), the rank with fewer chunks scores padding chunks whose outputs it drops, so
        that every rank runs the same number of forwards."""
        rows = list(self.dist.shard(batch.size))
        chunks = self._chunks(rows) or [[0]]  # an empty share scores one row and keeps none
        chunks += [[0]] * (self._forwards_per_rank(batch.size) - len(chunks))
        t, n = batch.mask.shape[1], len(rows)

        def gather(parts: list[torch.Tensor]) -> torch.Tensor:
            return self.dist.all_gather_rows(_cat_pad(parts, t)[:n])

        outs = [self._score(self.policy, batch.select(c), old=True) for c in chunks]
        batch.old_logprobs = gather([o.logprobs for o in outs])
        if self.uses_critic:
            batch.old_values = gather([required(o.values) for o in outs])
            last = torch.cat([required(o.last_values) for o in outs]).float().cpu()[:n]
            batch.last_values = self.dist.all_gather_rows(last)
        if outs[0].mtp_logprobs is not None:
            batch.old_mtp_logprobs = gather([required(o.mtp_logprobs) for o in outs])
            batch.mtp_mask = gather([required(o.mtp_mask) for o in outs])
        if self.reference is not None:
            batch.ref_logprobs = gather([self._score(self.reference, batch.select(c), old=False).logprobs for c in chunks])

    def _forwards_per_rank(self, n_rows: int) -> int:
        """Sharded (``fsdp``): the scoring chunks of the rank with the most rows (every rank runs
        that many forwards); 0 otherwise (no padding)."""
        if not self.dist.fsdp:
            return 0
        return max(1, -(-len(shard(n_rows, 0, self.dist.world_size)) // self.config.micro_batch_size))

    def _score(self, policy: LMPolicy, mb: RolloutBatch, old: bool) -> ScoreOutput:
        return policy.score(
            mb.input_ids, mb.attention_mask, mb.prompt_len,
            values=self.uses_critic and old, temperature=self.config.temperature,
        )

    def score_current(self, mb: RolloutBatch, *, values: bool = False, mtp: bool = False) -> ScoreOutput:
        """Score ``mb`` under the policy being trained, at the temperature the rollout sampled
        with (so log-probs match the sampling distribution), with entropy when it is regularised."""
        return self.policy.score(
            mb.input_ids, mb.attention_mask, mb.prompt_len, values=values, mtp=mtp,
            entropy=self.config.entropy_coef > 0, temperature=self.config.temperature,
        )

    def _chunks(self, rows: Sequence[int]) -> list[list[int]]:
        size = self.config.micro_batch_size
        return [list(rows[i : i + size]) for i in range(0, len(rows), size)]

    # ------------------------------------------------------------------ update
    def compute_advantages(self, batch: RolloutBatch) -> None:
        raise NotImplementedError

    def loss(self, mb: RolloutBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """``ppo_epochs`` passes of shuffled mini-batches; one optimizer step per mini-batch.

        An empty batch (the selection kept nothing) makes no step: the metrics say
        ``select/skipped = 1`` and describe the episodes sampled."""
        if self.optimizer is None:
            raise RuntimeError("bind a policy (or call collect) before update")
        cfg = self.config
        self.policy.train()
        self.bytes_reduced = 0
        logs: dict[str, list[float]] = {}
        for _ in range(cfg.ppo_epochs if batch.size else 0):
            order = torch.randperm(batch.size, generator=self.torch_rng).tolist()
            for start in range(0, batch.size, cfg.minibatch_size):
                rows = order[start : start + cfg.minibatch_size]
                for key, value in self._step(batch, rows).items():
                    logs.setdefault(key, []).append(value)
        metrics = {k: float(np.mean(v)) for k, v in logs.items()}
        metrics.update(self.batch_metrics(batch))
        metrics.update(batch.selection_metrics)
        if batch.size == 0:
            metrics["select/skipped"] = 1.0
        if self.dist.active:
            metrics["perf/allreduce_bytes"] = float(self.bytes_reduced)  # gradients summed over ranks
        metrics["perf/train_state_mb"] = self.train_state_bytes() / 2**20
        return metrics

    def _step(self, batch: RolloutBatch, rows: list[int]) -> dict[str, float]:
        assert self.optimizer is not None
        micro = [(lambda m=m: self.loss(batch.select(m)), w) for m, w in self._micro_weights(batch, rows)]
        logs, norm = self.gradient_step(self.optimizer, micro, self.config.max_grad_norm)
        if self.config.max_grad_norm > 0:
            logs["losses/grad_norm"] = norm
        return logs

    def gradient_step(
        self, optimizer: torch.optim.Optimizer,
        micro: Sequence[tuple[Callable[[], tuple[torch.Tensor, dict[str, Any]]], float]], max_grad_norm: float,
    ) -> tuple[dict[str, float], float]:
        """One data-parallel optimizer step over this rank's weighted micro-batch losses.

        ``micro``: ``(closure, weight)`` pairs; each closure runs a forward and returns ``(loss,
        metrics)``; ``(loss * weight).backward()`` accumulates. The weights are chosen so that the
        gradients accumulated here and summed over ranks are the whole step's (see
        :meth:`_micro_weights`); the metrics are weighted the same way and summed over ranks.
        A non-finite loss on any rank skips the step on every rank (``FloatingPointError``).
        Returns ``(metrics, gradient norm before clipping)``. The RL update and MPO's warm-up
        both step through here.
        """
        optimizer.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        error = None
        for i, (closure, weight) in enumerate(micro):
            loss, metrics = closure()
            if not torch.isfinite(loss) and error is None:
                error = f"non-finite loss {loss.item()} ({self.name}); metrics {metrics}"
            if error is not None and not self.dist.fsdp:  # sharded, each backward is a collective: run them all
                break
            self.dist.gradient_sync(self.policy, i == len(micro) - 1)
            (loss * weight).backward()
            for key, value in metrics.items():
                logs[key] = logs.get(key, 0.0) + weight * float(value)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if self.dist.active:  # the weighted logs and any error of every rank; gradients summed
            parts = self.dist.all_gather_objects((logs, error))
            error = next((e for _, e in parts if e is not None), None)
            logs = {}
            for part, _ in parts:
                for key, value in part.items():
                    logs[key] = logs.get(key, 0.0) + value
        if error is not None:
            optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(error)
        return logs, self.optimizer_step(optimizer, params, max_grad_norm)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                       max_grad_norm: float) -> float:
        """The one optimizer step of every agent (the RL update's and any warm-up's).

        Sums the gradients over the ranks, clips them to ``max_grad_norm`` (0: no clip), steps,
        and then drops every cache made from the old weights (:meth:`LMPolicy.weights_changed`:
        autocast's low-precision copies, the sampler's KV cache), so the next forward sees the
        new weights. Returns the gradient norm before clipping; a non-finite norm skips the step
        and raises ``FloatingPointError``.
        """
        self.bytes_reduced += self.dist.all_reduce_grads(params)
        if max_grad_norm > 0:
            norm = full_tensor(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
        else:
            norm = full_tensor(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
        if not torch.isfinite(norm):  # a finite loss can still have inf/nan gradients
            optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(f"non-finite gradient norm {float(norm)} ({self.name}); optimizer step skipped")
        optimizer.step()
        self.policy.weights_changed()
        return float(norm)

    def train_state_bytes(self) -> int:
        """Bytes this rank holds of the trained parameters, their gradients and the optimizer
        state (this rank's shards when the policy is sharded): what ``--fsdp`` divides."""
        assert self.optimizer is not None
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        tensors = params + [p.grad for p in params if p.grad is not None]
        tensors += [v for state in self.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
        return sum(local_tensor(t).numel() * t.element_size() for t in tensors)

    def _micro_weights(self, batch: RolloutBatch, rows: list[int]) -> list[tuple[list[int], float]]:
        """This rank's part of the mini-batch ``rows`` as micro-batches, weighted so that the
        gradients accumulated over micro-batches and summed over ranks equal the mini-batch loss's.

        Sharded (``fsdp``), every rank runs as many micro-batches as the rank with the most: the
        others are padded with zero-weight ones (a row of the mini-batch, contributing nothing),
        since each forward and backward is a collective there."""
        token_mean = self.config.loss_aggregation == "token-mean"
        total = max(float(batch.mask[rows].sum()) if token_mean else float(len(rows)), 1.0)
        micros = self._chunks([rows[i] for i in self.dist.shard(len(rows))])
        counts = [float(batch.mask[m].sum()) if token_mean else float(len(m)) for m in micros]
        out = [(m, c / total) for m, c in zip(micros, counts)]
        if self.dist.fsdp:
            size = self.config.micro_batch_size
            most = -(-len(shard(len(rows), 0, self.dist.world_size)) // size)  # rank 0's shard is the largest
            out += [([rows[0]], 0.0)] * (most - len(out))
        return out

    def batch_metrics(self, batch: RolloutBatch) -> dict[str, float]:
        """``charts/`` and ``verdicts/`` of the episodes sampled this update (all of them, also
        where a selection kept fewer), and the sampler-versus-scorer check of the kept rows."""
        if batch.sampled is None:  # the batch is what was sampled
            scores, lengths = batch.scores, batch.mask.sum(1).float()
            truncated, statuses = batch.truncated.float(), batch.statuses
        else:
            eps = batch.sampled
            scores = torch.tensor([e.reward for e in eps], dtype=torch.float32)
            lengths = torch.tensor([len(e.response_ids) for e in eps], dtype=torch.float32)
            truncated = torch.tensor([float(e.truncated) for e in eps])
            statuses = [e.verdict.status if e.verdict is not None else "error" for e in eps]
        n = len(statuses)
        out = {
            "charts/reward": float(scores.mean()) if n else 0.0,
            "charts/reward_std": float(scores.std()) if n > 1 else 0.0,
            "charts/response_length": float(lengths.mean()) if n else 0.0,
            "charts/truncated": float(truncated.mean()) if n else 0.0,
        }
        for status in ("correct", "incorrect", "no_answer", "timeout", "error"):
            out[f"verdicts/{status}"] = sum(s == status for s in statuses) / max(n, 1)
        if batch.old_logprobs is not None and bool(batch.mask.any()):
            # the sampler's log-probs against the teacher-forced ones of the same weights (nats per
            # token): ~1e-6 in fp32, ~1e-3 mean under bf16; larger means generation and scoring
            # disagree (dtype, padding, stale weights, a bug)
            gap = (batch.sample_logprobs - batch.old_logprobs).abs()[batch.mask]
            out["checks/sample_logprob_gap_mean"] = float(gap.mean())
            out["checks/sample_logprob_gap_max"] = float(gap.max())
        return out

    # ------------------------------------------------------------------ shared loss terms
    def regularizers(self, mb: RolloutBatch, out: ScoreOutput) -> tuple[torch.Tensor, dict[str, Any]]:
        """Optional KL-to-reference and entropy terms."""
        cfg = self.config
        loss = torch.zeros((), device=out.logprobs.device)
        metrics: dict[str, Any] = {}
        if cfg.kl_coef > 0 and mb.ref_logprobs is not None:
            kl = F.kl_k3(out.logprobs, mb.ref_logprobs.to(out.logprobs.device), mb.mask.to(out.logprobs.device))
            loss = loss + cfg.kl_coef * kl
            metrics["losses/kl_ref"] = kl.detach()
        if cfg.entropy_coef > 0 and out.entropy is not None:
            ent = F.masked_mean(out.entropy, mb.mask.to(out.entropy.device))
            loss = loss - cfg.entropy_coef * ent
            metrics["losses/entropy"] = ent.detach()
        return loss, metrics

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": None if self.optimizer is None else self.dist.optimizer_state(self.policy, self.optimizer),
            "rng": self.rng.bit_generator.state,
            "torch_rng": self.torch_rng.get_state(),
            "rollout_calls": self.rollout_calls,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.dist.load_optimizer_state(self.policy, self.optimizer, state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.torch_rng.set_state(state["torch_rng"])
        self.rollout_calls = state.get("rollout_calls", 0)


def adamw(params: Any, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one for these parameters.

    On the CPU torch's default is a per-tensor loop; the fused kernel does the same update in
    one pass (0.12 s instead of 0.9 s per step for 135M parameters on 2 cores).
    """
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(params, **kwargs)


def required(value: torch.Tensor | None) -> torch.Tensor:
    """A score output the call asked for (``values=True``, ``mtp=True``): never None."""
    if value is None:
        raise RuntimeError("a score output that was asked for is missing")
    return value


def _pad_id(policy: LMPolicy) -> int:
    pad = getattr(policy.tokenizer, "pad_token_id", None)
    return int(pad if pad is not None else 0)


def _cat_pad(parts: list[torch.Tensor], t: int) -> torch.Tensor:
    """Concatenate per-chunk ``[b, t_i, ...]`` tensors along rows, right-padding dim 1 to ``t``."""
    out = []
    for part in parts:
        part = part.detach().float() if part.is_floating_point() else part.detach()
        pad = t - part.shape[1]
        if pad > 0:
            shape = (part.shape[0], pad, *part.shape[2:])
            part = torch.cat([part, torch.zeros(shape, dtype=part.dtype, device=part.device)], 1)
        out.append(part.cpu())
    return torch.cat(out)
