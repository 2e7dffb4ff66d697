"""Conv3x3 (stride 1, padding 1) as an implicit GEMM over NHWC activations, with the VGG block's
BatchNorm / ReLU / max-pool fused into its loads and stores.

GEMM view (forward): M = N*H*W output pixels, N = C_out, K = 9*C_in with k = (kh*3 + kw)*C_in + ci.
The weight is packed K-major as ``[9*C_in, C_out]`` (``pack_weight``), so the B tile of ``tl.dot``
is a row-major [BK, BN] block (contiguous along C_out) and the A tile a [BM, BK] block gathered
from NHWC rows (contiguous along C: 16-byte loads).

* ``conv3x3_kernel`` — forward.
  Prologue on the A loads (``PRO``): per-input-channel affine (scale, shift) and ReLU in either
  order, and (``POOL``) the 2x2 max-pool of the stored previous-stage output, taken AFTER the
  affine/ReLU so that a negative scale stays correct. Taps outside the image contribute 0 in the
  normalised space (zero padding of what the conv sees, not of the stored tensor).
  Epilogue: bias, optional ReLU, store in the activation dtype, and the coefficients of the
  BatchNorm that follows (``BN_MODE``): in training per-tile, per-channel mean and M2 =
  sum((y - tile mean)^2) of the STORED (rounded) values, merged with Chan's formula in tile
  order inside the kernel (``_reduce_tree``: the last program to finish a group of GROUP tiles
  merges the group, the last group merges the groups, found with arrival counters; no
  separate finalize launch, and a critical path of a few merge steps instead of one program
  looping over thousands of partials); that last program also updates the running statistics
  — stable, deterministic (the merge order does not depend on which program is last), and not
  repeated by tuning runs (``update_running`` is 0 for them); in eval from the running
  statistics.
* ``conv3x3_wgrad_kernel`` — weight (and bias) gradient: dW^T[k, co] = sum_m A[m, k] dy[m, co],
  split over M into fp32 partials that are summed afterwards; A is the same prologue-applied
  gather as the forward, so the normalised input is recomputed from the stored conv output and
  the saved statistics instead of being kept.
* ``conv3x3_dgrad_kernel`` — data gradient across a block boundary with both BatchNorm
  backwards fused: the prologue forms dy = dL/d(conv output) from the stored gradient dz of the
  block's BN output and its stored conv output (``_load_grad``; the weight gradient reads dy
  the same way), the epilogue goes back through the previous block's pool (argmax recomputed)
  and ReLU, stores that block's dz and reduces sum(dz), sum(dz * x_hat) over the grid into
  dgamma, dbeta and the coefficients of that block's BN backward (``_reduce_tree``) — so no
  conv-output gradient is ever written and no separate reduction is launched.

``K_ALIGNED`` (C_in a multiple of BK) makes every K step one tap with contiguous channels; the
generic path (C_in = 1 on the first layer, channel counts that are not multiples of 16) decodes
(tap, channel) per element and masks K up to the tl.dot minimum.

Block-size choice is per shape (``_tuned``): on a GPU each candidate config is timed once per
shape key and the fastest kept; under ``TRITON_INTERPRET=1`` a single small config is used.
K-aligned configs are offered only to contiguous NHWC inputs with C_in % BK == 0 and C_in, C_out
multiples of 16 (``_aligned``), which is what their AOT specs state through divisibility hints:
the A gathers then compile to 16-byte cp.async (LDGSTS.128) and the stores to STG.128.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from .bn_act import chan_merge, store_coefficients, update_running_stats


__all__ = ["PRO_NONE", "PRO_AFFINE", "PRO_AFFINE_RELU", "PRO_RELU_AFFINE", "G_DENSE", "G_BN",
           "G_BN_RELU_FIRST", "pack_weight", "pack_weight_dgrad", "unpack_weight_grad", "conv3x3",
           "conv3x3_dgrad", "conv3x3_wgrad", "BatchNormArgs",
           "AOT_SPECS"]

#: prologue on the loaded input: none, x*scale+shift, relu(x*scale+shift), relu(x)*scale+shift
PRO_NONE, PRO_AFFINE, PRO_AFFINE_RELU, PRO_RELU_AFFINE = 0, 1, 2, 3
#: how the gradient kernels read a conv-output gradient (``_load_grad``): as stored, or formed
#: from the stored gradient of the block's BN output (BN backward; ReLU-before-BN mask)
G_DENSE, G_BN, G_BN_RELU_FIRST = 0, 1, 2

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
#: M tiles per group of the in-kernel statistics reduction (``_reduce_tree``): 8000 tiles of a
#: stage-1 layer reduce as 125 groups of 64; under the interpreter 2, so that the tests, with
#: few tiles, go through both levels
GPU_GROUP = 64
GROUP = 2 if _INTERPRET else GPU_GROUP


@triton.jit
def _prologue(v, scale, shift, PRO: tl.constexpr):
    if PRO == 1:
        v = v * scale + shift
    elif PRO == 2:
        v = tl.maximum(v * scale + shift, 0.0, propagate_nan=tl.PropagateNan.ALL)
    elif PRO == 3:
        v = tl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL) * scale + shift
    return v


@triton.jit
def _load_a(x_ptr, scale_ptr, shift_ptr, n, ih, iw, c, m_ok, k_ok, H, W, sxn, sxh, sxw, sxc,
            PRO: tl.constexpr, POOL: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """The conv's input tile at (n, ih, iw, c) (broadcastable index tensors; c and k_ok [1, BK]),
    0 where m_ok & k_ok is false or the tap is outside the image; ``POOL`` reads the 2x2 window
    at (2*ih, 2*iw)."""
    inside = m_ok & k_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    if PRO == 0 and not POOL:
        v = tl.load(x_ptr + n * sxn + ih * sxh + iw * sxw + c * sxc, mask=inside, other=0.0)
        return v.to(OUT_DTYPE)
    scale = 1.0
    shift = 0.0
    if PRO != 0:
        scale = tl.load(scale_ptr + c, mask=k_ok, other=0.0)
        shift = tl.load(shift_ptr + c, mask=k_ok, other=0.0)
    if POOL:
        base = x_ptr + n * sxn + (2 * ih) * sxh + (2 * iw) * sxw + c * sxc
        v00 = _prologue(tl.load(base, mask=inside, other=0.0).to(tl.float32), scale, shift, PRO)
        v01 = _prologue(tl.load(base + sxw, mask=inside, other=0.0).to(tl.float32), scale, shift, PRO)
        v10 = _prologue(tl.load(base + sxh, mask=inside, other=0.0).to(tl.float32), scale, shift, PRO)
        v11 = _prologue(tl.load(base + sxh + sxw, mask=inside, other=0.0).to(tl.float32), scale,
                        shift, PRO)
        v = tl.maximum(tl.maximum(v00, v01, propagate_nan=tl.PropagateNan.ALL),
                       tl.maximum(v10, v11, propagate_nan=tl.PropagateNan.ALL),
                       propagate_nan=tl.PropagateNan.ALL)
    else:
        v = tl.load(x_ptr + n * sxn + ih * sxh + iw * sxw + c * sxc, mask=inside, other=0.0)
        v = _prologue(v.to(tl.float32), scale, shift, PRO)
    return tl.where(inside, v, 0.0).to(OUT_DTYPE)


@triton.jit
def _a_indices(k0, rk, h, w, C_in, K_total, K_ALIGNED: tl.constexpr, BK: tl.constexpr):
    """(ih, iw, c, k_ok) of the K block starting at k0 for output pixels (h, w) [BM]."""
    if K_ALIGNED:  # the whole block is one tap: scalar tap, contiguous channels
        tap = k0 // C_in
        c = tl.multiple_of(k0 - tap * C_in, BK) + rk  # BK | C_in: 16-byte vector loads
        kh = tap // 3
        kw = tap - kh * 3
        ih = (h + kh - 1)[:, None]
        iw = (w + kw - 1)[:, None]
        return ih, iw, c[None, :], (rk >= 0)[None, :]
    else:
        k = k0 + rk
        tap = k // C_in
        c = k - tap * C_in
        kh = tap // 3
        kw = tap - kh * 3
        ih = h[:, None] + kh[None, :] - 1
        iw = w[:, None] + kw[None, :] - 1
        return ih, iw, c[None, :], (k < K_total)[None, :]


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
def _reduce_tree(part_ptr, gpart_ptr, count_ptr, pid_n, pid_m, M, C, rn, n_ok, v0, v1,
                 CHAN: tl.constexpr, GROUP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """Per-channel reduction of a tile-level pair (v0, v1) over every M tile of the grid, in two
    levels of "the last program to arrive merges": groups of GROUP consecutive tiles into
    ``gpart_ptr``, then the groups. ``CHAN``: pairs are (mean, M2) merged with Chan's formula,
    else sums. Returns (is_last, r0, r1), r valid in the one program (per channel tile) for which
    is_last holds. The result is deterministic: merges go in tile order whoever arrives last.
    ``count_ptr``: zeroed int32 [channel tiles, groups + 1], left zeroed."""
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


@triton.jit
def _output_tile(M, H, W, C, BM: tl.constexpr, BN: tl.constexpr):
    """This program's output tile on a 1-D grid over (M tile, channel tile), channel tiles
    fastest so that the programs sharing an A tile run together (and no 65,535 limit on the M
    tiles, as a grid's second axis would have at large batches): (pid_m, pid_n, rows, channels,
    their masks, and the rows' pixel coordinates n, h, w)."""
    tiles_n = tl.cdiv(C, BN)
    pid = tl.program_id(0)
    pid_m = pid // tiles_n
    pid_n = pid % tiles_n
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    w = rm % W
    t = rm // W
    return pid_m, pid_n, rm, rn, rm < M, rn < C, t // H, t % H, w


@triton.jit(do_not_specialize=["update_running"])
def conv3x3_kernel(x_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr, y_ptr, part_ptr, gpart_ptr,
                   count_ptr, gamma_ptr, beta_ptr, rmean_ptr, rvar_ptr, coef_ptr,
                   M, H, W, C_in, C_out, sxn, sxh, sxw, sxc, eps, momentum, update_running,
                   PRO: tl.constexpr, POOL: tl.constexpr, HAS_BIAS: tl.constexpr,
                   RELU_OUT: tl.constexpr, BN_MODE: tl.constexpr, K_ALIGNED: tl.constexpr,
                   DOT_PREC: tl.constexpr, GROUP: tl.constexpr, BM: tl.constexpr,
                   BN: tl.constexpr, BK: tl.constexpr):
    """y[m, co] = epilogue(sum_k prologue(x)[m, k] * w[k, co]); 1-D grid over (M tile, C_out
    tile), C_out tiles fastest (``_output_tile``).

    ``BN_MODE`` (the BatchNorm that follows): 0 none; 1 training: per-tile (mean, M2) of the
    stored values, reduced over all M tiles by ``_reduce_tree``, whose last program writes the
    coefficients ``coef_ptr`` [4, C_out] and (``update_running``) the running statistics;
    2 eval: the coefficients from the running statistics, written by the first M tile."""
    pid_m, pid_n, rm, rn, m_ok, n_ok, n, h, w_ = _output_tile(M, H, W, C_out, BM, BN)
    rk = tl.arange(0, BK)
    K_total = 9 * C_in
    dtype = w_ptr.dtype.element_ty
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K_total, BK):
        ih, iw, c, k_ok = _a_indices(k0, rk, h, w_, C_in, K_total, K_ALIGNED, BK)
        a = _load_a(x_ptr, scale_ptr, shift_ptr, n[:, None], ih, iw, c, m_ok[:, None], k_ok,
                    H, W, sxn, sxh, sxw, sxc, PRO, POOL, dtype)
        kk = k0 + rk
        b = tl.load(w_ptr + kk[:, None] * C_out + rn[None, :],
                    mask=(kk < K_total)[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PREC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if RELU_OUT:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
    out = acc.to(y_ptr.dtype.element_ty)
    mask = m_ok[:, None] & n_ok[None, :]
    tl.store(y_ptr + rm[:, None] * C_out + rn[None, :], out, mask=mask)
    if BN_MODE == 1:  # per-tile (mean, M2) of the stored values
        v = tl.where(mask, out.to(tl.float32), 0.0)
        cnt = tl.minimum(M - pid_m * BM, BM).to(tl.float32)
        mean = tl.sum(v, axis=0) / cnt
        d = tl.where(mask, v - mean[None, :], 0.0)
        is_last, mean, m2 = _reduce_tree(part_ptr, gpart_ptr, count_ptr, pid_n, pid_m, M, C_out,
                                         rn, n_ok, mean, tl.sum(d * d, axis=0), True, GROUP,
                                         BM, BN)
        if is_last:
            if update_running != 0:
                update_running_stats(rmean_ptr, rvar_ptr, rn, n_ok, mean, m2, M, momentum)
            store_coefficients(coef_ptr, rn, n_ok, mean, m2 / M, gamma_ptr, beta_ptr, C_out, eps)
    elif BN_MODE == 2:
        if pid_m == 0:
            mean = tl.load(rmean_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
            var = tl.load(rvar_ptr + rn, mask=n_ok, other=1.0).to(tl.float32)
            store_coefficients(coef_ptr, rn, n_ok, mean, var, gamma_ptr, beta_ptr, C_out, eps)


@triton.jit
def _load_grad(dz_ptr, gy_ptr, gcoef_ptr, offs, mask, c, c_ok, C, G: tl.constexpr,
               OUT_DTYPE: tl.constexpr):
    """dL/dy of a conv output at ``offs`` (0 where not ``mask``): the stored tensor itself
    (``G_DENSE``), or formed from the stored gradient dz of the block's BN output and the stored
    conv output y with the coefficients [c1, c2, c3, mean] that ``conv3x3_dgrad_kernel``
    computed for the block:
    dL/dy = c1*dz + c2*(x - mean) + c3, x = y (G_BN); 0 where y <= 0 (G_BN_RELU_FIRST)."""
    v = tl.load(dz_ptr + offs, mask=mask, other=0.0)
    if G != 0:
        y = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        c1 = tl.load(gcoef_ptr + c, mask=c_ok, other=0.0)
        c2 = tl.load(gcoef_ptr + C + c, mask=c_ok, other=0.0)
        c3 = tl.load(gcoef_ptr + 2 * C + c, mask=c_ok, other=0.0)
        mean = tl.load(gcoef_ptr + 3 * C + c, mask=c_ok, other=0.0)
        v = c1 * v.to(tl.float32) + c2 * (y - mean) + c3
        if G == 2:
            v = tl.where(y <= 0, 0.0, v)  # as threshold_backward: NaN passes
        v = tl.where(mask, v, 0.0)
    return v.to(OUT_DTYPE)


@triton.jit
def conv3x3_wgrad_kernel(x_ptr, dy_ptr, gy_ptr, gcoef_ptr, scale_ptr, shift_ptr, dw_ptr, db_ptr,
                         M, H, W, C_in, C_out, sxn, sxh, sxw, sxc, m_per_split,
                         PRO: tl.constexpr, POOL: tl.constexpr, G: tl.constexpr,
                         HAS_DB: tl.constexpr, K_ALIGNED: tl.constexpr, DOT_PREC: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """dw[s, k, co] = sum over split s of M of A[m, k] * dy[m, co]; db[s, co] = sum dy (pid_k 0).

    Grid (K tiles, C_out tiles, splits); A is the forward's prologue-applied input gather, dy
    the conv-output gradient formed by ``_load_grad`` (prologue G: the block's BN / ReLU
    backward from the stored BN-output gradient)."""
    pid_k = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    rb = tl.arange(0, BM)
    n_ok = rn < C_out
    K_total = 9 * C_in
    k0 = pid_k * BK
    dtype = dy_ptr.dtype.element_ty
    acc = tl.zeros((BK, BN), dtype=tl.float32)
    dbias = tl.zeros((BN,), dtype=tl.float32)
    m_start = pid_s * m_per_split
    m_end = tl.minimum(m_start + m_per_split, M)
    for m0 in range(m_start, m_end, BM):
        rm = m0 + rb
        m_ok = rm < m_end
        w_ = rm % W
        t = rm // W
        h = t % H
        n = t // H
        ih, iw, c, k_ok = _a_indices(k0, rk, h, w_, C_in, K_total, K_ALIGNED, BK)
        a = _load_a(x_ptr, scale_ptr, shift_ptr, n[:, None], ih, iw, c, m_ok[:, None], k_ok,
                    H, W, sxn, sxh, sxw, sxc, PRO, POOL, dtype)
        g = _load_grad(dy_ptr, gy_ptr, gcoef_ptr, rm[:, None] * C_out + rn[None, :],
                       m_ok[:, None] & n_ok[None, :], rn, n_ok, C_out, G, dtype)
        acc = tl.dot(tl.trans(a), g, acc, input_precision=DOT_PREC)
        if HAS_DB:
            dbias += tl.sum(g.to(tl.float32), axis=0)
    kk = k0 + rk
    tl.store(dw_ptr + (pid_s * K_total + kk[:, None]) * C_out + rn[None, :], acc,
             mask=(kk < K_total)[:, None] & n_ok[None, :])
    if HAS_DB:
        if pid_k == 0:
            tl.store(db_ptr + pid_s * C_out + rn, dbias, mask=n_ok)


@triton.jit
def _block_output(y, mean, rstd, scale, shift, RELU_FIRST: tl.constexpr):
    """(x_hat, z) of a block from its stored conv output y (fp32): the normalised BN input and
    the block output before the pool, in fp32 as the next conv's prologue computed it (its pool
    compares fp32 values, so the argmax recomputed here is the one the forward took)."""
    x = y
    if RELU_FIRST:
        x = tl.where(y < 0, 0.0, y)
    z = x * scale + shift
    if not RELU_FIRST:
        z = tl.where(z < 0, 0.0, z)
    return (x - mean) * rstd, z


@triton.jit(do_not_specialize=["training"])
def conv3x3_dgrad_kernel(dz_ptr, gy_ptr, gcoef_ptr, w_ptr, ey_ptr, ecoef_ptr, out_ptr, part_ptr,
                         gpart_ptr, count_ptr, sums_ptr, pcoef_ptr, M, H, W, C_dy, C_dx, EH, EW,
                         inv_count, training,
                         G: tl.constexpr, EPI: tl.constexpr, RELU_FIRST: tl.constexpr,
                         K_ALIGNED: tl.constexpr, DOT_PREC: tl.constexpr, GROUP: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Data gradient through a block boundary; 1-D grid over (M tile, C_dx tile) as the
    forward's, M = N*H*W.

    GEMM: g[m, cx] = sum_k dy[m, k] * wd[k, cx] (flipped weights), the A tile formed by
    ``_load_grad`` (prologue G: this block's BN / ReLU backward). g is the gradient of the conv's
    input. Epilogue ``EPI``: 0 stores g; 1 / 2 (2: through the 2x2 max-pool) treat the input as
    the previous block's output pool?(z), z = act(bn(y_prev)) of its stored conv output
    ``ey_ptr`` [N, EH, EW, C_dx] with its forward coefficients ``ecoef_ptr`` [mean, rstd, scale,
    shift]: route g to the window's argmax (first maximum, NaN wins, of z as stored), apply the
    ReLU mask when ReLU follows BN, store dz (the gradient of the previous BN's output, full
    resolution), and reduce [sum dz, sum dz * x_hat] per channel over all tiles
    (``_reduce_tree``, ``inv_count`` = 1 / (N*EH*EW)), whose last program writes them to
    ``sums_ptr`` [2, C_dx] (dbeta, dgamma of the previous BN) and that BN's backward as the
    coefficients ``pcoef_ptr`` [c1, c2, c3, mean] with which ``_load_grad`` forms its dy: in
    training scale * (dz - mean(dz) - x_hat * mean(dz * x_hat)), i.e. c1 = scale,
    c2 = -scale * rstd * mean(dz * x_hat), c3 = -scale * mean(dz); in eval the fixed affine,
    c2 = c3 = 0."""
    pid_m, pid_n, rm, rn, m_ok, n_ok, n, h, w_ = _output_tile(M, H, W, C_dx, BM, BN)
    rk = tl.arange(0, BK)
    K_total = 9 * C_dy
    dtype = w_ptr.dtype.element_ty
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K_total, BK):
        ih, iw, c, k_ok = _a_indices(k0, rk, h, w_, C_dy, K_total, K_ALIGNED, BK)
        inside = m_ok[:, None] & k_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = _load_grad(dz_ptr, gy_ptr, gcoef_ptr, ((n[:, None] * H + ih) * W + iw) * C_dy + c,
                       inside, c, k_ok, C_dy, G, dtype)
        kk = k0 + rk
        b = tl.load(w_ptr + kk[:, None] * C_dx + rn[None, :],
                    mask=(kk < K_total)[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PREC)
    mask = m_ok[:, None] & n_ok[None, :]
    g = acc.to(dtype)
    if EPI == 0:
        tl.store(out_ptr + rm[:, None] * C_dx + rn[None, :], g, mask=mask)
    else:
        g = g.to(tl.float32)
        mean = tl.load(ecoef_ptr + rn, mask=n_ok, other=0.0)[None, :]
        rstd = tl.load(ecoef_ptr + C_dx + rn, mask=n_ok, other=0.0)[None, :]
        scale = tl.load(ecoef_ptr + 2 * C_dx + rn, mask=n_ok, other=0.0)[None, :]
        shift = tl.load(ecoef_ptr + 3 * C_dx + rn, mask=n_ok, other=0.0)[None, :]
        if EPI == 1:
            offs = rm[:, None] * C_dx + rn[None, :]
            y = tl.load(ey_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            x_hat, z = _block_output(y, mean, rstd, scale, shift, RELU_FIRST)
            if not RELU_FIRST:
                g = tl.where(z <= 0, 0.0, g)
            dz = tl.where(mask, g.to(dtype).to(tl.float32), 0.0)
            tl.store(out_ptr + offs, dz.to(dtype), mask=mask)
            sum_dz = tl.sum(dz, axis=0)
            sum_dzx = tl.sum(dz * x_hat, axis=0)
        else:  # full-resolution window (2h, 2w) of the previous block's output
            base = ((n * EH + 2 * h) * EW + 2 * w_)[:, None] * C_dx + rn[None, :]
            step_h = EW * C_dx
            best = tl.zeros((BM, BN), dtype=tl.float32)
            for k in tl.static_range(4):  # the window's maximum, as the forward's pool took it
                y = tl.load(ey_ptr + base + (k // 2) * step_h + (k % 2) * C_dx, mask=mask,
                            other=0.0).to(tl.float32)
                _, z = _block_output(y, mean, rstd, scale, shift, RELU_FIRST)
                if k == 0:
                    best = z
                else:
                    best = tl.where((z > best) | (z != z), z, best)
            sum_dz = tl.zeros((BN,), dtype=tl.float32)
            sum_dzx = tl.zeros((BN,), dtype=tl.float32)
            for k in tl.static_range(4):  # g goes to the first tap holding it (reloads: cache)
                offs = base + (k // 2) * step_h + (k % 2) * C_dx
                y = tl.load(ey_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                x_hat, z = _block_output(y, mean, rstd, scale, shift, RELU_FIRST)
                hit = (z == best) | (z != z)
                dz = tl.where(hit, g, 0.0)
                g = tl.where(hit, 0.0, g)
                if not RELU_FIRST:
                    dz = tl.where(z <= 0, 0.0, dz)
                dz = tl.where(mask, dz, 0.0)
                tl.store(out_ptr + offs, dz.to(dtype), mask=mask)
                sum_dz += tl.sum(dz, axis=0)
                sum_dzx += tl.sum(dz * x_hat, axis=0)
        is_last, sum_dz, sum_dzx = _reduce_tree(part_ptr, gpart_ptr, count_ptr, pid_n, pid_m, M,
                                                C_dx, rn, n_ok, sum_dz, sum_dzx, False, GROUP,
                                                BM, BN)
        if is_last:
            tl.store(sums_ptr + rn, sum_dz, mask=n_ok)
            tl.store(sums_ptr + C_dx + rn, sum_dzx, mask=n_ok)
            c2 = -scale * rstd * (sum_dzx * inv_count)
            c3 = -scale * (sum_dz * inv_count)
            if training == 0:
                c2 = tl.zeros_like(c2)
                c3 = tl.zeros_like(c3)
            tl.store(pcoef_ptr + rn[None, :], scale, mask=n_ok[None, :])
            tl.store(pcoef_ptr + C_dx + rn[None, :], c2, mask=n_ok[None, :])
            tl.store(pcoef_ptr + 2 * C_dx + rn[None, :], c3, mask=n_ok[None, :])
            tl.store(pcoef_ptr + 3 * C_dx + rn[None, :], mean, mask=n_ok[None, :])


# ----------------------------------------------------------------------------------------------
# Host side: weight packing, per-shape config choice, launchers.

def pack_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[C_out, C_in, 3, 3] -> the forward's B matrix [9*C_in, C_out], k = (kh*3 + kw)*C_in + ci."""
    c_out, c_in = weight.shape[:2]
    return weight.permute(2, 3, 1, 0).reshape(9 * c_in, c_out).to(dtype).contiguous()


def pack_weight_dgrad(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[C_out, C_in, 3, 3] -> the data gradient's B matrix [9*C_out, C_in]: flipped taps,
    channels transposed, so that dx = conv3x3(dy) with the forward's kernel."""
    c_out, c_in = weight.shape[:2]
    return weight.flip(2, 3).permute(2, 3, 0, 1).reshape(9 * c_out, c_in).to(dtype).contiguous()


def unpack_weight_grad(dw: torch.Tensor, c_in: int) -> torch.Tensor:
    """Inverse of ``pack_weight``'s layout: [9*C_in, C_out] -> [C_out, C_in, 3, 3]."""
    return dw.reshape(3, 3, c_in, dw.shape[1]).permute(3, 2, 0, 1).contiguous()


#: AOT targets (tests/aot.py) and the devices they stand for (``_target``)
_BOTH = ("sm_90a", "sm_80")


def _cfg(bm, bn, bk, warps, stages, targets=_BOTH):
    """A launch config; ``targets``: where its shared memory fits (checked by the AOT test)."""
    return dict(BM=bm, BN=bn, BK=bk, num_warps=warps, num_stages=stages, targets=targets)


#: GPU candidates per kernel, all in AOT_SPECS (spill-free, HGMMA on sm_90a). The K-aligned
#: ones (every table but the SMALL_K ones) are offered only when ``_aligned`` holds, which is
#: what the AOT specs assume through their divisibility hints; BK is the K step of the forward
#: and data gradient and the K rows of the weight-gradient tile (whose reduction step over
#: N*H*W is BM).
#: Registers on sm_90a (AOT, fp16), epilogues with the in-kernel statistics tree included:
#: fused forward 128x128x64 175 (with pool 200), 128x256 241, 256x128 254 (128x256 spills
#: 24-32 bytes on sm_80: sm_90 only); data gradient with the BN-backward prologue and
#: epilogue 162-244; with the pool epilogue (the window maximum and the gradient stay live)
#: 64x64 tiles, ~204: 128x64 spilled 8-32 bytes, 128x128 1.3 KB; weight gradient with the
#: BN-backward prologue 181-240 (64x128x64 and 64x64x128 need 8 warps, with 4 they spilled).
#: Shared memory (per block: 232,448 bytes on sm_90, 166,912 on sm_80): the pool prologue
#: pipelines its four loads, so 128x128x64 with pool needs 197,632 bytes on sm_90a (181,248 on
#: sm_80: sm_90 only); wgrad 64x128x128 and 64x64x128 need 231,424 / 190,464 (sm_90 only).
#: Tables for fp16 / bf16 (2-byte operands, HGMMA on sm_90a).
FWD_CONFIGS = (_cfg(128, 128, 64, 8, 3), _cfg(128, 128, 64, 8, 4),
               _cfg(128, 256, 64, 8, 3, ("sm_90a",)), _cfg(256, 128, 32, 8, 3),
               _cfg(128, 64, 64, 8, 3), _cfg(256, 64, 32, 8, 4))
FWD_POOL_CONFIGS = (_cfg(128, 128, 64, 8, 3, ("sm_90a",)), _cfg(128, 256, 32, 8, 3, ("sm_90a",)),
                    _cfg(128, 64, 32, 4, 3))
DGRAD_CONFIGS = (_cfg(128, 128, 64, 8, 3), _cfg(128, 128, 64, 8, 4), _cfg(256, 64, 32, 8, 4),
                 _cfg(128, 64, 64, 8, 3))
DGRAD_POOL_CONFIGS = (_cfg(64, 64, 64, 8, 3), _cfg(64, 64, 64, 8, 4))
WGRAD_CONFIGS = (_cfg(64, 128, 128, 8, 3, ("sm_90a",)), _cfg(64, 128, 64, 8, 3),
                 _cfg(64, 64, 128, 8, 3, ("sm_90a",)), _cfg(64, 64, 64, 4, 3))
#: first layer / odd channel counts: K decoded per element, padded to the tl.dot minimum
SMALL_K_CONFIGS = (_cfg(64, 64, 16, 8, 3),)
#: fp32 (exact "ieee" FMA dot, 4-byte tiles): the fp16 tiles need up to 526 KB of shared memory
#: and spill, so smaller ones, spill-free where offered (the 64-wide forward tiles spill 8 bytes
#: on sm_80: sm_90 only).
FWD_CONFIGS_FP32 = (_cfg(64, 64, 32, 4, 3, ("sm_90a",)), _cfg(128, 64, 32, 8, 3, ("sm_90a",)),
                    _cfg(64, 128, 32, 8, 3), _cfg(128, 128, 32, 8, 2))
FWD_POOL_CONFIGS_FP32 = (_cfg(64, 128, 32, 8, 3), _cfg(128, 128, 32, 8, 2))
DGRAD_CONFIGS_FP32 = (_cfg(64, 128, 32, 8, 3), _cfg(32, 64, 32, 4, 3))
DGRAD_POOL_CONFIGS_FP32 = (_cfg(64, 32, 32, 4, 3), _cfg(32, 32, 32, 4, 3))
WGRAD_CONFIGS_FP32 = (_cfg(16, 64, 64, 4, 3), _cfg(32, 64, 32, 4, 3))
SMALL_K_CONFIGS_FP32 = (_cfg(32, 32, 16, 4, 3),)
_INTERPRET_CONFIG = _cfg(64, 32, 16, 4, 1)
_TUNED: dict = {}


def _target(device) -> str:
    """The AOT target whose shared-memory budget this GPU has: sm_90a from Hopper on, else sm_80
    (a smaller GPU may still reject some; ``_tuned`` skips those)."""
    return "sm_90a" if torch.cuda.get_device_capability(device)[0] >= 9 else "sm_80"


def _candidates(table, x: torch.Tensor, c_out: int):
    """Configs for this shape and GPU: the table's K-aligned ones that fit the device's target
    when ``_aligned`` holds for their BK, else the generic small-K one of x's dtype."""
    if _INTERPRET:
        cfg = dict(_INTERPRET_CONFIG)
        cfg["BN"] = 16 if c_out <= 16 else 32
        return [cfg]
    target = _target(x.device)
    ok = [c for c in table if target in c["targets"] and _aligned(x, c_out, c["BK"])]
    return ok or list(SMALL_K_CONFIGS_FP32 if x.dtype == torch.float32 else SMALL_K_CONFIGS)


def _aligned(x: torch.Tensor, c_out: int, bk: int) -> bool:
    """What the K-aligned AOT specs assume (``_ALIGNED_ARGS``): every K step is one tap of BK
    contiguous channels, and C_in, C_out and the NHWC strides are multiples of 16."""
    c_in = x.shape[3]
    return x.is_contiguous() and c_in % bk == 0 and c_in % 16 == 0 and c_out % 16 == 0


def _tuned(key, candidates, launch):
    """Run ``launch(cfg, final=True)`` with the fastest candidate for ``key``, timing each once
    per key with ``final=False``.

    ``launch`` must be idempotent (every output overwritten, nothing accumulated) and, when not
    ``final``, leave no other trace (no running-statistics update), so that the timing runs are
    invisible. A candidate the GPU rejects (OutOfResources: shared memory, registers) is
    skipped; only when none fits is it an error."""
    cfg = _TUNED.get(key)
    if cfg is not None:
        return launch(cfg, final=True)
    times, rejected = {}, []
    for i, c in enumerate(candidates):
        try:
            times[i] = (triton.testing.do_bench(lambda c=c: launch(c, final=False), warmup=5,
                                                rep=20)
                        if len(candidates) > 1 else 0.0)
        except OutOfResources as exc:
            rejected.append(f"{_cfg_name(c)}: {exc}")
    if not times:
        raise _no_config_fits(key, rejected)
    cfg = candidates[min(times, key=times.__getitem__)]
    try:
        out = launch(cfg, final=True)
    except OutOfResources as exc:
        raise _no_config_fits(key, rejected + [f"{_cfg_name(cfg)}: {exc}"]) from exc
    _TUNED[key] = cfg
    return out


def _no_config_fits(key, rejected):
    return RuntimeError(f"conv3x3 ({key[0]}, shape key {key[1:]}): no config fits this GPU: "
                        + "; ".join(rejected))


def _dot_precision(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"


def _check(name, t, *, dtype=None, device=None, shape=None, contiguous=False):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name} has dtype {t.dtype}, expected {dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _check_int32(name: str, numel: int) -> None:
    """The kernels index with int32: every operand must have fewer than 2**31 elements."""
    if numel >= 2 ** 31:
        raise ValueError(f"{name} would have {numel} elements; the conv kernels index with int32 "
                         f"(< 2**31): use a smaller batch")


def _check_packed_weight(wp, x):
    """``wp`` is a packed weight [9*C, C'] (``pack_weight`` / ``pack_weight_dgrad``) for the
    NHWC operand ``x`` with C channels: its dtype, device, contiguous."""
    _check("packed weight", wp, dtype=x.dtype, device=x.device, contiguous=True)
    if wp.dim() != 2 or wp.shape[0] != 9 * x.shape[3]:
        raise ValueError(f"packed weight has shape {tuple(wp.shape)}, expected "
                         f"[{9 * x.shape[3]}, C] for an input with {x.shape[3]} channels")


def _check_input(x, pro, scale, shift, pool):
    """Validate the NHWC input and its prologue; return (N, H, W, C_in) of what the conv sees."""
    if x.dim() != 4:
        raise ValueError(f"x must be NHWC [N, H, W, C], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"x has dtype {x.dtype}; supported: float16, bfloat16, float32")
    nb, hx, wx, c_in = x.shape
    _check_int32("x", x.numel())
    if pro not in (PRO_NONE, PRO_AFFINE, PRO_AFFINE_RELU, PRO_RELU_AFFINE):
        raise ValueError(f"unknown prologue {pro!r}")
    if pro != PRO_NONE:
        for nm, t in (("scale", scale), ("shift", shift)):
            _check(nm, t, dtype=torch.float32, device=x.device, shape=(c_in,), contiguous=True)
    h, w = (hx // 2, wx // 2) if pool else (hx, wx)
    if h < 1 or w < 1:
        raise ValueError(f"input spatial size {hx}x{wx} is empty after the 2x2 pool")
    return nb, h, w, c_in


@dataclass(frozen=True)
class BatchNormArgs:
    """The BatchNorm that follows a conv (``conv3x3(..., bn=)``): its affine parameters, running
    statistics (None when not tracked) and nn.BatchNorm2d settings."""

    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor | None = None
    running_var: torch.Tensor | None = None
    training: bool = True
    momentum: float = 0.1
    eps: float = 1e-5

    def check(self, c: int, device: torch.device) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(self, name)
            if t is not None:
                _check(f"BatchNorm {name}", t, device=device, shape=(c,), contiguous=True)
        if (self.running_mean is None) != (self.running_var is None):
            raise ValueError("BatchNorm: give both running_mean and running_var, or neither")
        if not self.training and self.running_mean is None:
            raise ValueError("BatchNorm in eval mode needs running_mean and running_var")


#: zeroed arrival counters of the training-statistics epilogue, per (device, stream)
_COUNTERS: dict = {}


def _statistics_buffers(device: torch.device, channel_tiles: int, tiles_m: int, c: int):
    """Tile partials, group partials and arrival counters of ``_reduce_tree`` for a grid of
    (channel_tiles, tiles_m) programs over c channels."""
    groups = triton.cdiv(tiles_m, GROUP)
    part = torch.empty((tiles_m, 2, c), device=device, dtype=torch.float32)
    gpart = torch.empty((groups, 2, c), device=device, dtype=torch.float32)
    return part, gpart, _arrival_counters(device, channel_tiles * (groups + 1))


def _arrival_counters(device: torch.device, n: int) -> torch.Tensor:
    """n zeroed int32 counters for ``_reduce_tree``. Every launch leaves them zero (the last
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


def conv3x3(x, wp, bias=None, *, scale=None, shift=None, pro=PRO_NONE, pool=False,
            relu=False, bn: BatchNormArgs | None = None):
    """Fused 3x3 conv over NHWC ``x`` with packed weight ``wp`` [9*C_in, C_out] (``pack_weight``).

    Input seen by the conv: ``pool2x2(prologue(x))`` (pool optional; see PRO_*), zero padded.
    Returns y [N, H, W, C_out] (x's dtype, contiguous) = relu?(conv + bias), and with ``bn``
    (y, coef): the coefficients [mean, rstd, gamma*rstd, beta - mean*gamma*rstd] fp32 [4, C_out]
    (``bn_act.COEF_ROWS``) of the BatchNorm of y, from y's batch statistics (training, computed
    from the values as stored, running statistics updated as nn.BatchNorm2d does) or its
    running statistics (eval) — in the same kernel."""
    nb, h, w, c_in = _check_input(x, pro, scale, shift, pool)
    _check_packed_weight(wp, x)
    c_out = wp.shape[1]
    if bias is not None:
        _check("bias", bias, device=x.device, shape=(c_out,), contiguous=True)
    m = nb * h * w
    _check_int32("the conv output", m * c_out)
    mode = 0
    if bn is not None:
        bn.check(c_out, x.device)
        mode = 1 if bn.training else 2
        if bn.training and m < 2:
            raise ValueError(f"BatchNorm in training needs more than 1 value per channel, got "
                             f"input of shape {tuple(x.shape)} (as nn.BatchNorm2d)")
    y = torch.empty((nb, h, w, c_out), device=x.device, dtype=x.dtype)
    coef = torch.empty((4, c_out), device=x.device, dtype=torch.float32) if mode else y
    track = bn is not None and bn.running_mean is not None
    gamma, beta = (bn.weight, bn.bias) if mode else (coef, coef)
    rmean, rvar = (bn.running_mean, bn.running_var) if track else (coef, coef)
    key = ("fwd", m, h, w, c_in, c_out, x.dtype, x.stride(), pro, pool, bias is not None, relu,
           mode)

    def launch(cfg, final):
        tiles_m = triton.cdiv(m, cfg["BM"])
        tiles_n = triton.cdiv(c_out, cfg["BN"])
        part = gpart = counters = y
        if mode == 1:
            part, gpart, counters = _statistics_buffers(x.device, tiles_n, tiles_m, c_out)
        conv3x3_kernel[(tiles_m * tiles_n,)](
            x, wp, bias if bias is not None else y, scale if pro else y, shift if pro else y, y,
            part, gpart, counters, gamma, beta, rmean, rvar, coef, m, h, w, c_in, c_out,
            *x.stride(),
            bn.eps if mode else 0.0, (bn.momentum or 0.0) if mode else 0.0,
            int(final and mode == 1 and track), PRO=pro, POOL=pool,
            HAS_BIAS=bias is not None, RELU_OUT=relu, BN_MODE=mode,
            K_ALIGNED=c_in % cfg["BK"] == 0, DOT_PREC=_dot_precision(x.dtype), GROUP=GROUP,
            BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"], num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"])

    if x.dtype == torch.float32:
        table = FWD_POOL_CONFIGS_FP32 if pool else FWD_CONFIGS_FP32
    else:
        table = FWD_POOL_CONFIGS if pool else FWD_CONFIGS
    _tuned(key, _candidates(table, x, c_out), launch)
    return (y, coef) if mode else y


def _grad_operand(dy, bn, relu_first):
    """(G, y, gcoef) of ``_load_grad`` for a conv-output gradient given as ``dy`` itself
    (``bn`` None) or as the BN-output gradient ``dy`` with ``bn`` = (y, gcoef)."""
    if dy.dim() != 4:
        raise ValueError(f"dy must be NHWC [N, H, W, C], got shape {tuple(dy.shape)}")
    if dy.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dy has dtype {dy.dtype}; supported: float16, bfloat16, float32")
    _check("dy", dy, contiguous=True)
    _check_int32("dy", dy.numel())
    if bn is None:
        return G_DENSE, dy, dy
    y, gcoef = bn
    _check("the block's conv output y", y, dtype=dy.dtype, device=dy.device, shape=dy.shape,
           contiguous=True)
    _check("gradient coefficients", gcoef, dtype=torch.float32, device=dy.device,
           shape=(4, dy.shape[3]), contiguous=True)
    return (G_BN_RELU_FIRST if relu_first else G_BN), y, gcoef


def conv3x3_dgrad(dy, wd, *, bn=None, relu_first=False, prev=None, pool=False, training=True):
    """Gradient of a 3x3/pad-1 conv w.r.t. its (conv-visible) input, ``wd`` =
    ``pack_weight_dgrad(weight)`` [9*C_out, C_in].

    ``dy`` NHWC [N, H, W, C_out]: the conv-output gradient, or with ``bn`` = (y, gcoef) (the
    block's stored conv output and its gradient coefficients, as returned here for the previous
    block) the gradient of the block's BN output, the BN (and, ``relu_first``, ReLU) backward
    being applied while loading.
    Without ``prev``: returns dx [N, H, W, C_in]. With ``prev`` = (y_prev, coef_prev), the
    previous block's stored conv output [N, EH, EW, C_in] (EH = 2H or 2H + 1 with ``pool``) and
    its forward coefficients [mean, rstd, scale, shift]: the conv input is that block's output,
    and the epilogue goes back through its pool and ReLU: returns (dz_prev, sums, gcoef_prev):
    the gradient of the previous BN's output (y_prev's shape), fp32 [2, C_in] = [sum dz,
    sum dz * x_hat] (its beta and gamma gradients) and fp32 [4, C_in] = the coefficients with
    which the next data / weight gradient forms its conv-output gradient (BatchNorm backward in
    ``training`` mode, else the fixed affine) — all in one kernel."""
    g_mode, gy, gcoef = _grad_operand(dy, bn, relu_first)
    nb, h, w, c_dy = dy.shape
    _check_packed_weight(wd, dy)
    c_dx = wd.shape[1]
    m = nb * h * w
    _check_int32("the data gradient", m * c_dx)
    if prev is None:
        epi, eh, ew = 0, h, w
        out = torch.empty((nb, h, w, c_dx), device=dy.device, dtype=dy.dtype)
        ey = ecoef = sums = pcoef = out
    else:
        ey, ecoef = prev
        _check("previous conv output", ey, dtype=dy.dtype, device=dy.device, contiguous=True)
        _check_int32("previous conv output", ey.numel())
        eh, ew = ey.shape[1:3] if ey.dim() == 4 else (0, 0)
        expected = (nb, 2 * h + eh % 2, 2 * w + ew % 2, c_dx) if pool else (nb, h, w, c_dx)
        if tuple(ey.shape) != expected:
            raise ValueError(f"previous conv output has shape {tuple(ey.shape)}, expected "
                             f"{expected} for dy {tuple(dy.shape)} (pool={pool})")
        _check("previous coefficients", ecoef, dtype=torch.float32, device=dy.device,
               shape=(4, c_dx), contiguous=True)
        epi = 2 if pool else 1
        # positions no pool window covers (odd size) get no gradient from the epilogue
        odd = pool and (eh % 2 or ew % 2)
        out = (torch.zeros if odd else torch.empty)(ey.shape, device=dy.device, dtype=dy.dtype)
        sums = torch.empty((2, c_dx), device=dy.device, dtype=torch.float32)
        pcoef = torch.empty((4, c_dx), device=dy.device, dtype=torch.float32)
    key = ("dgrad", m, h, w, c_dy, c_dx, dy.dtype, g_mode, epi, relu_first, eh, ew)

    def launch(cfg, final):
        tiles_m = triton.cdiv(m, cfg["BM"])
        tiles_n = triton.cdiv(c_dx, cfg["BN"])
        part = gpart = counters = out
        if epi:
            part, gpart, counters = _statistics_buffers(dy.device, tiles_n, tiles_m, c_dx)
        conv3x3_dgrad_kernel[(tiles_m * tiles_n,)](
            dy, gy, gcoef, wd, ey, ecoef, out, part, gpart, counters, sums, pcoef,
            m, h, w, c_dy, c_dx, eh, ew, 1.0 / (nb * eh * ew), int(training),
            G=g_mode, EPI=epi, RELU_FIRST=relu_first, K_ALIGNED=c_dy % cfg["BK"] == 0,
            DOT_PREC=_dot_precision(dy.dtype), GROUP=GROUP, BM=cfg["BM"], BN=cfg["BN"],
            BK=cfg["BK"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])

    if dy.dtype == torch.float32:
        table = DGRAD_POOL_CONFIGS_FP32 if epi == 2 else DGRAD_CONFIGS_FP32
    else:
        table = DGRAD_POOL_CONFIGS if epi == 2 else DGRAD_CONFIGS
    _tuned(key, _candidates(table, dy, c_dx), launch)
    return (out, sums, pcoef) if epi else out


def _num_sms(device):
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def conv3x3_wgrad(x, dy, *, scale=None, shift=None, pro=PRO_NONE, pool=False, bias_grad=True,
                  bn=None, relu_first=False):
    """Weight (and bias) gradient of ``conv3x3`` with the same input / prologue arguments;
    ``dy``, ``bn``, ``relu_first``: the conv-output gradient as in ``conv3x3_dgrad``.

    Returns (dw packed [9*C_in, C_out] fp32 — see ``unpack_weight_grad`` — , db [C_out] fp32
    or None). The sum over N*H*W is split so that the grid fills the GPU; fp32 partials."""
    g_mode, gy, gcoef = _grad_operand(dy, bn, relu_first)
    _check("dy", dy, dtype=x.dtype, device=x.device)
    nb, h, w, c_in = _check_input(x, pro, scale, shift, pool)
    c_out = dy.shape[3]
    if tuple(dy.shape[:3]) != (nb, h, w):
        raise ValueError(f"dy has shape {tuple(dy.shape)}, expected [{nb}, {h}, {w}, C_out] "
                         f"for input {tuple(x.shape)} (pool={pool})")
    m = nb * h * w
    k_total = 9 * c_in
    key = ("wgrad", m, h, w, c_in, c_out, x.dtype, x.stride(), pro, pool, bias_grad, g_mode)
    target = 2 if _INTERPRET else 2 * _num_sms(x.device)

    def launch(cfg, final):
        tiles = triton.cdiv(k_total, cfg["BK"]) * triton.cdiv(c_out, cfg["BN"])
        chunks = triton.cdiv(m, cfg["BM"])
        splits = max(1, min(chunks, triton.cdiv(target, tiles)))
        per_split = triton.cdiv(chunks, splits) * cfg["BM"]
        splits = triton.cdiv(m, per_split)
        dw_p = torch.empty((splits, k_total, c_out), device=x.device, dtype=torch.float32)
        db_p = torch.empty((splits, c_out), device=x.device, dtype=torch.float32)
        grid = (triton.cdiv(k_total, cfg["BK"]), triton.cdiv(c_out, cfg["BN"]), splits)
        conv3x3_wgrad_kernel[grid](
            x, dy, gy, gcoef, scale if pro else db_p, shift if pro else db_p, dw_p, db_p,
            m, h, w, c_in, c_out, *x.stride(), per_split,
            PRO=pro, POOL=pool, G=g_mode, HAS_DB=bias_grad, K_ALIGNED=c_in % cfg["BK"] == 0,
            DOT_PREC=_dot_precision(x.dtype), BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        return dw_p, db_p

    table = WGRAD_CONFIGS_FP32 if x.dtype == torch.float32 else WGRAD_CONFIGS
    dw_p, db_p = _tuned(key, _candidates(table, x, c_out), launch)
    return dw_p.sum(0), (db_p.sum(0) if bias_grad else None)


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (tests/aot.py): every config, with the heaviest fusion variant.

#: integer arguments that are multiples of 16 whenever a K-aligned config is launched
#: (``_aligned``: C_in % BK == 0, C_out % 16 == 0, contiguous NHWC, so every stride too)
_ALIGNED_ARGS = ("C_in", "C_out", "sxn", "sxh", "sxw", "C_dy", "C_dx")


def _aot_spec(name, fn, constexprs, cfg, dtype="fp16"):
    """fp32 specs get the launcher's exact dot (no HGMMA); each spec is checked on the targets
    its config is offered on."""
    pointers = {"x_ptr", "w_ptr", "b_ptr", "y_ptr", "dy_ptr", "dz_ptr", "gy_ptr", "ey_ptr",
                "out_ptr"}
    fp32_pointers = {"scale_ptr", "shift_ptr", "part_ptr", "dw_ptr", "db_ptr", "gcoef_ptr",
                     "ecoef_ptr", "gamma_ptr", "beta_ptr", "rmean_ptr", "rvar_ptr", "coef_ptr",
                     "gpart_ptr", "sums_ptr", "pcoef_ptr"}
    fp32_scalars = {"eps", "momentum", "inv_count"}
    constexprs = dict(constexprs, BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"])
    if "GROUP" in fn.arg_names:
        constexprs["GROUP"] = GPU_GROUP
    if "sxc" in fn.arg_names:  # as the JIT specialises a contiguous NHWC input
        constexprs["sxc"] = 1
    if dtype == "fp32":
        constexprs["DOT_PREC"] = "ieee"
    signature = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in pointers:
            signature[arg] = f"*{dtype}"
        elif arg in fp32_pointers:
            signature[arg] = "*fp32"
        elif arg == "count_ptr":
            signature[arg] = "*i32"
        elif arg in fp32_scalars:
            signature[arg] = "fp32"
        else:
            signature[arg] = "i32"
    aligned = constexprs["K_ALIGNED"]
    return {"name": name, "fn": fn, "signature": signature, "constexprs": constexprs,
            "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
            "hgmma": dtype != "fp32", "divisible": _ALIGNED_ARGS if aligned else (),
            "targets": cfg["targets"]}


def _cfg_name(cfg):
    return f"BM{cfg['BM']}_BN{cfg['BN']}_BK{cfg['BK']}_w{cfg['num_warps']}_s{cfg['num_stages']}"


_FWD_FUSED = dict(PRO=PRO_AFFINE_RELU, POOL=True, HAS_BIAS=True, RELU_OUT=False, BN_MODE=1,
                  K_ALIGNED=True, DOT_PREC="tf32")
#: forward variants: released order (BN, ReLU in the prologue) and paper (ReLU in the epilogue)
_FWD = {"fused_": dict(_FWD_FUSED, POOL=False),
        "paper_": dict(_FWD_FUSED, PRO=PRO_AFFINE, POOL=False, RELU_OUT=True)}
_FWD_POOL = {"fused_pool_": _FWD_FUSED,
             "paper_pool_": dict(_FWD_FUSED, PRO=PRO_AFFINE, RELU_OUT=True)}
#: data gradient across a boundary, per order: (G, RELU_FIRST) = released (BN; ReLU mask in the
#: epilogue) and paper (ReLU mask in the prologue)
_DGRAD = {"": dict(G=G_BN, EPI=1, RELU_FIRST=False, K_ALIGNED=True, DOT_PREC="tf32"),
          "paper_": dict(G=G_BN_RELU_FIRST, EPI=1, RELU_FIRST=True, K_ALIGNED=True,
                         DOT_PREC="tf32")}
_DGRAD_POOL = {k + "pool_": dict(v, EPI=2) for k, v in _DGRAD.items()}
_WGRAD_FUSED = dict(PRO=PRO_AFFINE_RELU, POOL=True, G=G_BN_RELU_FIRST, HAS_DB=True,
                    K_ALIGNED=True, DOT_PREC="tf32")
#: the generic (K decoded per element) path as the first layer and odd channel counts use it
_SMALL = {"fwd": (conv3x3_kernel, dict(_FWD_FUSED, K_ALIGNED=False)),
          "dgrad": (conv3x3_dgrad_kernel, dict(_DGRAD_POOL["paper_pool_"], K_ALIGNED=False)),
          "wgrad": (conv3x3_wgrad_kernel, dict(_WGRAD_FUSED, K_ALIGNED=False))}


def _specs(kind, fn, variants, table, dtype="fp16"):
    return [_aot_spec(f"{kind}_{v}{dtype}_{_cfg_name(c)}", fn, constexprs, c, dtype)
            for v, constexprs in variants.items() for c in table]


AOT_SPECS = (
    _specs("fwd", conv3x3_kernel, _FWD, FWD_CONFIGS)
    + _specs("fwd", conv3x3_kernel, _FWD_POOL, FWD_POOL_CONFIGS)
    + _specs("dgrad", conv3x3_dgrad_kernel, _DGRAD, DGRAD_CONFIGS)
    + _specs("dgrad", conv3x3_dgrad_kernel, _DGRAD_POOL, DGRAD_POOL_CONFIGS)
    # bf16 compiles to the same code with other HGMMA operand types
    + _specs("dgrad", conv3x3_dgrad_kernel, {"": _DGRAD[""]}, DGRAD_CONFIGS[:1], "bf16")
    + _specs("wgrad", conv3x3_wgrad_kernel, {"pool_": _WGRAD_FUSED,
                                             "": dict(_WGRAD_FUSED, POOL=False)}, WGRAD_CONFIGS)
    + _specs("fwd", conv3x3_kernel, _FWD, FWD_CONFIGS_FP32, "fp32")
    + _specs("fwd", conv3x3_kernel, _FWD_POOL, FWD_POOL_CONFIGS_FP32, "fp32")
    + _specs("dgrad", conv3x3_dgrad_kernel, _DGRAD, DGRAD_CONFIGS_FP32, "fp32")
    + _specs("dgrad", conv3x3_dgrad_kernel, _DGRAD_POOL, DGRAD_POOL_CONFIGS_FP32, "fp32")
    + _specs("wgrad", conv3x3_wgrad_kernel, {"pool_": _WGRAD_FUSED}, WGRAD_CONFIGS_FP32, "fp32")
    + [dict(spec, hgmma=spec["hgmma"] and kind != "wgrad")  # first layer: K = 9 rows < 64
       for kind, (fn, constexprs) in _SMALL.items()
       for table, dtype in ((SMALL_K_CONFIGS, "fp16"), (SMALL_K_CONFIGS_FP32, "fp32"))
       for spec in _specs(f"{kind}_small_k", fn, {"": constexprs}, table, dtype)]
)
