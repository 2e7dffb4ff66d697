"""BatchNorm statistics in Triton, shared by ``bn_act`` and ``conv``: Chan's merge of per-tile
(mean, M2) pairs, the running-statistics update of nn.BatchNorm2d, the coefficient rows, and the
in-kernel reduction tree with which a GEMM epilogue reduces per-channel pairs over its whole
grid (no separate reduction launch).

These are ``@triton.jit`` helpers (inlined into the calling kernels, compiled and AOT-checked as
part of them) plus the host-side buffers of the reduction tree.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import is_interpreter

__all__ = ["COEF_ROWS", "COEF_MEAN", "COEF_RSTD", "COEF_SCALE", "COEF_SHIFT", "GPU_GROUP",
           "GROUP", "chan_merge", "update_running_stats", "store_coefficients", "reduce_tree",
           "statistics_buffers"]

#: rows of the fp32 coefficient tensor [4, C] of a BatchNorm: scale = gamma * rstd and
#: shift = beta - mean * scale, so that applying it costs one FMA per element
COEF_ROWS = ("mean", "rstd", "scale", "shift")
COEF_MEAN = tl.constexpr(COEF_ROWS.index("mean"))
COEF_RSTD = tl.constexpr(COEF_ROWS.index("rstd"))
COEF_SCALE = tl.constexpr(COEF_ROWS.index("scale"))
COEF_SHIFT = tl.constexpr(COEF_ROWS.index("shift"))

#: M tiles per group of the reduction tree (``reduce_tree``): 8000 tiles of a stage-1 layer
#: reduce as 125 groups of 64; under the interpreter 2, so that the tests, with few tiles, go
#: through both levels
GPU_GROUP = 64
GROUP = 2 if is_interpreter() else GPU_GROUP


@triton.jit
def chan_merge(ptr, first, count, M, rows, C, cols, cmask, BLOCK_P: tl.constexpr,
               BLOCK_C: tl.constexpr):
    """Chan's parallel combine, in item order, of items [first, first + count) of ``ptr``
    [*, 2, C] = per-channel (mean, M2) over ``rows`` rows each (item i covers rows
    [i*rows, (i+1)*rows) of M, the last one partial): (mean, M2) over all of them. Loads bypass
    L1, so that items written by other programs of the same launch are read from L2."""
    n_acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for p0 in range(0, count, BLOCK_P):
        ps = first + p0 + tl.arange(0, BLOCK_P)
        pmask = p0 + tl.arange(0, BLOCK_P) < count
        mask = pmask[:, None] & cmask[None, :]
        n_p = tl.where(pmask, tl.minimum(M - ps * rows, rows), 0).to(tl.float32)[:, None]
        offs = ps[:, None] * (2 * C) + cols[None, :]
        mean_p = tl.load(ptr + offs, mask=mask, other=0.0, cache_modifier=".cg")
        m2_p = tl.load(ptr + offs + C, mask=mask, other=0.0, cache_modifier=".cg")
        n_b = tl.sum(n_p, axis=0)
        mean_b = tl.sum(n_p * mean_p, axis=0) / n_b
        dev = tl.where(mask, mean_p - mean_b[None, :], 0.0)
        m2_b = tl.sum(m2_p + n_p * dev * dev, axis=0)
        n_new = n_acc + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / n_new)
        m2 = m2 + m2_b + delta * delta * (n_acc * (n_b / n_new))
        n_acc = n_new
    return mean, m2


@triton.jit
def update_running_stats(rmean_ptr, rvar_ptr, cols, cmask, mean, m2, M, momentum):
    """The running statistics as nn.BatchNorm2d updates them: momentum average, unbiased
    variance m2 / (M - 1)."""
    rmean = tl.load(rmean_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    rvar = tl.load(rvar_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    rmean = (1.0 - momentum) * rmean + momentum * mean
    rvar = (1.0 - momentum) * rvar + momentum * (m2 / (M - 1))
    tl.store(rmean_ptr + cols, rmean.to(rmean_ptr.dtype.element_ty), mask=cmask)
    tl.store(rvar_ptr + cols, rvar.to(rvar_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def store_coefficients(coef_ptr, cols, cmask, mean, var, gamma_ptr, beta_ptr, C, eps):
    """coef[:, cols] = [mean, rstd, gamma*rstd, beta - mean*gamma*rstd] (``COEF_ROWS``)."""
    rstd = 1.0 / tl.sqrt_rn(var + eps)
    scale = tl.load(gamma_ptr + cols, mask=cmask, other=0.0).to(tl.float32) * rstd
    shift = tl.load(beta_ptr + cols, mask=cmask, other=0.0).to(tl.float32) - mean * scale
    tl.store(coef_ptr + COEF_MEAN * C + cols, mean, mask=cmask)
    tl.store(coef_ptr + COEF_RSTD * C + cols, rstd, mask=cmask)
    tl.store(coef_ptr + COEF_SCALE * C + cols, scale, mask=cmask)
    tl.store(coef_ptr + COEF_SHIFT * C + cols, shift, mask=cmask)


@triton.jit
def _last_to_arrive(counter_ptr, expected):
    """Whether this program is the last of ``expected`` to arrive at ``counter_ptr``; that one
    re-arms the counter to 0. The barrier puts every thread's stores before the release, and
    the acquire makes the other programs' stores visible to the last one."""
    tl.debug_barrier()
    last = tl.atomic_add(counter_ptr, 1, sem="acq_rel") == expected - 1
    if last:
        tl.store(counter_ptr, 0)
    return last


@triton.jit
def _sum_pairs(ptr, first, count, C, rn, n_ok, BP: tl.constexpr, BN: tl.constexpr):
    """Per-channel sums, in item order, of items [first, first + count) of ``ptr`` [*, 2, C]."""
    s0 = tl.zeros((BP, BN), dtype=tl.float32)
    s1 = tl.zeros((BP, BN), dtype=tl.float32)
    for p0 in range(0, count, BP):
        ps = first + p0 + tl.arange(0, BP)
        mask = (p0 + tl.arange(0, BP) < count)[:, None] & n_ok[None, :]
        offs = ps[:, None] * (2 * C) + rn[None, :]
        s0 += tl.load(ptr + offs, mask=mask, other=0.0, cache_modifier=".cg")
        s1 += tl.load(ptr + offs + C, mask=mask, other=0.0, cache_modifier=".cg")
    return tl.sum(s0, axis=0), tl.sum(s1, axis=0)


@triton.jit
def reduce_tree(part_ptr, gpart_ptr, count_ptr, pid_n, pid_m, M, C, rn, n_ok, v0, v1,
                CHAN: tl.constexpr, GROUP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """Per-channel reduction of a tile-level pair (v0, v1) over every M tile of the grid, in two
    levels of "the last program to arrive merges": groups of GROUP consecutive tiles into
    ``gpart_ptr``, then the groups. ``CHAN``: pairs are (mean, M2) merged with Chan's formula,
    else sums. Returns (is_last, r0, r1), r valid in the one program (per channel tile) for which
    is_last holds. The result is deterministic: merges go in tile order whoever arrives last.
    Buffers from ``statistics_buffers``; ``count_ptr`` (zeroed int32 [channel tiles,
    groups + 1]) is left zeroed."""
    BP: tl.constexpr = 32
    tiles_m = tl.cdiv(M, BM)
    tl.store(part_ptr + 2 * pid_m * C + rn, v0, mask=n_ok)
    tl.store(part_ptr + (2 * pid_m + 1) * C + rn, v1, mask=n_ok)
    n_groups = tl.cdiv(tiles_m, GROUP)
    grp = pid_m // GROUP
    first = grp * GROUP
    count = tl.minimum(GROUP, tiles_m - first)
    counters = count_ptr + pid_n * (n_groups + 1)
    is_last = False
    r0 = tl.zeros((BN,), dtype=tl.float32)
    r1 = tl.zeros((BN,), dtype=tl.float32)
    if _last_to_arrive(counters + grp, count):
        if CHAN:
            g0, g1 = chan_merge(part_ptr, first, count, M, BM, C, rn, n_ok, BP, BN)
        else:
            g0, g1 = _sum_pairs(part_ptr, first, count, C, rn, n_ok, BP, BN)
        tl.store(gpart_ptr + 2 * grp * C + rn, g0, mask=n_ok)
        tl.store(gpart_ptr + (2 * grp + 1) * C + rn, g1, mask=n_ok)
        if _last_to_arrive(counters + n_groups, n_groups):
            is_last = True
            if CHAN:
                r0, r1 = chan_merge(gpart_ptr, 0, n_groups, M, GROUP * BM, C, rn, n_ok, BP, BN)
            else:
                r0, r1 = _sum_pairs(gpart_ptr, 0, n_groups, C, rn, n_ok, BP, BN)
    return is_last, r0, r1


#: zeroed arrival counters of the reduction tree, per (device, stream)
_COUNTERS: dict = {}


def statistics_buffers(device: torch.device, channel_tiles: int, tiles_m: int, c: int):
    """(part, gpart, counters) of ``reduce_tree`` for a grid of (channel_tiles, tiles_m)
    programs over c channels: fp32 tile partials [tiles_m, 2, c], fp32 group partials
    [groups, 2, c], zeroed int32 arrival counters."""
    groups = triton.cdiv(tiles_m, GROUP)
    part = torch.empty((tiles_m, 2, c), device=device, dtype=torch.float32)
    gpart = torch.empty((groups, 2, c), device=device, dtype=torch.float32)
    return part, gpart, _arrival_counters(device, channel_tiles * (groups + 1))


def _arrival_counters(device: torch.device, n: int) -> torch.Tensor:
    """n zeroed int32 counters for ``reduce_tree``. Every launch leaves them zero (the last
    program to arrive at a counter re-arms it), so one set serves every launch of a stream,
    whose launches run one after another. A CUDA graph being captured gets its own (a captured
    zero fill), since its replays may run beside other work of the capture stream."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return torch.zeros(n, device=device, dtype=torch.int32)
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    counters = _COUNTERS.get((device, stream))
    if counters is None or counters.numel() < n:
        counters = torch.zeros(max(n, 64), device=device, dtype=torch.int32)
        _COUNTERS[(device, stream)] = counters
    return counters
