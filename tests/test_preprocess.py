"""The one conversion of pictures to 48x48 uint8 gray faces (shared by image folders and the
predictor): colour, bit depth, channel order, sizes, face boxes, strict mode."""
import sys

import numpy as np
import pytest
from PIL import Image

from fer_fast.preprocess import ImageError, load_gray, square_crop, to_fer_image

RNG = np.random.default_rng(0)


def test_colour_is_pillows_luma_in_any_form(tmp_path):
    rgb = RNG.integers(0, 256, (31, 57, 3)).astype(np.uint8)
    want = np.asarray(Image.fromarray(rgb).convert("L"))
    rgba = np.concatenate([rgb, RNG.integers(0, 256, (31, 57, 1)).astype(np.uint8)], axis=2)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    for got in (load_gray(rgb), load_gray(rgb[..., ::-1].copy(), channel_order="BGR"),
                load_gray(rgba), load_gray(Image.fromarray(rgb)), load_gray(tmp_path / "c.png"),
                load_gray(str(tmp_path / "c.png"))):
        np.testing.assert_array_equal(got, want)


def test_sixteen_bits_round_to_eight(tmp_path):
    gray8 = RNG.integers(0, 256, (20, 30)).astype(np.uint8)
    np.testing.assert_array_equal(load_gray(gray8.astype(np.uint16) * 257), gray8)
    assert load_gray(np.array([[0, 128, 129, 385, 65535]], np.uint16)).tolist() == \
        [[0, 0, 1, 1, 255]]  # round(v / 257)
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(load_gray(tmp_path / "deep.png"), gray8)
    with pytest.raises(ImageError, match="16-bit image"):
        load_gray(tmp_path / "deep.png", strict=True)


def test_refused_inputs(tmp_path):
    with pytest.raises(ImageError, match="floating-point image"):
        load_gray(np.zeros((4, 4), np.float32))
    with pytest.raises(ImageError, match="do not fit 16 bits"):
        load_gray(np.full((4, 4), 70000, np.int32))
    with pytest.raises(ImageError, match=r"expected a 2-D grayscale or HxWx3/4"):
        load_gray(np.zeros((4, 4, 2), np.uint8))
    (tmp_path / "x.png").write_bytes(b"no image")
    with pytest.raises(ImageError, match="cannot read image"):
        load_gray(tmp_path / "x.png")
    with pytest.raises(ImageError, match="cannot read image"):
        load_gray(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="expected a path, a numpy array or a PIL image"):
        load_gray([[1, 2], [3, 4]])


def test_fer_images_pass_unchanged_and_other_sizes_are_resized():
    face = RNG.integers(0, 256, (48, 48)).astype(np.uint8)
    np.testing.assert_array_equal(to_fer_image(face, strict=True), face)
    np.testing.assert_array_equal(to_fer_image(np.repeat(face[..., None], 3, 2), strict=True), face)
    big = np.kron(face, np.ones((3, 3), np.uint8))  # 144x144, each pixel a 3x3 block
    np.testing.assert_array_equal(to_fer_image(big), face)  # area-weighted shrink is exact here
    wide = np.zeros((48, 80), np.uint8)
    wide[:, 16:64] = face
    np.testing.assert_array_equal(to_fer_image(wide), face)  # the centred square
    with pytest.raises(ImageError, match="image is 80x48, expected 48x48"):
        to_fer_image(wide, strict=True)
    with pytest.raises(ImageError, match="colour image"):
        to_fer_image(RNG.integers(0, 256, (48, 48, 3)).astype(np.uint8), strict=True)


def test_face_box_with_margin_repeats_the_edge():
    gray = np.arange(100 * 120, dtype=np.int64).reshape(100, 120) % 251
    gray = gray.astype(np.uint8)
    crop = square_crop(gray, (10, 20, 30, 40), margin=0.0)  # square of side 40 around the box
    np.testing.assert_array_equal(crop, gray[20:60, 5:45])
    edge = square_crop(gray, (0, 0, 20, 20), margin=0.5)  # side 40, starts at (-10, -10)
    assert edge.shape == (40, 40)
    np.testing.assert_array_equal(edge[:10, 10:], np.repeat(gray[:1, :30], 10, axis=0))
    np.testing.assert_array_equal(edge[10:, 10:], gray[:30, :30])
    np.testing.assert_array_equal(to_fer_image(gray, box=(36, 26, 48, 48)), gray[26:74, 36:84])


# what a viewer does to show the stored pixels, per EXIF Orientation value (stored -> shown)
SHOWN = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud,
         5: lambda a: a.T, 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).T,
         8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("orientation", sorted(SHOWN))
def test_files_are_turned_as_their_exif_orientation_says(tmp_path, orientation):
    """Phone cameras store portrait photos sideways with an EXIF Orientation tag: a file and
    its PIL image are read as a viewer shows them (the face upright), arrays as they are."""
    stored = np.random.default_rng(orientation).integers(0, 256, (30, 52), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"
    Image.fromarray(stored).save(path, exif=exif)
    shown = SHOWN[orientation](stored)
    np.testing.assert_array_equal(load_gray(path), shown)
    with Image.open(path) as img:
        np.testing.assert_array_equal(load_gray(img), shown)
    np.testing.assert_array_equal(load_gray(stored), stored)
    np.testing.assert_array_equal(to_fer_image(path), to_fer_image(shown))


def test_heic_photos_are_read_with_pillow_heif(tmp_path, monkeypatch):
    """iPhones' HEIC photos: read through pillow-heif (the predict and test extras); without it,
    one clear error."""
    from fer_fast import preprocess

    path = tmp_path / "IMG_0002.HEIC"
    yy, xx = np.mgrid[0:64, 0:96]
    rgb = np.stack([xx * 2, yy * 3, 255 - xx * 2], axis=-1).astype(np.uint8)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # as if not installed
    preprocess._read_heif.cache_clear()
    path.write_bytes(b"not read")
    with pytest.raises(ImageError, match=r"HEIC/HEIF photo: reading it needs pillow-heif"):
        load_gray(path)
    monkeypatch.delitem(sys.modules, "pillow_heif")
    preprocess._read_heif.cache_clear()
    pillow_heif = pytest.importorskip(
        "pillow_heif", reason="pillow-heif is not installed (pip install fer_fast[test])")
    pillow_heif.from_bytes(mode="RGB", size=(96, 64), data=rgb.tobytes()).save(path, quality=95)
    gray = load_gray(path)
    assert gray.shape == (64, 96) and gray.dtype == np.uint8
    assert np.abs(gray.astype(int) - load_gray(rgb).astype(int)).mean() < 3
