"""Face boxes of a grayscale picture with OpenCV's bundled Haar cascades, offline.

:class:`CascadeDetector` runs one or more of the cascades that ship inside the
opencv-python(-headless) 4.x wheels (``cv2.data.haarcascades``), optionally on the mirrored
picture too (the profile cascade finds faces turned one way only) and on a 2x upscaled copy of a
small picture, then merges the boxes of all passes by overlap (non-maximum suppression); a
merged box is kept when enough different passes found it (``min_votes``) or when one pass found
it with many neighbours (``strong``). The settings of :data:`DEFAULT` were chosen on the
project's detection benchmark (``benchmarks/detection.py``; numbers in ``docs/detection.md``);
:data:`CANDIDATES` are the alternatives it measures.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

__all__ = ["CascadeConfig", "CascadeDetector", "DEFAULT", "OPENCV_DEFAULT", "CANDIDATES",
           "iou", "cascade_path"]

Box = tuple[int, int, int, int]


def cascade_path(name: str) -> Path:
    """The file of a bundled cascade ("frontalface_default", "profileface", ...) or a path."""
    import cv2

    path = Path(name)
    if path.suffix.lower() == ".xml":
        return path
    return Path(cv2.data.haarcascades) / f"haarcascade_{name}.xml"


@dataclass(frozen=True)
class CascadeConfig:
    """One detector: ``cascades`` (bundled names or .xml paths), ``mirrored`` (those also run on
    the left-right mirrored picture), ``scale_factor`` / ``min_neighbors`` of
    ``detectMultiScale``, ``equalize`` (histogram equalisation first), ``upscale_below``
    (pictures whose shorter side is below this many pixels are also searched at 2x), boxes of
    different passes overlapping by IoU >= ``merge_iou`` are one face, kept when ``min_votes``
    passes found it or one pass found it with >= ``strong`` neighbours (0: no such rule)."""

    cascades: tuple[str, ...] = ("frontalface_default",)
    mirrored: tuple[str, ...] = ()
    scale_factor: float = 1.1
    min_neighbors: int = 3
    equalize: bool = False
    upscale_below: int = 0
    merge_iou: float = 0.3
    min_votes: int = 1
    strong: int = 0
    neighbors: dict = field(default_factory=dict, compare=False, hash=False)  # per cascade

    def describe(self) -> str:
        names = "+".join(c.removeprefix("frontalface_") for c in self.cascades)
        if self.mirrored:
            names += "+mirror(" + "+".join(c.removeprefix("frontalface_")
                                           for c in self.mirrored) + ")"
        parts = [names, f"sf={self.scale_factor}", f"mn={self.min_neighbors}"]
        if self.neighbors:
            parts.append(",".join(f"{k.removeprefix('frontalface_')}:mn={v}"
                                  for k, v in self.neighbors.items()))
        if self.equalize:
            parts.append("eq")
        if self.upscale_below:
            parts.append(f"2x<{self.upscale_below}px")
        if len(self.cascades) + len(self.mirrored) > 1:
            parts.append(f"votes>={self.min_votes}" + (f"|n>={self.strong}" if self.strong
                                                       else ""))
        return " ".join(parts)


def iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


class CascadeDetector:
    """Callable: uint8 2-D gray picture -> face boxes (x, y, w, h), sorted left to right."""

    def __init__(self, config: CascadeConfig = None, min_face: int = 24):
        import cv2

        self.config = config or DEFAULT
        self.min_face = min_face
        self.cascades = {}
        for name in dict.fromkeys(self.config.cascades + self.config.mirrored):
            path = cascade_path(name)
            try:
                cascade = cv2.CascadeClassifier(str(path))
            except (cv2.error, SystemError):  # a malformed file fails inside the constructor
                cascade = None
            if cascade is None or cascade.empty():
                raise ValueError(f"{path}: not an OpenCV cascade classifier")
            self.cascades[name] = cascade

    def _pass(self, name: str, gray: np.ndarray, scale: float, mirror: bool):
        c = self.config
        min_side = max(1, int(round(self.min_face * scale)))
        boxes, counts = self.cascades[name].detectMultiScale2(
            gray, scaleFactor=c.scale_factor,
            minNeighbors=c.neighbors.get(name, c.min_neighbors), minSize=(min_side, min_side))
        width = gray.shape[1]
        out = []
        for (x, y, w, h), n in zip(boxes, counts):
            if mirror:
                x = width - x - w
            out.append(((x / scale, y / scale, w / scale, h / scale), int(n)))
        return out

    def detections(self, gray: np.ndarray) -> list[tuple[Box, int, int]]:
        """(box, votes, most neighbours) of every merged face, before the keep rule."""
        import cv2

        c = self.config
        if c.equalize:
            gray = cv2.equalizeHist(gray)
        images = [(gray, 1.0)]
        if c.upscale_below and min(gray.shape) < c.upscale_below:
            images.append((cv2.resize(gray, None, fx=2, fy=2,
                                      interpolation=cv2.INTER_LINEAR), 2.0))
        found = []  # (box, neighbours, pass id)
        for image, scale in images:
            for k, name in enumerate(c.cascades):
                found += [(b, n, (name, False)) for b, n in self._pass(name, image, scale, False)]
            if c.mirrored:
                flipped = np.ascontiguousarray(image[:, ::-1])
                for name in c.mirrored:
                    found += [(b, n, (name, True))
                              for b, n in self._pass(name, flipped, scale, True)]
        found.sort(key=lambda t: -t[1])
        clusters = []  # [box, passes, best neighbours]
        for box, n, source in found:
            for cluster in clusters:
                if iou(cluster[0], box) >= c.merge_iou:
                    cluster[1].add(source)
                    break
            else:
                clusters.append([box, {source}, n])
        return [(tuple(int(round(v)) for v in box), len(passes), n)
                for box, passes, n in clusters]

    def __call__(self, gray: np.ndarray) -> list[Box]:
        c = self.config
        kept = [box for box, votes, n in self.detections(gray)
                if votes >= c.min_votes or (c.strong and n >= c.strong)]
        return sorted(kept)


#: OpenCV's frontal cascade with detectMultiScale's own defaults (the reference to beat).
OPENCV_DEFAULT = CascadeConfig(("frontalface_default",), scale_factor=1.1, min_neighbors=3)
#: What ``predict`` used before the benchmark: equalised, minNeighbors=5.
PREVIOUS = CascadeConfig(("frontalface_default",), scale_factor=1.1, min_neighbors=5,
                         equalize=True)

CANDIDATES = {
    "opencv-default": OPENCV_DEFAULT,
    "previous (eq, mn=5)": PREVIOUS,
    "default sf1.05 mn3": replace(OPENCV_DEFAULT, scale_factor=1.05),
    "default sf1.05 mn5": replace(OPENCV_DEFAULT, scale_factor=1.05, min_neighbors=5),
    "alt2 sf1.05 mn3": CascadeConfig(("frontalface_alt2",), scale_factor=1.05, min_neighbors=3),
    "default+alt2 sf1.05 votes2|n>=8": CascadeConfig(
        ("frontalface_default", "frontalface_alt2"), scale_factor=1.05, min_neighbors=2,
        min_votes=2, strong=8),
    "default+alt2+profile(mirror) sf1.05 votes2|n>=8": CascadeConfig(
        ("frontalface_default", "frontalface_alt2", "profileface"), mirrored=("profileface",),
        scale_factor=1.05, min_neighbors=2, min_votes=2, strong=8),
}

DEFAULT = CANDIDATES["default sf1.05 mn3"]
