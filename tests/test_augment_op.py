"""The public augmentation API: the ``fer_fast::augment`` custom op, torch.compile, backend
choice, input errors, and the parameter sampler's device handling."""
import pytest
import torch

import fer_fast
from conftest import in_fresh_process
from fer_fast import backends
from fer_fast.augmentation import (CROP_CORNERS, CROP_SIZE, NUM_CROPS, AugmentParams,
                                   augment, augment_ref, identity_params, sample_params,
                                   ten_crop)
from tolerances import tolerance


def _batch(b, seed, recipe="released"):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, 48, 48), dtype=torch.uint8, generator=gen)
    return images, sample_params(recipe, b, gen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_augment_auto_matches_reference(dtype):
    images, params = _batch(5, 21)
    out = augment(images, params, dtype=dtype)
    assert out.shape == (5 * NUM_CROPS, 1, CROP_SIZE, CROP_SIZE) and out.dtype == dtype
    torch.testing.assert_close(out, augment_ref(images, params, dtype),
                               **tolerance("augment", dtype))


def test_auto_on_cpu_never_picks_the_interpreter():
    """Under TRITON_INTERPRET=1 "triton" runs on CPU when named, but "auto" must not choose it."""
    from fer_fast.kernels import is_interpreter
    cpu = backends.available("augment", "cpu")
    assert ("triton" in cpu) == is_interpreter()
    best = "native" if "native" in cpu else "eager"
    assert backends.resolve("augment", "auto", "cpu") is backends.resolve("augment", best, "cpu")


def test_op_is_registered_with_fake_impl():
    images, params = _batch(2, 22)
    torch.library.opcheck(torch.ops.fer_fast.augment.default,
                          (images, params.geom, params.erase, torch.float16, "eager"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@in_fresh_process
def test_augment_under_torch_compile_fullgraph(dtype):
    def step(images, geom, erase):
        crops = fer_fast.augment(images, AugmentParams(geom, erase), backend="auto", dtype=dtype)
        return crops.float().mean(dim=(1, 2, 3))

    images, params = _batch(3, 23, "paper")
    compiled = torch.compile(step, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(images, params.geom, params.erase),
                               step(images, params.geom, params.erase), rtol=0, atol=0)


def test_augment_is_not_differentiable():
    images, params = _batch(2, 24)
    out = augment(images, params)
    assert not out.requires_grad
    geom = params.geom.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="[Aa]utograd"):
        augment(images, AugmentParams(geom, params.erase)).sum().backward()


def test_ten_crop_is_plain_crops():
    images, _ = _batch(3, 25)
    out = ten_crop(images)
    src = images.float() / 255.0
    for k in range(NUM_CROPS):
        r, c = CROP_CORNERS[k % 5]
        canvas = src if k < 5 else src.flip(-1)
        assert torch.equal(out[k::NUM_CROPS, 0], canvas[:, r:r + CROP_SIZE, c:c + CROP_SIZE])


def test_augment_errors_name_the_problem():
    images, params = _batch(2, 26)
    cases = [
        (TypeError, "images must be a uint8", lambda: augment(images.float(), params)),
        (ValueError, r"images must have shape \[B, 48, 48\]",
         lambda: augment(images[:, :40], params)),
        (ValueError, "params.geom must be float32",
         lambda: augment(images, AugmentParams(params.geom.double(), params.erase))),
        (ValueError, "params.geom must be float32",
         lambda: augment(images, AugmentParams(params.geom[:1], params.erase))),
        (ValueError, "params.erase must be int32",
         lambda: augment(images, AugmentParams(params.geom, params.erase.long()))),
        (ValueError, "params.erase must be int32",
         lambda: augment(images, AugmentParams(params.geom, params.erase[:, :5].contiguous()))),
        (ValueError, "params.geom is on meta but images are on cpu",
         lambda: augment(images, AugmentParams(params.geom.to("meta"), params.erase))),
        (ValueError, "images must be contiguous", lambda: augment(images.mT, params)),
        (ValueError, "dtype must be float32, float16 or bfloat16",
         lambda: augment(images, params, dtype=torch.float64)),
        (ValueError, "unknown backend 'cuda_magic'",
         lambda: augment(images, params, backend="cuda_magic")),
    ]
    for exc, message, call in cases:
        with pytest.raises(exc, match=message):
            call()


@pytest.mark.parametrize("recipe", ["released", "paper"])
def test_sample_params_on_generator_device(recipe):
    """Parameters are drawn on the generator's device, seeded, with the documented layout."""
    gen = torch.Generator(device="cpu").manual_seed(31)
    p = sample_params(recipe, 17, gen)
    assert p.geom.device == p.erase.device == gen.device
    assert p.geom.shape == (17, 16) and p.geom.dtype == torch.float32
    assert p.erase.shape == (17, NUM_CROPS, 4) and p.erase.dtype == torch.int32
    again = sample_params(recipe, 17, torch.Generator(device="cpu").manual_seed(31))
    assert torch.equal(p.geom, again.geom) and torch.equal(p.erase, again.erase)
    other = sample_params(recipe, 17, torch.Generator(device="cpu").manual_seed(32))
    assert not torch.equal(p.geom, other.geom)


@pytest.mark.parametrize("recipe", ["released", "paper"])
def test_sample_params_has_no_host_round_trip(recipe):
    """On the meta device no value is ever materialised: any .item(), .cpu() or data-dependent
    Python branch in the sampler would raise here."""
    p = sample_params(recipe, 64, device="meta")
    assert p.geom.device.type == p.erase.device.type == "meta"
    assert p.geom.shape == (64, 16) and p.erase.shape == (64, NUM_CROPS, 4)


def test_identity_params_layout():
    p = identity_params(4)
    assert p.geom.shape == (4, 16) and p.geom.is_contiguous() and not p.erase.any()


def test_the_function_and_the_module_have_different_names():
    """``fer_fast.augment`` is the op; its module, ``fer_fast.augmentation``, stays reachable."""
    import fer_fast.augmentation
    assert fer_fast.augment is fer_fast.augmentation.augment
    assert fer_fast.augmentation.identity_params(2).geom.shape == (2, 16)
