"""The native extension ``fer_fast._C`` and its ``"native"`` backend of the augment op.

``_C`` links no libtorch: its functions take raw tensor addresses (``tensor.data_ptr()``), so
everything that makes such a call safe (device, dtype, shape, contiguity) is checked here
first. Without ``_C`` (a source tree that was not built) ``import fer_fast`` still works: one
warning, and the pure-torch backends do the work.
"""
from __future__ import annotations

import importlib
import warnings

import torch

from . import backends
from .augment import CROP_SIZE, NUM_CROPS, AugmentParams, check_inputs

__all__ = ["native_available", "cuda_available", "augment_native"]

#: output dtype codes of csrc/augment_math.h (OutDtype)
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _load_native():
    """``fer_fast._C``, or None after one warning saying why and what to do."""
    try:
        return importlib.import_module("fer_fast._C")
    except ImportError as err:
        warnings.warn(f"fer_fast: the native extension fer_fast._C is not available ({err}); "
                      "using the pure-torch backends. Build it with `pip install -e .` in the "
                      "repository.", RuntimeWarning, stacklevel=2)
        return None


_C = _load_native()


def native_available() -> bool:
    """Whether ``fer_fast._C`` is built and imported (its CPU kernels run then)."""
    return _C is not None


def cuda_available() -> bool:
    """Whether the CUDA kernels of ``_C`` can run: built with CUDA, and a GPU is usable."""
    return (_C is not None and _C.has_cuda() and torch.cuda.is_available()
            and _C.cuda_device_count() > 0)


def augment_native(images: torch.Tensor, params: AugmentParams,
                   dtype: torch.dtype = torch.float32, *, num_threads: int | None = None
                   ) -> torch.Tensor:
    """Ten-crop augmentation by the C++ (CPU) or CUDA kernel of ``_C``; see ``augment_ref``.

    ``num_threads``: CPU threads (default ``torch.get_num_threads()``); ignored on CUDA, where
    the kernel is enqueued on the current stream.
    """
    check_inputs(images, params)
    if dtype not in _DTYPE_CODES:
        raise ValueError(f"augment_native: dtype must be one of {list(_DTYPE_CODES)}, got {dtype}")
    device = images.device
    if _C is None:
        raise RuntimeError("augment_native: fer_fast._C is not built; use backend='eager'")
    b = images.shape[0]
    out = torch.empty(b * NUM_CROPS, 1, CROP_SIZE, CROP_SIZE, dtype=dtype, device=device)
    ptrs = (images.data_ptr(), params.geom.data_ptr(), params.erase.data_ptr(), out.data_ptr())
    if device.type == "cpu":
        threads = torch.get_num_threads() if num_threads is None else num_threads
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"augment_native: num_threads must be an int >= 1, got {threads!r}")
        _C.augment_cpu(*ptrs, b, _DTYPE_CODES[dtype], threads)
    elif device.type == "cuda" and cuda_available():
        stream = torch.cuda.current_stream(device).cuda_stream
        _C.augment_cuda(*ptrs, b, _DTYPE_CODES[dtype], device.index, stream)
    else:
        raise RuntimeError(f"augment_native: no native kernel for device {device} (CUDA kernels "
                           f"built: {_C.has_cuda()}, CUDA device usable: {cuda_available()})")
    return out


def _supports(device: torch.device) -> bool:
    if device.type == "cpu":
        return native_available()
    return device.type == "cuda" and cuda_available()


# On the CPU native (10) beats eager (0); on CUDA the Triton backend (20) beats it.
backends.register("augment", "native", augment_native, supports=_supports, priority=10)
