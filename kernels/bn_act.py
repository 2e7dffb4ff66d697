"""Triton kernels for BatchNorm + ReLU (+ 2x2 max-pool) around a library convolution.

Activations are NHWC (``torch.channels_last``): the conv output ``y`` of shape [N, C, H, W] is a
row-major [M = N*H*W, C] matrix, so every tile is a block of rows x a block of channels and loads
are contiguous along C. Arithmetic is fp32; storage is the activation dtype (fp16, bf16, fp32).

Orders: ``"bn_relu"`` (z = relu(bn(y)), released code) and ``"relu_bn"`` (z = bn(relu(y)),
paper), the kernels' constexpr ``RELU_FIRST``; with ``pool`` the block output is the
2x2/stride-2 max of z (floor: an odd last row or column is dropped). BN uses per-channel
``scale = gamma * rstd`` and ``shift = beta - mean * scale`` so that the forward pass costs one
FMA per element.

Forward (training): ``_stats_kernel`` (split reduction: each program reduces a strip of rows
of one channel block to a partial (mean, M2), shifted by the strip's first row for stability)
-> ``_finalize_kernel`` (Chan's parallel combine of the partials, running-stat update exactly as
``nn.BatchNorm2d``, the coefficient vector [mean, rstd, scale, shift]) -> ``_apply_kernel``
(affine + ReLU (+ pool), writes only the block output). Eval: ``_finalize_kernel`` reads the
running statistics, then ``_apply_kernel``.

Backward recomputes instead of storing: from the saved conv output ``y`` and the coefficients it
recomputes x_hat, the ReLU mask and the pool argmax (first maximum in window order, compared
after rounding to the activation dtype, as ``F.max_pool2d`` sees the BN output).
``_bwd_reduce_kernel`` reduces per channel sum(dz) and sum(dz * x_hat), dz being the gradient
w.r.t. the BN output; ``_bwd_dy_kernel`` writes the gradient w.r.t. the conv output (BN backward
in training mode, or the fixed affine in eval mode, times the ReLU mask for ``relu_bn``).

Nothing here clamps or filters inf/NaN: they propagate (GradScaler relies on it); ReLU is written
``where(x < 0, 0, x)`` (a NaN-propagating maximum in the statistics) and the pool compare takes
NaN, like PyTorch. No kernel is autotuned, so no launch is ever repeated and the running
statistics are updated exactly once per forward.

Tiles: ``GPU_TILES`` on CUDA (the configurations in ``AOT_SPECS``); under the interpreter
``INTERPRETER_TILES``, larger, since there each Triton op costs Python time whatever its size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import is_interpreter
from .bn_stats import (COEF_MEAN, COEF_ROWS, COEF_RSTD, COEF_SCALE, COEF_SHIFT, chan_merge,
                       store_coefficients, update_running_stats)

__all__ = ["ORDERS", "RECIPE_ORDER", "COEF_ROWS", "GPU_TILES", "INTERPRETER_TILES", "runs_on",
           "check_forward_inputs", "check_backward_inputs", "forward", "backward", "AOT_SPECS"]

#: block orders: "bn_relu" = relu(bn(y)), "relu_bn" = bn(relu(y)) (kernel flag RELU_FIRST)
ORDERS = ("bn_relu", "relu_bn")
#: recipe -> block order; the compile variants of these kernels and conv's are named after them
RECIPE_ORDER = {"released": "bn_relu", "paper": "relu_bn"}


@dataclass(frozen=True)
class Tiles:
    """Block sizes of the launches."""

    c: int        # channels per tile
    rows: int     # rows (sites) per tile without pool
    windows: int  # 2x2 windows per tile with pool (4 loads each)
    partials: int  # partials combined per step of the finalize loop
    warps: int


#: GPU: a row of 64 channels is 128 B (fp16) contiguous; tiles of 4096 elements per 8 warps.
GPU_TILES = Tiles(c=64, rows=64, windows=32, partials=32, warps=8)
#: Interpreter: every Triton op has a fixed Python cost whatever its size, so few big tiles.
INTERPRETER_TILES = Tiles(c=32, rows=1024, windows=512, partials=32, warps=1)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------------------------
# Kernels. The order is a constexpr (RELU_FIRST: ReLU before BN), so each kernel compiles per
# dtype, order (and pool); the training flags are runtime scalars, selecting with `where` or a
# branch; NaN is kept either way.
# The per-element kernels avoid helper calls in their loops on purpose: each one is costly under
# the interpreter. The finalize helpers (chan_merge, update_running_stats, store_coefficients)
# are shared with the conv kernels' in-kernel reduction (kernels/conv.py).
# ----------------------------------------------------------------------------------------------
@triton.jit
def _stats_kernel(y_ptr, part_ptr, M, C, CHUNKS_PER_PROG, RELU_FIRST: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Partial (mean, M2) of the BN input over rows [pid*CHUNKS*BLOCK_M, ...) of a channel block."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    row0 = pid_m.to(tl.int64) * CHUNKS_PER_PROG * BLOCK_M  # int64 indices: no int32 overflow
    # shifted sums: subtracting a sample of the strip keeps sum(d^2) free of cancellation. The
    # ReLU here is a NaN-propagating maximum: the statistics of where(x < 0, 0, x) (only the sign
    # of a zero may differ), and with it ptxas compiles the paper variant without spills
    ref = tl.load(y_ptr + row0 * C + cols, mask=cmask, other=0.0).to(tl.float32)
    if RELU_FIRST:
        ref = tl.maximum(ref, 0.0, propagate_nan=tl.PropagateNan.ALL)
    s1 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for k in range(CHUNKS_PER_PROG):
        rows = row0 + k * BLOCK_M + tl.arange(0, BLOCK_M)
        mask = (rows < M)[:, None] & cmask[None, :]
        x = tl.load(y_ptr + rows[:, None] * C + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        if RELU_FIRST:
            x = tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)
        d = tl.where(mask, x - ref[None, :], 0.0)
        s1 += d
        s2 += d * d
    count = tl.minimum(CHUNKS_PER_PROG * BLOCK_M, M - row0).to(tl.float32)
    sum1 = tl.sum(s1, axis=0)
    sum2 = tl.sum(s2, axis=0)
    mean = ref + sum1 / count
    m2 = sum2 - sum1 * (sum1 / count)
    m2 = tl.where(m2 < 0, 0.0, m2)  # rounding only; NaN passes
    base = part_ptr + pid_m.to(tl.int64) * 2 * C
    tl.store(base + cols, mean, mask=cmask)
    tl.store(base + C + cols, m2, mask=cmask)


@triton.jit(do_not_specialize=["training", "update_running"])
def _finalize_kernel(part_ptr, P, ROWS_PER_PROG, M, gamma_ptr, beta_ptr, rmean_ptr, rvar_ptr,
                     coef_ptr, C, eps, momentum, training, update_running,
                     BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per-channel [mean, rstd, scale, shift]; training: Chan's combine of the P partials and
    (if update_running) the running-stat update with the unbiased variance; eval: the running
    statistics. gamma, beta and the running statistics share one dtype."""
    pid_c = tl.program_id(0)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    if training != 0:
        mean, m2 = chan_merge(part_ptr, 0, P, M, ROWS_PER_PROG, C, cols, cmask, BLOCK_P, BLOCK_C)
        var = m2 / M
        if update_running != 0:
            update_running_stats(rmean_ptr, rvar_ptr, cols, cmask, mean, m2, M, momentum)
    else:
        mean = tl.load(rmean_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        var = tl.load(rvar_ptr + cols, mask=cmask, other=1.0).to(tl.float32)
    store_coefficients(coef_ptr, cols, cmask, mean, var, gamma_ptr, beta_ptr, C, eps)


@triton.jit
def _normalise(y, scale, shift, RELU_FIRST: tl.constexpr, dtype: tl.constexpr):
    """(x, z): the BN input (ReLU'd first in the paper order) and the block output as the forward
    stored it (rounded to ``dtype``), recomputed from the conv output ``y`` (fp32)."""
    x = y
    if RELU_FIRST:
        x = tl.where(y < 0, 0.0, y)
    z = x * scale + shift
    if not RELU_FIRST:
        z = tl.where(z < 0, 0.0, z)
    return x, z.to(dtype).to(tl.float32)


@triton.jit
def _window_offsets(sites, cols, H, W, C, WH, WW):
    """For ``sites`` numbering a WH x WW grid of 2x2 windows per image of an [N, H, W, C]
    tensor: the offsets [S, C] of each window's top-left element, and the window's (n, i, j)."""
    t = sites // WW  # one int64 division per quotient, the remainder from it (sites >= 0)
    j = sites - t * WW
    n = t // WH
    i = t - n * WH
    return ((n * H + 2 * i) * W + 2 * j)[:, None] * C + cols[None, :], n, i, j


@triton.jit
def _window_tap(y_ptr, ptrs, k: tl.constexpr, step_h, step_w, smask, cmask, has_below,
                has_right, scale, shift, RELU_FIRST: tl.constexpr):
    """Tap k (row-major) of each 2x2 pooling window: offsets, mask, y, and _normalise's (x, z)."""
    inside = smask
    if k // 2 == 1:
        inside = inside & has_below
    if k % 2 == 1:
        inside = inside & has_right
    mk = inside[:, None] & cmask[None, :]
    offs = ptrs + (k // 2) * step_h + (k % 2) * step_w
    y = tl.load(y_ptr + offs, mask=mk, other=0.0).to(tl.float32)
    x, z = _normalise(y, scale, shift, RELU_FIRST, y_ptr.dtype.element_ty)
    return offs, mk, y, x, z


@triton.jit
def _apply_kernel(y_ptr, coef_ptr, out_ptr, H, W, C, HO, WO, n_sites, RELU_FIRST: tl.constexpr,
                  POOL: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Block output of a tile of sites: rows (act(y)), or with POOL 2x2 windows: the first
    maximum (NaN wins, as in F.max_pool2d) of act(y) rounded to the output dtype."""
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    sites = pid_s.to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (sites < n_sites)[:, None] & cmask[None, :]
    scale = tl.load(coef_ptr + COEF_SCALE * C + cols, mask=cmask, other=0.0)[None, :]
    shift = tl.load(coef_ptr + COEF_SHIFT * C + cols, mask=cmask, other=0.0)[None, :]
    dtype = out_ptr.dtype.element_ty
    if POOL:
        offs, _, _, _ = _window_offsets(sites, cols, H, W, C, HO, WO)
        ptrs = y_ptr + offs
        step_w = C.to(tl.int64)
        step_h = W * step_w
        best = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
        for k in tl.static_range(4):
            y = tl.load(ptrs + (k // 2) * step_h + (k % 2) * step_w, mask=mask,
                        other=0.0).to(tl.float32)
            _, z = _normalise(y, scale, shift, RELU_FIRST, dtype)
            if k == 0:
                best = z
            else:
                best = tl.where((z > best) | (z != z), z, best)
        out = best
    else:
        y = tl.load(y_ptr + sites[:, None] * C + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        if RELU_FIRST:
            y = tl.where(y < 0, 0.0, y)
        out = y * scale + shift
        if not RELU_FIRST:
            out = tl.where(out < 0, 0.0, out)
    tl.store(out_ptr + sites[:, None] * C + cols[None, :], out.to(dtype), mask=mask)


@triton.jit
def _bwd_reduce_kernel(y_ptr, dout_ptr, coef_ptr, part_ptr, H, W, C, HO, WO, n_sites,
                       CHUNKS_PER_PROG, RELU_FIRST: tl.constexpr, POOL: tl.constexpr,
                       BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Partial per-channel sum(dz) and sum(dz * x_hat) over a strip of sites (rows or 2x2
    windows), dz being the gradient w.r.t. the BN output: dout routed to the window's argmax
    (recomputed like the forward), times the ReLU mask when ReLU follows BN."""
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mean = tl.load(coef_ptr + COEF_MEAN * C + cols, mask=cmask, other=0.0)[None, :]
    rstd = tl.load(coef_ptr + COEF_RSTD * C + cols, mask=cmask, other=0.0)[None, :]
    scale = tl.load(coef_ptr + COEF_SCALE * C + cols, mask=cmask, other=0.0)[None, :]
    shift = tl.load(coef_ptr + COEF_SHIFT * C + cols, mask=cmask, other=0.0)[None, :]
    dtype = y_ptr.dtype.element_ty
    acc_dz = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    acc_dzx = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    site0 = pid_s.to(tl.int64) * CHUNKS_PER_PROG * BLOCK_S
    step_w = C.to(tl.int64)
    step_h = W * step_w
    for kk in range(CHUNKS_PER_PROG):
        sites = site0 + kk * BLOCK_S + tl.arange(0, BLOCK_S)
        mask = (sites < n_sites)[:, None] & cmask[None, :]
        out_offs = sites[:, None] * C + cols[None, :]
        g = tl.load(dout_ptr + out_offs, mask=mask, other=0.0).to(tl.float32)
        if POOL:  # the BN input (x) and block output (z) at the window's argmax
            offs, _, _, _ = _window_offsets(sites, cols, H, W, C, HO, WO)
            ptrs = y_ptr + offs
            x = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
            z = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
            for k in tl.static_range(4):
                y = tl.load(ptrs + (k // 2) * step_h + (k % 2) * step_w, mask=mask,
                            other=0.0).to(tl.float32)
                xk, zk = _normalise(y, scale, shift, RELU_FIRST, dtype)
                if k == 0:
                    x = xk
                    z = zk
                else:
                    take = (zk > z) | (zk != zk)
                    x = tl.where(take, xk, x)
                    z = tl.where(take, zk, z)
        else:
            y = tl.load(y_ptr + out_offs, mask=mask, other=0.0).to(tl.float32)
            x, z = _normalise(y, scale, shift, RELU_FIRST, dtype)
        dz = g
        if not RELU_FIRST:
            dz = tl.where(z > 0, g, 0.0)
        acc_dz += dz
        acc_dzx += dz * ((x - mean) * rstd)
    base_p = part_ptr + pid_s.to(tl.int64) * 2 * C
    tl.store(base_p + cols, tl.sum(acc_dz, axis=0), mask=cmask)
    tl.store(base_p + C + cols, tl.sum(acc_dzx, axis=0), mask=cmask)


@triton.jit(do_not_specialize=["training"])
def _bwd_dy_kernel(y_ptr, dout_ptr, coef_ptr, sums_ptr, dy_ptr, H, W, C, HO, WO, HC, WC,
                   n_sites, inv_count, training, RELU_FIRST: tl.constexpr, POOL: tl.constexpr,
                   BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """dL/dy for a tile of sites: rows, or with POOL every 2x2 window of a ceil(H/2) x ceil(W/2)
    grid, so that the odd row/column the pool dropped is written too (in training it still gets
    the BN mean terms). Training: scale * (dz - mean(dz) - x_hat * mean(dz * x_hat)); eval:
    scale * dz; times the ReLU mask (y > 0) when ReLU comes first."""
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    sites = pid_s.to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    smask = sites < n_sites
    mean = tl.load(coef_ptr + COEF_MEAN * C + cols, mask=cmask, other=0.0)[None, :]
    rstd = tl.load(coef_ptr + COEF_RSTD * C + cols, mask=cmask, other=0.0)[None, :]
    scale = tl.load(coef_ptr + COEF_SCALE * C + cols, mask=cmask, other=0.0)[None, :]
    shift = tl.load(coef_ptr + COEF_SHIFT * C + cols, mask=cmask, other=0.0)[None, :]
    mean_dz = tl.zeros([1, BLOCK_C], dtype=tl.float32)
    mean_dzx = tl.zeros([1, BLOCK_C], dtype=tl.float32)
    if training != 0:
        mean_dz = (tl.load(sums_ptr + cols, mask=cmask, other=0.0) * inv_count)[None, :]
        mean_dzx = (tl.load(sums_ptr + C + cols, mask=cmask, other=0.0) * inv_count)[None, :]
    dtype = y_ptr.dtype.element_ty
    if POOL:
        ptrs, n, i, j = _window_offsets(sites, cols, H, W, C, HC, WC)
        step_w = C.to(tl.int64)
        step_h = W * step_w
        has_below = 2 * i + 1 < H
        has_right = 2 * j + 1 < W
        pooled = smask & (i < HO) & (j < WO)  # windows the forward pooled
        g = tl.load(dout_ptr + ((n * HO + i) * WO + j)[:, None] * C + cols[None, :],
                    mask=pooled[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        # pass 1: argmax of the window as the forward chose it
        arg = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.int32)
        best = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
        for k in tl.static_range(4):
            _, _, _, _, z = _window_tap(y_ptr, ptrs, k, step_h, step_w, smask, cmask, has_below,
                                        has_right, scale, shift, RELU_FIRST)
            if k == 0:
                best = z
            else:
                take = (z > best) | (z != z)
                best = tl.where(take, z, best)
                arg = tl.where(take, k, arg)
        # pass 2: the gradient at each of the four positions (reloads hit the cache)
        for k in tl.static_range(4):
            offs, mk, y, x, z = _window_tap(y_ptr, ptrs, k, step_h, step_w, smask, cmask,
                                            has_below, has_right, scale, shift, RELU_FIRST)
            if RELU_FIRST:
                dz = tl.where(arg == k, g, 0.0)
            else:
                dz = tl.where((arg == k) & (z > 0), g, 0.0)
            dy = scale * (dz - mean_dz - (x - mean) * rstd * mean_dzx)
            if RELU_FIRST:
                dy = tl.where(y > 0, dy, 0.0)
            tl.store(dy_ptr + offs, dy.to(dtype), mask=mk)
    else:
        mask = smask[:, None] & cmask[None, :]
        offs = sites[:, None] * C + cols[None, :]
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x, z = _normalise(y, scale, shift, RELU_FIRST, dtype)
        dz = g
        if not RELU_FIRST:
            dz = tl.where(z > 0, g, 0.0)
        dy = scale * (dz - mean_dz - (x - mean) * rstd * mean_dzx)
        if RELU_FIRST:
            dy = tl.where(y > 0, dy, 0.0)
        tl.store(dy_ptr + offs, dy.to(dtype), mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
def runs_on(device: torch.device) -> bool:
    """Whether these kernels run on ``device``: CUDA, or CPU tensors when Triton was imported
    with TRITON_INTERPRET=1 (the interpreter is chosen when a kernel is defined)."""
    return device.type == ("cpu" if is_interpreter() else "cuda")


def _tiles(device: torch.device) -> Tiles:
    return GPU_TILES if device.type == "cuda" else INTERPRETER_TILES


def _split(n_blocks: int, n_cblocks: int, device: torch.device) -> tuple[int, int]:
    """(programs, blocks per program) of a split reduction over ``n_blocks`` row blocks: about
    4 programs per SM on a GPU (all channel blocks together), 3 under the interpreter."""
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 3
    programs = max(1, min(n_blocks, triton.cdiv(target, n_cblocks)))
    per_prog = triton.cdiv(n_blocks, programs)
    return triton.cdiv(n_blocks, per_prog), per_prog


def _check_y(y: torch.Tensor, what: str) -> None:
    if y.dim() != 4:
        raise ValueError(f"bn_act {what}: expected a 4-D [N, C, H, W] tensor, got shape "
                         f"{tuple(y.shape)}")
    if y.dtype not in _DTYPES:
        raise TypeError(f"bn_act {what}: dtype {y.dtype} not supported; use one of {_DTYPES}")
    if not y.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"bn_act {what}: tensor of shape {tuple(y.shape)} and strides "
                         f"{y.stride()} is not channels_last (NHWC) contiguous")
    if y.numel() == 0:
        raise ValueError(f"bn_act {what}: empty tensor of shape {tuple(y.shape)}")


def _check_vector(t: torch.Tensor, name: str, c: int, device: torch.device) -> None:
    if t.shape != (c,) or not t.is_contiguous():
        raise ValueError(f"bn_act: {name} must be a contiguous vector of {c} channels, got "
                         f"shape {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"bn_act: {name} is on {t.device} but the activations are on {device}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"bn_act: {name} has dtype {t.dtype}; use one of {_DTYPES}")


def _relu_first(order: str) -> bool:
    if order not in ORDERS:
        raise ValueError(f"bn_act: unknown order {order!r}; choose one of {ORDERS}")
    return order == "relu_bn"


def _pooled_size(h: int, w: int, pool: bool) -> tuple[int, int]:
    if not pool:
        return h, w
    if h < 2 or w < 2:
        raise ValueError(f"bn_act: a 2x2 max-pool needs H, W >= 2, got {h}x{w}")
    return h // 2, w // 2


def check_forward_inputs(y, gamma, beta, running_mean, running_var, *, training: bool,
                         order: str, pool: bool) -> None:
    """Raise a clear error for anything ``forward`` cannot take (also used by the eager path)."""
    _check_y(y, "forward input")
    _relu_first(order)
    n, c, h, w = y.shape
    _pooled_size(h, w, pool)
    for t, name in ((gamma, "weight (gamma)"), (beta, "bias (beta)")):
        _check_vector(t, name, c, y.device)
    track = running_mean is not None
    if track != (running_var is not None):
        raise ValueError("bn_act: give both running_mean and running_var, or neither")
    if track:
        _check_vector(running_mean, "running_mean", c, y.device)
        _check_vector(running_var, "running_var", c, y.device)
    dtypes = {t.dtype for t in (gamma, beta, running_mean, running_var) if t is not None}
    if len(dtypes) != 1:
        raise TypeError(f"bn_act: weight, bias, running_mean and running_var must share a "
                        f"dtype, got {sorted(map(str, dtypes))}")
    if not training and not track:
        raise ValueError("bn_act: eval mode needs running_mean and running_var")
    if training and n * h * w < 2:
        raise ValueError(f"bn_act: expected more than 1 value per channel when training, got "
                         f"input of shape {tuple(y.shape)}")


def check_backward_inputs(dout, y, coef, *, order: str, pool: bool) -> None:
    """Raise a clear error for anything ``backward`` (or, dout None, ``apply``) cannot take
    (also used by the eager path)."""
    _check_y(y, "saved conv output")
    _relu_first(order)
    n, c, h, w = y.shape
    ho, wo = _pooled_size(h, w, pool)
    if dout is not None:
        _check_dout(dout, y, (n, c, ho, wo))
    if (coef.shape != (len(COEF_ROWS), c) or coef.dtype != torch.float32
            or not coef.is_contiguous() or coef.device != y.device):
        raise ValueError(f"bn_act: coefficients must be contiguous fp32 "
                         f"[{len(COEF_ROWS)}, {c}] on {y.device}, got {tuple(coef.shape)} "
                         f"{coef.dtype} on {coef.device}")


def _check_dout(dout, y, shape) -> None:
    _check_y(dout, "output gradient")
    if dout.shape != shape or dout.dtype != y.dtype or dout.device != y.device:
        raise ValueError(f"bn_act backward: output gradient {tuple(dout.shape)} {dout.dtype} on "
                         f"{dout.device} does not match the block output {shape} "
                         f"{y.dtype} on {y.device}")


def forward(y: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
            running_mean: torch.Tensor | None, running_var: torch.Tensor | None, *,
            training: bool, momentum: float, eps: float, order: str, pool: bool,
            global_coef=None):
    """Block output of conv output ``y`` and the coefficients that ``backward`` needs.

    y: [N, C, H, W] channels_last (NHWC in memory), fp16 / bf16 / fp32; gamma, beta and the
    running statistics (both or neither): contiguous [C], one dtype. Returns (out, coef): out
    [N, C, H', W'] channels_last in y's dtype (H' = H // 2 with ``pool``), coef fp32 [4, C]
    (``COEF_ROWS``). Training normalises with the batch statistics and updates the running ones
    in place (when given); eval uses the running statistics.

    ``global_coef`` (data-parallel BatchNorm, training): a function (coef of this batch,
    its count N*H*W) -> the coefficients of the global batch, called between the statistics and
    the apply launch; it updates the running statistics (the finalize kernel then does not)."""
    check_forward_inputs(y, gamma, beta, running_mean, running_var, training=training,
                         order=order, pool=pool)
    relu_first = _relu_first(order)
    track = running_mean is not None
    n, c, h, w = y.shape
    m = n * h * w
    ho, wo = _pooled_size(h, w, pool)
    tiles = _tiles(y.device)
    n_cblocks = triton.cdiv(c, tiles.c)
    coef = torch.empty((len(COEF_ROWS), c), device=y.device, dtype=torch.float32)
    programs, chunks, part = 0, 0, coef  # eval: no partials
    if training:
        programs, chunks = _split(triton.cdiv(m, tiles.rows), n_cblocks, y.device)
        part = torch.empty((programs, 2, c), device=y.device, dtype=torch.float32)
        _stats_kernel[(programs, n_cblocks)](y, part, m, c, chunks, RELU_FIRST=relu_first,
                                             BLOCK_M=tiles.rows, BLOCK_C=tiles.c,
                                             num_warps=tiles.warps)
    rmean = running_mean if track else gamma  # not touched without running statistics
    rvar = running_var if track else gamma
    _finalize_kernel[(n_cblocks,)](part, programs, chunks * tiles.rows, m, gamma, beta, rmean,
                                   rvar, coef, c, eps, momentum, int(training),
                                   int(training and track and global_coef is None),
                                   BLOCK_P=tiles.partials, BLOCK_C=tiles.c,
                                   num_warps=tiles.warps)
    if training and global_coef is not None:
        coef = global_coef(coef, m)
    return apply(y, coef, order=order, pool=pool), coef


def apply(y: torch.Tensor, coef: torch.Tensor, *, order: str, pool: bool) -> torch.Tensor:
    """Block output pool?(act(y * scale + shift)) of conv output ``y`` with the coefficients
    ``coef`` of its BatchNorm; one launch.

    y: [N, C, H, W] channels_last, fp16 / bf16 / fp32; coef: contiguous fp32 [4, C]
    (``COEF_ROWS``). Returns [N, C, H', W'] channels_last in y's dtype (H' = H // 2 with
    ``pool``)."""
    check_backward_inputs(None, y, coef, order=order, pool=pool)
    n, c, h, w = y.shape
    ho, wo = _pooled_size(h, w, pool)
    tiles = _tiles(y.device)
    out = torch.empty((n, c, ho, wo), device=y.device, dtype=y.dtype,
                      memory_format=torch.channels_last)
    sites, block = (n * ho * wo, tiles.windows) if pool else (n * h * w, tiles.rows)
    _apply_kernel[(triton.cdiv(sites, block), triton.cdiv(c, tiles.c))](
        y, coef, out, h, w, c, ho, wo, sites, RELU_FIRST=_relu_first(order), POOL=pool,
        BLOCK_S=block, BLOCK_C=tiles.c, num_warps=tiles.warps)
    return out


def backward(dout: torch.Tensor, y: torch.Tensor, coef: torch.Tensor, *, training: bool,
             order: str, pool: bool, global_sums=None):
    """Gradient w.r.t. the conv output ``y`` and the per-channel sums that are the BN's
    parameter gradients.

    dout: gradient of the block output, [N, C, H', W'] channels_last in y's dtype; y: the saved
    conv output [N, C, H, W] channels_last; coef: ``forward``'s fp32 [4, C]. Returns (dy, sums):
    dy like y (channels_last), sums fp32 [2, C] = [sum(dz), sum(dz * x_hat)] (dbeta, dgamma).

    ``global_sums`` (data-parallel BatchNorm, training): a function (sums of this batch, its
    count N*H*W) -> (sums, count) of the global batch, called between the two launches; dy is
    formed from those, the returned sums stay this batch's."""
    check_backward_inputs(dout, y, coef, order=order, pool=pool)
    relu_first = _relu_first(order)
    n, c, h, w = y.shape
    ho, wo = _pooled_size(h, w, pool)
    tiles = _tiles(y.device)
    n_cblocks = triton.cdiv(c, tiles.c)
    block = tiles.windows if pool else tiles.rows
    sites = n * ho * wo
    programs, chunks = _split(triton.cdiv(sites, block), n_cblocks, y.device)
    part = torch.empty((programs, 2, c), device=y.device, dtype=torch.float32)
    _bwd_reduce_kernel[(programs, n_cblocks)](
        y, dout, coef, part, h, w, c, ho, wo, sites, chunks, RELU_FIRST=relu_first, POOL=pool,
        BLOCK_S=block, BLOCK_C=tiles.c, num_warps=tiles.warps)
    sums = part.sum(dim=0)
    dy_sums, count = sums, n * h * w
    if training and global_sums is not None:
        dy_sums, count = global_sums(sums, count)
    dy = torch.empty_like(y, memory_format=torch.channels_last)
    hc, wc = (triton.cdiv(h, 2), triton.cdiv(w, 2)) if pool else (h, w)
    sites = n * hc * wc
    _bwd_dy_kernel[(triton.cdiv(sites, block), n_cblocks)](
        y, dout, coef, dy_sums, dy, h, w, c, ho, wo, hc, wc, sites, 1.0 / count, int(training),
        RELU_FIRST=relu_first, POOL=pool, BLOCK_S=block, BLOCK_C=tiles.c,
        num_warps=tiles.warps)
    return dy, sums


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (tests/aot.py): every kernel at the GPU tiles, every dtype, pool
# and block order (the variants named after the recipes, RECIPE_ORDER)
# ----------------------------------------------------------------------------------------------
def _aot_specs() -> list[dict]:
    t = GPU_TILES
    specs = []
    for name, dt in (("fp16", "*fp16"), ("bf16", "*bf16"), ("fp32", "*fp32")):
        specs.append(dict(  # dtype here is that of gamma, beta and the running statistics
            name=f"_finalize_kernel[{name}]", fn=_finalize_kernel,
            signature={"part_ptr": "*fp32", "P": "i32", "ROWS_PER_PROG": "i32", "M": "i32",
                       "gamma_ptr": dt, "beta_ptr": dt, "rmean_ptr": dt, "rvar_ptr": dt,
                       "coef_ptr": "*fp32", "C": "i32", "eps": "fp32", "momentum": "fp32",
                       "training": "i32", "update_running": "i32",
                       "BLOCK_P": "constexpr", "BLOCK_C": "constexpr"},
            constexprs={"BLOCK_P": t.partials, "BLOCK_C": t.c}, num_warps=t.warps))
        for recipe, order in RECIPE_ORDER.items():
            relu_first = _relu_first(order)
            specs.append(dict(
                name=f"_stats_kernel[{name}, {recipe}]", fn=_stats_kernel,
                signature={"y_ptr": dt, "part_ptr": "*fp32", "M": "i32", "C": "i32",
                           "CHUNKS_PER_PROG": "i32", "RELU_FIRST": "constexpr",
                           "BLOCK_M": "constexpr", "BLOCK_C": "constexpr"},
                constexprs={"RELU_FIRST": relu_first, "BLOCK_M": t.rows, "BLOCK_C": t.c},
                num_warps=t.warps))
            for pool in (False, True):
                block = t.windows if pool else t.rows
                tag = f"[{name}, {recipe}{'_pool' if pool else ''}]"
                constexprs = {"RELU_FIRST": relu_first, "POOL": pool, "BLOCK_S": block,
                              "BLOCK_C": t.c}
                specs.append(dict(
                    name=f"_apply_kernel{tag}", fn=_apply_kernel,
                    signature={"y_ptr": dt, "coef_ptr": "*fp32", "out_ptr": dt, "H": "i32",
                               "W": "i32", "C": "i32", "HO": "i32", "WO": "i32",
                               "n_sites": "i32", "RELU_FIRST": "constexpr", "POOL": "constexpr",
                               "BLOCK_S": "constexpr", "BLOCK_C": "constexpr"},
                    constexprs=constexprs, num_warps=t.warps))
                specs.append(dict(
                    name=f"_bwd_reduce_kernel{tag}", fn=_bwd_reduce_kernel,
                    signature={"y_ptr": dt, "dout_ptr": dt, "coef_ptr": "*fp32",
                               "part_ptr": "*fp32", "H": "i32", "W": "i32", "C": "i32",
                               "HO": "i32", "WO": "i32", "n_sites": "i32",
                               "CHUNKS_PER_PROG": "i32", "RELU_FIRST": "constexpr",
                               "POOL": "constexpr", "BLOCK_S": "constexpr",
                               "BLOCK_C": "constexpr"},
                    constexprs=constexprs, num_warps=t.warps))
                specs.append(dict(
                    name=f"_bwd_dy_kernel{tag}", fn=_bwd_dy_kernel,
                    signature={"y_ptr": dt, "dout_ptr": dt, "coef_ptr": "*fp32",
                               "sums_ptr": "*fp32", "dy_ptr": dt, "H": "i32", "W": "i32",
                               "C": "i32", "HO": "i32", "WO": "i32", "HC": "i32", "WC": "i32",
                               "n_sites": "i32", "inv_count": "fp32", "training": "i32",
                               "RELU_FIRST": "constexpr", "POOL": "constexpr",
                               "BLOCK_S": "constexpr", "BLOCK_C": "constexpr"},
                    constexprs=constexprs, num_warps=t.warps))
    return specs


AOT_SPECS = _aot_specs()
