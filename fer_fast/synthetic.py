"""Procedural FER-like faces: the built-in default dataset and the test data.

Each sample is a 48x48 grayscale face drawn with anti-aliased signed-distance shapes on a pixel
grid (face ellipse, hair, eyes with irises, eyebrows, nose, mouth). The class (the 7 FER2013
classes, 0 Angry .. 6 Neutral) is carried only by expression cues:

============  ==========================================================================
class         cues (relative to the neutral face)
============  ==========================================================================
Angry         brows lowered with the inner ends pulled down (V), narrowed eyes, pressed mouth
Disgust       upper lip raised on ONE side, brows slightly lowered, narrowed eyes, nose wrinkles
Fear          brows raised with inner ends up, wide eyes, wide stretched mouth slightly open
Happy         smile (corners up), wider mouth, sometimes open with teeth, slightly squinted eyes
Sad           inner brow ends raised, mouth corners down, slightly closed eyes
Surprise      brows high, very wide eyes, small round open mouth ("O")
Neutral       all cues at rest
============  ==========================================================================

Each sample draws a cue strength in [0.3, 1.15] that scales its class's offset from neutral, plus
per-face identity jitter of every cue, so weak expressions of different classes overlap (the
task is learnable well above chance but not to 100 %). Nuisances: rotation, shift, scale, head
yaw, face and hair shape, skin and background tone, a lighting gradient, contrast, brightness,
pixel noise and random occluding patches. Classes are balanced by default (exact counts, then
shuffled); ``class_weights`` can give other proportions, e.g. :data:`FER2013_TRAIN_COUNTS`.

The cue magnitudes in ``_TARGET`` are calibrated so that a small VGG learns the task in a few
epochs, well above chance and above a linear model on pooled pixels, but not to 100 %
(docs/notes.md gives the accuracies).

Deterministic per ``(seed, stream)``: all random draws come from one numpy ``PCG64`` stream and
the rendering is element-wise float32 numpy, so the same arguments give identical bytes (on one
machine and numpy build: SIMD sin/cos/sqrt may round differently elsewhere).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SyntheticSpec", "FER2013_TRAIN_COUNTS", "generate", "class_counts"]

SIDE = 48
NUM_CLASSES = 7
#: Training-split class counts of FER2013 (Angry .. Neutral), usable as ``class_weights``.
FER2013_TRAIN_COUNTS = (3995, 436, 4097, 7215, 4830, 3171, 4965)
_CHUNK = 32  # images rendered at once: keeps the float32 work arrays cache-sized
_PIXEL = 2.0 / SIDE  # pixel width in image coordinates (the image spans -1 .. 1)


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes and class balance of the synthetic dataset (defaults sized for the quick CPU run)."""

    n_train: int = 3000
    n_val: int = 500
    n_test: int = 500
    class_weights: tuple[float, ...] = (1.0,) * NUM_CLASSES

    @property
    def sizes(self) -> tuple[int, int, int]:
        return (self.n_train, self.n_val, self.n_test)


# Expression cues, one row per class (Angry .. Neutral), columns as in _CUES.
_CUES = ("eye_open", "brow_raise", "brow_inner_up", "smile", "mouth_open", "mouth_width",
         "lip_lift", "wrinkle")
_NEUTRAL = np.array([1.00, 0.00, 0.00, 0.00, 0.00, 0.21, 0.00, 0.0], np.float32)
_TARGET = np.array([
    [0.45, -0.10, -0.16, -0.06, 0.04, 0.19, 0.00, 0.0],   # Angry
    [0.45, -0.06, -0.07, -0.08, 0.05, 0.21, 0.20, 1.0],   # Disgust
    [1.90, 0.10, 0.12, -0.08, 0.20, 0.33, 0.00, 0.0],     # Fear
    [0.60, 0.02, 0.00, 0.28, 0.08, 0.35, 0.00, 0.0],      # Happy
    [0.70, -0.02, 0.15, -0.22, 0.00, 0.19, 0.00, 0.0],    # Sad
    [2.20, 0.16, 0.02, 0.00, 0.38, 0.08, 0.00, 0.0],      # Surprise
    _NEUTRAL,                                             # Neutral
], np.float32)
#: Identity jitter (standard deviation) of each cue, independent of the class.
_JITTER = np.array([0.12, 0.015, 0.015, 0.02, 0.015, 0.025, 0.012, 0.15], np.float32)


def class_counts(n: int, class_weights) -> np.ndarray:
    """Exact per-class counts summing to ``n`` (largest remainder of n * weights)."""
    w = np.asarray(class_weights, np.float64)
    if w.shape != (NUM_CLASSES,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"class_weights must be {NUM_CLASSES} non-negative numbers with a "
                         f"positive sum, got {class_weights!r}")
    share = n * w / w.sum()
    counts = np.floor(share).astype(np.int64)
    remainder_order = np.argsort(-(share - counts), kind="stable")
    counts[remainder_order[:n - counts.sum()]] += 1
    return counts


def _coverage(d: np.ndarray, aa) -> np.ndarray:
    """Anti-aliased area coverage of the inside (d < 0) of a signed distance field."""
    return np.clip(0.5 - d / aa, 0.0, 1.0)


def _ellipse_sdf(x, y, cx, cy, a, b):
    """Approximate signed distance to an axis-aligned ellipse (first-order, exact on the rim)."""
    ia, ib = 1.0 / a, 1.0 / b  # per-sample [n, 1, 1]: cheap
    px, py = (x - cx) * ia, (y - cy) * ib
    k = np.sqrt(px * px + py * py)
    gx, gy = px * ia, py * ib
    return k * (k - 1.0) / (np.sqrt(gx * gx + gy * gy) + 1e-6)


def _segment_sdf(x, y, ax, ay, bx, by, r):
    """Signed distance to a capsule (segment a-b with radius r)."""
    pax, pay, bax, bay = x - ax, y - ay, bx - ax, by - ay
    h = np.clip((pax * bax + pay * bay) / (bax * bax + bay * bay), 0.0, 1.0)
    dx, dy = pax - bax * h, pay - bay * h
    return np.sqrt(dx * dx + dy * dy) - r


def _box_sdf(x, y, cx, cy, hw, hh):
    dx, dy = np.abs(x - cx) - hw, np.abs(y - cy) - hh
    outside = np.sqrt(np.maximum(dx, 0.0) ** 2 + np.maximum(dy, 0.0) ** 2)
    return outside + np.minimum(np.maximum(dx, dy), 0.0)


def _blend(img, value, cov):
    """Paint ``value`` over ``img`` with coverage ``cov`` (in place)."""
    img += cov * (value - img)


def _sample(rng: np.random.Generator, labels: np.ndarray) -> dict[str, np.ndarray]:
    """All random choices of the batch, as float32 [n, 1, 1] arrays (broadcast over pixels)."""
    n = labels.shape[0]

    def u(lo, hi):
        return rng.uniform(lo, hi, n).astype(np.float32)

    strength = u(0.3, 1.15)[:, None]
    cues = _NEUTRAL + strength * (_TARGET[labels] - _NEUTRAL)
    cues += rng.standard_normal((n, len(_CUES))).astype(np.float32) * _JITTER
    # Happy and Angry mouths are open only some of the time (open smile / snarl).
    sometimes_open = np.isin(labels, (0, 3))
    cues[:, _CUES.index("mouth_open")] *= ~sometimes_open | (rng.uniform(size=n) < 0.6)
    p = {name: cues[:, i] for i, name in enumerate(_CUES)}
    p["eye_open"] = np.clip(p["eye_open"], 0.25, 2.4)
    p["mouth_open"] = np.maximum(p["mouth_open"], 0.0)
    p["mouth_width"] = np.clip(p["mouth_width"], 0.07, 0.4)
    p["lip_lift"] = np.abs(p["lip_lift"])
    p["wrinkle"] = np.clip(p["wrinkle"], 0.0, 1.0)
    p["lift_side"] = np.where(rng.uniform(size=n) < 0.5, -1.0, 1.0).astype(np.float32)
    p.update(
        angle=np.clip(rng.normal(0.0, 0.14, n), -0.35, 0.35).astype(np.float32),
        scale=u(0.95, 1.2), shift_x=u(-0.1, 0.1), shift_y=u(-0.1, 0.1), yaw=u(-0.1, 0.1),
        face_a=u(0.56, 0.68), face_b=u(0.74, 0.86), skin=u(0.45, 0.85),
        hair=u(0.0, 0.5), hairline=u(-0.55, -0.38), bg=u(0.05, 0.95),
        eye_x=u(0.22, 0.28), eye_y=u(-0.16, -0.08), eye_w=u(0.1, 0.13),
        brow_gap=u(0.1, 0.14), brow_r=u(0.022, 0.04), brow_tone=u(0.05, 0.3),
        mouth_y=u(0.38, 0.46), lip_tone=u(0.1, 0.35), nose_y=u(0.17, 0.23),
        light_dir=u(0.0, 2 * np.pi), light=u(0.0, 0.5), contrast=u(0.6, 1.25),
        brightness=u(-0.15, 0.15), noise=u(0.0, 0.035),
        occlude=(rng.uniform(size=n) < 0.2).astype(np.float32), occ_x=u(-0.75, 0.75),
        occ_y=u(-0.75, 0.75), occ_w=u(0.1, 0.3), occ_h=u(0.1, 0.3), occ_tone=u(0.0, 1.0),
    )
    return {k: v.reshape(n, 1, 1) for k, v in p.items()}


def _render(p: dict[str, np.ndarray], noise: np.ndarray) -> np.ndarray:
    """Draw the faces described by ``p`` (arrays [n, 1, 1]); returns float32 [n, 48, 48] in 0..1."""
    g = ((np.arange(SIDE, dtype=np.float32) + 0.5) * _PIXEL - 1.0)
    gx, gy = g[None, None, :], g[:, None][None]  # image coordinates, y points down
    # Face coordinates: undo shift, rotation and scale of the head.
    c, s = np.cos(p["angle"]), np.sin(p["angle"])
    x0, y0 = gx - p["shift_x"], gy - p["shift_y"]
    x = (c * x0 + s * y0) / p["scale"]
    y = (-s * x0 + c * y0) / p["scale"]
    aa = _PIXEL / p["scale"]  # one pixel in face units: the anti-aliasing width
    fx = x - p["yaw"]  # inner features turn with the head

    img = np.broadcast_to(p["bg"] * (1.0 + 0.3 * gy), x.shape).astype(np.float32)
    _blend(img, 0.8 * p["skin"], _coverage(_box_sdf(x, y, 0.0, 1.0, 0.28, 0.3), aa))  # neck
    # Hair: the face outline grown by 0.07 above the hairline; the face is painted over it.
    face_e = _ellipse_sdf(x, y, 0.0, 0.02, p["face_a"], p["face_b"])
    hair_d = np.maximum(face_e - 0.07, y - (p["hairline"] + 0.25 * (x / p["face_a"]) ** 2))
    _blend(img, p["hair"], _coverage(hair_d, aa))
    shade = p["skin"] * (1.0 - 0.25 * ((x - 0.5 * p["yaw"]) ** 2 + y * y))
    _blend(img, shade, _coverage(np.maximum(face_e, -hair_d), aa))

    for side in (-1.0, 1.0):
        ex, ey = side * p["eye_x"], p["eye_y"]
        eh = 0.05 * p["eye_open"]
        _blend(img, 0.8 * shade, 0.6 * _coverage(_ellipse_sdf(fx, y, ex, ey, 1.5 * p["eye_w"],
                                                               eh + 0.04), 3 * aa))
        eye = _coverage(_ellipse_sdf(fx, y, ex, ey, p["eye_w"], eh), aa)
        _blend(img, 0.85, eye)
        iris = _coverage(np.hypot(fx - ex, y - ey) - 0.045, aa)
        _blend(img, 0.1, np.minimum(iris, eye))
        # Brows: the inner end (towards the nose) moves with brow_inner_up, both with brow_raise.
        by = ey - eh - p["brow_gap"] - p["brow_raise"]
        inner_x, outer_x = ex - side * 0.1, ex + side * 0.11
        brow = _segment_sdf(fx, y, inner_x, by - p["brow_inner_up"], outer_x,
                            by + 0.3 * p["brow_inner_up"], p["brow_r"])
        _blend(img, p["brow_tone"], _coverage(brow, aa))
        # Disgust: wrinkles beside the nose bridge.
        wrinkle = _segment_sdf(fx, y, side * 0.07, ey + 0.06, side * 0.11, ey + 0.13, 0.012)
        _blend(img, 0.6 * shade, p["wrinkle"] * _coverage(wrinkle, aa))
        nostril = _ellipse_sdf(fx, y, side * 0.05, p["nose_y"], 0.03, 0.017)
        _blend(img, 0.45 * shade, _coverage(nostril, aa))
    bridge = _segment_sdf(fx, y, 0.03, -0.02, 0.04, p["nose_y"] - 0.03, 0.015)
    _blend(img, 0.85 * shade, 0.7 * _coverage(bridge, 2 * aa))

    # Mouth: centre line with smile curvature, an elliptic opening, one-sided upper-lip lift.
    mw = p["mouth_width"]
    xn = fx / mw
    xn2 = xn * xn
    centre = p["mouth_y"] - p["smile"] * (xn2 - 0.3)
    slope = -2.0 * p["smile"] * xn / mw
    lift = p["lip_lift"] * np.clip(p["lift_side"] * xn, 0.0, 1.0)
    opening = p["mouth_open"] * np.sqrt(np.clip(1.0 - xn2, 0.0, 1.0))
    upper = centre - 0.4 * opening - lift
    lower = centre + 0.6 * opening
    outside_x = np.abs(fx) - mw
    line = np.maximum(np.abs(y - centre) / np.sqrt(1.0 + slope * slope) - 0.018, outside_x)
    inside = np.maximum(np.maximum(upper - y, y - lower), outside_x)
    _blend(img, p["lip_tone"], _coverage(np.minimum(line, inside), aa))
    teeth = np.maximum(inside, y - (upper + 0.35 * (lower - upper)))
    _blend(img, 0.8, (p["smile"] > 0.05) * _coverage(teeth, aa))

    # Occluding patch, lighting, contrast, noise (in image coordinates).
    occ = _box_sdf(gx, gy, p["occ_x"], p["occ_y"], p["occ_w"], p["occ_h"])
    _blend(img, p["occ_tone"], p["occlude"] * _coverage(occ, _PIXEL))
    img *= 1.0 + p["light"] * (np.cos(p["light_dir"]) * gx + np.sin(p["light_dir"]) * gy)
    img = (img - 0.5) * p["contrast"] + 0.5 + p["brightness"]
    img += p["noise"] * noise
    return np.clip(img, 0.0, 1.0)


def generate(n: int, *, seed: int = 0, stream: int = 0,
             class_weights=(1.0,) * NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic faces: uint8 images [n, 48, 48] and int64 labels [n] (0..6).

    ``stream`` separates independent datasets of one seed (the loader uses 0, 1, 2 for
    train, val, test), so the splits never share samples.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream])))
    labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES), class_counts(n, class_weights)))
    params = _sample(rng, labels)
    images = np.empty((n, SIDE, SIDE), np.uint8)
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        noise = rng.standard_normal((hi - lo, SIDE, SIDE), dtype=np.float32)
        faces = _render({k: v[lo:hi] for k, v in params.items()}, noise)
        images[lo:hi] = np.rint(faces * 255.0).astype(np.uint8)
    return images, labels.astype(np.int64)
