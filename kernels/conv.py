"""Conv3x3 (stride 1, padding 1) as an implicit GEMM over NHWC activations, with the VGG block's
BatchNorm / ReLU / max-pool fused into its loads and stores.

GEMM view (forward): M = N*H*W output pixels, N = C_out, K = 9*C_in with k = (kh*3 + kw)*C_in + ci.
The weight is packed K-major as ``[9*C_in, C_out]`` (``pack_weight``), so the B tile of ``tl.dot``
is a row-major [BK, BN] block (contiguous along C_out) and the A tile a [BM, BK] block gathered
from NHWC rows (contiguous along C: 16-byte loads).

* ``conv3x3_kernel`` — forward.
  Prologue on the A loads (``PRO_BN``): the previous block's BatchNorm as a per-input-channel
  affine (scale, shift) and its ReLU (see Block order), and (``POOL``) the 2x2 max-pool of the
  stored previous-stage output, taken AFTER the affine/ReLU so that a negative scale stays
  correct. Taps outside the image contribute 0 in the normalised space (zero padding of what
  the conv sees, not of the stored tensor).
  Epilogue: bias, the block's ReLU when it comes first, store in the activation dtype, and the
  coefficients of the BatchNorm that follows (``BN_MODE``): in training per-tile, per-channel mean
  and M2 = sum((y - tile mean)^2) of the STORED (rounded) values, merged with Chan's formula in
  tile order inside the kernel (``reduce_tree``: the last program to finish a group of GROUP tiles
  merges the group, the last group merges the groups, found with arrival counters; no separate
  finalize launch, and a critical path of a few merge steps instead of one program looping over
  thousands of partials); that last program also updates the running statistics — stable,
  deterministic (the merge order does not depend on which program is last), and not repeated by
  tuning runs (``update_running`` is 0 for them); in eval from the running statistics.
* ``conv3x3_wgrad_kernel`` — weight (and bias) gradient: dW^T[k, co] = sum_m A[m, k] dy[m, co],
  split over M into fp32 partials that are summed afterwards; A is the same prologue-applied
  gather as the forward, so the normalised input is recomputed from the stored conv output and
  the saved statistics instead of being kept.
* ``conv3x3_dgrad_kernel`` — data gradient across a block boundary with both BatchNorm
  backwards fused: the prologue forms dy = dL/d(conv output) from the stored gradient dz of the
  block's BN output and its stored conv output (``_load_grad``; the weight gradient reads dy
  the same way), the epilogue goes back through the previous block's pool (argmax recomputed)
  and ReLU, stores that block's dz and reduces sum(dz), sum(dz * x_hat) over the grid into
  dgamma, dbeta and the coefficients of that block's BN backward (``reduce_tree``) — so no
  conv-output gradient is ever written and no separate reduction is launched.

``K_ALIGNED`` (C_in a multiple of BK) makes every K step one tap with contiguous channels; the
generic path (C_in = 1 on the first layer, channel counts that are not multiples of 16) decodes
(tap, channel) per element and masks K up to the tl.dot minimum.

Block sizes: ``conv_configs`` (tables per GPU class, tuned per shape and device). K-aligned
configs are offered only to contiguous NHWC inputs with C_in % BK == 0 and C_in, C_out multiples
of 16 (``conv_configs.aligned``), which is what their AOT specs state through divisibility
hints: the A gathers then compile to 16-byte cp.async (LDGSTS.128) and the stores to STG.128.

Indexing: pixel indices (N*H*W, of every operand) are int32 (the launchers check that they fit);
element offsets (pixel index * channels, image index * batch stride) are int64, so an operand
may have 2**31 elements or more.

Block order: a block is ``relu(bn(y))`` ("bn_relu", recipe "released") or ``bn(relu(y))``
("relu_bn", recipe "paper": ReLU first). The kernels take it as ONE flag, ``RELU_FIRST`` (like
``bn_act``'s), and place every ReLU from it; the other flags say only what is fused (``PRO_BN``: a
prologue applying the previous block's BN; ``GRAD_BN``: a gradient operand formed through the
block's BN backward). With ``RELU_FIRST`` the forward's epilogue applies the ReLU and stores
relu(y), so that the next conv's prologue applies that block's BN alone; the gradient operand gets
the ReLU mask of the stored y (0 where y <= 0), and the data gradient's epilogue applies none.
Without it the stored y is the raw conv output, the prologue applies relu(bn(y)), and the ReLU
mask, which follows the BN, is applied where the gradient of the BN output is formed: in the data
gradient's epilogue (from the previous block's recomputed output), or by ``bn_act``'s backward for
the last block. The compile variants (``AOT_SPECS``) are named after the recipes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import conv_configs as configs
from . import is_interpreter
from .bn_act import RECIPE_ORDER
from .bn_stats import (COEF_MEAN, COEF_RSTD, COEF_SCALE, COEF_SHIFT, GPU_GROUP, GROUP,
                       reduce_tree, statistics_buffers, store_coefficients, update_running_stats)

__all__ = ["GCOEF_ROWS", "MAX_PIXELS", "pack_weight", "pack_weight_dgrad", "unpack_weight_grad",
           "conv3x3", "conv3x3_dgrad", "conv3x3_wgrad", "BatchNormArgs", "AOT_SPECS"]

#: rows of the fp32 gradient coefficients [4, C] with which ``_load_grad`` forms dL/dy
GCOEF_ROWS = ("c1", "c2", "c3", "mean")
GCOEF_C1, GCOEF_C2, GCOEF_C3, GCOEF_MEAN = (tl.constexpr(v) for v in range(4))
#: the kernels index pixels (N*H*W of every operand) with int32
MAX_PIXELS = 2 ** 31 - 1


@triton.jit
def _apply_prologue(v, scale, shift, RELU_FIRST: tl.constexpr):
    """The previous block's output from its stored conv output v: relu(bn(v)), or with
    ``RELU_FIRST`` bn(v), v having been stored ReLU'd (that conv's epilogue)."""
    v = v * scale + shift
    if not RELU_FIRST:
        v = tl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL)
    return v


@triton.jit
def _load_a(x_ptr, scale_ptr, shift_ptr, n, ih, iw, c, m_ok, k_ok, H, W, sxn, sxh, sxw, sxc,
            PRO_BN: tl.constexpr, RELU_FIRST: tl.constexpr, POOL: tl.constexpr,
            OUT_DTYPE: tl.constexpr):
    """The conv's input tile at (n, ih, iw, c) (broadcastable index tensors; c and k_ok [1, BK]),
    0 where m_ok & k_ok is false or the tap is outside the image; ``PRO_BN`` applies the
    previous block's BN (``_apply_prologue``), ``POOL`` reads the 2x2 window at (2*ih, 2*iw)."""
    inside = m_ok & k_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    image = x_ptr + n.to(tl.int64) * sxn  # int64: the batch may span 2**31 elements
    if not PRO_BN and not POOL:
        v = tl.load(image + (ih * sxh + iw * sxw) + c * sxc, mask=inside, other=0.0)
        return v.to(OUT_DTYPE)
    scale = 1.0
    shift = 0.0
    if PRO_BN:
        scale = tl.load(scale_ptr + c, mask=k_ok, other=0.0)
        shift = tl.load(shift_ptr + c, mask=k_ok, other=0.0)
    if POOL:
        base = image + ((2 * ih) * sxh + (2 * iw) * sxw) + c * sxc
        v00 = tl.load(base, mask=inside, other=0.0).to(tl.float32)
        v01 = tl.load(base + sxw, mask=inside, other=0.0).to(tl.float32)
        v10 = tl.load(base + sxh, mask=inside, other=0.0).to(tl.float32)
        v11 = tl.load(base + sxh + sxw, mask=inside, other=0.0).to(tl.float32)
        if PRO_BN:
            v00 = _apply_prologue(v00, scale, shift, RELU_FIRST)
            v01 = _apply_prologue(v01, scale, shift, RELU_FIRST)
            v10 = _apply_prologue(v10, scale, shift, RELU_FIRST)
            v11 = _apply_prologue(v11, scale, shift, RELU_FIRST)
        v = tl.maximum(tl.maximum(v00, v01, propagate_nan=tl.PropagateNan.ALL),
                       tl.maximum(v10, v11, propagate_nan=tl.PropagateNan.ALL),
                       propagate_nan=tl.PropagateNan.ALL)
    else:
        v = tl.load(image + (ih * sxh + iw * sxw) + c * sxc, mask=inside, other=0.0)
        v = _apply_prologue(v.to(tl.float32), scale, shift, RELU_FIRST)
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
                   PRO_BN: tl.constexpr, RELU_FIRST: tl.constexpr, POOL: tl.constexpr,
                   HAS_BIAS: tl.constexpr, BN_MODE: tl.constexpr, K_ALIGNED: tl.constexpr,
                   DOT_PREC: tl.constexpr, GROUP: tl.constexpr, BM: tl.constexpr,
                   BN: tl.constexpr, BK: tl.constexpr):
    """y[m, co] = epilogue(sum_k prologue(x)[m, k] * w[k, co]); 1-D grid over (M tile, C_out
    tile), C_out tiles fastest (``_output_tile``). ``RELU_FIRST``: the block order (module
    docstring): the epilogue applies the ReLU, the prologue (``PRO_BN``) the previous block's BN
    alone; else the prologue applies that BN and then its ReLU.

    ``BN_MODE`` (the BatchNorm that follows): 0 none; 1 training: per-tile (mean, M2) of the
    stored values, reduced over all M tiles by ``reduce_tree``, whose last program writes the
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
                    H, W, sxn, sxh, sxw, sxc, PRO_BN, RELU_FIRST, POOL, dtype)
        kk = k0 + rk
        b = tl.load(w_ptr + kk[:, None] * C_out + rn[None, :],
                    mask=(kk < K_total)[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PREC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if RELU_FIRST:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
    out = acc.to(y_ptr.dtype.element_ty)
    mask = m_ok[:, None] & n_ok[None, :]
    tl.store(y_ptr + rm.to(tl.int64)[:, None] * C_out + rn[None, :], out, mask=mask)
    if BN_MODE == 1:  # per-tile (mean, M2) of the stored values
        v = tl.where(mask, out.to(tl.float32), 0.0)
        cnt = tl.minimum(M - pid_m * BM, BM).to(tl.float32)
        mean = tl.sum(v, axis=0) / cnt
        d = tl.where(mask, v - mean[None, :], 0.0)
        is_last, mean, m2 = reduce_tree(part_ptr, gpart_ptr, count_ptr, pid_n, pid_m, M, C_out,
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
def _load_grad(dz_ptr, gy_ptr, gcoef_ptr, rows, cols, mask, c, c_ok, C, GRAD_BN: tl.constexpr,
               RELU_FIRST: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """dL/dy of a conv output at element offsets ``rows + cols`` (``rows``: int64 pixel offsets
    [BM, 1], ``cols``: channels [1, B*]; 0 where not ``mask``; ``c``, ``c_ok``: the channels of
    the coefficient loads): the stored tensor itself, or with ``GRAD_BN`` formed from the stored
    gradient dz of the block's BN output and the stored conv output y with the coefficients
    ``GCOEF_ROWS`` [c1, c2, c3, mean] that ``conv3x3_dgrad_kernel`` computed for the block:
    dL/dy = c1*dz + c2*(y - mean) + c3, and with ``RELU_FIRST`` 0 where y <= 0 (the ReLU before
    the BN; after it, the mask was applied where dz was formed)."""
    v = tl.load(dz_ptr + rows + cols, mask=mask, other=0.0)
    if GRAD_BN:
        y = tl.load(gy_ptr + rows + cols, mask=mask, other=0.0).to(tl.float32)
        c1 = tl.load(gcoef_ptr + GCOEF_C1 * C + c, mask=c_ok, other=0.0)
        c2 = tl.load(gcoef_ptr + GCOEF_C2 * C + c, mask=c_ok, other=0.0)
        c3 = tl.load(gcoef_ptr + GCOEF_C3 * C + c, mask=c_ok, other=0.0)
        mean = tl.load(gcoef_ptr + GCOEF_MEAN * C + c, mask=c_ok, other=0.0)
        v = c1 * v.to(tl.float32) + c2 * (y - mean) + c3
        if RELU_FIRST:
            v = tl.where(y <= 0, 0.0, v)  # as threshold_backward: NaN passes
        v = tl.where(mask, v, 0.0)
    return v.to(OUT_DTYPE)


@triton.jit
def conv3x3_wgrad_kernel(x_ptr, dy_ptr, gy_ptr, gcoef_ptr, scale_ptr, shift_ptr, dw_ptr, db_ptr,
                         M, H, W, C_in, C_out, sxn, sxh, sxw, sxc, m_per_split,
                         PRO_BN: tl.constexpr, GRAD_BN: tl.constexpr, RELU_FIRST: tl.constexpr,
                         POOL: tl.constexpr, HAS_DB: tl.constexpr, K_ALIGNED: tl.constexpr,
                         DOT_PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                         BK: tl.constexpr):
    """dw[s, k, co] = sum over split s of M of A[m, k] * dy[m, co]; db[s, co] = sum dy (pid_k 0).

    Grid (K tiles, C_out tiles, splits); A is the forward's prologue-applied input gather
    (``PRO_BN``), dy the conv-output gradient formed by ``_load_grad`` (``GRAD_BN``: the block's
    BN / ReLU backward from the stored BN-output gradient), both in the block order
    ``RELU_FIRST``."""
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
                    H, W, sxn, sxh, sxw, sxc, PRO_BN, RELU_FIRST, POOL, dtype)
        g = _load_grad(dy_ptr, gy_ptr, gcoef_ptr, rm.to(tl.int64)[:, None] * C_out,
                       rn[None, :], m_ok[:, None] & n_ok[None, :], rn, n_ok, C_out, GRAD_BN,
                       RELU_FIRST, dtype)
        acc = tl.dot(tl.trans(a), g, acc, input_precision=DOT_PREC)
        if HAS_DB:
            dbias += tl.sum(g.to(tl.float32), axis=0)
    kk = k0 + rk
    tl.store(dw_ptr + (pid_s * K_total + kk).to(tl.int64)[:, None] * C_out + rn[None, :], acc,
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
                         GRAD_BN: tl.constexpr, EPI: tl.constexpr, RELU_FIRST: tl.constexpr,
                         K_ALIGNED: tl.constexpr, DOT_PREC: tl.constexpr, GROUP: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Data gradient through a block boundary; 1-D grid over (M tile, C_dx tile) as the
    forward's, M = N*H*W.

    GEMM: g[m, cx] = sum_k dy[m, k] * wd[k, cx] (flipped weights), the A tile formed by
    ``_load_grad`` (``GRAD_BN``: this block's BN / ReLU backward). g is the gradient of the
    conv's input. ``RELU_FIRST``: the block order, of this block and of the previous one.
    Epilogue ``EPI``: 0 stores g; 1 / 2 (2: through the 2x2 max-pool) treat the input as the
    previous block's output pool?(z), z = act(bn(y_prev)) of its stored conv output ``ey_ptr``
    [N, EH, EW, C_dx] with its forward coefficients ``ecoef_ptr`` [mean, rstd, scale, shift]:
    route g to the window's argmax (first maximum, NaN wins, of z as stored), apply the ReLU
    mask unless ``RELU_FIRST`` (the ReLU follows the BN), store dz (the gradient of the previous
    BN's output, full resolution), and reduce [sum dz, sum dz * x_hat] per channel over all tiles
    (``reduce_tree``, ``inv_count`` = 1 / (N*EH*EW)), whose last program writes them to
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
        pixel = (n[:, None] * H + ih) * W + iw
        a = _load_grad(dz_ptr, gy_ptr, gcoef_ptr, pixel.to(tl.int64) * C_dy, c, inside, c, k_ok,
                       C_dy, GRAD_BN, RELU_FIRST, dtype)
        kk = k0 + rk
        b = tl.load(w_ptr + kk[:, None] * C_dx + rn[None, :],
                    mask=(kk < K_total)[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PREC)
    mask = m_ok[:, None] & n_ok[None, :]
    g = acc.to(dtype)
    if EPI == 0:
        tl.store(out_ptr + rm.to(tl.int64)[:, None] * C_dx + rn[None, :], g, mask=mask)
    else:
        g = g.to(tl.float32)
        mean = tl.load(ecoef_ptr + COEF_MEAN * C_dx + rn, mask=n_ok, other=0.0)[None, :]
        rstd = tl.load(ecoef_ptr + COEF_RSTD * C_dx + rn, mask=n_ok, other=0.0)[None, :]
        scale = tl.load(ecoef_ptr + COEF_SCALE * C_dx + rn, mask=n_ok, other=0.0)[None, :]
        shift = tl.load(ecoef_ptr + COEF_SHIFT * C_dx + rn, mask=n_ok, other=0.0)[None, :]
        if EPI == 1:
            offs = rm.to(tl.int64)[:, None] * C_dx + rn[None, :]
            y = tl.load(ey_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            x_hat, z = _block_output(y, mean, rstd, scale, shift, RELU_FIRST)
            if not RELU_FIRST:
                g = tl.where(z <= 0, 0.0, g)
            dz = tl.where(mask, g.to(dtype).to(tl.float32), 0.0)
            tl.store(out_ptr + offs, dz.to(dtype), mask=mask)
            sum_dz = tl.sum(dz, axis=0)
            sum_dzx = tl.sum(dz * x_hat, axis=0)
        else:  # full-resolution window (2h, 2w) of the previous block's output
            pixel = (n * EH + 2 * h) * EW + 2 * w_
            base = pixel.to(tl.int64)[:, None] * C_dx + rn[None, :]
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
        is_last, sum_dz, sum_dzx = reduce_tree(part_ptr, gpart_ptr, count_ptr, pid_n, pid_m, M,
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
            tl.store(pcoef_ptr + GCOEF_C1 * C_dx + rn[None, :], scale, mask=n_ok[None, :])
            tl.store(pcoef_ptr + GCOEF_C2 * C_dx + rn[None, :], c2, mask=n_ok[None, :])
            tl.store(pcoef_ptr + GCOEF_C3 * C_dx + rn[None, :], c3, mask=n_ok[None, :])
            tl.store(pcoef_ptr + GCOEF_MEAN * C_dx + rn[None, :], mean, mask=n_ok[None, :])


# ----------------------------------------------------------------------------------------------
# Host side: weight packing, per-shape config choice, launchers.

def pack_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[C_out, C_in, 3, 3] (any float dtype) -> the forward's B matrix [9*C_in, C_out] in
    ``dtype``, contiguous, k = (kh*3 + kw)*C_in + ci."""
    c_out, c_in = weight.shape[:2]
    return weight.permute(2, 3, 1, 0).reshape(9 * c_in, c_out).to(dtype).contiguous()


def pack_weight_dgrad(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[C_out, C_in, 3, 3] -> the data gradient's B matrix [9*C_out, C_in] in ``dtype``,
    contiguous: flipped taps, channels transposed, so that dx = conv3x3(dy) with the forward's
    kernel."""
    c_out, c_in = weight.shape[:2]
    return weight.flip(2, 3).permute(2, 3, 0, 1).reshape(9 * c_out, c_in).to(dtype).contiguous()


def unpack_weight_grad(dw: torch.Tensor, c_in: int) -> torch.Tensor:
    """Inverse of ``pack_weight``'s layout: [9*C_in, C_out] -> [C_out, C_in, 3, 3], contiguous,
    in dw's dtype."""
    return dw.reshape(3, 3, c_in, dw.shape[1]).permute(3, 2, 0, 1).contiguous()


def _dot_precision(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"


def _refuse_bf16_under_interpreter(t: torch.Tensor) -> None:
    """The interpreter's ``tl.dot`` on bfloat16 operands returns garbage (values of 1e10): a
    clear error instead (every launcher here multiplies with ``tl.dot``)."""
    if t.dtype == torch.bfloat16 and is_interpreter():
        raise ValueError("conv3x3 kernels: bfloat16 is not supported under the Triton "
                         "interpreter (TRITON_INTERPRET=1): its tl.dot returns wrong values for "
                         "bfloat16; use float16 or float32 here, or run on a GPU")


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


def _check_pixels(name: str, pixels: int) -> None:
    """The kernels index pixels (N*H*W) with int32; element offsets are int64."""
    if pixels > MAX_PIXELS:
        raise ValueError(f"{name} has {pixels} pixels (N*H*W); the conv kernels index pixels "
                         f"with int32 (at most {MAX_PIXELS}): use a smaller batch")


def _check_packed_weight(wp, x):
    """``wp`` is a packed weight [9*C, C'] (``pack_weight`` / ``pack_weight_dgrad``) for the
    NHWC operand ``x`` with C channels: its dtype, device, contiguous."""
    _check("packed weight", wp, dtype=x.dtype, device=x.device, contiguous=True)
    if wp.dim() != 2 or wp.shape[0] != 9 * x.shape[3]:
        raise ValueError(f"packed weight has shape {tuple(wp.shape)}, expected "
                         f"[{9 * x.shape[3]}, C] for an input with {x.shape[3]} channels")


def _check_input(x, scale, shift, pool):
    """Validate the NHWC input and its prologue; return (N, H, W, C_in) of what the conv sees."""
    if x.dim() != 4:
        raise ValueError(f"x must be NHWC [N, H, W, C], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"x has dtype {x.dtype}; supported: float16, bfloat16, float32")
    nb, hx, wx, c_in = x.shape
    _check_pixels("x", nb * hx * wx)
    # within one image offsets are int32: (ih * sxh + iw * sxw) + c * sxc
    if sum((d - 1) * abs(st) for d, st in zip(x.shape[1:], x.stride()[1:])) > MAX_PIXELS:
        raise ValueError(f"one image of x (shape {tuple(x.shape)}, strides {x.stride()}) spans "
                         f"2**31 elements or more")
    if (scale is None) != (shift is None):
        raise ValueError("the prologue needs both scale and shift (or neither)")
    if scale is not None:
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


def conv3x3(x, wp, bias=None, *, scale=None, shift=None, relu_first=False, pool=False,
            bn: BatchNormArgs | None = None):
    """Fused 3x3 conv over NHWC ``x`` with packed weight ``wp`` [9*C_in, C_out] (``pack_weight``).

    x: [N, H_in, W_in, C_in] (NHWC), fp16 / bf16 / fp32, any strides (contiguous gets the
    vectorised configs); wp: x's dtype, contiguous; bias: [C_out]; ``relu_first``: the block order
    (True: "relu_bn"). With ``scale``, ``shift`` (contiguous fp32 [C_in], the previous block's BN
    coefficients) x is the previous block's stored conv output and the prologue applies that
    block's BN, and unless ``relu_first`` its ReLU (with ``relu_first`` that block's conv stored
    it ReLU'd). Input seen by the conv: ``pool2x2(prologue(x))`` (pool optional), zero padded.
    Returns y [N, H, W, C_out] (x's dtype, contiguous) = conv + bias, ReLU'd with ``relu_first``,
    and with ``bn`` (y, coef): the coefficients [mean, rstd, gamma*rstd, beta - mean*gamma*rstd]
    fp32 [4, C_out] (``bn_stats.COEF_ROWS``) of the BatchNorm of y, from y's batch statistics
    (training, computed from the values as stored, running statistics updated as nn.BatchNorm2d
    does) or its running statistics (eval) — in the same kernel."""
    _refuse_bf16_under_interpreter(x)
    nb, h, w, c_in = _check_input(x, scale, shift, pool)
    prologue = scale is not None
    _check_packed_weight(wp, x)
    c_out = wp.shape[1]
    if bias is not None:
        _check("bias", bias, device=x.device, shape=(c_out,), contiguous=True)
    m = nb * h * w
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
    key = ("fwd", m, h, w, c_in, c_out, x.dtype, x.stride(), prologue, relu_first, pool,
           bias is not None, mode)

    def launch(cfg, final):
        tiles_m = triton.cdiv(m, cfg["BM"])
        tiles_n = triton.cdiv(c_out, cfg["BN"])
        part = gpart = counters = y
        if mode == 1:
            part, gpart, counters = statistics_buffers(x.device, tiles_n, tiles_m, c_out)
        conv3x3_kernel[(tiles_m * tiles_n,)](
            x, wp, bias if bias is not None else y, scale if prologue else y,
            shift if prologue else y, y, part, gpart, counters, gamma, beta, rmean, rvar, coef,
            m, h, w, c_in, c_out, *x.stride(),
            bn.eps if mode else 0.0, (bn.momentum or 0.0) if mode else 0.0,
            int(final and mode == 1 and track), PRO_BN=prologue, RELU_FIRST=relu_first,
            POOL=pool, HAS_BIAS=bias is not None, BN_MODE=mode,
            K_ALIGNED=c_in % cfg["BK"] == 0, DOT_PREC=_dot_precision(x.dtype), GROUP=GROUP,
            BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"], num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"])

    if x.dtype == torch.float32:
        table = configs.FWD_POOL_CONFIGS_FP32 if pool else configs.FWD_CONFIGS_FP32
    else:
        table = configs.FWD_POOL_CONFIGS if pool else configs.FWD_CONFIGS
    configs.tuned(key, x.device, configs.candidates(table, x, c_out), launch)
    return (y, coef) if mode else y


def _grad_operand(dy, bn):
    """(GRAD_BN, y, gcoef) of ``_load_grad`` for a conv-output gradient given as ``dy`` itself
    (``bn`` None) or as the BN-output gradient ``dy`` with ``bn`` = (y, gcoef)."""
    if dy.dim() != 4:
        raise ValueError(f"dy must be NHWC [N, H, W, C], got shape {tuple(dy.shape)}")
    if dy.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dy has dtype {dy.dtype}; supported: float16, bfloat16, float32")
    _check("dy", dy, contiguous=True)
    _check_pixels("dy", dy.shape[0] * dy.shape[1] * dy.shape[2])
    if bn is None:
        return False, dy, dy
    y, gcoef = bn
    _check("the block's conv output y", y, dtype=dy.dtype, device=dy.device, shape=dy.shape,
           contiguous=True)
    _check("gradient coefficients", gcoef, dtype=torch.float32, device=dy.device,
           shape=(4, dy.shape[3]), contiguous=True)
    return True, y, gcoef


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
    _refuse_bf16_under_interpreter(dy)
    grad_bn, gy, gcoef = _grad_operand(dy, bn)
    nb, h, w, c_dy = dy.shape
    _check_packed_weight(wd, dy)
    c_dx = wd.shape[1]
    m = nb * h * w
    if prev is None:
        epi, eh, ew = 0, h, w
        out = torch.empty((nb, h, w, c_dx), device=dy.device, dtype=dy.dtype)
        ey = ecoef = sums = pcoef = out
    else:
        ey, ecoef = prev
        _check("previous conv output", ey, dtype=dy.dtype, device=dy.device, contiguous=True)
        eh, ew = ey.shape[1:3] if ey.dim() == 4 else (0, 0)
        expected = (nb, 2 * h + eh % 2, 2 * w + ew % 2, c_dx) if pool else (nb, h, w, c_dx)
        if tuple(ey.shape) != expected:
            raise ValueError(f"previous conv output has shape {tuple(ey.shape)}, expected "
                             f"{expected} for dy {tuple(dy.shape)} (pool={pool})")
        _check_pixels("previous conv output", nb * eh * ew)
        _check("previous coefficients", ecoef, dtype=torch.float32, device=dy.device,
               shape=(4, c_dx), contiguous=True)
        epi = 2 if pool else 1
        # positions no pool window covers (odd size) get no gradient from the epilogue
        odd = pool and (eh % 2 or ew % 2)
        out = (torch.zeros if odd else torch.empty)(ey.shape, device=dy.device, dtype=dy.dtype)
        sums = torch.empty((2, c_dx), device=dy.device, dtype=torch.float32)
        pcoef = torch.empty((4, c_dx), device=dy.device, dtype=torch.float32)
    key = ("dgrad", m, h, w, c_dy, c_dx, dy.dtype, grad_bn, epi, relu_first, eh, ew)

    def launch(cfg, final):
        tiles_m = triton.cdiv(m, cfg["BM"])
        tiles_n = triton.cdiv(c_dx, cfg["BN"])
        part = gpart = counters = out
        if epi:
            part, gpart, counters = statistics_buffers(dy.device, tiles_n, tiles_m, c_dx)
        conv3x3_dgrad_kernel[(tiles_m * tiles_n,)](
            dy, gy, gcoef, wd, ey, ecoef, out, part, gpart, counters, sums, pcoef,
            m, h, w, c_dy, c_dx, eh, ew, 1.0 / (nb * eh * ew), int(training),
            GRAD_BN=grad_bn, EPI=epi, RELU_FIRST=relu_first, K_ALIGNED=c_dy % cfg["BK"] == 0,
            DOT_PREC=_dot_precision(dy.dtype), GROUP=GROUP, BM=cfg["BM"], BN=cfg["BN"],
            BK=cfg["BK"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])

    if dy.dtype == torch.float32:
        table = configs.DGRAD_POOL_CONFIGS_FP32 if epi == 2 else configs.DGRAD_CONFIGS_FP32
    else:
        table = configs.DGRAD_POOL_CONFIGS if epi == 2 else configs.DGRAD_CONFIGS
    configs.tuned(key, dy.device, configs.candidates(table, dy, c_dx), launch)
    return (out, sums, pcoef) if epi else out


def _num_sms(device):
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def conv3x3_wgrad(x, dy, *, scale=None, shift=None, relu_first=False, pool=False,
                  bias_grad=True, bn=None):
    """Weight (and bias) gradient of ``conv3x3`` with the same input / prologue arguments
    (``relu_first`` the block order, as there); ``dy`` [N, H, W, C_out] contiguous NHWC in x's
    dtype and ``bn``: the conv-output gradient as in ``conv3x3_dgrad``.

    Returns (dw packed [9*C_in, C_out] fp32 — see ``unpack_weight_grad`` — , db [C_out] fp32
    or None). The sum over N*H*W is split so that the grid fills the GPU; fp32 partials."""
    _refuse_bf16_under_interpreter(x)
    grad_bn, gy, gcoef = _grad_operand(dy, bn)
    _check("dy", dy, dtype=x.dtype, device=x.device)
    nb, h, w, c_in = _check_input(x, scale, shift, pool)
    prologue = scale is not None
    c_out = dy.shape[3]
    if tuple(dy.shape[:3]) != (nb, h, w):
        raise ValueError(f"dy has shape {tuple(dy.shape)}, expected [{nb}, {h}, {w}, C_out] "
                         f"for input {tuple(x.shape)} (pool={pool})")
    m = nb * h * w
    k_total = 9 * c_in
    key = ("wgrad", m, h, w, c_in, c_out, x.dtype, x.stride(), prologue, grad_bn, relu_first,
           pool, bias_grad)
    target = 2 if is_interpreter() else 2 * _num_sms(x.device)

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
            x, dy, gy, gcoef, scale if prologue else db_p, shift if prologue else db_p, dw_p,
            db_p, m, h, w, c_in, c_out, *x.stride(), per_split,
            PRO_BN=prologue, GRAD_BN=grad_bn, RELU_FIRST=relu_first, POOL=pool, HAS_DB=bias_grad,
            K_ALIGNED=c_in % cfg["BK"] == 0, DOT_PREC=_dot_precision(x.dtype), BM=cfg["BM"],
            BN=cfg["BN"], BK=cfg["BK"], num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"])
        return dw_p, db_p

    table = configs.WGRAD_CONFIGS_FP32 if x.dtype == torch.float32 else configs.WGRAD_CONFIGS
    dw_p, db_p = configs.tuned(key, x.device, configs.candidates(table, x, c_out), launch)
    return dw_p.sum(0), (db_p.sum(0) if bias_grad else None)


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (tests/aot.py): every config, in each recipe's block order.

#: the compile variants are named after the recipes: recipe -> RELU_FIRST
_RECIPES = {recipe: order == "relu_bn" for recipe, order in RECIPE_ORDER.items()}


def _per_recipe(suffix="", **constexprs):
    """``constexprs`` in each recipe's block order, named "<recipe><suffix>"."""
    return {recipe + suffix: dict(constexprs, RELU_FIRST=relu_first)
            for recipe, relu_first in _RECIPES.items()}


#: the block-boundary fusions the stack launches: the previous block's BN (+ ReLU, + pool) in
#: the forward's and weight gradient's prologue, the batch statistics in the forward's epilogue,
#: this block's BN backward forming the gradient operand, the previous block's in the epilogue
_FWD_FLAGS = dict(PRO_BN=True, HAS_BIAS=True, BN_MODE=1, K_ALIGNED=True, DOT_PREC="tf32")
_FWD = _per_recipe(**_FWD_FLAGS, POOL=False)
_FWD_POOL = _per_recipe("_pool", **_FWD_FLAGS, POOL=True)
_DGRAD_FLAGS = dict(GRAD_BN=True, K_ALIGNED=True, DOT_PREC="tf32")
_DGRAD = _per_recipe(**_DGRAD_FLAGS, EPI=1)
_DGRAD_POOL = _per_recipe("_pool", **_DGRAD_FLAGS, EPI=2)
_WGRAD_FLAGS = dict(PRO_BN=True, GRAD_BN=True, HAS_DB=True, K_ALIGNED=True, DOT_PREC="tf32")
_WGRAD = _per_recipe(**_WGRAD_FLAGS, POOL=False)
_WGRAD_POOL = _per_recipe("_pool", **_WGRAD_FLAGS, POOL=True)
#: the generic (K decoded per element) path as the first layer and odd channel counts use it,
#: in the heaviest variants: the released forward (BN and ReLU on each pooled tap), the paper
#: data gradient (ReLU mask on the formed operand, as well as the pool's argmax), and the
#: weight gradient, which has both a prologue and a formed operand, in both orders
_SMALL = {"fwd": (conv3x3_kernel, {"released_pool": _FWD_POOL["released_pool"]}),
          "dgrad": (conv3x3_dgrad_kernel, {"paper_pool": _DGRAD_POOL["paper_pool"]}),
          "wgrad": (conv3x3_wgrad_kernel, _WGRAD_POOL)}


def _specs(kind, fn, variants, table, dtype="fp16", **overrides):
    return [configs.aot_spec(f"{kind}_{v}_{dtype}_{configs.cfg_name(c)}", fn,
                             dict(constexprs, **overrides), c, GPU_GROUP, dtype)
            for v, constexprs in variants.items() for c in table
            if c["targets"]]  # a config this Triton release offers on no target is not compiled


_C = configs
AOT_SPECS = (
    _specs("fwd", conv3x3_kernel, _FWD, _C.FWD_CONFIGS)
    + _specs("fwd", conv3x3_kernel, _FWD_POOL, _C.FWD_POOL_CONFIGS)
    + _specs("dgrad", conv3x3_dgrad_kernel, _DGRAD, _C.DGRAD_CONFIGS)
    + _specs("dgrad", conv3x3_dgrad_kernel, _DGRAD_POOL, _C.DGRAD_POOL_CONFIGS)
    # bf16 compiles to the same code with other HGMMA operand types
    + _specs("dgrad", conv3x3_dgrad_kernel, {"released": _DGRAD["released"]},
             _C.DGRAD_CONFIGS[:1], "bf16")
    + _specs("wgrad", conv3x3_wgrad_kernel, _WGRAD_POOL | _WGRAD, _C.WGRAD_CONFIGS)
    + _specs("fwd", conv3x3_kernel, _FWD, _C.FWD_CONFIGS_FP32, "fp32")
    + _specs("fwd", conv3x3_kernel, _FWD_POOL, _C.FWD_POOL_CONFIGS_FP32, "fp32")
    + _specs("dgrad", conv3x3_dgrad_kernel, _DGRAD, _C.DGRAD_CONFIGS_FP32, "fp32")
    + _specs("dgrad", conv3x3_dgrad_kernel, _DGRAD_POOL, _C.DGRAD_POOL_CONFIGS_FP32, "fp32")
    + _specs("wgrad", conv3x3_wgrad_kernel, _WGRAD_POOL, _C.WGRAD_CONFIGS_FP32, "fp32")
    + [dict(spec, hgmma=spec["hgmma"] and kind != "wgrad")  # first layer: K = 9 rows < 64
       for kind, (fn, variants) in _SMALL.items()
       for table, dtype in ((_C.SMALL_K_CONFIGS, "fp16"), (_C.SMALL_K_CONFIGS_FP32, "fp32"))
       for spec in _specs(f"{kind}_small_k", fn, variants, table, dtype, K_ALIGNED=False)]
)
