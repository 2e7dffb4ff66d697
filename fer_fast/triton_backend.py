"""The ``"triton"`` backend of op ``"features"``: the VGG's whole conv stack (crops -> stage-4
output) as one autograd Function over the implicit-GEMM kernels of :mod:`fer_fast.kernels.conv`.

Forward: ONE conv kernel per block. Each kernel reads the previous block's stored conv output
and applies that block's BatchNorm affine, ReLU and (at a stage end) the 2x2 max-pool while
loading; its epilogue adds the bias (paper order: and the ReLU), stores the conv output in the
compute dtype and reduces the per-channel statistics for its own BatchNorm. Normalised
activations are never written; the last block's normalise + pool is a small torch op.
Running statistics are updated like ``nn.BatchNorm2d`` (momentum, unbiased running variance);
eval mode normalises with the running statistics.

Backward, per block in reverse: the BatchNorm / ReLU / pool backward of the element-wise part is
recomputed with torch autograd from the stored conv output (not yet fused into the kernels);
the weight gradient kernel recomputes the normalised input on the fly from the previous stored
conv output and saved scale/shift; the data gradient is the implicit GEMM with flipped weights.

Compute dtype: the autocast dtype when autocast is on for the device, else the input's dtype.
Runs on CUDA, and on CPU tensors when Triton runs under ``TRITON_INTERPRET=1`` (the CPU tests).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from . import backends
from .kernels import conv as K

__all__ = ["features_triton", "supports"]


def supports(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"


def _elementwise(y, gamma, beta, mean, var, *, eps, order, pool, training):
    """What the next conv sees of the stored NHWC conv output y: pool?(act(BN(y))), NHWC fp32.
    In training the batch statistics are recomputed from y so that autograd differentiates
    through them (the values equal the kernel's ``mean``/``var`` up to summation order)."""
    yf = y.float()
    if training:
        var, mean = torch.var_mean(yf, dim=(0, 1, 2), correction=0)
    z = (yf - mean) * torch.rsqrt(var + eps) * gamma + beta
    if order == "bn_relu":
        z = F.relu(z)
    if pool:
        z = F.max_pool2d(z.permute(0, 3, 1, 2), 2, 2).permute(0, 2, 3, 1)
    return z


class _Stack:
    """Non-tensor arguments of the Function (modules for the running statistics, flags)."""

    def __init__(self, bns, pools, order, training, dtype):
        self.bns, self.pools, self.order, self.training, self.dtype = bns, pools, order, training, dtype


class FeaturesFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, stack, *params):
        dtype, order, training = stack.dtype, stack.order, stack.training
        h = x.permute(0, 2, 3, 1).to(dtype).contiguous()
        pro, scale, shift, pool_in = K.PRO_NONE, None, None, False
        saved, coefs = [], []
        for i, bn in enumerate(stack.bns):
            weight, bias, gamma, beta = params[4 * i: 4 * i + 4]
            out = K.conv3x3(h, K.pack_weight(weight, dtype), bias.to(dtype), scale=scale,
                            shift=shift, pro=pro, pool=pool_in, relu=order == "relu_bn",
                            stats=training)
            y = out[0] if training else out
            if training:
                mean, var = out[1]
                if bn.track_running_stats:
                    count = y.numel() // y.shape[3]
                    momentum = 0.1 if bn.momentum is None else bn.momentum
                    bn.running_mean.mul_(1 - momentum).add_(momentum * mean)
                    bn.running_var.mul_(1 - momentum).add_(momentum * var * count / (count - 1))
                    bn.num_batches_tracked.add_(1)
            else:
                mean, var = bn.running_mean.float(), bn.running_var.float()
            saved += [h, y]
            coefs.append((scale, shift, pro, pool_in, mean, var, bn.eps))
            rstd = torch.rsqrt(var + bn.eps)
            scale = (gamma.float() * rstd).contiguous()
            shift = (beta.float() - mean * scale).contiguous()
            pro = K.PRO_AFFINE_RELU if order == "bn_relu" else K.PRO_AFFINE
            pool_in = stack.pools[i]
            h = y
        z = _elementwise(h, params[-2].float(), params[-1].float(), coefs[-1][4], coefs[-1][5],
                         eps=coefs[-1][6], order=order, pool=pool_in, training=False)
        ctx.stack, ctx.coefs = stack, coefs
        ctx.save_for_backward(*saved, *params)
        return z.to(dtype).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad_out):
        stack, coefs = ctx.stack, ctx.coefs
        nblocks = len(stack.bns)
        tensors = ctx.saved_tensors
        acts, params = tensors[:2 * nblocks], tensors[2 * nblocks:]
        dtype, order = stack.dtype, stack.order
        grads = [None] * len(params)
        g = grad_out.permute(0, 2, 3, 1).float()
        for i in reversed(range(nblocks)):
            h, y = acts[2 * i], acts[2 * i + 1]
            weight, gamma, beta = params[4 * i], params[4 * i + 2], params[4 * i + 3]
            _, _, _, _, mean, var, eps = coefs[i]
            with torch.enable_grad():
                yv = y.detach().float().requires_grad_()
                gv = gamma.detach().float().requires_grad_()
                bv = beta.detach().float().requires_grad_()
                z = _elementwise(yv, gv, bv, mean, var, eps=eps, order=order,
                                 pool=stack.pools[i], training=stack.training)
                dy, dgamma, dbeta = torch.autograd.grad(z, (yv, gv, bv), g)
            if order == "relu_bn":  # the epilogue's ReLU
                dy = torch.where(y > 0, dy, 0.0)
            dy = dy.to(dtype).contiguous()
            scale, shift, pro, pool_in, _, _, _ = coefs[i]
            dw, db = K.conv3x3_wgrad(h, dy, scale=scale, shift=shift, pro=pro, pool=pool_in)
            grads[4 * i: 4 * i + 4] = [K.unpack_weight_grad(dw, h.shape[3]).to(weight.dtype),
                                       db.to(weight.dtype), dgamma.to(gamma.dtype),
                                       dbeta.to(beta.dtype)]
            if i > 0 or ctx.needs_input_grad[0]:
                g = K.conv3x3_dgrad(dy, K.pack_weight_dgrad(weight, dtype)).float()
        dx = g.permute(0, 3, 1, 2).to(grad_out.dtype) if ctx.needs_input_grad[0] else None
        return (dx, None, *grads)


def features_triton(x, convs, bns, pools, *, order):
    """The conv stack of the VGG: ``convs``/``bns`` (nn.Conv2d 3x3 pad 1 / nn.BatchNorm2d per
    block), max-pool after block i when ``pools[i]``; returns the last block's output (NCHW)."""
    if x.dim() != 4:
        raise ValueError(f"features input must be [N, C, H, W], got shape {tuple(x.shape)}")
    for conv in convs:
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) \
                or conv.bias is None:
            raise ValueError(f"triton features backend needs 3x3/pad 1/stride 1 convs with bias, "
                             f"got {conv}")
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    else:
        dtype = x.dtype
    training = bns[0].training or not bns[0].track_running_stats
    stack = _Stack(list(bns), list(pools), order, training, dtype)
    params = []
    for conv, bn in zip(convs, bns):
        params += [conv.weight, conv.bias, bn.weight, bn.bias]
    with torch.autocast(x.device.type, enabled=False):
        return FeaturesFunction.apply(x, stack, *params)


# Not chosen by "auto" until a GPU run has measured it against the "fused" blocks; ask for it by name.
backends.register("features", "triton", features_triton, supports=supports, priority=20,
                  auto=lambda device: False)
