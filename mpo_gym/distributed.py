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

What it does not do: no tensor or pipeline parallelism, no FSDP, no separate inference engine.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from .verifiers.pool import local_cpus

__all__ = ["SINGLE", "Dist", "init", "launched", "local_cpus", "shard"]

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
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

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
        sizes = [int(s) for s in self.all_reduce_vector(tensor.shape[0])]
        width = max(sizes)
        dev = self._device()
        padded = torch.zeros((width, *tensor.shape[1:]), dtype=tensor.dtype, device=dev)
        padded[: tensor.shape[0]] = tensor.to(dev)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(tensor.device)

    def all_reduce_vector(self, value: int) -> list[int]:
        """Every rank's integer ``value``, in rank order."""
        if not self.active:
            return [int(value)]
        t = torch.zeros(self.world_size, dtype=torch.int64, device=self._device())
        t[self.rank] = int(value)
        torch.distributed.all_reduce(t)
        return [int(v) for v in t.cpu().tolist()]

    def all_reduce_grads(self, params: Iterable[torch.nn.Parameter]) -> int:
        """Sum ``p.grad`` over ranks (a missing grad counts as zeros); returns the bytes reduced.

        The gradients are flattened into one buffer per dtype and device, reduced in one call
        each, and copied back, as DDP's buckets do once per optimizer step.
        """
        params = [p for p in params if p.requires_grad]
        if not self.active:
            return 0
        groups: dict[tuple[torch.dtype, torch.device], list[torch.nn.Parameter]] = {}
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            groups.setdefault((p.grad.dtype, p.grad.device), []).append(p)
        total = 0
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
        """Rank 0's parameters and buffers on every rank (as DDP does when it wraps a model)."""
        if not self.active:
            return
        dev = self._device()
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                moved = t.data.to(dev)
                torch.distributed.broadcast(moved, src=0)
                t.data.copy_(moved.to(t.device))

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


SINGLE = Dist()

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
