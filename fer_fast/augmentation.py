"""Ten-crop augmentation: parameter sampling, the eager reference, and backend dispatch.

The augmentation of docs/spec.md is split in two steps so that every backend computes the same thing:

1. ``sample_params(recipe, batch, generator)`` draws all random choices of a batch at once into
   a small :class:`AugmentParams` (on the generator's device, no host round-trip);
2. ``augment(images_u8, params)`` is a deterministic function of (uint8 images, parameters)
   that writes the ten 40x40 crops of every image, erased and divided by 255.

Geometry of one image (pixel-centre coordinates, x = column, y = row, canvas -0.5 .. 47.5):
an output pixel (u, v) of crop k sits at p4 on the 48x48 canvas after all geometric stages
(see ``CROP_CORNERS``; crops 5..9 are read from the horizontally mirrored canvas). It is
mapped by ONE composed inverse affine ``affine`` to the source position, sampled bilinearly
with zeros outside the image. The fill of the intermediate stages is kept by a rectangle
``window`` in the coordinates p3 = ``rotation``(p4) (the canvas before the rotation): a pixel
whose p3 falls outside ``window`` is 0.

``AugmentParams.geom`` layout, float32 ``[B, 16]``:
  0..5   affine   p4 -> source:  sx = g0*x + g1*y + g2,  sy = g3*x + g4*y + g5
  6..11  rotation p4 -> p3:      same layout
  12..15 window in p3:           x_lo, x_hi, y_lo, y_hi (inclusive)
``AugmentParams.erase`` layout, int32 ``[B, 10, 4]``: top, left, height, width of the erased box
of each crop in crop coordinates; height = width = 0 means no erasing.

``augment`` is the torch.library custom op ``fer_fast::augment`` (callable from
``torch.compile(fullgraph=True)`` code, not differentiable) in front of the backend registry:
"eager" (``augment_ref``), "triton" (``fer_fast.kernels.augment``, CUDA; CPU only under
TRITON_INTERPRET=1 and never chosen by "auto" there) and "native" (the C++ / CUDA kernels of
the extension ``fer_fast._C``, below).
Every fast backend evaluates each output pixel with exactly the arithmetic of
``augment_ref`` (see ``csrc/augment_math.h``): p3 = (r0*x + r1*y) + r2, the same for the
source position, then value = (1-fy)*((1-fx)*p00 + fx*p01) + fy*((1-fx)*p10 + fx*p11), / 255.
"""
from __future__ import annotations

import importlib
import math
import numbers
import warnings
from dataclasses import dataclass

import torch

from . import backends, devices
from .kernels import augment as _augment_kernel
from .kernels import is_interpreter

__all__ = [
    "IMAGE_SIZE", "CROP_SIZE", "NUM_CROPS", "CROP_CORNERS", "RECIPES", "AugmentParams",
    "identity_params", "sample_params", "released_geometry", "paper_geometry", "augment",
    "augment_ref", "ten_crop", "check_inputs", "augment_native", "native_available",
    "cuda_available",
]

IMAGE_SIZE = 48
CROP_SIZE = 40
NUM_CROPS = 10
#: (row, col) top-left corners of the five crops; crops 5..9 take the same corners on the mirror image.
CROP_CORNERS = ((0, 0), (0, 8), (8, 0), (8, 8), (4, 4))
RECIPES = ("released", "paper")
GEOM_SIZE = 16
_CENTRE = (IMAGE_SIZE - 1) / 2.0  # 23.5: rotation and scaling centre in pixel-centre coordinates
_LO, _HI = -0.5, IMAGE_SIZE - 0.5  # canvas bounds in pixel-centre coordinates


@dataclass
class AugmentParams:
    """Random choices of one batch; layouts in the module docstring."""

    geom: torch.Tensor   # float32 [B, 16]
    erase: torch.Tensor  # int32 [B, 10, 4]

    def __len__(self) -> int:
        return self.geom.shape[0]

    def to(self, device) -> "AugmentParams":
        return AugmentParams(self.geom.to(device), self.erase.to(device))

    def __getitem__(self, index) -> "AugmentParams":
        return AugmentParams(self.geom[index], self.erase[index])


def check_inputs(images: torch.Tensor, params: AugmentParams) -> None:
    """Raise a clear error when images or params do not have the layout every backend expects."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError(f"augment: images must be a uint8 tensor, got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.dim() != 3 or tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"augment: images must have shape [B, {IMAGE_SIZE}, {IMAGE_SIZE}], "
                         f"got {list(images.shape)}")
    b = images.shape[0]
    g, e = params.geom, params.erase
    if g.dtype != torch.float32 or tuple(g.shape) != (b, GEOM_SIZE):
        raise ValueError(f"augment: params.geom must be float32 [{b}, {GEOM_SIZE}], "
                         f"got {g.dtype} {list(g.shape)}")
    if e.dtype != torch.int32 or tuple(e.shape) != (b, NUM_CROPS, 4):
        raise ValueError(f"augment: params.erase must be int32 [{b}, {NUM_CROPS}, 4], "
                         f"got {e.dtype} {list(e.shape)}")
    for name, t in (("params.geom", g), ("params.erase", e)):
        if t.device != images.device:
            raise ValueError(f"augment: {name} is on {t.device} but images are on {images.device}")
        if not t.is_contiguous():
            raise ValueError(f"augment: {name} must be contiguous")
    if not images.is_contiguous():
        raise ValueError("augment: images must be contiguous")


OUTPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_dtype(dtype: torch.dtype) -> None:
    """Raise a clear error for an output dtype no backend writes."""
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"augment: dtype must be float32, float16 or bfloat16, got {dtype}")


# ----------------------------------------------------------------------------------------------
# Parameter sampling (vectorised over the batch, torchvision semantics per docs/spec.md)
# ----------------------------------------------------------------------------------------------

def _affine_rows(a, b, c, d, e, f) -> torch.Tensor:
    return torch.stack([a, b, c, d, e, f], dim=-1)


def _compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """outer ∘ inner for [..., 6] affine maps (apply inner first)."""
    a1, b1, c1, d1, e1, f1 = outer.unbind(-1)
    a2, b2, c2, d2, e2, f2 = inner.unbind(-1)
    return _affine_rows(a1 * a2 + b1 * d2, a1 * b2 + b1 * e2, a1 * c2 + b1 * f2 + c1,
                        d1 * a2 + e1 * d2, d1 * b2 + e1 * e2, d1 * c2 + e1 * f2 + f1)


def _first_accepted(ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the first True along the last dim, and whether any is True."""
    tries = ok.shape[-1]
    idx = torch.where(ok, torch.arange(tries, device=ok.device), tries).amin(-1)
    return idx.clamp(max=tries - 1), ok.any(-1)


def _uniform(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * u


def _randint(u: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Uniform integer in [0, n) from u ~ U[0, 1)."""
    return torch.minimum((u * n).floor(), n - 1)


def _sample_erase(u: torch.Tensor) -> torch.Tensor:
    """RandomErasing(p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3)) of a 40x40 crop. u: [..., 23]."""
    s = CROP_SIZE
    area = s * s * _uniform(u[..., 1:11], 0.02, 0.33)
    ratio = torch.exp(_uniform(u[..., 11:21], math.log(0.3), math.log(3.3)))
    h = torch.round(torch.sqrt(area * ratio))
    w = torch.round(torch.sqrt(area / ratio))
    idx, found = _first_accepted((h < s) & (w < s))
    h = h.gather(-1, idx[..., None])[..., 0]
    w = w.gather(-1, idx[..., None])[..., 0]
    top = _randint(u[..., 21], s - h + 1)
    left = _randint(u[..., 22], s - w + 1)
    apply = (u[..., 0] < 0.5) & found
    box = torch.stack([top, left, h, w], dim=-1)
    return torch.where(apply[..., None], box, torch.zeros_like(box)).to(torch.int32)


def _window(lo_x, hi_x, lo_y, hi_y, tx, ty, flip) -> torch.Tensor:
    """Map a valid rectangle in p1 (before translation) to p3 and intersect with the canvas."""
    lo_x, hi_x, lo_y, hi_y = lo_x + tx, hi_x + tx, lo_y + ty, hi_y + ty  # p2 = p1 + t
    flip_lo, flip_hi = (IMAGE_SIZE - 1) - hi_x, (IMAGE_SIZE - 1) - lo_x  # p3.x = 47 - p2.x
    lo_x, hi_x = torch.where(flip, flip_lo, lo_x), torch.where(flip, flip_hi, hi_x)
    return torch.stack([lo_x.clamp(min=_LO), hi_x.clamp(max=_HI),
                        lo_y.clamp(min=_LO), hi_y.clamp(max=_HI)], dim=-1)


def _rotation(angle_deg: torch.Tensor) -> torch.Tensor:
    """p4 -> p3 for a counter-clockwise rotation by angle about the centre (torchvision/PIL)."""
    t = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(t), torch.sin(t)
    c = _CENTRE
    return _affine_rows(cos, -sin, c - cos * c + sin * c, sin, cos, c - sin * c - cos * c)


def _geometry(crop, valid_p1, tx, ty, flip, angle) -> torch.Tensor:
    """geom [B, 16] from the stage-1 map p1 -> source, its valid p1 box, translation, flip, angle."""
    one, zero = torch.ones_like(tx), torch.zeros_like(tx)
    rotation = _rotation(angle)
    # p3 -> p2 (flip) -> p1 (undo translation): x1 = (47 - x3 or x3) - tx, y1 = y3 - ty
    unshift = _affine_rows(torch.where(flip, -one, one), zero,
                           torch.where(flip, IMAGE_SIZE - 1.0, 0.0) - tx, zero, one, -ty)
    affine = _compose(crop, _compose(unshift, rotation))
    window = _window(*valid_p1, tx, ty, flip)
    return torch.cat([affine, rotation, window], dim=-1).to(torch.float32).contiguous()


def _as_batch(*values):
    t = torch.broadcast_tensors(*[torch.as_tensor(v, dtype=torch.float64) for v in values])
    return [v.reshape(-1) for v in t]


def released_geometry(top, left, height, width, tx, ty, flip, angle) -> torch.Tensor:
    """geom of the released pipeline from explicit choices (tensors [B] or scalars):
    RandomResizedCrop box (top, left, height, width) resized to 48x48, translation (tx, ty) pixels,
    horizontal flip (bool), counter-clockwise rotation ``angle`` degrees about the centre."""
    top, left, h, w, tx, ty, flip, angle = _as_batch(top, left, height, width, tx, ty, flip, angle)
    zero = torch.zeros_like(tx)
    sx, sy = w / IMAGE_SIZE, h / IMAGE_SIZE
    # box resized to 48x48, align_corners=False: s = box_origin + (p + 0.5) * extent/48 - 0.5
    crop = _affine_rows(sx, zero, left + 0.5 * sx - 0.5, zero, sy, top + 0.5 * sy - 0.5)
    canvas = (torch.full_like(tx, _LO), torch.full_like(tx, _HI)) * 2
    return _geometry(crop, canvas, tx, ty, flip.bool(), angle)


def paper_geometry(scale, tx, ty, angle) -> torch.Tensor:
    """geom of the paper's recipe: zoom by ``scale`` about the centre (fill 0 outside the source),
    translation (tx, ty) pixels, counter-clockwise rotation ``angle`` degrees; no flip."""
    s, tx, ty, angle = _as_batch(scale, tx, ty, angle)
    zero, c = torch.zeros_like(tx), _CENTRE
    crop = _affine_rows(1 / s, zero, c - c / s, zero, 1 / s, c - c / s)
    half = (IMAGE_SIZE / 2.0) * s  # the source canvas edge seen from p1
    valid = (torch.clamp(c - half, min=_LO), torch.clamp(c + half, max=_HI)) * 2
    return _geometry(crop, valid, tx, ty, torch.zeros_like(tx, dtype=torch.bool), angle)


_DRAWS = {"released": 28, "paper": 7}
_ERASE_DRAWS = 23


def sample_params(recipe: str, batch: int, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> AugmentParams:
    """Draw the augmentation parameters of ``batch`` images for ``recipe`` ("released"/"paper").

    All randomness comes from one ``torch.rand`` call on ``device`` (default: the generator's),
    so a seeded generator gives the same parameters on every run of that device type.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {RECIPES}")
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 0:
        raise ValueError(f"batch must be an integer >= 0, got {batch!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    n = _DRAWS[recipe]
    u = torch.rand(batch, n + NUM_CROPS * _ERASE_DRAWS, generator=generator, device=device,
                   dtype=torch.float64)
    g, ue = u[:, :n], u[:, n:].reshape(batch, NUM_CROPS, _ERASE_DRAWS)
    size = float(IMAGE_SIZE)
    if recipe == "released":
        # 1. RandomResizedCrop(48, scale=(0.8, 1.2), ratio=(3/4, 4/3)): 10 tries, else whole image.
        area = size * size * _uniform(g[:, 0:10], 0.8, 1.2)
        ratio = torch.exp(_uniform(g[:, 10:20], math.log(3 / 4), math.log(4 / 3)))
        w = torch.round(torch.sqrt(area * ratio))
        h = torch.round(torch.sqrt(area / ratio))
        idx, found = _first_accepted((w > 0) & (w <= size) & (h > 0) & (h <= size))
        w = torch.where(found, w.gather(1, idx[:, None])[:, 0], size)
        h = torch.where(found, h.gather(1, idx[:, None])[:, 0], size)
        top = torch.where(found, _randint(g[:, 20], size - h + 1), 0.0)
        left = torch.where(found, _randint(g[:, 21], size - w + 1), 0.0)
        # 2. translate with p=0.5 by round(U(-9.6, 9.6)) pixels (20 % of 48), fill 0.
        shift = g[:, 22] < 0.5
        tx = torch.where(shift, torch.round(_uniform(g[:, 23], -9.6, 9.6)), 0.0)
        ty = torch.where(shift, torch.round(_uniform(g[:, 24], -9.6, 9.6)), 0.0)
        # 3. horizontal flip with p=0.5;  4. rotate with p=0.5 by U(-10, 10) degrees, fill 0.
        flip = g[:, 25] < 0.5
        angle = torch.where(g[:, 26] < 0.5, _uniform(g[:, 27], -10.0, 10.0), 0.0)
        geom = released_geometry(top, left, h, w, tx, ty, flip, angle)
    else:
        # paper: scale ±20 % about the centre, shift ±20 %, rotate ±10°, each with p=0.5; no flip.
        scale = torch.where(g[:, 0] < 0.5, _uniform(g[:, 1], 0.8, 1.2), 1.0)
        shift = g[:, 2] < 0.5
        tx = torch.where(shift, torch.round(_uniform(g[:, 3], -9.6, 9.6)), 0.0)
        ty = torch.where(shift, torch.round(_uniform(g[:, 4], -9.6, 9.6)), 0.0)
        angle = torch.where(g[:, 5] < 0.5, _uniform(g[:, 6], -10.0, 10.0), 0.0)
        geom = paper_geometry(scale, tx, ty, angle)
    return AugmentParams(geom, _sample_erase(ue).contiguous())


def identity_params(batch: int, device: torch.device | str = "cpu") -> AugmentParams:
    """Parameters that leave the image unchanged: augment() then yields the plain ten crops."""
    ident = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], device=device)
    window = torch.tensor([_LO, _HI, _LO, _HI], device=device)
    geom = torch.cat([ident, ident, window]).expand(batch, GEOM_SIZE).contiguous()
    return AugmentParams(geom, torch.zeros(batch, NUM_CROPS, 4, dtype=torch.int32, device=device))


# ----------------------------------------------------------------------------------------------
# The eager reference (the oracle of every fast backend)
# ----------------------------------------------------------------------------------------------

def crop_grid(device) -> tuple[torch.Tensor, torch.Tensor]:
    """Canvas position p4 (x, y) of every output pixel, each [10, 40, 40] float32 (k, v, u)."""
    r = torch.arange(CROP_SIZE, device=device, dtype=torch.float32)
    rows = torch.tensor([rc[0] for rc in CROP_CORNERS] * 2, device=device, dtype=torch.float32)
    cols = torch.tensor([rc[1] for rc in CROP_CORNERS] * 2, device=device, dtype=torch.float32)
    mirror = torch.arange(NUM_CROPS, device=device) >= len(CROP_CORNERS)
    x = cols[:, None] + r[None, :]                                   # [10, 40(u)]
    x = torch.where(mirror[:, None], (IMAGE_SIZE - 1) - x, x)
    y = rows[:, None] + r[None, :]                                   # [10, 40(v)]
    return x[:, None, :].expand(-1, CROP_SIZE, -1), y[:, :, None].expand(-1, -1, CROP_SIZE)


def augment_ref(images: torch.Tensor, params: AugmentParams,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Eager reference: uint8 [B, 48, 48] + params -> crops [B*10, 1, 40, 40] in ``dtype``."""
    check_inputs(images, params)
    check_dtype(dtype)
    b = images.shape[0]
    x, y = crop_grid(images.device)
    g = params.geom[:, :, None, None, None]                           # [B, 16, 1, 1, 1]
    x3 = (g[:, 6] * x + g[:, 7] * y) + g[:, 8]
    y3 = (g[:, 9] * x + g[:, 10] * y) + g[:, 11]
    inside = (x3 >= g[:, 12]) & (x3 <= g[:, 13]) & (y3 >= g[:, 14]) & (y3 <= g[:, 15])
    sx = (g[:, 0] * x + g[:, 1] * y) + g[:, 2]
    sy = (g[:, 3] * x + g[:, 4] * y) + g[:, 5]
    x0, y0 = torch.floor(sx), torch.floor(sy)
    fx, fy = sx - x0, sy - y0
    flat = images.reshape(b, -1).to(torch.float32)
    bidx = torch.arange(b, device=images.device)[:, None, None, None]

    def tap(yy, xx):
        ok = (xx >= 0) & (xx < IMAGE_SIZE) & (yy >= 0) & (yy < IMAGE_SIZE)
        i = (yy.clamp(0, IMAGE_SIZE - 1) * IMAGE_SIZE + xx.clamp(0, IMAGE_SIZE - 1)).long()
        return torch.where(ok, flat[bidx, i], 0.0)

    top = (1 - fx) * tap(y0, x0) + fx * tap(y0, x0 + 1)
    bottom = (1 - fx) * tap(y0 + 1, x0) + fx * tap(y0 + 1, x0 + 1)
    value = (1 - fy) * top + fy * bottom
    value = torch.where(inside, value, 0.0) / 255.0
    e = params.erase[:, :, :, None, None]                             # [B, 10, 4, 1, 1]
    v = torch.arange(CROP_SIZE, device=images.device)[:, None]
    u = torch.arange(CROP_SIZE, device=images.device)[None, :]
    erased = ((v >= e[:, :, 0]) & (v < e[:, :, 0] + e[:, :, 2])
              & (u >= e[:, :, 1]) & (u < e[:, :, 1] + e[:, :, 3]))
    value = torch.where(erased, 0.0, value)
    return value.to(dtype).reshape(b * NUM_CROPS, 1, CROP_SIZE, CROP_SIZE)


def _is_any(device: torch.device) -> bool:
    return True


backends.register("augment", "eager", augment_ref, supports=_is_any, priority=0)


# "triton": the fused Triton kernel, built for this module's geometry
if (_augment_kernel.IMAGE_SIZE, _augment_kernel.CROP_SIZE, _augment_kernel.NUM_CROPS,
        _augment_kernel.GEOM_SIZE) != (IMAGE_SIZE, CROP_SIZE, NUM_CROPS, GEOM_SIZE):
    raise ImportError("fer_fast.kernels.augment is built for another crop geometry")


def augment_triton(images: torch.Tensor, params: AugmentParams,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B, 48, 48] + params -> crops [B*10, 1, 40, 40] in ``dtype``, one Triton launch
    (CUDA; the CPU under TRITON_INTERPRET=1)."""
    check_inputs(images, params)
    check_dtype(dtype)
    return _augment_kernel.ten_crop_augment(images, params.geom, params.erase, dtype)


def _triton_auto(device: torch.device) -> bool:
    """"auto" never picks the interpreter: it is a test vehicle, far slower than native/eager."""
    return not is_interpreter() and _augment_kernel.runs_on(device)


backends.register("augment", "triton", augment_triton, supports=_augment_kernel.runs_on,
                  auto=_triton_auto, priority=20)


# ----------------------------------------------------------------------------------------------
# "native": the C++ (CPU) and CUDA kernels of the extension fer_fast._C (csrc/)
#
# ``_C`` links no libtorch: its functions take raw tensor addresses (``tensor.data_ptr()``), so
# everything that makes such a call safe (device, dtype, shape, contiguity) is checked here
# first. Without ``_C`` (a source tree that was not built) ``import fer_fast`` still works: one
# warning, and the pure-torch backends do the work.
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Public op: one torch.library custom op in front of the backend registry
# ----------------------------------------------------------------------------------------------

@torch.library.custom_op("fer_fast::augment", mutates_args=())
def _augment_op(images: torch.Tensor, geom: torch.Tensor, erase: torch.Tensor,
                dtype: torch.dtype, backend: str) -> torch.Tensor:
    """Opaque to torch.compile: the backend (resolved here, at run time) launches its kernel.

    No autograd formula is registered: the output is a function of uint8 pixels and sampled
    parameters, never differentiated (autograd raises if a caller tries).
    """
    # every backend takes bfloat16 output, the Triton one under the interpreter too: its
    # kernel uses no tl.dot, which the interpreter gets wrong in bfloat16 (see fer_fast.devices)
    impl = backends.resolve("augment", backend, images.device)
    with devices.on_device(images):
        return impl(images, AugmentParams(geom, erase), dtype)


@_augment_op.register_fake
def _augment_fake(images, geom, erase, dtype, backend):
    return images.new_empty((images.shape[0] * NUM_CROPS, 1, CROP_SIZE, CROP_SIZE), dtype=dtype)


def augment(images: torch.Tensor, params: AugmentParams, *, backend: str = "auto",
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Ten augmented crops [B*10, 1, 40, 40] of uint8 ``images`` [B, 48, 48] (crop b*10 + k).

    ``backend``: "auto" (fastest available on the images' device) or one of
    ``fer_fast.backends.names("augment")``. Goes through the custom op ``fer_fast::augment``,
    so it can be called from ``torch.compile(fullgraph=True)`` code.
    """
    check_inputs(images, params)
    check_dtype(dtype)
    return _augment_op(images, params.geom, params.erase, dtype, backend)


def ten_crop(images: torch.Tensor, *, backend: str = "auto",
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Evaluation input: TenCrop(40) of the unmodified images, /255, no erasing."""
    return augment(images, identity_params(images.shape[0], images.device), backend=backend,
                   dtype=dtype)
