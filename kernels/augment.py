"""Fused ten-crop augmentation as one Triton kernel (backend "triton" of op "augment").

One program writes one 40x40 crop (grid = B*10): it reads the image's 16 geometry scalars and
the crop's erase box once, then evaluates all 1600 output pixels as one flat block (2048 lanes,
row-major, so the store of a crop is one contiguous, vectorisable run). Per pixel it does exactly
the arithmetic of the eager reference (``augment_ref`` of fer_fast, which owns the parameter
sampling, the user-facing checks and the backend registration): p3 = (r0*x + r1*y) + r2, the inclusive window
test, source = (a0*x + a1*y) + a2, floor, four zero-padded taps (masked byte loads), the
bilinear blend in the reference's order, IEEE division by 255, the erase test, and one rounding
to the output dtype. Two choices keep it bit-identical to the reference in fp32:

* FP contraction is disabled (``enable_fp_fusion=False`` at launch): an FMA would round
  ``r0*x + r1*y`` once instead of twice, which moves pixels that sit exactly on a window edge or
  on an integer source coordinate (floor) across it.
* the division by 255 uses ``tl.div_rn`` (IEEE round-to-nearest), as torch does on the CPU;
  Triton's plain ``/`` on fp32 is ``div.full`` (up to 2 ulp off).

Under ``TRITON_INTERPRET=1`` the same kernel runs on CPU tensors (for tests).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import is_interpreter

__all__ = ["IMAGE_SIZE", "CROP_SIZE", "NUM_CROPS", "GEOM_SIZE", "ERASE_SIZE", "ten_crop_augment",
           "runs_on", "AOT_SPECS"]

#: the geometry the kernel is built for: 48x48 images, ten 40x40 crops (five corners, then the
#: same on the mirrored canvas), 16 geometry scalars per image, 4 erase-box integers per crop
IMAGE_SIZE = 48
CROP_SIZE = 40
NUM_CROPS = 10
GEOM_SIZE = 16
ERASE_SIZE = 4
BLOCK = triton.next_power_of_2(CROP_SIZE * CROP_SIZE)  # 2048 lanes for the 1600 pixels of a crop
NUM_WARPS = 8  # 8 pixels per thread: few live registers, enough warps to hide the gather latency


@triton.jit
def _augment_kernel(img_ptr, geom_ptr, erase_ptr, out_ptr,
                    IMAGE: tl.constexpr, CROP: tl.constexpr, NUM_CROPS: tl.constexpr,
                    GEOM: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)  # output crop index b * NUM_CROPS + k
    pid64 = pid.to(tl.int64)  # int64 offsets: outputs of 2**31 elements or more
    b = pid // NUM_CROPS
    k = pid % NUM_CROPS
    # CROP_CORNERS (torchvision five_crop order): top-left, top-right, bottom-left, bottom-right,
    # centre; crops 5..9 take the same corners on the horizontally mirrored canvas.
    corner = k % (NUM_CROPS // 2)
    centre = corner == NUM_CROPS // 2 - 1
    row = tl.where(centre, (IMAGE - CROP) // 2, (corner // 2) * (IMAGE - CROP))
    col = tl.where(centre, (IMAGE - CROP) // 2, (corner % 2) * (IMAGE - CROP))

    i = tl.arange(0, BLOCK)
    valid = i < CROP * CROP
    v = i // CROP
    u = i % CROP
    xi = col + u
    xi = tl.where(k >= NUM_CROPS // 2, (IMAGE - 1) - xi, xi)
    x = xi.to(tl.float32)
    y = (row + v).to(tl.float32)

    g = geom_ptr + b.to(tl.int64) * GEOM
    a0, a1, a2 = tl.load(g + 0), tl.load(g + 1), tl.load(g + 2)
    a3, a4, a5 = tl.load(g + 3), tl.load(g + 4), tl.load(g + 5)
    r0, r1, r2 = tl.load(g + 6), tl.load(g + 7), tl.load(g + 8)
    r3, r4, r5 = tl.load(g + 9), tl.load(g + 10), tl.load(g + 11)
    x_lo, x_hi, y_lo, y_hi = tl.load(g + 12), tl.load(g + 13), tl.load(g + 14), tl.load(g + 15)
    e = erase_ptr + pid64 * 4
    e_top, e_left, e_h, e_w = tl.load(e + 0), tl.load(e + 1), tl.load(e + 2), tl.load(e + 3)

    x3 = (r0 * x + r1 * y) + r2
    y3 = (r3 * x + r4 * y) + r5
    inside = (x3 >= x_lo) & (x3 <= x_hi) & (y3 >= y_lo) & (y3 <= y_hi)
    erased = (v >= e_top) & (v < e_top + e_h) & (u >= e_left) & (u < e_left + e_w)
    keep = valid & inside & ~erased  # the only pixels whose taps are read

    sx = (a0 * x + a1 * y) + a2
    sy = (a3 * x + a4 * y) + a5
    x0f = tl.floor(sx)
    y0f = tl.floor(sy)
    fx = sx - x0f
    fy = sy - y0f
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    ok_x0 = (x0 >= 0) & (x0 < IMAGE)
    ok_x1 = (x0 >= -1) & (x0 < IMAGE - 1)
    ok_y0 = keep & (y0 >= 0) & (y0 < IMAGE)
    ok_y1 = keep & (y0 >= -1) & (y0 < IMAGE - 1)
    src = img_ptr + b.to(tl.int64) * (IMAGE * IMAGE) + (y0 * IMAGE + x0)
    p00 = tl.load(src, mask=ok_y0 & ok_x0, other=0).to(tl.float32)
    p01 = tl.load(src + 1, mask=ok_y0 & ok_x1, other=0).to(tl.float32)
    p10 = tl.load(src + IMAGE, mask=ok_y1 & ok_x0, other=0).to(tl.float32)
    p11 = tl.load(src + IMAGE + 1, mask=ok_y1 & ok_x1, other=0).to(tl.float32)
    top = (1 - fx) * p00 + fx * p01
    bottom = (1 - fx) * p10 + fx * p11
    value = (1 - fy) * top + fy * bottom
    value = tl.where(keep, tl.div_rn(value, 255.0), 0.0)
    tl.store(out_ptr + pid64 * (CROP * CROP) + i, value.to(out_ptr.dtype.element_ty), mask=valid)


#: the most crops of one launch (the grid's first dimension)
MAX_CROPS = 2 ** 31 - 1


def runs_on(device: torch.device) -> bool:
    """CUDA devices with the compiled kernel, or the CPU with the interpreted one."""
    if is_interpreter():
        return device.type == "cpu"
    return device.type == "cuda" and torch.cuda.is_available()


def ten_crop_augment(images: torch.Tensor, geom: torch.Tensor, erase: torch.Tensor,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Ten augmented crops per image, one launch.

    images: uint8 [B, 48, 48], contiguous; geom: fp32 [B, 16] per-image geometry (source affine
    a0..a5, crop-to-window affine r0..r5, window bounds x_lo, x_hi, y_lo, y_hi), contiguous;
    erase: int32 [B, 10, 4] erase box (top, left, height, width) per crop, contiguous; all on one
    device (CUDA, or CPU under the interpreter). Returns [B*10, 1, 40, 40] in ``dtype`` (fp32,
    fp16 or bf16), crop b*10 + k = crop k of image b."""
    b = images.shape[0] if images.dim() == 3 else -1
    expected = {"images": ((b, IMAGE_SIZE, IMAGE_SIZE), torch.uint8),
                "geom": ((b, GEOM_SIZE), torch.float32),
                "erase": ((b, NUM_CROPS, ERASE_SIZE), torch.int32)}
    for name, t in (("images", images), ("geom", geom), ("erase", erase)):
        shape, dt = expected[name]
        if tuple(t.shape) != shape or t.dtype != dt or not t.is_contiguous():
            raise ValueError(f"ten_crop_augment: {name} must be contiguous {dt} of shape "
                             f"{list(shape)}, got {t.dtype} {list(t.shape)}")
        if t.device != images.device:
            raise ValueError(f"ten_crop_augment: {name} is on {t.device}, images on "
                             f"{images.device}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"ten_crop_augment: output dtype {dtype}; supported: float32, "
                         f"float16, bfloat16")
    if not runs_on(images.device):
        raise RuntimeError(f"ten_crop_augment: images are on {images.device}; the Triton kernel "
                           f"runs on CUDA devices (or on the CPU under TRITON_INTERPRET=1)")
    if b * NUM_CROPS > MAX_CROPS:
        raise ValueError(f"ten_crop_augment: {b} images exceed one launch's grid; split the "
                         f"batch (at most {MAX_CROPS // NUM_CROPS})")
    out = torch.empty(b * NUM_CROPS, 1, CROP_SIZE, CROP_SIZE, dtype=dtype, device=images.device)
    if b == 0:
        return out
    _augment_kernel[(b * NUM_CROPS,)](
        images, geom, erase, out,
        IMAGE=IMAGE_SIZE, CROP=CROP_SIZE, NUM_CROPS=NUM_CROPS, GEOM=GEOM_SIZE, BLOCK=BLOCK,
        num_warps=NUM_WARPS, enable_fp_fusion=False)
    return out


_CONSTEXPRS = dict(IMAGE=IMAGE_SIZE, CROP=CROP_SIZE, NUM_CROPS=NUM_CROPS, GEOM=GEOM_SIZE,
                   BLOCK=BLOCK)
AOT_SPECS = [
    {"name": f"augment_{out}", "fn": _augment_kernel,
     "signature": {"img_ptr": "*u8", "geom_ptr": "*fp32", "erase_ptr": "*i32",
                   "out_ptr": f"*{out}", **{k: "constexpr" for k in _CONSTEXPRS}},
     "constexprs": _CONSTEXPRS, "num_warps": NUM_WARPS}
    for out in ("fp32", "fp16", "bf16")
]
