"""Data parallelism on ``torch.distributed``: what a rank needs to know and the few collectives used.

A job started by ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT``) runs one process per rank; :func:`init`
joins the process group (``gloo`` on the CPU, ``nccl`` on CUDA, picked from the device) and
returns the rank's :class:`Dist`. Without those variables, :data:`SINGLE` describes the one
process and every collective here is a no-op, so a single process behaves exactly as before.

How the trainer uses it (see ``docs`` in the README, "Data-parallel training"):

- the global batch (``num_envs`` episodes) is split into equal contiguous shards, one per
  rank (:func:`shard`); group baselines never straddle ranks;
- each rank rolls out and scores its shard, then the episodes and their scores are gathered,
  so every rank holds the whole batch and computes the same advantages;
- each mini-batch is split across ranks, each rank back-propagates its part with weights
  normalised over the whole mini-batch, and the gradients are summed over ranks
  (:meth:`Dist.all_reduce_grads`) before one identical optimizer step on every rank;
- rank 0 writes the run folder.

With ``fsdp`` (:func:`shard_policy`, FSDP2's ``fully_shard``) parameters, gradients and
optimizer state are sharded over the ranks instead of replicated: every decoder layer (of the
backbone and of the MTP modules) is one unit, the rest of the policy the root. The scoring forwards (``score``,
``score_mtp``) and the update's backward gather and reduce-scatter unit by unit, so they run
in lock-step: the same number of forwards and backwards on every rank (the trainer's shards
are equal and short ranks run zero-weight micro-batches). Generation (rollouts and held-out
evaluation) differs in length between ranks, so it runs under :meth:`Dist.gathered`, with the
parameters all-gathered once for the whole rollout (as FSDP1's ``summon_full_params``): a rank
needs room for the parameters, while gradients and optimizer state stay sharded.
Checkpoints hold full (unsharded) state dicts, written by rank 0.

What it does not do: no tensor or pipeline parallelism, no separate inference engine.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch

from .verifiers.pool import local_cpus

__all__ = ["SINGLE", "Dist", "full_tensor", "init", "launched", "local_cpus", "local_tensor", "shard", "shard_policy"]

T = TypeVar("T")

_ENV = ("RANK", "WORLD_SIZE")


def launched() -> bool:
    """True when a launcher (``torchrun``) started this process as one rank of several."""
    return all(k in os.environ for k in _ENV) and int(os.environ["WORLD_SIZE"]) > 1


def shard(n: int, rank: int, world_size: int) -> range:
    """The contiguous part of ``range(n)`` that ``rank`` of ``world_size`` owns (sizes differ by
    at most one, the larger first)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


@dataclass(frozen=True)
class Dist:
    """One rank of a data-parallel job (``world_size == 1``: a single process, no collectives).

    Attributes:
        rank, world_size: this process's rank and the number of ranks.
        local_rank: rank on this node (the CUDA device index).
        backend: ``"gloo"``, ``"nccl"`` or ``""`` (single process).
        fsdp: the policy is sharded (:func:`shard_policy`), not replicated.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the run folder and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> range:
        """This rank's part of ``range(n)``."""
        return shard(n, self.rank, self.world_size)

    # ------------------------------------------------------------------ collectives
    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def all_gather_objects(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce(self, values: Sequence[float], op: str = "sum") -> list[float]:
        """Element-wise ``sum`` or ``max`` of a short list of floats over ranks (float64)."""
        if not self.active:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device())
        reduce_op = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}[op]
        torch.distributed.all_reduce(t, op=reduce_op)
        return t.cpu().tolist()

    def all_gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``[n_r, ...]`` tensor along dim 0 (trailing dims equal)."""
        if not self.active:
            return tensor
        sizes = [int(s) for s in self.all_gather_ints(tensor.shape[0])]
        width = max(sizes)
        dev = self._device()
        padded = torch.zeros((width, *tensor.shape[1:]), dtype=tensor.dtype, device=dev)
        padded[: tensor.shape[0]] = tensor.to(dev)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(tensor.device)

    def all_gather_ints(self, value: int) -> list[int]:
        """Every rank's integer ``value``, in rank order (one all-reduce of a one-hot vector)."""
        if not self.active:
            return [int(value)]
        t = torch.zeros(self.world_size, dtype=torch.int64, device=self._device())
        t[self.rank] = int(value)
        torch.distributed.all_reduce(t)
        return [int(v) for v in t.cpu().tolist()]

    def all_reduce_grads(self, params: Iterable[torch.nn.Parameter]) -> int:
        """Sum ``p.grad`` over ranks (a missing grad counts as zeros); returns the bytes reduced.

        The gradients are flattened into one buffer per dtype and device, reduced in one call
        each, and copied back, as DDP's buckets do once per optimizer step. Sharded parameters
        (``fsdp``) were reduce-scattered by their backward already: they are not reduced again
        and count with their full size (the bytes their reduce-scatter summed).
        """
        params = [p for p in params if p.requires_grad]
        if not self.active:
            return 0
        total = sum(p.numel() * p.element_size() for p in params if is_sharded(p))
        params = [p for p in params if not is_sharded(p)]
        groups: dict[tuple[torch.dtype, torch.device], list[torch.nn.Parameter]] = {}
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            groups.setdefault((p.grad.dtype, p.grad.device), []).append(p)
        for group in groups.values():
            flat = torch.cat([p.grad.reshape(-1) for p in group])  # type: ignore[union-attr]
            moved = flat.to(self._device())
            torch.distributed.all_reduce(moved)
            flat = moved.to(flat.device)
            total += flat.numel() * flat.element_size()
            offset = 0
            for p in group:
                n = p.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p))  # type: ignore[union-attr]
                offset += n
        return total

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (as DDP does when it wraps a model);
        call it before :func:`shard_policy`."""
        if not self.active:
            return
        if any(is_sharded(p) for p in module.parameters()):
            raise RuntimeError("broadcast_module needs the unsharded module: call it before shard_policy")
        dev = self._device()
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                moved = t.data.to(dev)
                torch.distributed.broadcast(moved, src=0)
                t.data.copy_(moved.to(t.device))

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    # ------------------------------------------------------------------ sharded policy (FSDP2)
    @contextlib.contextmanager
    def gathered(self, module: torch.nn.Module) -> Iterator[None]:
        """Under ``fsdp``: every unit of ``module`` all-gathered for the block (forwards issue no
        collectives, so ranks may run different numbers of them: generation), resharded after.
        A no-op otherwise."""
        units = _fsdp_units(module) if self.fsdp else []
        if not units:
            yield
            return
        module._get_fsdp_state()._lazy_init()  # type: ignore[operator]  # the root is known before any forward
        for unit in units:
            unit.unshard()
            unit.set_reshard_after_forward(False, recurse=False)
        try:
            yield
        finally:
            for unit in units:  # back to shard_policy's setting: the root keeps, the others reshard
                unit.reshard()
                unit.set_reshard_after_forward(unit is not module, recurse=False)

    def gradient_sync(self, module: torch.nn.Module, sync: bool) -> None:
        """Under ``fsdp``: whether the next backward reduce-scatters (the last micro-batch of a
        step) or only accumulates local unsharded gradients (the others)."""
        if self.fsdp:
            module.set_requires_gradient_sync(sync)  # type: ignore[operator]

    def model_state(self, module: torch.nn.Module) -> dict[str, Any]:
        """``module.state_dict()``; under ``fsdp`` the full one, on CPU, on rank 0 (a collective:
        every rank calls it; the others get ``{}``)."""
        if not self.fsdp:
            return module.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def optimizer_state(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """``optimizer.state_dict()``; under ``fsdp`` the full one keyed by parameter name, on
        rank 0 (a collective, as :meth:`model_state`)."""
        if not self.fsdp:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return get_optimizer_state_dict(module, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             state: dict[str, Any]) -> None:
        """Load what :meth:`optimizer_state` returned (every rank passes the full state)."""
        if not self.fsdp:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))


SINGLE = Dist()


def shard_policy(policy: Any, dist: Dist) -> Dist:
    """Shard an :class:`~mpo_gym.policy.LMPolicy` over the ranks with FSDP2 (``fully_shard``).

    Units: each decoder layer of the backbone and of the MTP modules, a separate critic; the
    policy itself is the root (embeddings, final norm, LM heads, MTP projections and norms, a
    value head), with ``score`` and
    ``score_mtp`` registered as forward methods. Each rank then runs the decoder once per
    micro-batch over whole rows (``share_prompt_head`` off): a forward is a collective, and
    whether a rank's rows share a prompt head depends on its own rows. Gradients are summed over ranks, not averaged
    (the trainer's loss weights are already normalised over the whole batch). Call it after
    loading and broadcasting the weights and before building the optimizer. Returns ``dist``
    with ``fsdp`` set.
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    from .errors import ConfigError

    if not dist.active:
        raise ConfigError("--fsdp shards the model over ranks: start 2 or more with torchrun")
    policy.share_prompt_head = False
    decoder = policy.causal_lm.get_decoder()
    units = list(decoder.layers) + [module.layer for module in policy.mtp]  # MTP heads are read outside a forward
    if policy.value_kind == "separate":
        units.append(policy.value_head)
    for unit in units:
        fully_shard(unit, reshard_after_forward=True)
    fully_shard(policy, reshard_after_forward=False)
    for method in ("score", "score_mtp"):
        register_fsdp_forward_method(policy, method)
    # score's outputs are slices (views); nothing edits them in place, which would skip the
    # root's gradient reduce-scatter (the sharded-equals-replicated tests would catch that)
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPLMPolicy\) returned a view tensor")
    for unit in _fsdp_units(policy):
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)  # a plain sum (gloo has no pre-multiplied sum)
    return replace(dist, fsdp=True)


def _fsdp_units(module: torch.nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def is_sharded(t: torch.Tensor) -> bool:
    """A tensor sharded over the ranks (a ``DTensor``: parameters, gradients and optimizer state
    of a :func:`shard_policy` policy)."""
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor; the tensor itself otherwise."""
    return t.to_local() if is_sharded(t) else t  # type: ignore[attr-defined]


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole of a sharded tensor, gathered (a collective); the tensor itself otherwise."""
    return t.full_tensor() if is_sharded(t) else t  # type: ignore[attr-defined]

_CURRENT: Dist = SINGLE


def current() -> Dist:
    """The :class:`Dist` that :func:`init` set up in this process (:data:`SINGLE` before)."""
    return _CURRENT


def init(device: str = "cpu", timeout_s: float = 1800.0) -> Dist:
    """Join the process group a launcher set up (once per process); :data:`SINGLE` otherwise.

    ``device`` is the resolved device (``"cpu"`` or ``"cuda"``): ``nccl`` for CUDA (each rank
    on ``cuda:LOCAL_RANK``), ``gloo`` on the CPU.
    """
    global _CURRENT
    if not launched():
        return SINGLE
    if torch.distributed.is_initialized():
        return _CURRENT
    from .errors import ConfigError

    if not torch.distributed.is_available():
        raise ConfigError("this torch build has no torch.distributed; run one process (no torchrun)")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device == "cuda" else "gloo"
    if backend == "nccl":
        if torch.cuda.device_count() <= local_rank:
            raise ConfigError(f"rank {os.environ['RANK']} has LOCAL_RANK {local_rank} but this node has "
                              f"{torch.cuda.device_count()} CUDA devices; start at most that many ranks per node")
        torch.cuda.set_device(local_rank)
    torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    _CURRENT = Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, backend)
    return _CURRENT


def close() -> None:
    """Leave the process group (end of a job)."""
    global _CURRENT
    if _CURRENT.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _CURRENT = SINGLE
