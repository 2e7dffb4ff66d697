"""Test pictures made here: a drawn face on a photo-like background that OpenCV's Haar face
cascade really detects (checked by the tests, never stubbed)."""
from __future__ import annotations

import cv2
import numpy as np


def draw_face(canvas: np.ndarray, cx: int, cy: int, size: int, *, smile: float = 0.0) -> None:
    """Draw a frontal face (BGR, in place) centred at (cx, cy), ``size`` pixels wide: skin
    ellipse, hair, brows, dark eye sockets with irises, a lighter nose bridge, nostrils, mouth."""
    s = size / 100.0

    def p(x, y):
        return int(round(cx + x * s)), int(round(cy + y * s))

    def r(v):
        return max(1, int(round(v * s)))

    skin, shadow = (150, 175, 215), (95, 115, 150)
    cv2.ellipse(canvas, p(0, -18), (r(54), r(58)), 0, 180, 360, (40, 45, 60), -1, cv2.LINE_AA)
    cv2.ellipse(canvas, p(0, 5), (r(46), r(60)), 0, 0, 360, skin, -1, cv2.LINE_AA)
    for side in (-1, 1):
        cv2.ellipse(canvas, p(side * 48, 5), (r(6), r(12)), 0, 0, 360, shadow, -1, cv2.LINE_AA)
        cv2.ellipse(canvas, p(side * 20, -16), (r(13), r(4)), 0, 180, 360, (45, 50, 65),
                    r(4), cv2.LINE_AA)
        cv2.ellipse(canvas, p(side * 20, -4), (r(15), r(9)), 0, 0, 360, shadow, -1, cv2.LINE_AA)
        cv2.ellipse(canvas, p(side * 20, -4), (r(10), r(5)), 0, 0, 360, (235, 240, 245), -1,
                    cv2.LINE_AA)
        cv2.circle(canvas, p(side * 20, -4), r(4.5), (40, 35, 30), -1, cv2.LINE_AA)
        cv2.ellipse(canvas, p(side * 6, 22), (r(4), r(3)), 0, 0, 360, (70, 80, 110), -1,
                    cv2.LINE_AA)
    cv2.rectangle(canvas, p(-5, -6), p(5, 18), (175, 200, 235), -1, cv2.LINE_AA)
    mouth_h = 5 + 8 * smile
    cv2.ellipse(canvas, p(0, 36), (r(20), r(mouth_h)), 0, 0, 180 if smile > 0 else 360,
                (60, 60, 140), -1, cv2.LINE_AA)


def face_photo(seed: int = 0, *, height: int = 240, width: int = 320,
               faces=((160, 120, 110),), smile: float = 0.0) -> np.ndarray:
    """uint8 BGR [height, width, 3]: a lit, noisy room-like background (gradient, a window,
    shelves) with a drawn face per (cx, cy, size) of ``faces``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 70 + 90 * xx / width + 30 * yy / height
    canvas = np.stack([base * 0.9, base, base * 1.05], axis=-1)
    canvas = np.clip(canvas, 0, 255).astype(np.uint8)
    cv2.rectangle(canvas, (int(width * 0.03), int(height * 0.08)),
                  (int(width * 0.18), int(height * 0.55)), (210, 215, 220), -1)
    cv2.line(canvas, (0, int(height * 0.8)), (width, int(height * 0.8)), (60, 70, 80), 3)
    for cx, cy, size in faces:
        draw_face(canvas, cx, cy, size, smile=smile)
    noise = rng.normal(0, 4, canvas.shape)
    return np.clip(canvas + noise, 0, 255).astype(np.uint8)
