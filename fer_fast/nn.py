"""Conv3x3 + BatchNorm + ReLU (+ 2x2 max-pool) blocks, parameterised by backend.

``conv_bn_act`` is the functional form used by the VGG; ``ConvBNReLU2d`` is the same block as a
module (children ``conv`` and ``bn``: its state_dict is that of an ``nn.Conv2d`` plus an
``nn.BatchNorm2d``). The implementation is chosen per call through ``fer_fast.backends`` (op
``"block"``); ``"eager"`` is ``conv_bn_act_ref``, the reference every fast backend matches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import backends

__all__ = ["ORDERS", "RECIPE_ORDER", "conv_bn_act", "conv_bn_act_ref", "ConvBNReLU2d"]

#: "bn_relu": conv -> BatchNorm -> ReLU (released code); "relu_bn": conv -> ReLU -> BatchNorm (paper).
ORDERS = ("bn_relu", "relu_bn")
RECIPE_ORDER = {"released": "bn_relu", "paper": "relu_bn"}


def conv_bn_act_ref(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, *,
                    training: bool, momentum: float, eps: float, order: str, pool: bool):
    """Eager reference block; updates running_mean/var in place when training (like BatchNorm2d)."""
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
    """Run one block with the parameters and buffers of ``conv`` and ``bn``."""
    if order not in ORDERS:
        raise ValueError(f"unknown block order {order!r}; choose one of {ORDERS}")
    fn = backends.resolve("block", backend, x.device)
    training = bn.training or not bn.track_running_stats
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
    momentum = 0.1 if bn.momentum is None else bn.momentum
    return fn(x, conv.weight, conv.bias, bn.weight, bn.bias,
              bn.running_mean if bn.track_running_stats else None,
              bn.running_var if bn.track_running_stats else None,
              training=training, momentum=momentum, eps=bn.eps, order=order, pool=pool)


class ConvBNReLU2d(nn.Module):
    """Drop-in block: Conv2d(cin, cout, 3, padding=1) with BatchNorm2d and ReLU in ``order``,
    followed by MaxPool2d(2, 2) when ``pool``; ``backend`` picks the implementation."""

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
