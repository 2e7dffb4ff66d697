"""One conversion of any picture to what the model was trained on: a 48x48 uint8 grayscale face.

The image-folder reader (:func:`fer_fast.data.read_image_folder`) and the predictor
(:class:`fer_fast.predict.Predictor`) both call :func:`to_fer_image`, so a face seen at
prediction time is converted exactly as the training images were. Steps:

1. :func:`load_gray`: a path, PIL image or numpy array -> 2-D uint8 grayscale at its own size.
   A file or PIL image is first turned the way its EXIF Orientation tag says it is shown (phone
   cameras store portrait photos sideways with that tag), as OpenCV's ``imread`` does.
   Colour (RGB; RGBA and palette images through RGB) becomes the ITU-R 601 luma
   ``(19595 R + 38470 G + 7471 B + 32768) >> 16``, which is Pillow's ``convert("L")``; 16-bit
   values ``v`` become ``round(v / 257)`` (so 8-bit data stored as ``v * 257`` round-trips);
   floating-point images are refused (their range is ambiguous).
2. A square is cut: around a face box enlarged by ``margin`` on each side (pixels outside the
   picture repeat its edge), or without a box the centred largest square.
3. The square is resized to 48x48 with Pillow: shrinking averages the covered area (``BOX``),
   enlarging interpolates bilinearly.

A picture that already is 48x48 8-bit gray comes out unchanged. ``strict=True`` refuses any
picture that would need a lossy step (another size, real colour, 16 bits) instead.
"""
from __future__ import annotations

import contextlib
import functools
import os
import warnings
from pathlib import Path

import numpy as np

__all__ = ["SIDE", "MAX_PIXELS", "ImageError", "open_image", "load_gray", "square_crop",
           "to_fer_image"]

SIDE = 48
#: the largest picture decoded, in pixels (Pillow's own decompression-bomb limit, 89.5 M: a
#: 12000x7400 photo): a file that claims more is refused from its header, before decoding
MAX_PIXELS = 89_478_485
_ORIENTATION = 0x0112  # the EXIF tag
#: phones' photo format, which Pillow reads through the pillow-heif package
HEIF_SUFFIXES = (".heic", ".heif")


class ImageError(ValueError):
    """A picture that cannot be converted; the message says what is wrong (not where)."""


def _luma(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16).astype(np.uint8)


def _array_to_gray(array: np.ndarray, strict: bool, channel_order: str) -> np.ndarray:
    if array.dtype.kind == "f":
        raise ImageError(f"floating-point image ({array.dtype}): convert it to uint8 (0..255) "
                         f"or uint16 first")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[2] in (3, 4):
        rgb = array[..., :3]
        if channel_order == "BGR":
            rgb = rgb[..., ::-1]
        colour = not (np.array_equal(rgb[..., 0], rgb[..., 1])
                      and np.array_equal(rgb[..., 1], rgb[..., 2]))
        if strict and colour:
            raise ImageError("colour image (refused: only grayscale images are accepted as is)")
        array = _luma_any_depth(rgb) if colour else rgb[..., 0]
    if array.ndim != 2:
        raise ImageError(f"expected a 2-D grayscale or HxWx3/4 colour image, got shape "
                         f"{list(array.shape)}")
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype.kind in "iu":
        lo, hi = int(array.min(initial=0)), int(array.max(initial=0))
        if lo < 0 or hi > 65535:
            raise ImageError(f"pixel values {lo}..{hi} do not fit 16 bits")
        if strict:
            raise ImageError("16-bit image (refused: only 8-bit images are accepted as is)")
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise ImageError(f"unsupported pixel type {array.dtype}")


def _luma_any_depth(rgb: np.ndarray) -> np.ndarray:
    """Luma of 8-bit colour; deeper colour is first brought to 8 bits per channel."""
    if rgb.dtype != np.uint8:
        rgb = np.stack([_array_to_gray(rgb[..., i], False, "RGB") for i in range(3)], axis=-1)
    return _luma(rgb)


def _pil_to_gray(img, strict: bool) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return _array_to_gray(np.asarray(img).astype(np.int64), strict, "RGB")
    if mode == "F":
        return _array_to_gray(np.asarray(img), strict, "RGB")
    if mode in ("L", "1"):
        return np.asarray(img.convert("L"))
    if mode == "LA":
        return np.asarray(img.getchannel(0))
    if mode not in ("RGB", "RGBA"):
        img = img.convert("RGB")
    return _array_to_gray(np.asarray(img), strict, "RGB")


def _upright(img):
    """``img`` turned and mirrored as its EXIF Orientation tag says a viewer shows it; ``img``
    itself when it has no such tag."""
    try:
        orientation = img.getexif().get(_ORIENTATION, 1)
    except Exception:  # unreadable metadata: the pixels as stored, as picture viewers show them
        return img
    if orientation == 1:
        return img
    from PIL import ImageOps

    return ImageOps.exif_transpose(img)


@functools.cache
def _read_heif() -> None:
    try:
        import pillow_heif
    except ImportError:
        raise ImageError("a HEIC/HEIF photo: reading it needs pillow-heif (pip install "
                         "pillow-heif, or fer_fast[predict])") from None
    pillow_heif.register_heif_opener()


@contextlib.contextmanager
def open_image(path):
    """``PIL.Image.open(path)``, refused (:class:`ImageError`) when the file cannot be read or
    its header claims more than :data:`MAX_PIXELS` pixels (a decompression bomb: a few KB that
    decode to gigabytes), checked before any pixel is decoded; turned upright as its EXIF
    Orientation tag says."""
    from PIL import Image, UnidentifiedImageError

    if Path(path).suffix.lower() in HEIF_SUFFIXES:
        _read_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(Path(path))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"too large to decode ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ImageError(f"cannot read image ({reason})") from exc
    with img:
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise ImageError(f"too large to decode: {w}x{h} pixels, more than the "
                             f"{MAX_PIXELS} read (a decompression bomb?)")
        yield _upright(img)


def load_gray(image, *, strict: bool = False, channel_order: str = "RGB") -> np.ndarray:
    """2-D uint8 grayscale of ``image`` at its own size.

    ``image``: a path (any format Pillow reads), a PIL image (both turned upright as their EXIF
    Orientation tag says), or a numpy array HxW / HxWx1 / HxWx3 / HxWx4 of uint8 or uint16
    (``channel_order`` "RGB", or "BGR" for OpenCV frames).
    Raises :class:`ImageError` (or ``OSError`` for an unreadable file)."""
    if channel_order not in ("RGB", "BGR"):
        raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    if isinstance(image, (str, os.PathLike)):
        try:
            with open_image(image) as img:
                img.load()
                return _check_size(_pil_to_gray(img, strict))
        except ImageError:
            raise
        except (OSError, SyntaxError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ImageError(f"cannot read image ({reason})") from exc
    if isinstance(image, np.ndarray):
        return _check_size(_array_to_gray(image, strict, channel_order))
    if hasattr(image, "mode") and hasattr(image, "getchannel"):  # a PIL image
        return _check_size(_pil_to_gray(_upright(image), strict))
    raise ImageError(f"expected a path, a numpy array or a PIL image, got "
                     f"{type(image).__name__}")


def _check_size(gray: np.ndarray) -> np.ndarray:
    if gray.size == 0:
        raise ImageError(f"empty image ({gray.shape[1]}x{gray.shape[0]} pixels)")
    return gray


def square_crop(gray: np.ndarray, box=None, margin: float = 0.0) -> np.ndarray:
    """The square of ``gray`` to classify: around ``box`` = (x, y, w, h), its side
    ``max(w, h) * (1 + 2 * margin)``, edge pixels repeated outside the picture; without a box
    the centred largest square."""
    h, w = gray.shape
    if box is None:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return gray[top:top + side, left:left + side]
    x, y, bw, bh = (float(v) for v in box)
    if bw <= 0 or bh <= 0:
        raise ImageError(f"empty face box {tuple(box)}")
    side = max(1, int(round(max(bw, bh) * (1 + 2 * margin))))
    left = int(round(x + bw / 2 - side / 2))
    top = int(round(y + bh / 2 - side / 2))
    rows = np.clip(np.arange(top, top + side), 0, h - 1)
    cols = np.clip(np.arange(left, left + side), 0, w - 1)
    return gray[np.ix_(rows, cols)]


def to_fer_image(image, *, box=None, margin: float = 0.0, strict: bool = False,
                 channel_order: str = "RGB") -> np.ndarray:
    """uint8 [48, 48] grayscale of ``image`` (see the module docstring for the exact steps):
    the face ``box`` = (x, y, w, h) with ``margin``, or the centred square of the whole picture.
    ``strict``: refuse (:class:`ImageError`) a picture that is not already 48x48 8-bit gray."""
    gray = load_gray(image, strict=strict, channel_order=channel_order)
    if strict and (box is not None or gray.shape != (SIDE, SIDE)):
        raise ImageError(f"image is {gray.shape[1]}x{gray.shape[0]}, expected {SIDE}x{SIDE} "
                         f"(refused: resizing is off)")
    square = square_crop(gray, box, margin)
    if square.shape == (SIDE, SIDE):
        return np.ascontiguousarray(square)
    from PIL import Image

    shrink = square.shape[0] > SIDE
    resized = Image.fromarray(np.ascontiguousarray(square)).resize(
        (SIDE, SIDE), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
    return np.array(resized)
