"""Conv3x3 + BatchNorm + ReLU (+ 2x2 max-pool) blocks, and chains of them, parameterised by
backend.

``conv_bn_act`` is one block in functional form; ``ConvBNReLU2d`` is the same block as a module
(children ``conv`` and ``bn``: its state_dict is that of an ``nn.Conv2d`` plus an
``nn.BatchNorm2d``). ``conv_bn_act_stack`` / ``ConvBNReLUStack`` run a chain of blocks, either
with a whole-stack backend (op ``"features"``, e.g. ``"triton"``: the implicit-GEMM convs with
each BatchNorm fused into the next conv, normalised activations never written) or block by block
(op ``"block"``). The implementation is chosen per call through ``fer_fast.backends``;
``"eager"`` is ``conv_bn_act_ref``, the reference every fast backend matches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import backends

__all__ = ["ORDERS", "RECIPE_ORDER", "conv_bn_act", "conv_bn_act_ref", "conv_bn_act_stack",
           "ConvBNReLU2d", "ConvBNReLUStack", "model_backends", "resolve_backend"]

#: "bn_relu": conv -> BatchNorm -> ReLU (released code); "relu_bn": conv -> ReLU -> BatchNorm (paper).
ORDERS = ("bn_relu", "relu_bn")
RECIPE_ORDER = {"released": "bn_relu", "paper": "relu_bn"}


def conv_bn_act_ref(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, *,
                    training: bool, momentum: float, eps: float, order: str, pool: bool):
    """Eager reference block; updates running_mean/var in place when training (like BatchNorm2d).

    x: [N, C_in, H, W], fp32 (or fp16/bf16 under autocast), any memory layout; weight
    [C_out, C_in, 3, 3], bias / bn_weight / bn_bias [C_out]; running_mean / running_var fp32
    [C_out] or None (batch statistics only). Returns [N, C_out, H, W] ([N, C_out, H//2, W//2] with
    ``pool``), in the layout F.conv2d gives (channels_last for channels_last inputs).
    ``order``: "bn_relu" or "relu_bn"."""
    y = F.conv2d(x, weight, bias, padding=1)
    if order == "bn_relu":
        y = F.relu(F.batch_norm(y, running_mean, running_var, bn_weight, bn_bias, training,
                                momentum, eps))
    else:
        y = F.batch_norm(F.relu(y), running_mean, running_var, bn_weight, bn_bias, training,
                         momentum, eps)
    return F.max_pool2d(y, 2, 2) if pool else y


backends.register("block", "eager", conv_bn_act_ref, supports=lambda device: True, priority=0)


def conv_bn_act(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, *, order: str,
                pool: bool, backend: str = "eager") -> torch.Tensor:
    """Run one block with the parameters and buffers of ``conv`` (nn.Conv2d 3x3, padding 1) and
    ``bn`` (nn.BatchNorm2d) on ``x`` [N, C_in, H, W]; returns [N, C_out, H, W] (halved H, W with
    ``pool``). dtype and layout as the backend's (every backend takes fp32 and fp16/bf16 under
    autocast; "fused" returns channels_last)."""
    if order not in ORDERS:
        raise ValueError(f"unknown block order {order!r}; choose one of {ORDERS}")
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
        if order not in ORDERS:
            raise ValueError(f"unknown block order {order!r}; choose one of {ORDERS}")
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.order, self.pool, self.backend = order, pool, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_bn_act(x, self.conv, self.bn, order=self.order, pool=self.pool,
                           backend=self.backend)

    def extra_repr(self) -> str:
        return f"order={self.order!r}, pool={self.pool}, backend={self.backend!r}"


def model_backends() -> list[str]:
    """Names a block chain (``conv_bn_act_stack``, the VGG) accepts as ``backend``: "auto",
    whole-stack ("features") and block backends."""
    return ["auto"] + sorted(set(backends.names("features")) | set(backends.names("block")))


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The backend a block chain with ``backend`` runs on ``device``: "auto" takes a
    whole-stack ("features") backend when "auto" may choose one there, else the best block
    backend. Raises a clear error when ``backend`` is unknown or does not run on ``device``."""
    if backend == "auto":
        return (backends.auto_choice("features", device)
                or backends.auto_choice("block", device))
    op = "features" if backend in backends.names("features") else "block"
    if backend not in backends.names(op):
        raise ValueError(f"unknown model backend {backend!r}; choose one of {model_backends()}")
    backends.resolve(op, backend, device)  # raises when it does not run on device
    return backend


def conv_bn_act_stack(x: torch.Tensor, convs, bns, pools, *, order: str,
                      backend: str = "eager") -> torch.Tensor:
    """Run the chain of blocks (``convs[i]``, ``bns[i]``, max-pool after block i when
    ``pools[i]``): with a whole-stack backend as one op, else block by block. ``x``
    [N, C_in, H, W], fp32 (fp16/bf16 under autocast); returns [N, C_last, H', W'] with H, W halved
    at each pool, NCHW-shaped (channels_last in memory for the fused and triton backends)."""
    if not len(convs) == len(bns) == len(pools) or not convs:
        raise ValueError(f"a block chain needs as many convs, BatchNorms and pool flags, at least "
                         f"one: got {len(convs)}, {len(bns)}, {len(pools)}")
    if order not in ORDERS:
        raise ValueError(f"unknown block order {order!r}; choose one of {ORDERS}")
    backend = resolve_backend(backend, x.device)
    if backend in backends.names("features"):
        return backends.resolve("features", backend, x.device)(x, list(convs), list(bns),
                                                               list(pools), order=order)
    for conv, bn, pool in zip(convs, bns, pools):
        x = conv_bn_act(x, conv, bn, order=order, pool=pool, backend=backend)
    return x


class ConvBNReLUStack(nn.Module):
    """A chain of ``ConvBNReLU2d`` blocks (children ``blocks.0``, ``blocks.1``, ...), run by
    ``conv_bn_act_stack``: ``blocks`` gives (out_channels, pool) per block, the first taking
    ``in_channels``. With ``backend="triton"`` the chain is one autograd Function over the
    implicit-GEMM conv kernels."""

    def __init__(self, in_channels: int, blocks, *, order: str = "bn_relu",
                 backend: str = "eager"):
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"unknown block order {order!r}; choose one of {ORDERS}")
        layers = []
        for out_channels, pool in blocks:
            layers.append(ConvBNReLU2d(in_channels, out_channels, order=order, pool=pool))
            in_channels = out_channels
        if not layers:
            raise ValueError("ConvBNReLUStack needs at least one block")
        self.blocks = nn.ModuleList(layers)
        self.order, self.backend = order, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_bn_act_stack(x, [b.conv for b in self.blocks], [b.bn for b in self.blocks],
                                 [b.pool for b in self.blocks], order=self.order,
                                 backend=self.backend)

    def extra_repr(self) -> str:
        return f"order={self.order!r}, backend={self.backend!r}"
