"""One block: conv3x3 (padding 1) + BatchNorm + ReLU in either order (+ 2x2 max-pool).

``conv_bn_act_ref`` is the eager reference every fast backend matches (backend ``"eager"``);
``conv_bn_act`` runs one block with the parameters of an ``nn.Conv2d`` and an ``nn.BatchNorm2d``
through the backend chosen in ``fer_fast.backends`` (op ``"block"``); ``ConvBNReLU2d`` is the
same block as a module (children ``conv`` and ``bn``: its state_dict is that of an
``nn.Conv2d`` plus an ``nn.BatchNorm2d``). The block orders (``ORDERS``, ``RECIPE_ORDER``) are
those of the kernel library, defined there once.

The ``"fused"`` backend: library convolution + fused BatchNorm/ReLU/max-pool kernels. The
convolution stays ``F.conv2d`` (cuDNN on a GPU; autograd gives dx, dW, db). Around it, the
Triton kernels of :mod:`fer_fast.kernels.bn_act` compute the batch statistics, apply BN and ReLU
in the recipe's order and the 2x2 max-pool in one pass that writes only the block output, and in
the backward recompute x_hat, the ReLU mask and the pool argmax from the saved conv output.

Devices: on CUDA the Triton kernels run. On a CPU device the same math runs through eager
PyTorch ops (``_forward_eager`` / ``_backward_eager``), unless Triton was imported with
``TRITON_INTERPRET=1``, in which case the Triton kernels run on the CPU tensors (how the CPU
tests check them).

The two halves are ``torch.library`` custom ops, ``fer_fast::bn_act_fwd`` (mutates the running
statistics) and ``fer_fast::bn_act_bwd``, tied together by :class:`BNActFunction`, so that
``torch.compile(..., fullgraph=True)`` traces a model using the block without graph breaks.

Usage: ``fer_fast.ConvBNReLU2d(cin, cout, order="bn_relu", pool=True, backend="fused")`` or
``fer_fast.VGG(backend="fused")``; the state_dict is that of the eager block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import backends, devices, distributed
from .augmentation import _C
from .kernels import bn_act

__all__ = ["ORDERS", "RECIPE_ORDER", "check_order", "is_relu_first", "conv_bn_act_ref",
           "conv_bn_act", "ConvBNReLU2d", "conv_bn_act_fused", "conv_bn_act_native",
           "native_supports", "BNActFunction"]

#: The block orders, defined once, in the kernel library whose launchers take them:
#: "bn_relu": conv -> BatchNorm -> ReLU (released code); "relu_bn": conv -> ReLU -> BatchNorm (paper).
ORDERS = bn_act.ORDERS
#: recipe -> block order (the kernels' compile variants are named after the recipes)
RECIPE_ORDER = bn_act.RECIPE_ORDER

_CL = torch.channels_last


def check_order(order: str) -> None:
    """Raise a clear error for a block order that is not one of ``ORDERS``."""
    if order not in ORDERS:
        raise ValueError(f"unknown block order {order!r}; choose one of {ORDERS}")


def check_pool(pool) -> None:
    """``pool`` is True or False (a string such as 'no' would be truthy)."""
    if not isinstance(pool, bool):
        raise TypeError(f"pool must be True or False, got {pool!r}")


def check_input(x, in_channels: int) -> None:
    """``x`` is a 4-D tensor [N, in_channels, H, W] (as nn.BatchNorm2d requires: a 3-D input
    would be normalised over the wrong axis)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a tensor [N, {in_channels}, H, W], got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f"expected a 4-D input [N, {in_channels}, H, W], got "
                         f"{x.dim()}-D input {list(x.shape)}")


def is_relu_first(order: str) -> bool:
    """The kernels' flag for ``order`` (the conv launchers' ``relu_first``, ``RELU_FIRST`` in the
    kernels): whether the ReLU comes before the BatchNorm."""
    check_order(order)
    return order == "relu_bn"


# ----------------------------------------------------------------------------------------------
# The eager reference (backend "eager")
# ----------------------------------------------------------------------------------------------
def conv_bn_act_ref(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, *,
                    training: bool, momentum: float, eps: float, order: str, pool: bool):
    """Eager reference block; updates running_mean/var in place when training (like BatchNorm2d).

    x: [N, C_in, H, W], fp32 (or fp16/bf16 under autocast), any memory layout; weight
    [C_out, C_in, 3, 3], bias / bn_weight / bn_bias [C_out]; running_mean / running_var fp32
    [C_out] or None (batch statistics only). Returns [N, C_out, H, W] ([N, C_out, H//2, W//2] with
    ``pool``), in the layout F.conv2d gives (channels_last for channels_last inputs).
    ``order``: "bn_relu" or "relu_bn"."""
    y = F.conv2d(x, weight, bias, padding=1)
    group = distributed.bn_sync_group() if training else None
    norm = F.batch_norm if group is None else _sync_batch_norm_ref
    if order == "bn_relu":
        y = F.relu(norm(y, running_mean, running_var, bn_weight, bn_bias, training, momentum,
                        eps))
    else:
        y = norm(F.relu(y), running_mean, running_var, bn_weight, bn_bias, training, momentum,
                 eps)
    return F.max_pool2d(y, 2, 2) if pool else y


def _sync_batch_norm_ref(x, running_mean, running_var, weight, bias, training, momentum, eps):
    """``F.batch_norm`` in training mode with the statistics of the global batch (the active
    ``distributed.bn_sync`` group), in fp32 (fp64 for fp64 inputs): two differentiable
    all-reduces (the sum with the count, then the centred sum of squares), so that autograd's
    backward all-reduces their gradients as ``torch.nn.SyncBatchNorm``'s backward does. Updates
    the running statistics like nn.BatchNorm2d (unbiased variance of the global count)."""
    group = distributed.bn_sync_group()
    all_reduce = distributed.all_reduce_with_grad
    xf, c = x.to(torch.promote_types(x.dtype, torch.float32)), x.shape[1]
    count = torch.tensor([float(x.numel() // c)], device=x.device, dtype=xf.dtype)
    packed = all_reduce(torch.cat([xf.sum((0, 2, 3)), count]), group)
    total = packed[c]
    mean = packed[:c] / total
    centred = xf - mean.view(1, -1, 1, 1)
    var = all_reduce(centred.square().sum((0, 2, 3)), group) / total
    if running_mean is not None:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mean)
            running_var.mul_(1 - momentum).add_(momentum * var * (total / (total - 1)))
    out = centred * torch.rsqrt(var + eps).view(1, -1, 1, 1)
    if weight is not None:
        out = out * weight.to(xf.dtype).view(1, -1, 1, 1)
    if bias is not None:
        out = out + bias.to(xf.dtype).view(1, -1, 1, 1)
    return out.to(x.dtype)


backends.register("block", "eager", conv_bn_act_ref, supports=lambda device: True, priority=0)


# ----------------------------------------------------------------------------------------------
# Eager math (CPU without the Triton interpreter): the kernels' arithmetic in torch ops
# ----------------------------------------------------------------------------------------------
def _act(x, scale, shift, order):
    return F.relu(x * scale + shift) if order == "bn_relu" else F.relu(x) * scale + shift


def _coefficients(batch_stats, gamma, beta, running_mean, running_var, *, momentum, eps,
                  count):
    """fp32 [mean, rstd, scale, shift] of a BatchNorm: from ``batch_stats`` (mean, biased
    variance; training) after updating the running statistics like nn.BatchNorm2d (unbiased
    variance of ``count`` values), or from the running statistics (``batch_stats`` None)."""
    if batch_stats is not None:
        mean, var = batch_stats
        if running_mean is not None:
            running_mean.copy_((1 - momentum) * running_mean.float() + momentum * mean)
            running_var.copy_((1 - momentum) * running_var.float()
                              + momentum * var * (count / (count - 1)))
    else:
        mean, var = running_mean.float(), running_var.float()
    rstd = torch.rsqrt(var + eps)
    scale = gamma.float() * rstd
    return torch.stack([mean, rstd, scale, beta.float() - mean * scale])


def _global_batch_stats(mean, var, count):
    """(mean, var, count) of the global batch under ``distributed.bn_sync``, else as given."""
    group = distributed.bn_sync_group()
    if group is None:
        return mean, var, count
    return distributed.global_stats(mean, var, count, group)


def _global_coefficients(gamma, beta, running_mean, running_var, *, momentum, eps):
    """The ``global_coef`` hook of the Triton launchers (None without ``distributed.bn_sync``):
    coefficients of one batch (their mean and rstd: the biased variance is 1/rstd^2 - eps) ->
    those of the global batch, updating the running statistics."""
    if distributed.bn_sync_group() is None:
        return None

    def global_coef(coef, count):
        var = (coef[1].double().pow(-2) - eps).clamp_min(0).float()
        mean, var, total = _global_batch_stats(coef[0], var, count)
        return _coefficients((mean, var), gamma, beta, running_mean, running_var,
                             momentum=momentum, eps=eps, count=total)
    return global_coef


def _global_sums(sync: bool):
    """The ``global_sums`` hook of every backward (Triton, eager math, native): (sums, count)
    -> (global sums, global count) over the bn_sync group when the forward synchronized
    (``sync``), else None."""
    if not sync:
        return None
    group = distributed.bn_sync_group() or torch.distributed.group.WORLD  # the forward's
    return lambda sums, count: distributed.global_sums(sums, count, group)


def _forward_eager(y, gamma, beta, running_mean, running_var, *, training, momentum, eps, order,
                   pool):
    bn_act.check_forward_inputs(y, gamma, beta, running_mean, running_var, training=training,
                                order=order, pool=pool)
    x = y.float()
    bn_in = x if order == "bn_relu" else F.relu(x)
    stats, count = None, bn_in.numel() // bn_in.shape[1]
    if training:
        var, mean = torch.var_mean(bn_in, dim=(0, 2, 3), correction=0)
        mean, var, count = _global_batch_stats(mean, var, count)
        stats = (mean, var)
    coef = _coefficients(stats, gamma, beta, running_mean, running_var, momentum=momentum,
                         eps=eps, count=count)
    c = coef.view(4, 1, -1, 1, 1)
    out = _act(x, c[2], c[3], order).to(y.dtype)
    if pool:
        out = F.max_pool2d(out, 2, 2)
    return out.contiguous(memory_format=_CL), coef


def _backward_eager(dout, y, coef, *, training, order, pool, global_sums=None):
    bn_act.check_backward_inputs(dout, y, coef, order=order, pool=pool)
    x = y.float()
    mean, rstd, scale, shift = coef.view(4, 1, -1, 1, 1)
    z = _act(x, scale, shift, order).to(y.dtype)  # the stored block output, for the pool argmax
    if pool:
        _, idx = F.max_pool2d(z, 2, 2, return_indices=True)
        g = F.max_unpool2d(dout.float(), idx, 2, 2, output_size=y.shape[2:])
    else:
        g = dout.float()
    bn_in = x if order == "bn_relu" else F.relu(x)
    x_hat = (bn_in - mean) * rstd
    dz = torch.where(z > 0, g, 0.0) if order == "bn_relu" else g
    sums = torch.stack([dz.sum(dim=(0, 2, 3)), (dz * x_hat).sum(dim=(0, 2, 3))])
    if training:
        dy_sums, count = sums, x.numel() // x.shape[1]
        if global_sums is not None:
            dy_sums, count = global_sums(sums, count)
        s = (dy_sums / count).view(2, 1, -1, 1, 1)
        dy = scale * (dz - s[0] - x_hat * s[1])
    else:
        dy = scale * dz
    if order == "relu_bn":
        dy = torch.where(x > 0, dy, 0.0)
    return dy.to(y.dtype).contiguous(memory_format=_CL), sums


# ----------------------------------------------------------------------------------------------
# Native math (CPU): the C++ kernels of fer_fast._C (csrc/bn_act_cpu.cpp) for the data passes,
# torch for the [C]-sized coefficients in between (the formulas of _forward_eager). BatchNorm +
# ReLU only: the block's 2x2 max-pool is torch's (its CPU kernel is vectorised over channels).
# ----------------------------------------------------------------------------------------------
#: element dtype codes of csrc/dtypes.h (OutDtype) the native kernels take
_NATIVE_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def native_supports(device: torch.device | str) -> bool:
    """Whether the native BatchNorm kernels run on ``device``: a CPU, with ``_C`` built."""
    return torch.device(device).type == "cpu" and _C is not None and hasattr(_C, "bn_stats_cpu")


def _native_shape(y: torch.Tensor, order: str) -> tuple:
    """The kernels' shape argument; raises for what they cannot take (checked before any raw
    address is handed to C++)."""
    if not native_supports(y.device):
        raise RuntimeError(f"native block backend: needs a CPU tensor and fer_fast._C built, got "
                           f"a tensor on {y.device}")
    if y.dtype not in _NATIVE_DTYPES:
        raise TypeError(f"native block backend: the conv output must be float32, float16 or "
                        f"bfloat16, got {y.dtype}")
    if not y.is_contiguous(memory_format=_CL):
        raise ValueError("native block backend: the conv output must be channels_last contiguous")
    n, c, h, w = y.shape
    return (n, c, h, w, _NATIVE_DTYPES[y.dtype], is_relu_first(order))


def _forward_native(y, gamma, beta, running_mean, running_var, *, training, momentum, eps, order,
                    pool):
    bn_act.check_forward_inputs(y, gamma, beta, running_mean, running_var, training=training,
                                order=order, pool=pool)
    if pool:
        raise ValueError("native block backend: the pool runs outside the BatchNorm kernels")
    shape = _native_shape(y, order)
    n, c, h, w = y.shape
    threads = torch.get_num_threads()
    count, stats = n * h * w, None
    if training:
        sums = torch.empty(3, c, dtype=torch.float64)
        _C.bn_stats_cpu(y.data_ptr(), shape, sums.data_ptr(), threads)
        mean_shift = sums[1] / count
        mean, var, count = _global_batch_stats(
            (sums[0] + mean_shift).float(),
            (sums[2] / count - mean_shift * mean_shift).clamp_min(0).float(), count)
        stats = (mean, var)
    coef = _coefficients(stats, gamma, beta, running_mean, running_var, momentum=momentum,
                         eps=eps, count=count)
    out = torch.empty_like(y, memory_format=_CL)
    _C.bn_act_forward_cpu(y.data_ptr(), out.data_ptr(), shape, coef[2].data_ptr(),
                          coef[3].data_ptr(), threads)
    return out, coef


def _backward_native(dout, y, coef, *, training, order, pool, global_sums=None):
    bn_act.check_backward_inputs(dout, y, coef, order=order, pool=pool)
    if pool:
        raise ValueError("native block backend: the pool runs outside the BatchNorm kernels")
    shape = _native_shape(y, order)
    if not dout.is_contiguous(memory_format=_CL):
        raise ValueError("native block backend: the output gradient must be channels_last "
                         "contiguous")
    n, c, h, w = y.shape
    threads = torch.get_num_threads()
    sums = torch.empty(2, c, dtype=torch.float64)
    _C.bn_act_backward_sums_cpu(dout.data_ptr(), y.data_ptr(), shape, coef.data_ptr(),
                                sums.data_ptr(), threads)
    sums = sums.float()
    dy_sums, count = sums, n * h * w
    if training and global_sums is not None:
        dy_sums, count = global_sums(sums, count)
    means = (dy_sums / count).contiguous()
    dy = torch.empty_like(y, memory_format=_CL)
    _C.bn_act_backward_cpu(dout.data_ptr(), y.data_ptr(), dy.data_ptr(), shape, coef.data_ptr(),
                           means.data_ptr(), training, threads)
    return dy, sums


# ----------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("fer_fast::bn_act_fwd", mutates_args=("running_mean", "running_var"))
def _bn_act_fwd(y: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                training: bool, momentum: float, eps: float, order: str,
                pool: bool, native: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(block output, fp32 coefficients [mean, rstd, scale, shift]) of conv output ``y``;
    ``native``: the C++ CPU kernels, else the Triton kernels (the eager math on a CPU)."""
    # bfloat16 runs under the Triton interpreter too: these kernels use no tl.dot, which the
    # interpreter gets wrong in bfloat16 (see fer_fast.devices)
    kwargs = dict(training=training, momentum=momentum, eps=eps, order=order, pool=pool)
    if native:
        impl = _forward_native
    elif bn_act.runs_on(y.device):
        impl = bn_act.forward
        kwargs["global_coef"] = _global_coefficients(gamma, beta, running_mean, running_var,
                                                     momentum=momentum, eps=eps)
    else:
        impl = _forward_eager
    with devices.on_device(y):
        return impl(y, gamma, beta, running_mean, running_var, **kwargs)


@_bn_act_fwd.register_fake
def _(y, gamma, beta, running_mean, running_var, training, momentum, eps, order, pool, native):
    n, c, h, w = y.shape
    if pool:
        h, w = h // 2, w // 2
    out = torch.empty((n, c, h, w), dtype=y.dtype, device=y.device, memory_format=_CL)
    return out, y.new_empty((len(bn_act.COEF_ROWS), c), dtype=torch.float32)


@torch.library.custom_op("fer_fast::bn_act_bwd", mutates_args=())
def _bn_act_bwd(dout: torch.Tensor, y: torch.Tensor, coef: torch.Tensor, training: bool,
                order: str, pool: bool, native: bool, sync: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient w.r.t. ``y``, fp32 [sum(dz), sum(dz * x_hat)] = [dbeta, dgamma] of this
    batch); ``sync``: the forward took global-batch statistics (``distributed.bn_sync``), so
    the gradient takes the global sums."""
    impl = (_backward_native if native else
            bn_act.backward if bn_act.runs_on(y.device) else _backward_eager)
    with devices.on_device(y):
        return impl(dout, y, coef, training=training, order=order, pool=pool,
                    global_sums=_global_sums(sync))


@_bn_act_bwd.register_fake
def _(dout, y, coef, training, order, pool, native, sync):
    return (torch.empty_like(y, memory_format=_CL),
            coef.new_empty((2, y.shape[1]), dtype=torch.float32))


class BNActFunction(torch.autograd.Function):
    """BatchNorm + ReLU (+ 2x2 max-pool) of a conv output, with the recomputing backward.

    ``apply(y, gamma, beta, running_mean, running_var, training, momentum, eps, order, pool,
    native)``:
    ``y`` the conv output [N, C, H, W], channels_last, fp16 / bf16 / fp32; ``gamma``, ``beta``
    [C] (any float dtype; their gradients come back in it); ``running_mean``/``running_var``
    fp32 [C] or None, updated in place when training. Returns [N, C, H, W] ([N, C, H//2, W//2]
    with ``pool``), channels_last, in y's dtype. ``native``: the C++ CPU kernels (fp32, bf16).
    """

    @staticmethod
    def forward(ctx, y, gamma, beta, running_mean, running_var, training, momentum, eps, order,
                pool, native=False):
        out, coef = torch.ops.fer_fast.bn_act_fwd(y, gamma, beta, running_mean, running_var,
                                                  training, momentum, eps, order, pool, native)
        ctx.save_for_backward(y, coef)
        ctx.training, ctx.order, ctx.pool, ctx.native = training, order, pool, native
        ctx.sync = training and distributed.bn_sync_group() is not None
        ctx.gamma_dtype, ctx.beta_dtype = gamma.dtype, beta.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        y, coef = ctx.saved_tensors
        dy, sums = torch.ops.fer_fast.bn_act_bwd(dout.contiguous(memory_format=_CL), y, coef,
                                                 ctx.training, ctx.order, ctx.pool, ctx.native,
                                                 ctx.sync)
        return (dy, sums[1].to(ctx.gamma_dtype), sums[0].to(ctx.beta_dtype),
                None, None, None, None, None, None, None, None)


def conv_bn_act_fused(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, *,
                      training: bool, momentum: float, eps: float, order: str, pool: bool,
                      native: bool = False):
    """Fused block with the signature of :func:`conv_bn_act_ref`: conv3x3 (padding
    1) by ``F.conv2d`` on channels_last activations, then :class:`BNActFunction`. ``x``
    [N, C_in, H, W] in any layout (made channels_last), fp32 or fp16/bf16 under autocast; returns
    [N, C_out, H, W] (halved with ``pool``), channels_last, in the conv's dtype. CPU: eager math
    unless TRITON_INTERPRET=1 (see module docstring); ``native``: the C++ CPU kernels."""
    y = F.conv2d(x.contiguous(memory_format=_CL), weight, bias, padding=1)
    y = y.contiguous(memory_format=_CL)
    c = y.shape[1]
    if bn_weight is None:  # BatchNorm2d(affine=False)
        bn_weight = torch.ones(c, device=y.device, dtype=torch.float32)
    if bn_bias is None:
        bn_bias = torch.zeros(c, device=y.device, dtype=torch.float32)
    return BNActFunction.apply(y, bn_weight, bn_bias, running_mean, running_var, training,
                               momentum, eps, order, pool, native)


def _fused_supports(device: torch.device) -> bool:
    """CUDA (Triton kernels) or CPU (eager math, or Triton under TRITON_INTERPRET=1)."""
    return torch.device(device).type in ("cuda", "cpu")


# "auto" takes it on CUDA only: on CPU it would run the eager math (or the slow interpreter).
backends.register("block", "fused", conv_bn_act_fused, supports=_fused_supports, priority=10,
                  auto=lambda device: torch.device(device).type == "cuda")


def conv_bn_act_native(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, *,
                       training: bool, momentum: float, eps: float, order: str, pool: bool):
    """The CPU block: ``F.conv2d`` (oneDNN) on channels_last activations, the C++ BatchNorm +
    ReLU kernels, then ``F.max_pool2d`` when ``pool``; signature, dtypes and layout of
    :func:`conv_bn_act_fused` (fp32, or bf16 / fp16 under CPU autocast)."""
    out = conv_bn_act_fused(x, weight, bias, bn_weight, bn_bias, running_mean, running_var,
                            training=training, momentum=momentum, eps=eps, order=order,
                            pool=False, native=True)
    return F.max_pool2d(out, 2, 2) if pool else out


# "auto" takes it on a CPU (above eager) only where the selfcheck verdict has it passing and
# faster.
backends.register("block", "native", conv_bn_act_native, supports=native_supports, priority=15,
                  verified_only=True)


# ----------------------------------------------------------------------------------------------
# Dispatch and module
# ----------------------------------------------------------------------------------------------
def conv_bn_act(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, *, order: str,
                pool: bool, backend: str = "eager") -> torch.Tensor:
    """Run one block with the parameters and buffers of ``conv`` (nn.Conv2d 3x3, padding 1) and
    ``bn`` (nn.BatchNorm2d) on ``x`` [N, C_in, H, W]; returns [N, C_out, H, W] (halved H, W with
    ``pool``). dtype and layout as the backend's (every backend takes fp32 and fp16/bf16 under
    autocast; "fused" returns channels_last)."""
    check_order(order)
    check_pool(pool)
    check_input(x, conv.in_channels)
    fn = backends.resolve("block", backend, x.device)
    training = bn.training or not bn.track_running_stats
    momentum = bn.momentum
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        if momentum is None:  # nn.BatchNorm2d's cumulative moving average
            momentum = 1.0 / float(bn.num_batches_tracked)
    momentum = 0.0 if momentum is None else momentum  # None and no update: unused
    return fn(x, conv.weight, conv.bias, bn.weight, bn.bias,
              bn.running_mean if bn.track_running_stats else None,
              bn.running_var if bn.track_running_stats else None,
              training=training, momentum=momentum, eps=bn.eps, order=order, pool=pool)


class ConvBNReLU2d(nn.Module):
    """Drop-in block: Conv2d(cin, cout, 3, padding=1) with BatchNorm2d and ReLU in ``order``,
    followed by MaxPool2d(2, 2) when ``pool``; ``backend`` picks the implementation.
    Input [N, in_channels, H, W], output [N, out_channels, H, W] (H//2, W//2 with ``pool``);
    see ``conv_bn_act`` for dtypes and layouts."""

    def __init__(self, in_channels: int, out_channels: int, *, order: str = "bn_relu",
                 pool: bool = False, backend: str = "eager"):
        super().__init__()
        check_order(order)
        check_pool(pool)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.order, self.pool, self.backend = order, pool, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_bn_act(x, self.conv, self.bn, order=self.order, pool=self.pool,
                           backend=self.backend)

    def extra_repr(self) -> str:
        return f"order={self.order!r}, pool={self.pool}, backend={self.backend!r}"
