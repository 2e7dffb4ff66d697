"""The eager reference augmentation and the parameter sampler against docs/spec.md."""
import math
import random

import pytest
import torch

from fer_fast.augmentation import (CROP_SIZE, NUM_CROPS, AugmentParams, augment_ref,
                                   identity_params, paper_geometry, released_geometry,
                                   sample_params)


def _images(b, seed=0, low=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, 256, (b, 48, 48), generator=g, dtype=torch.uint8)


def _params(geom, batch=2):
    """Params applying one geometry (a [1, 16] builder result) to every image, no erasing."""
    return AugmentParams(geom.expand(batch, -1).contiguous(),
                         torch.zeros(batch, NUM_CROPS, 4, dtype=torch.int32))


def _crops(images, params):
    return augment_ref(images, params).reshape(images.shape[0], NUM_CROPS, CROP_SIZE, CROP_SIZE)


def test_identity_gives_the_exact_ten_crops():
    x = _images(3)
    out = _crops(x, identity_params(3))
    ref = x.float() / 255
    mirror = ref.flip(-1)
    for k, (r, c) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)]):
        torch.testing.assert_close(out[:, k], ref[:, r:r + 40, c:c + 40], rtol=0, atol=0)
        torch.testing.assert_close(out[:, 5 + k], mirror[:, r:r + 40, c:c + 40], rtol=0, atol=0)
    # the 6th crop is the mirror image of the original's top-RIGHT region
    torch.testing.assert_close(out[:, 5], ref[:, 0:40, 8:48].flip(-1), rtol=0, atol=0)


def test_translation_moves_pixels_and_fills_zero():
    x = _images(2, low=1)
    out = _crops(x, _params(released_geometry(0, 0, 48, 48, 3, -2, False, 0.0)))
    ref = x.float() / 255
    crop = out[:, 0]  # canvas rows/cols 0..39: value at (v, u) is the source at (v + 2, u - 3)
    torch.testing.assert_close(crop[:, :, 3:], ref[:, 2:42, 0:37], rtol=0, atol=0)
    assert torch.all(crop[:, :, :3] == 0)


def test_translation_fill_survives_zoom():
    # a zoomed-in crop box maps the whole canvas into the image, yet translated-in pixels stay 0
    x = _images(2, low=1)
    out = _crops(x, _params(released_geometry(4, 4, 40, 40, 5, 0, False, 0.0)))
    assert torch.all(out[:, 0, :, :5] == 0)
    assert torch.all(out[:, 0, :, 5:] > 0)


def test_flip_mirrors_the_canvas():
    x = _images(2)
    flipped = _crops(x, _params(released_geometry(0, 0, 48, 48, 0, 0, True, 0.0)))
    plain = _crops(x, identity_params(2))
    torch.testing.assert_close(flipped[:, 0], plain[:, 5], rtol=0, atol=0)
    torch.testing.assert_close(flipped[:, 5], plain[:, 0], rtol=0, atol=0)


def test_rotation_is_counter_clockwise_about_the_centre():
    x = _images(2)
    out = _crops(x, _params(released_geometry(0, 0, 48, 48, 0, 0, False, 90.0)))
    rotated = torch.rot90(x.float() / 255, k=1, dims=(1, 2))  # numpy/torch rot90: counter-clockwise
    torch.testing.assert_close(out[:, 4], rotated[:, 4:44, 4:44], atol=1e-6, rtol=0)


def test_rotation_fill_is_zero_in_the_corners():
    x = _images(1, low=1)
    out = _crops(x, _params(released_geometry(4, 4, 40, 40, 0, 0, False, 10.0), 1))
    # crop 0 covers canvas (0..39, 0..39): its top-left corner pixel rotates out of the canvas
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 20, 20] > 0


def test_crop_box_zoom_is_bilinear_align_corners_false():
    ramp = (torch.arange(48) * 5).to(torch.uint8).expand(1, 48, 48).contiguous()  # value = 5 * column
    out = _crops(ramp, _params(released_geometry(8, 8, 24, 24, 0, 0, False, 0.0), 1))
    u = torch.arange(40, dtype=torch.float32)
    expected = 5 * (8 + (u + 0.5) * 0.5 - 0.5) / 255  # bilinear of a linear ramp is exact
    torch.testing.assert_close(out[0, 0], expected.expand(40, 40), atol=1e-6, rtol=0)


def test_paper_zoom_out_fills_zero_outside_the_source():
    x = _images(1, low=1)
    out = _crops(x, _params(paper_geometry(0.5, 0, 0, 0.0), 1))  # image shrinks to the central 24x24
    centre = out[0, 4]  # canvas 4..43; the source covers canvas 11.5 .. 35.5
    assert torch.all(centre[:7] == 0) and torch.all(centre[:, :7] == 0)
    assert torch.all(centre[8:31, 8:31] > 0)


def test_erase_boxes_land_where_the_parameters_say():
    x = _images(2, low=1)
    erase = torch.zeros(2, NUM_CROPS, 4, dtype=torch.int32)
    erase[0, 3] = torch.tensor([0, 0, 5, 7])      # touching the top-left corner
    erase[1, 9] = torch.tensor([30, 25, 10, 15])  # touching the bottom-right corner
    out = _crops(x, AugmentParams(identity_params(2).geom, erase))
    expect = torch.ones_like(out, dtype=torch.bool)
    expect[0, 3, 0:5, 0:7] = False
    expect[1, 9, 30:40, 25:40] = False
    assert torch.equal(out > 0, expect)


@pytest.mark.parametrize("recipe", ["released", "paper"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_output_range_dtype_and_layout(recipe, dtype):
    x = _images(5)
    p = sample_params(recipe, 5, torch.Generator().manual_seed(1))
    out = augment_ref(x, p, dtype)
    assert out.shape == (50, 1, 40, 40) and out.dtype == dtype
    assert out.min() >= 0 and out.max() <= 1 and out.max() > 0.5


def test_bad_inputs_are_named():
    p = identity_params(2)
    with pytest.raises(TypeError, match="uint8"):
        augment_ref(torch.zeros(2, 48, 48), p)
    with pytest.raises(ValueError, match=r"\[B, 48, 48\]"):
        augment_ref(torch.zeros(2, 40, 40, dtype=torch.uint8), p)
    with pytest.raises(ValueError, match="params.geom"):
        augment_ref(torch.zeros(3, 48, 48, dtype=torch.uint8), p)
    with pytest.raises(ValueError, match="params.erase"):
        augment_ref(torch.zeros(2, 48, 48, dtype=torch.uint8),
                    AugmentParams(p.geom, p.erase.to(torch.int64)))


# ----------------------------------------------------------------------------------------------
# Sampler distributions: the vectorised sampler against a literal per-image transcription of
# torchvision's algorithms (different random streams, so distributions are compared).
# ----------------------------------------------------------------------------------------------

N = 20000


def _rrc_area_literal(rng):
    for _ in range(10):
        area = 48 * 48 * rng.uniform(0.8, 1.2)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= 48 and 0 < h <= 48:
            return w * h
    return 48 * 48


def _erase_area_literal(rng):
    if rng.random() >= 0.5:
        return 0
    for _ in range(10):
        area = 1600 * rng.uniform(0.02, 0.33)
        ratio = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
        h, w = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if h < 40 and w < 40:
            return h * w
    return 0


@pytest.fixture(scope="module")
def released():
    return sample_params("released", N, torch.Generator().manual_seed(1234))


def test_sampler_is_deterministic_per_seed():
    a = sample_params("released", 64, torch.Generator().manual_seed(7))
    b = sample_params("released", 64, torch.Generator().manual_seed(7))
    c = sample_params("released", 64, torch.Generator().manual_seed(8))
    assert torch.equal(a.geom, b.geom) and torch.equal(a.erase, b.erase)
    assert not torch.equal(a.geom, c.geom)


def test_rotation_and_flip_probabilities(released):
    rot = released.geom[:, 6:12].double()
    angle = torch.rad2deg(torch.atan2(rot[:, 3], rot[:, 0]))
    turned = angle.abs() > 1e-6
    assert abs(turned.double().mean() - 0.5) < 0.02
    assert angle.abs().max() <= 10 + 1e-4
    assert abs(angle[turned].abs().mean() - 5.0) < 0.2  # |U(-10, 10)| has mean 5
    flipped = released.geom[:, 0] < 0  # with |angle| <= 10 degrees the sign of a0 is the flip
    assert abs(flipped.double().mean() - 0.5) < 0.02


def test_translation_distribution(released):
    w = released.geom[:, 12:16].double()
    tx = (w[:, 0] + 0.5) + (w[:, 1] - 47.5)  # one of the two terms is zero; sign flips with flip
    ty = (w[:, 2] + 0.5) + (w[:, 3] - 47.5)
    assert torch.all(tx == tx.round()) and torch.all(ty == ty.round())
    assert tx.abs().max() == 10 and ty.abs().max() == 10  # round(U(-9.6, 9.6)) reaches ±10
    still = (tx == 0) & (ty == 0)
    expected = 0.5 + 0.5 / 19.2 ** 2  # not applied, or applied and both rounded to 0
    assert abs(still.double().mean() - expected) < 0.02


def test_random_resized_crop_area_matches_torchvision(released):
    a = released.geom[:, 0:6].double()
    rot = released.geom[:, 6:12].double()
    det_rot = rot[:, 0] * rot[:, 4] - rot[:, 1] * rot[:, 3]
    area = (a[:, 0] * a[:, 4] - a[:, 1] * a[:, 3]).abs() / det_rot * 48 * 48  # w*h of the box
    assert torch.allclose(area, area.round(), atol=1e-2)
    rng = random.Random(0)
    literal = torch.tensor([_rrc_area_literal(rng) for _ in range(N)], dtype=torch.float64)
    assert area.max() <= 48 * 48 + 1e-2
    assert abs(area.mean() - literal.mean()) < 0.01 * literal.mean()
    for q in (0.1, 0.5, 0.9):
        assert abs(area.quantile(q) - literal.quantile(q)) < 0.02 * literal.quantile(q)


def test_random_erasing_matches_torchvision(released):
    e = released.erase.reshape(-1, 4).double()
    top, left, h, w = e.unbind(-1)
    assert torch.all(top + h <= 40) and torch.all(left + w <= 40) and torch.all(h < 40)
    area = h * w
    rng = random.Random(0)
    literal = torch.tensor([_erase_area_literal(rng) for _ in range(area.numel())],
                           dtype=torch.float64)
    assert abs((area > 0).double().mean() - (literal > 0).double().mean()) < 0.01
    assert abs(area.mean() - literal.mean()) < 0.02 * literal.mean()
    on = area > 0
    # top-left uniform over the valid range: the box centre averages to the crop centre
    assert abs((top[on] + h[on] / 2).mean() - 20) < 0.3
    assert abs((left[on] + w[on] / 2).mean() - 20) < 0.3


def test_paper_recipe_distribution():
    p = sample_params("paper", N, torch.Generator().manual_seed(5))
    a, rot = p.geom[:, 0:6].double(), p.geom[:, 6:12].double()
    scale = 1 / (a[:, 0] * a[:, 4] - a[:, 1] * a[:, 3]).sqrt()
    scaled = (scale - 1).abs() > 1e-6
    assert abs(scaled.double().mean() - 0.5) < 0.02
    assert scale.min() >= 0.8 - 1e-4 and scale.max() <= 1.2 + 1e-4
    assert torch.all(a[:, 0] > 0)  # never flipped
    angle = torch.rad2deg(torch.atan2(rot[:, 3], rot[:, 0]))
    assert abs((angle.abs() > 1e-6).double().mean() - 0.5) < 0.02
