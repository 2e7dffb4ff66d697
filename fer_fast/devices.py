"""Where kernels run: the device guard every launching entry point takes, and the Triton
interpreter's dtype limits.

Triton launches on the *current* CUDA device and its current stream, and the native CUDA
augmentation is enqueued on a stream of one device: with tensors on ``cuda:1`` and the current
device ``cuda:0`` (the default), a launch without a guard runs on the wrong GPU or faults. Every
fer_fast entry point that launches a kernel (the fused block's custom ops, the triton stack's
forward and backward ops, the augment op) runs it inside ``on_device(tensor)``, which makes the
tensor's device current for the launch and restores the caller's afterwards.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from .kernels import is_interpreter

__all__ = ["on_device", "refuse_bf16_dot_under_interpreter", "cpu_has_native_bf16"]

#: /proc/cpuinfo flags of CPUs with bf16 arithmetic (oneDNN's fast bf16 convolutions and
#: matmuls); without one, bf16 on a CPU is emulated and slower than fp32
_BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Linux: its cpuinfo flags; elsewhere False)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & _BF16_CPU_FLAGS) and torch.backends.mkldnn.is_available()


def on_device(tensor: torch.Tensor):
    """Context manager: ``tensor``'s CUDA device is the current device inside (so Triton
    launches and ``torch.cuda.current_stream()`` are that device's); the caller's current
    device is restored on exit. A no-op for tensors on other devices (CPU, the interpreter)."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def refuse_bf16_dot_under_interpreter(op: str, dtype: torch.dtype) -> None:
    """Raise for bfloat16 data in a kernel using ``tl.dot`` under the Triton interpreter, where
    ``tl.dot`` on bfloat16 operands returns garbage (wrong by orders of magnitude, an upstream
    interpreter bug): a clear error instead of silently wrong numbers. Kernels without
    ``tl.dot`` (BatchNorm/ReLU/pool, the augmentation) run: there the interpreter only
    converts float32 to bfloat16 by truncation (toward zero) where a GPU rounds to nearest
    even, so about half of the stored values are one bfloat16 ulp smaller in magnitude
    (within the bfloat16 tolerances, but biased, not only at ties); float16 conversions are
    rounded to nearest as on a GPU."""
    if dtype == torch.bfloat16 and is_interpreter():
        raise ValueError(f"{op}: bfloat16 is not supported under the Triton interpreter "
                         f"(TRITON_INTERPRET=1): its tl.dot returns wrong values for bfloat16; "
                         f"use float16 or float32 here, or run on a GPU")
