"""Triton kernels of fer_fast (installed as ``fer_fast.kernels``): a pure kernel library.

Each module holds Triton kernels and the launchers that take tensors and plain parameters;
nothing here imports ``fer_fast`` (registration with the backend registry, shape constants of
the model and user-facing checks live there). Modules:

* ``augment``      — fused ten-crop augmentation (one kernel).
* ``bn_act``       — BatchNorm + ReLU (+ 2x2 max-pool) around a library convolution.
* ``bn_stats``     — BatchNorm statistics helpers shared by ``bn_act`` and ``conv``: Chan's merge,
  running-statistics update, the coefficient rows, the in-kernel reduction tree.
* ``conv``         — implicit-GEMM 3x3 convolutions with the block's BN / ReLU / pool fused.
* ``conv_configs`` — the conv kernels' launch configs per GPU class, the tuner, AOT specs.
"""
import triton

__all__ = ["is_interpreter", "INTERPRETER_ENV"]

#: the environment variable that makes Triton define kernels for its CPU interpreter (read by
#: Triton when a kernel is defined; a process sets it for a child, never reads it itself)
INTERPRETER_ENV = "TRITON_INTERPRET"


@triton.jit
def _probe():
    pass


def is_interpreter() -> bool:
    """Whether this package's kernels run in Triton's interpreter (TRITON_INTERPRET=1 when they
    were defined): they then take CPU tensors, and no GPU code is compiled."""
    return not isinstance(_probe, triton.runtime.JITFunction)
