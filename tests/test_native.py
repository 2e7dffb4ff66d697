"""The native extension fer_fast._C: its CPU and CUDA augmentation kernels against the eager
reference ``augment_ref``, its argument checks, and the pure-torch fallback without it.

The CPU kernel is compiled with -ffp-contract=off and evaluates every pixel with the reference's
operation order (csrc/augment_math.h), so its fp32 output is bit-identical to the reference's:
the tests check the written-down tolerance (the contract every backend meets) AND bit equality.
fp16/bf16 are one round-to-nearest-even of that fp32 value, hence also bit-identical on CPU.
"""
import os
import shutil
import sys

import pytest
import torch

from conftest import HAS_CUDA, requires_cuda
from fer_fast import augmentation, backends
from fer_fast.augmentation import (CROP_CORNERS, CROP_SIZE, NUM_CROPS, AugmentParams,
                                   augment, augment_ref, identity_params, paper_geometry,
                                   released_geometry, sample_params)
from fer_fast.augmentation import augment_native
from tolerances import tolerance

requires_native = pytest.mark.skipif(not augmentation.native_available(),
                                     reason="fer_fast._C is not built (pip install -e .)")
requires_native_cuda = pytest.mark.skipif(
    not (HAS_CUDA and augmentation.cuda_available()),
    reason="needs a CUDA GPU that _C's CUDA runtime can use (augmentation.cuda_available()); the CPU "
           "kernel (same per-pixel math) is tested against the reference on CPU")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _images(b, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 48, 48), dtype=torch.uint8, generator=gen).to(device)


def _sampled(recipe, b, seed):
    gen = torch.Generator().manual_seed(seed)
    return sample_params(recipe, b, gen)


def _erase_mask(erase):
    """[B*10, 1, 40, 40] bool: the pixels inside each crop's erase box (top, left, h, w)."""
    top, left, h, w = erase.reshape(-1, 4).cpu().T[:, :, None, None]
    v = torch.arange(CROP_SIZE)[:, None]
    u = torch.arange(CROP_SIZE)[None, :]
    return ((v >= top) & (v < top + h) & (u >= left) & (u < left + w))[:, None]


def _check(out, ref, params, dtype, bit_exact):
    assert out.shape == ref.shape == (len(params) * NUM_CROPS, 1, CROP_SIZE, CROP_SIZE)
    assert out.dtype == ref.dtype == dtype
    torch.testing.assert_close(out, ref, **tolerance("augment", dtype))
    if bit_exact:
        assert torch.equal(out, ref), "CPU kernel is not bit-identical to the eager reference"
    # identical zero pattern (window fill and erasing), erased pixels exactly zero
    assert torch.equal(out == 0, ref == 0)
    mask = _erase_mask(params.erase)
    assert (out.cpu()[mask] == 0).all() and (ref.cpu()[mask] == 0).all()


def _border_boxes(b):
    """Per crop: no erase, boxes touching each border and corner, the largest accepted (39x39),
    a full-width strip, a 1x1 pixel; rolled so that every image has them on different crops."""
    boxes = torch.tensor([[0, 0, 0, 0], [0, 0, 39, 39], [1, 1, 39, 39], [0, 1, 39, 39],
                          [1, 0, 39, 39], [39, 39, 1, 1], [0, 0, 7, 40], [20, 0, 20, 3],
                          [0, 37, 40, 3], [17, 23, 1, 1]], dtype=torch.int32)
    return torch.stack([boxes.roll(i, 0) for i in range(b)]).contiguous()


def _extreme_params():
    """Hand-built parameters at the limits of both recipes (3 images each)."""
    geoms = {
        # ±10° rotation with ±10 px shifts, flipped or not, the smallest accepted crop boxes
        # (area 0.8 * 48^2 at the ratio limits) at opposite corners
        "released_max": released_geometry(top=[0, 9, 5], left=[9, 0, 2], height=[48, 39, 43],
                                          width=[39, 48, 43], tx=[10, -10, 10], ty=[10, -10, -10],
                                          flip=[True, False, True], angle=[10.0, -10.0, -10.0]),
        # the largest box (whole image) with one stage at a time: flip, rotation, shift
        "released_whole": released_geometry(top=0, left=0, height=48, width=48, tx=[0, 0, 10],
                                            ty=[0, 0, -10], flip=[True, False, False],
                                            angle=[0.0, 10.0, 0.0]),
        # paper: the zoom limits 0.8 / 1.2 with max shift and rotation
        "paper_max": paper_geometry(scale=[0.8, 1.2, 1.2], tx=[-10, 10, 0], ty=[10, -10, 0],
                                    angle=[10.0, -10.0, 0.0]),
    }
    params = {name: AugmentParams(g, _border_boxes(g.shape[0])) for name, g in geoms.items()}
    params["no_erase"] = AugmentParams(geoms["released_max"],
                                       torch.zeros(3, NUM_CROPS, 4, dtype=torch.int32))
    return params


# ---- CPU kernel against the reference ---------------------------------------------------------

@requires_native
@pytest.mark.parametrize("batch", [1, 3, 7])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("recipe", ["released", "paper"])
def test_cpu_matches_reference_on_sampled_params(recipe, dtype, batch):
    seed = 100 * batch + DTYPES.index(dtype) + len(recipe)
    images, params = _images(batch, seed), _sampled(recipe, batch, seed + 1)
    ref = augment_ref(images, params, dtype)
    for threads in (1, 2):
        out = augment_native(images, params, dtype, num_threads=threads)
        _check(out, ref, params, dtype, bit_exact=True)


@requires_native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(_extreme_params()))
def test_cpu_matches_reference_on_extremes(case, dtype):
    params = _extreme_params()[case]
    images = _images(len(params), 20 + len(case))
    out = augment_native(images, params, dtype, num_threads=2)
    _check(out, augment_ref(images, params, dtype), params, dtype, bit_exact=True)


@requires_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cpu_identity_gives_exact_ten_crops(dtype):
    images = _images(3, 4)
    out = augment_native(images, identity_params(3), dtype)
    src = images.float() / 255.0
    for k in range(NUM_CROPS):
        r, c = CROP_CORNERS[k % 5]
        canvas = src if k < 5 else src.flip(-1)
        expect = canvas[:, r:r + CROP_SIZE, c:c + CROP_SIZE].to(dtype)
        assert torch.equal(out[k::NUM_CROPS, 0], expect), f"crop {k}"


@requires_native
def test_cpu_result_does_not_depend_on_thread_count():
    images, params = _images(5, 8), _sampled("released", 5, 9)
    outs = [augment_native(images, params, num_threads=t) for t in (1, 2, 3, 64)]
    for out in outs[1:]:
        assert torch.equal(out, outs[0])


@requires_native
def test_cpu_empty_batch():
    out = augment_native(torch.empty(0, 48, 48, dtype=torch.uint8), identity_params(0),
                         torch.bfloat16)
    assert out.shape == (0, 1, CROP_SIZE, CROP_SIZE) and out.dtype == torch.bfloat16


# ---- registration, errors ---------------------------------------------------------------------

@requires_native
def test_native_is_the_cpu_default_and_eager_stays_selectable():
    cpu = backends.available("augment", "cpu")
    assert cpu.index("native") < cpu.index("eager")
    assert backends.resolve("augment", "auto", "cpu") is augment_native
    images, params = _images(2, 11), _sampled("paper", 2, 12)
    assert torch.equal(augment(images, params), augment(images, params, backend="eager"))


def test_native_cuda_only_where_a_gpu_is_usable():
    on_cuda = backends.available("augment", "cuda")
    assert ("native" in on_cuda) == augmentation.cuda_available()
    if not HAS_CUDA:
        assert not augmentation.cuda_available()
    if augmentation.cuda_available() and "triton" in on_cuda:  # on a GPU the Triton backend is preferred
        assert on_cuda.index("triton") < on_cuda.index("native")


@requires_native
def test_rejects_bad_inputs_with_clear_errors():
    images, params = _images(2, 13), identity_params(2)
    with pytest.raises(TypeError, match="uint8"):
        augment_native(images.float(), params)
    with pytest.raises(ValueError, match=r"shape \[B, 48, 48\]"):
        augment_native(images[:, :40].contiguous(), params)
    with pytest.raises(ValueError, match="params.geom"):
        augment_native(images, AugmentParams(params.geom.double(), params.erase))
    with pytest.raises(ValueError, match="params.erase"):
        augment_native(images, AugmentParams(params.geom, params.erase[:1].contiguous()))
    with pytest.raises(ValueError, match="images must be contiguous"):
        augment_native(images.transpose(1, 2), params)
    with pytest.raises(ValueError, match="params.geom must be contiguous"):
        augment_native(images, AugmentParams(params.geom.T.contiguous().T, params.erase))
    with pytest.raises(ValueError, match="is on meta but images are on cpu"):
        augment_native(images, params.to("meta"))
    with pytest.raises(RuntimeError, match="no native kernel for device meta"):
        augment_native(images.to("meta"), params.to("meta"))
    with pytest.raises(ValueError, match="dtype must be one of"):
        augment_native(images, params, torch.float64)
    with pytest.raises(ValueError, match="num_threads must be an int >= 1"):
        augment_native(images, params, num_threads=0)


@requires_native
def test_extension_checks_its_own_arguments():
    """The raw binding refuses null pointers and bad sizes (std::invalid_argument -> ValueError)."""
    C = augmentation._C
    images, params = _images(1, 14), identity_params(1)
    out = torch.empty(10, 1, 40, 40)
    ptrs = [images.data_ptr(), params.geom.data_ptr(), params.erase.data_ptr(), out.data_ptr()]
    with pytest.raises(ValueError, match="null pointer"):
        C.augment_cpu(ptrs[0], 0, ptrs[2], ptrs[3], 1, 0, 1)
    with pytest.raises(ValueError, match="out_dtype must be 0"):
        C.augment_cpu(*ptrs, 1, 7, 1)
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        C.augment_cpu(*ptrs, 1, 0, 0)
    with pytest.raises(ValueError, match="batch must be >= 0"):
        C.augment_cpu(*ptrs, -1, 0, 1)
    C.augment_cpu(*ptrs, 1, 0, 1)
    assert torch.equal(out, augment_ref(images, params))


def test_cuda_kernels_are_built_when_nvcc_is_present():
    """CI compiles the CUDA kernels (nvcc is on the machine) unless FER_FAST_CPU_ONLY asks not to."""
    if shutil.which("nvcc") is None:
        pytest.skip(reason="nvcc is not on PATH: the extension is built CPU-only here")
    if os.environ.get("FER_FAST_CPU_ONLY", "0") not in ("", "0"):
        pytest.skip(reason="FER_FAST_CPU_ONLY is set: the extension is built CPU-only")
    assert augmentation.native_available(), "fer_fast._C is not built"
    assert augmentation._C.has_cuda(), "nvcc is present but fer_fast._C was built without CUDA"
    # static CUDA runtime: the query works (0) even without a driver
    assert augmentation._C.cuda_device_count() >= 0


# ---- without the extension ---------------------------------------------------------------------

def test_missing_extension_warns_and_returns_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "fer_fast._C", None)  # makes `import fer_fast._C` fail
    with pytest.warns(RuntimeWarning, match=r"fer_fast\._C is not available.*pure-torch"):
        assert augmentation._load_native() is None


def test_pure_torch_path_without_extension(monkeypatch):
    """With _C absent "native" is unavailable everywhere and "auto" falls back to pure torch."""
    monkeypatch.setattr(augmentation, "_C", None)
    assert not augmentation.native_available() and not augmentation.cuda_available()
    assert "native" not in backends.available("augment", "cpu")
    images, params = _images(2, 15), _sampled("released", 2, 16)
    assert torch.equal(augment(images, params), augment_ref(images, params))
    with pytest.raises(RuntimeError, match="_C is not built"):
        augment_native(images, params)


# ---- CUDA kernel -------------------------------------------------------------------------------

@requires_cuda
@requires_native_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("recipe", ["released", "paper"])
@pytest.mark.parametrize("batch", [7, 64])
def test_cuda_matches_reference_and_cpu_kernel(recipe, dtype, batch):
    images, params = _images(batch, 30 + batch), _sampled(recipe, batch, 31 + batch)
    out = augment_native(images.cuda(), params.to("cuda"), dtype)
    # the eager reference on CUDA divides by 255 as a multiply by 1/255: within tolerance
    ref = augment_ref(images.cuda(), params.to("cuda"), dtype)
    _check(out, ref, params, dtype, bit_exact=False)
    # same per-pixel math and no FMA contraction (-fmad=false): identical to the CPU kernel
    assert torch.equal(out.cpu(), augment_native(images, params, dtype))


@requires_cuda
@requires_native_cuda
@pytest.mark.parametrize("case", sorted(_extreme_params()))
def test_cuda_matches_cpu_kernel_on_extremes(case):
    params = _extreme_params()[case]
    images = _images(len(params), 40 + len(case))
    for dtype in (torch.float32, torch.float16):
        out = augment_native(images.cuda(), params.to("cuda"), dtype)
        _check(out, augment_ref(images.cuda(), params.to("cuda"), dtype), params, dtype,
               bit_exact=False)
        assert torch.equal(out.cpu(), augment_native(images, params, dtype))


@requires_cuda
@requires_native_cuda
def test_cuda_runs_on_the_current_stream():
    images, params = _images(64, 50).cuda(), _sampled("released", 64, 51).to("cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = augment_native(images, params, torch.float16)
        total = out.float().sum()  # queued behind the kernel on the same stream
    torch.cuda.current_stream().wait_stream(stream)
    ref = augment_ref(images, params, torch.float16)
    torch.testing.assert_close(total, ref.float().sum(), rtol=1e-4, atol=1e-2)
