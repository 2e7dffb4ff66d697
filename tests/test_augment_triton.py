"""The Triton augmentation kernel against the eager reference ``augment_ref``.

On CPU the kernel runs under TRITON_INTERPRET=1 at small batch (a few programs); on a GPU the
same checks run at B=64 against eager and, when built, the native CUDA backend. The kernel
rounds every product and sum as the reference does (FP contraction off, IEEE division; see
kernels/augment.py), so a pixel exactly on a window edge or an integer source coordinate lands
on the same side in both: every pixel must match within the table's tolerance, with no
allowance for edge flips (on CPU the fp32 results are in fact bit-identical).
"""
import pytest
import torch

from conftest import HAS_CUDA, requires_cuda
from fer_fast import backends
from fer_fast.augmentation import (CROP_CORNERS, CROP_SIZE, NUM_CROPS, AugmentParams,
                                   augment_ref, augment_triton, identity_params, paper_geometry,
                                   released_geometry, sample_params)
from tolerances import tolerance

DEVICE = "cuda" if HAS_CUDA else "cpu"
DTYPES = [torch.float32, torch.float16]


def _images(b, gen, device="cpu"):
    return torch.randint(0, 256, (b, 48, 48), dtype=torch.uint8, generator=gen).to(device)


def _erase_mask(erase):
    """[B*10, 1, 40, 40] bool: pixels inside each crop's erase box."""
    e = erase.reshape(-1, 4)[:, :, None, None].cpu()
    v = torch.arange(CROP_SIZE)[:, None]
    u = torch.arange(CROP_SIZE)[None, :]
    return ((v >= e[:, 0]) & (v < e[:, 0] + e[:, 2]) & (u >= e[:, 1])
            & (u < e[:, 1] + e[:, 3]))[:, None]


def _assert_matches(out, ref, params, dtype):
    assert out.shape == ref.shape and out.dtype == ref.dtype == dtype
    torch.testing.assert_close(out, ref, **tolerance("augment", dtype))
    # identical zero pattern (fill, erase) and every erased pixel is exactly 0
    assert torch.equal(out == 0, ref == 0)
    assert (out.cpu()[_erase_mask(params.erase)] == 0).all()


def _erase_extremes(b):
    """Per-crop boxes: none, touching each border, the largest accepted (39x39), a 1x1 corner."""
    boxes = torch.tensor([[0, 0, 0, 0], [0, 0, 39, 39], [1, 1, 39, 39], [0, 1, 39, 39],
                          [1, 0, 39, 39], [39, 39, 1, 1], [0, 0, 1, 40 - 1], [0, 20, 39, 20],
                          [13, 0, 5, 39], [0, 0, 0, 0]], dtype=torch.int32)
    return torch.stack([boxes.roll(i, 0) for i in range(b)]).contiguous()


def _extreme_geometries():
    """Named hand-built geometries at the limits of both recipes (3 images each)."""
    return {
        # max rotation both ways with max shift, flipped and not, smallest accepted crop boxes
        "released_max": released_geometry(top=[5, 0, 0], left=[0, 5, 11], height=[43, 43, 48],
                                          width=[43, 43, 37], tx=[10, -10, 10], ty=[-10, 10, 10],
                                          flip=[True, False, True], angle=[10.0, -10.0, 10.0]),
        # largest box (the fallback: whole image), flip only / rotation only / shift only
        "released_whole": released_geometry(top=0, left=0, height=48, width=48,
                                            tx=[0, 0, -10], ty=[0, 0, -10],
                                            flip=[True, False, False], angle=[0.0, -10.0, 0.0]),
        "paper_max": paper_geometry(scale=[0.8, 1.2, 0.8], tx=[10, -10, -10], ty=[10, -10, 0],
                                    angle=[-10.0, 10.0, 3.0]),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("recipe", ["released", "paper"])
def test_triton_matches_reference_on_sampled_params(recipe, dtype):
    gen = torch.Generator().manual_seed(1000 + len(recipe) + dtype.itemsize)
    b = 64 if HAS_CUDA else 3
    images = _images(b, gen, DEVICE)
    params = sample_params(recipe, b, gen).to(DEVICE)
    out = augment_triton(images, params, dtype)
    _assert_matches(out, augment_ref(images, params, dtype), params, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(_extreme_geometries()))
def test_triton_matches_reference_on_extremes(case, dtype):
    geom = _extreme_geometries()[case]
    gen = torch.Generator().manual_seed(7 + len(case))
    images = _images(geom.shape[0], gen, DEVICE)
    params = AugmentParams(geom, _erase_extremes(geom.shape[0])).to(DEVICE)
    out = augment_triton(images, params, dtype)
    _assert_matches(out, augment_ref(images, params, dtype), params, dtype)


def test_triton_identity_gives_exact_ten_crops():
    gen = torch.Generator().manual_seed(3)
    images = _images(2, gen, DEVICE)
    out = augment_triton(images, identity_params(2, DEVICE), torch.float32).cpu()
    src = images.cpu().float() / 255.0
    mirrored = src.flip(-1)
    for k in range(NUM_CROPS):
        r, c = CROP_CORNERS[k % 5]
        canvas = src if k < 5 else mirrored
        expect = canvas[:, r:r + CROP_SIZE, c:c + CROP_SIZE]
        assert torch.equal(out[k::NUM_CROPS, 0], expect), f"crop {k}"


def test_triton_empty_batch():
    images = torch.empty(0, 48, 48, dtype=torch.uint8, device=DEVICE)
    out = augment_triton(images, identity_params(0, DEVICE), torch.float16)
    assert out.shape == (0, 1, CROP_SIZE, CROP_SIZE) and out.dtype == torch.float16


def test_triton_rejects_bad_inputs():
    gen = torch.Generator().manual_seed(5)
    images = _images(2, gen, DEVICE)
    params = identity_params(2, DEVICE)
    with pytest.raises(TypeError, match="uint8"):
        augment_triton(images.float(), params)
    with pytest.raises(ValueError, match="params.geom"):
        augment_triton(images, AugmentParams(params.geom[:, :12].contiguous(), params.erase))
    with pytest.raises(ValueError, match="contiguous"):
        augment_triton(images.transpose(1, 2), params)
    with pytest.raises(ValueError, match="dtype"):
        augment_triton(images, params, torch.float64)
    with pytest.raises(RuntimeError, match="Triton kernel runs on"):
        augment_triton(images.to("meta"), params.to("meta"))


def test_triton_backend_registration():
    """Explicitly selectable where it runs; "auto" only picks it on CUDA, never the interpreter."""
    assert "triton" in backends.names("augment")
    assert "triton" in backends.available("augment", DEVICE)
    chosen = backends.resolve("augment", "auto", "cpu")
    assert chosen is not augment_triton
    if HAS_CUDA:
        assert backends.available("augment", "cuda")[0] == "triton"


# ---- GPU: B=64, all three output dtypes, against eager and the native CUDA kernel ----------

@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("recipe", ["released", "paper"])
def test_triton_cuda_matches_eager_and_native(recipe, dtype):
    gen = torch.Generator(device="cuda").manual_seed(11)
    images = torch.randint(0, 256, (64, 48, 48), dtype=torch.uint8, device="cuda",
                           generator=gen)
    params = sample_params(recipe, 64, gen)
    out = augment_triton(images, params, dtype)
    _assert_matches(out, augment_ref(images, params, dtype), params, dtype)
    if "native" not in backends.available("augment", "cuda"):
        pytest.skip(reason="native CUDA backend not built (fer_fast.augmentation reports it unavailable)")
    native = backends.resolve("augment", "native", "cuda")(images, params, dtype)
    _assert_matches(out, native, params, dtype)
