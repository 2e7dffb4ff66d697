"""Parity tolerances per op and dtype, written down once (fast backend vs eager reference): the
tests' (``TOLERANCES``, elementwise) and ``python -m fer_fast selfcheck``'s (below, one number per
tensor).

Each entry of ``TOLERANCES`` is the ``atol``/``rtol`` pair passed to
``torch.testing.assert_close``. Rationale: fp32 differs from the reference only by summation
order and FMA contraction; fp16/bf16 by one rounding of the output (augment: values in [0, 1],
ulp 2^-11 / 2^-8) and, for blocks, by fp16 storage of activations and accumulation over up to
9*512 products.
"""
import math

import torch

__all__ = ["TOLERANCES", "tolerance", "SELFCHECK_FP32", "SELFCHECK_TRAIN", "UNIT_ROUNDOFF",
           "VACUOUS", "rounding_tolerance"]

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


# --- the selfcheck's tolerances: on max |fast - reference| / max |reference| per tensor (one
# number per row, so each row has a margin = error / tolerance; docs/selfcheck.md lists them
# with the clean errors measured)

#: fp32 vs the fp32 reference: summation order and FMA contraction only (clean errors 1e-7 to
#: 5e-6); a 1e-3 relative change of any tensor fails by a margin of 100 or more
SELFCHECK_FP32 = {"augment": 1e-6, "forward": 1e-5, "gradients": 1e-5, "running stats": 1e-6,
                  "eval": 1e-5}
#: a few SGD steps of a whole VGG, fast vs eager backend at the same precision (fp16: autocast +
#: GradScaler): per-step differences compound through the updates; bf16: the CPU training path
#: in bf16 autocast vs the fp32 reference (clean: ~3e-2, seven bf16 ulps, after two steps of
#: 16 crops; noise of bf16 gradients, larger with smaller batches)
SELFCHECK_TRAIN = {torch.float32: 1e-4, torch.float16: 5e-2, torch.bfloat16: 1e-1}
#: unit roundoff u of the low-precision compute dtypes (2^-11 for fp16, 2^-8 for bf16)
UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
#: a tolerance this large admits an all-zero result (error 1): the check cannot fail
VACUOUS = 1.0


def rounding_tolerance(dtype: torch.dtype, reduction: int, depth: int = 1) -> float:
    """The selfcheck's bound on a low-precision path vs the fp32 reference of the same (rounded)
    inputs, relative to the reference's largest magnitude: per layer of ``depth`` the operands
    and the stored output are rounded (a few u each), and the rounding errors of the
    ``reduction`` summed products (fp32 accumulation) add up like a random walk, relative to
    a result that cancellation can make sqrt(reduction) smaller than the terms; the layers'
    errors add up alike (each BatchNorm renormalises), sqrt(depth)."""
    return 4 * UNIT_ROUNDOFF[dtype] * math.sqrt(reduction * depth)
