"""The paper's VGG variant, one definition for every block backend.

Parameter names are those of the authors' release (``conv1a .. conv4b``, ``bn1a .. bn4b``,
``lin1 .. lin3``), so ``model.load_state_dict(torch.load(path)['params'])`` loads a released
checkpoint. ``width`` scales every channel count and the hidden size of the head (1.0 = the paper).
"""
from __future__ import annotations

import math
import numbers
import os

import torch
import torch.nn.functional as F
from torch import nn

from .block import RECIPE_ORDER
from .stack import conv_bn_act_stack

__all__ = ["VGG", "BLOCKS", "NUM_CLASSES", "CLASS_NAMES", "stage_channels", "parameter_count",
           "check_architecture", "physical_memory"]

NUM_CLASSES = 7
CLASS_NAMES = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
#: (name suffix, stage index, max-pool after the block)
BLOCKS = (("1a", 0, False), ("1b", 0, True), ("2a", 1, False), ("2b", 1, True),
          ("3a", 2, False), ("3b", 2, True), ("4a", 3, False), ("4b", 3, True))


def stage_channels(width: float) -> tuple[int, int, int, int]:
    """Channels of the four stages at ``width`` (1: 64, 128, 256, 512), at least 1 each."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return tuple(max(1, round(c * width)) for c in (64, 128, 256, 512))


def parameter_count(width: float, num_classes: int = NUM_CLASSES) -> int:
    """Parameters and buffers of ``VGG(width=width, num_classes=num_classes)``, computed without
    building it."""
    channels = stage_channels(width)
    total, cin = 0, 1
    for _, stage, _ in BLOCKS:
        cout = channels[stage]
        total += 9 * cin * cout + cout + 4 * cout  # conv weight, bias; BN weight, bias, mean, var
        cin = cout
    hidden = max(1, round(4096 * width))
    return total + (channels[3] * 4 + 1) * hidden + (hidden + 1) * hidden \
        + (hidden + 1) * num_classes


def physical_memory() -> int | None:
    """Bytes of memory of this machine (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_architecture(recipe, width, num_classes=NUM_CLASSES, dropout=0.2, *,
                       training: bool = False) -> str | None:
    """None when a VGG of these values can be built here, else what is wrong (an unknown
    recipe, a width or class count that is not a positive finite number, or a model whose
    parameters alone (``training``: with their gradients and two optimizer states) would not
    fit in this machine's memory)."""
    if not isinstance(recipe, str) or recipe not in RECIPE_ORDER:
        return f"recipe {recipe!r} is unknown (choose one of {tuple(RECIPE_ORDER)})"
    if isinstance(width, bool) or not isinstance(width, numbers.Real) \
            or not math.isfinite(width) or width <= 0:
        return f"width must be a positive finite number, got {width!r}"
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) \
            or num_classes < 1:
        return f"num_classes must be a positive integer, got {num_classes!r}"
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) \
            or not 0 <= dropout < 1:
        return f"dropout must be a number in [0, 1), got {dropout!r}"
    if width > 1e4:
        return f"width {width} is absurdly large (1 is the paper's VGG)"
    copies = 4 if training else 1
    need, have = 4 * copies * parameter_count(width, int(num_classes)), physical_memory()
    if have is not None and need > have:
        what = ("training it (parameters, gradients, optimizer state) takes"
                if training else "the model's parameters alone take")
        return (f"width {width}: {what} {need / 2**30:.1f} GiB, more than this machine's "
                f"{have / 2**30:.1f} GiB of memory")
    return None


class VGG(nn.Module):
    """VGG for 1x40x40 crops: 4 stages of (block, block, max-pool), then a 3-layer MLP head.

    ``forward(x)``: crops [N, 1, 40, 40], float (pixels / 255; fp32, or fp16/bf16 under
    autocast), NCHW (with one channel also channels_last) -> logits [N, num_classes]. ``width``
    scales every channel count (1: the paper's 64..512 and 4096 hidden units)."""

    def __init__(self, recipe: str = "released", *, width: float = 1.0, dropout: float = 0.2,
                 num_classes: int = NUM_CLASSES, backend: str = "eager"):
        super().__init__()
        if not isinstance(recipe, str) or recipe not in RECIPE_ORDER:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {tuple(RECIPE_ORDER)}")
        problem = check_architecture(recipe, width, num_classes, dropout)
        if problem:
            raise ValueError(f"VGG: {problem}")
        self.recipe, self.order, self.backend, self.width = recipe, RECIPE_ORDER[recipe], backend, width
        channels = stage_channels(width)
        cin = 1
        for name, stage, _ in BLOCKS:
            cout = channels[stage]
            setattr(self, f"conv{name}", nn.Conv2d(cin, cout, 3, padding=1))
            setattr(self, f"bn{name}", nn.BatchNorm2d(cout))
            cin = cout
        hidden = max(1, round(4096 * width))
        self.lin1 = nn.Linear(channels[3] * 2 * 2, hidden)
        self.lin2 = nn.Linear(hidden, hidden)
        self.lin3 = nn.Linear(hidden, num_classes)
        self.drop = nn.Dropout(dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The conv stack, through ``conv_bn_act_stack`` with the model's ``backend``: "auto",
        a whole-stack (op "stack") backend such as "triton", or a block backend such as
        "eager" or "fused"."""
        convs = [getattr(self, f"conv{name}") for name, _, _ in BLOCKS]
        bns = [getattr(self, f"bn{name}") for name, _, _ in BLOCKS]
        return conv_bn_act_stack(x, convs, bns, [pool for _, _, pool in BLOCKS],
                                 order=self.order, backend=self.backend)

    def forward(self, x: torch.Tensor, dropout_masks=None) -> torch.Tensor:
        """``dropout_masks`` (training): the head's two dropout masks (``dropout_masks()``)
        instead of nn.Dropout's draws from the global generator."""
        x = self.features(x).flatten(1)
        if dropout_masks is None or not self.training:
            x = F.relu(self.drop(self.lin1(x)))
            x = F.relu(self.drop(self.lin2(x)))
        else:
            for layer, mask in zip((self.lin1, self.lin2), dropout_masks):
                x = layer(x)
                x = F.relu(x * mask.to(x.dtype))
        return self.lin3(x)

    def dropout_masks(self, generator: torch.Generator, rows: int, first: int = 0,
                      stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's dropout masks (kept / (1 - p), dropped 0; fp32 [stop - first, hidden]) for
        rows [first, stop) of a batch of ``rows``: drawn for all ``rows`` from ``generator``, so
        that a row's mask does not depend on which process computes it."""
        p, stop = self.drop.p, rows if stop is None else stop
        device = self.lin1.weight.device
        masks = []
        for layer in (self.lin1, self.lin2):
            keep = torch.rand(rows, layer.out_features, generator=generator,
                              device=device)[first:stop] >= p
            masks.append(keep.float() / (1 - p))
        return masks[0], masks[1]
