"""Data-parallel training on torch.distributed: the process group, the split of each global
batch over the processes, and the collectives of synchronized BatchNorm.

A run launched by ``torchrun`` (environment RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) or by Slurm's ``srun`` (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, with
MASTER_ADDR and MASTER_PORT exported by the batch script) trains one model over all its
processes: gloo on CPUs, NCCL on GPUs, one device per process (``LOCAL_RANK``). Without such an
environment nothing here is used and training runs in one process as before.

Synchronized BatchNorm: while ``bn_sync(group)`` is active, every block backend forms its
BatchNorm statistics over the global batch, as one process would compute them: the forward
gathers each process's per-channel (count, mean, biased variance) and merges them (Chan's
formula, in float64, in rank order: ``global_stats``); the backward all-reduces the
per-channel sums [sum(dz), sum(dz * x_hat)] with the element count (``global_sums``), as
``torch.nn.SyncBatchNorm`` does. One collective per BatchNorm layer each way. The weight and bias
gradients stay each process's own (DistributedDataParallel averages them).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["World", "from_environment", "reports", "init", "shutdown", "shard",
           "data_parallel", "bn_sync", "bn_sync_group", "global_stats", "global_sums",
           "all_reduce_sum", "all_reduce_with_grad", "broadcast_object", "TIMEOUT_ENV"]

#: seconds a collective may wait for the other processes before the job fails (default 600)
TIMEOUT_ENV = "FER_FAST_DIST_TIMEOUT_S"


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel job."""

    rank: int
    size: int
    local_rank: int

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run folder and prints."""
        return self.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def from_environment() -> World | None:
    """The World of a process launched by torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or srun
    (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID); None for a single process (no launcher, or a
    launcher with one process)."""
    if _env_int("WORLD_SIZE") is not None:
        rank, size, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    elif (_env_int("SLURM_NTASKS") or 1) > 1 and _env_int("SLURM_PROCID") is not None:
        rank, size, local = (_env_int("SLURM_PROCID"), _env_int("SLURM_NTASKS"),
                             _env_int("SLURM_LOCALID"))
    else:
        return None
    if size is None or size < 1 or rank is None or not 0 <= rank < size:
        raise ValueError(f"inconsistent launcher environment (RANK / WORLD_SIZE, or SLURM_PROCID "
                         f"/ SLURM_NTASKS): rank {rank} of {size} processes")
    if size == 1:
        return None
    return World(rank=rank, size=size, local_rank=local if local is not None else rank)


def reports() -> bool:
    """Whether this process prints what all processes would print alike (user errors, the
    run's lines): rank 0, or a process that is not part of a job (or whose launcher environment
    is inconsistent: that mistake is every process's to report)."""
    try:
        world = from_environment()
    except ValueError:
        return True
    return world is None or world.main


def _timeout() -> datetime.timedelta:
    seconds = _env_int(TIMEOUT_ENV)
    return datetime.timedelta(seconds=600 if seconds is None else max(1, seconds))


def init(world: World, device: torch.device) -> None:
    """Join the job's process group (gloo on a CPU, NCCL on GPUs) with a timeout on every
    collective (``FER_FAST_DIST_TIMEOUT_S``), so that a process that died makes the others
    fail instead of waiting forever. srun: MASTER_ADDR and MASTER_PORT must be exported."""
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"{name} is not set: launch with torchrun, or export MASTER_ADDR "
                             f"(the first node's host name) and MASTER_PORT before srun")
    os.environ.setdefault("RANK", str(world.rank))
    os.environ.setdefault("WORLD_SIZE", str(world.size))
    os.environ.setdefault("LOCAL_RANK", str(world.local_rank))
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, rank=world.rank, world_size=world.size,
                            timeout=_timeout(), **kwargs)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(total: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [first, stop) of ``total`` that process ``rank`` of ``size`` takes: contiguous,
    in rank order, sizes differing by at most one."""
    return total * rank // size, total * (rank + 1) // size


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In place, over the default group (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def broadcast_object(value, src: int = 0):
    """``value`` of rank ``src`` on every rank (a single process: ``value``)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# ----------------------------------------------------------------------------------------------
# Synchronized BatchNorm
# ----------------------------------------------------------------------------------------------
_BN_GROUP: list = []  # the active group (a stack: bn_sync nests)


@contextlib.contextmanager
def bn_sync(group=None):
    """While active, the BatchNorms of every block backend (training mode) take their
    statistics over the global batch of ``group`` (default: all processes)."""
    _BN_GROUP.append(group if group is not None else dist.group.WORLD)
    try:
        yield
    finally:
        _BN_GROUP.pop()


def bn_sync_group():
    """The process group BatchNorm statistics are synchronized over, or None (local)."""
    if not _BN_GROUP or not (dist.is_available() and dist.is_initialized()):
        return None
    return _BN_GROUP[-1]


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes of ``group``; its gradient is the sum of the processes'
    gradients (each process's input contributes to every process's output)."""

    @staticmethod
    def forward(ctx, t, group):
        ctx.group = group
        t = t.clone()
        dist.all_reduce(t, group=group)
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_reduce_with_grad(t: torch.Tensor, group) -> torch.Tensor:
    """``t`` summed over ``group``, differentiable (the eager synchronized BatchNorm)."""
    return _AllReduceSum.apply(t, group)


def global_stats(mean: torch.Tensor, var: torch.Tensor, count: int, group
                 ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, biased variance, count) over every process of ``group`` from each one's
    per-channel ``mean`` and biased ``var`` [C] of ``count`` values: one all_gather, merged in
    float64 in rank order (every process gets the same bits); fp32 results."""
    local = torch.stack([torch.full_like(mean, float(count), dtype=torch.float64),
                         mean.double(), var.double()])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    counts, means, variances = torch.stack(gathered).unbind(1)
    total = counts.sum(0)
    merged = (counts * means).sum(0) / total
    merged_var = (counts * (variances + (means - merged) ** 2)).sum(0) / total
    return merged.float(), merged_var.float(), int(total[0].item())


def global_sums(sums: torch.Tensor, count: int, group) -> tuple[torch.Tensor, int]:
    """(sums over every process of ``group``, total element count) of the fp32 [2, C] backward
    sums [sum(dz), sum(dz * x_hat)] of ``count`` values: one all_reduce."""
    c = sums.shape[1]  # float64: the count stays exact, and the sums lose nothing on the way
    packed = torch.cat([sums.double(), sums.new_tensor([[float(count)], [0.0]],
                                                       dtype=torch.float64)], dim=1)
    dist.all_reduce(packed, group=group)
    return packed[:, :c].float().contiguous(), int(packed[0, c].item())


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel over the default group. Buffers are not broadcast
    each forward: synchronized BatchNorm updates the running statistics identically everywhere
    (``bn_sync``), and with ``--bn-sync local`` they are each process's own."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                      inspect.signature(DistributedDataParallel).parameters
                      else {"broadcast_buffers": False})
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   **no_buffer_sync)
