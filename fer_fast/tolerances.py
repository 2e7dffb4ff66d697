"""Parity tolerances per op and dtype, written down once (fast backend vs eager reference): used
by the tests and by ``python -m fer_fast selfcheck``.

Each entry is the ``atol``/``rtol`` pair passed to ``torch.testing.assert_close``. Rationale:
fp32 differs from the reference only by summation order and FMA contraction; fp16/bf16 by one
rounding of the output (augment: values in [0, 1], ulp 2^-11 / 2^-8) and, for blocks, by
fp16 storage of activations and accumulation over up to 9*512 products.
"""
import torch

__all__ = ["TOLERANCES", "tolerance"]

TOLERANCES = {
    # ten-crop augmentation, output in [0, 1]
    "augment": {
        torch.float32: dict(atol=1e-5, rtol=1e-5),
        torch.float16: dict(atol=1e-3, rtol=1e-3),
        torch.bfloat16: dict(atol=8e-3, rtol=8e-3),
    },
    # one conv+BN+ReLU(+pool) block: forward output
    "block_forward": {
        torch.float32: dict(atol=1e-4, rtol=1e-4),
        torch.float16: dict(atol=2e-2, rtol=2e-2),
        torch.bfloat16: dict(atol=6e-2, rtol=6e-2),
    },
    # one block: gradients of input and all parameters
    "block_backward": {
        torch.float32: dict(atol=1e-4, rtol=1e-3),
        torch.float16: dict(atol=3e-2, rtol=3e-2),
        torch.bfloat16: dict(atol=1e-1, rtol=1e-1),
    },
    # the native CPU block (C++ BatchNorm + ReLU around oneDNN's conv): fp32 differs from the
    # reference by the order of the per-channel sums only; bf16 outputs by one rounding (ulp
    # 2^-8 relative) where that order moves a value across a rounding tie ...
    "native_block": {
        torch.float32: dict(atol=1e-5, rtol=1e-5),
        torch.bfloat16: dict(atol=8e-3, rtol=8e-3),
    },
    # ... and its bf16 input and weight gradients by such one-ulp differences of dy summed by
    # the bf16 conv backward (fp32: as above)
    "native_block_backward": {
        torch.float32: dict(atol=1e-5, rtol=1e-5),
        torch.bfloat16: dict(atol=5e-2, rtol=5e-2),
    },
    # implicit-GEMM conv3x3 alone (forward, data and weight gradient): fp32 by summation order,
    # fp16 by rounding of the (prologue-applied) operands and of the stored output
    "conv3x3": {
        torch.float32: dict(atol=1e-4, rtol=1e-4),
        torch.float16: dict(atol=2e-2, rtol=2e-2),
        torch.bfloat16: dict(atol=6e-2, rtol=6e-2),
    },
    # running mean / var after a training step
    "running_stats": {
        torch.float32: dict(atol=1e-5, rtol=1e-5),
        torch.float16: dict(atol=1e-3, rtol=1e-3),
        torch.bfloat16: dict(atol=1e-2, rtol=1e-2),
    },
    # a few SGD steps of a whole VGG (losses, parameters, running stats), fast vs eager
    # backend: per-step differences compound through the updates; fp16 = autocast + GradScaler
    "convergence": {
        torch.float32: dict(atol=1e-5, rtol=1e-4),
        torch.float16: dict(atol=5e-3, rtol=5e-2),
    },
}


def tolerance(op: str, dtype: torch.dtype) -> dict:
    """The ``atol``/``rtol`` of ``op`` (a key of ``TOLERANCES``) for ``dtype``."""
    return TOLERANCES[op][dtype]
