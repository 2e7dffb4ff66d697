"""Face boxes of a grayscale picture, offline: OpenCV's bundled Haar cascades and dlib's HOG.

:class:`CascadeDetector` runs one or more of the cascades that ship inside the
opencv-python(-headless) 4.x wheels (``cv2.data.haarcascades``), optionally on the mirrored
picture too (the profile cascade finds faces turned one way only) and on a 2x upscaled copy of a
small picture, and optionally dlib's HOG frontal-face detector (compiled into dlib: the
``dlib-bin`` wheel, Boost licence; its boxes are tighter than a FER2013 crop and are enlarged to
it), then merges the boxes of all passes by overlap (non-maximum suppression). A merged box is
kept when enough different passes found it (``min_votes``; a HOG box counts as a pass when its
score is >= ``hog_vote``), when the HOG score alone is >= ``hog_alone``, or when one cascade found
it with many neighbours (``strong``). :data:`DEFAULT` (with dlib) and :data:`HAAR_DEFAULT`
(without) were chosen on the project's detection benchmark (``benchmarks/detection.py``; numbers
in ``docs/detection.md``); :data:`CANDIDATES` are the alternatives it measures.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

__all__ = ["CascadeConfig", "CascadeDetector", "DEFAULT", "HAAR_DEFAULT", "OPENCV_DEFAULT",
           "CANDIDATES", "has_dlib", "default_config", "iou", "cascade_path"]

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
    hog: bool = False
    hog_vote: float = -0.5
    hog_alone: float = 0.0

    def describe(self) -> str:
        names = "+".join(c.removeprefix("frontalface_") for c in self.cascades)
        if self.mirrored:
            names += "+mirror(" + "+".join(c.removeprefix("frontalface_")
                                           for c in self.mirrored) + ")"
        parts = [names, f"sf={self.scale_factor}", f"mn={self.min_neighbors}"] if names else []
        if self.neighbors:
            parts.append(",".join(f"{k.removeprefix('frontalface_')}:mn={v}"
                                  for k, v in self.neighbors.items()))
        if self.equalize:
            parts.append("eq")
        if self.upscale_below:
            parts.append(f"2x<{self.upscale_below}px")
        if self.hog:
            parts.insert(0, f"hog(alone>={self.hog_alone},vote>={self.hog_vote})+")
        if len(self.cascades) + len(self.mirrored) + self.hog > 1:
            parts.append(f"votes>={self.min_votes}" + (f"|n>={self.strong}" if self.strong
                                                       else ""))
        return " ".join(parts).replace("+ ", "+")


def has_dlib() -> bool:
    """Whether dlib (``pip install dlib-bin``) can be imported."""
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    return True


#: dlib HOG box -> FER2013-crop box: side x HOG_SCALE, centre moved down by HOG_SHIFT x side
#: (medians of HOG boxes on the benchmark's Training-face set: side 0.86 of the crop, centre
#: 0.065 of the side above the crop's).
HOG_SCALE, HOG_SHIFT = 1.16, 0.065


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

        self.config = config or default_config()
        self.min_face = min_face
        self.cascades = {}
        self.hog = None
        if self.config.hog:
            try:
                import dlib
            except ImportError:
                raise ValueError("the HOG face detector needs dlib: pip install dlib-bin "
                                 "(or fer_fast[predict])") from None
            self.hog = dlib.get_frontal_face_detector()
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
        found = []  # (box, neighbours or 1000 + HOG score, pass id)
        if self.hog is not None:
            found += self._hog(gray)
        for image, scale in images:
            for k, name in enumerate(c.cascades):
                found += [(b, n, (name, False)) for b, n in self._pass(name, image, scale, False)]
            if c.mirrored:
                flipped = np.ascontiguousarray(image[:, ::-1])
                for name in c.mirrored:
                    found += [(b, n, (name, True))
                              for b, n in self._pass(name, flipped, scale, True)]
        found.sort(key=lambda t: -t[1])
        clusters = []  # [box, passes, best neighbours or 1000 + HOG score]
        for box, n, source in found:
            if source == "hog" and n - 1000 < c.hog_vote:
                source = "hog-weak"  # may still stand alone, but is no vote
            for cluster in clusters:
                if iou(cluster[0], box) >= c.merge_iou:
                    if source != "hog-weak":
                        cluster[1].add(source)
                    break
            else:
                clusters.append([box, set() if source == "hog-weak" else {source}, n])
        return [(tuple(int(round(v)) for v in box), len(passes), n)
                for box, passes, n in clusters]

    def _hog(self, gray: np.ndarray):
        c = self.config
        rects, scores, _ = self.hog.run(np.ascontiguousarray(gray), 0, min(c.hog_vote,
                                                                           c.hog_alone))
        out = []
        for r, score in zip(rects, scores):
            w = r.width() * HOG_SCALE
            cx = r.left() + r.width() / 2
            cy = r.top() + r.height() / 2 + HOG_SHIFT * r.height()
            if w >= self.min_face:
                out.append(((cx - w / 2, cy - w / 2, w, w), 1000 + float(score), "hog"))
        return out

    def __call__(self, gray: np.ndarray) -> list[Box]:
        c = self.config
        kept = []
        for box, votes, n in self.detections(gray):
            hog_score = n - 1000 if n >= 900 else None
            if votes >= c.min_votes or (hog_score is not None and hog_score >= c.hog_alone) \
                    or (c.strong and hog_score is None and n >= c.strong):
                kept.append(box)
        return sorted(kept)


#: OpenCV's frontal cascade with detectMultiScale's own defaults (the reference to beat).
OPENCV_DEFAULT = CascadeConfig(("frontalface_default",), scale_factor=1.1, min_neighbors=3)
#: What ``predict`` used before the benchmark: equalised, minNeighbors=5.
PREVIOUS = CascadeConfig(("frontalface_default",), scale_factor=1.1, min_neighbors=5,
                         equalize=True)

_FRONTAL2 = ("frontalface_default", "frontalface_alt")

CANDIDATES = {
    "opencv-default": OPENCV_DEFAULT,
    "previous eq mn5": PREVIOUS,
    "default sf1.05 mn3": replace(OPENCV_DEFAULT, scale_factor=1.05),
    "default+alt votes2": CascadeConfig(_FRONTAL2, scale_factor=1.05, min_neighbors=3,
                                        min_votes=2),
    "default+alt+profile(+mirror) votes3": CascadeConfig(
        _FRONTAL2 + ("profileface",), mirrored=("profileface",), scale_factor=1.05,
        min_neighbors=1, min_votes=3),
    "hog": CascadeConfig((), hog=True, hog_alone=-0.3, hog_vote=-0.3),
    "hog+default+alt votes2": CascadeConfig(_FRONTAL2, scale_factor=1.05, min_neighbors=3,
                                            min_votes=2, hog=True, hog_alone=0.0,
                                            hog_vote=-0.5),
}

#: The detector of ``predict`` (``--detector haar`` / ``auto``) when dlib is installed.
DEFAULT = CANDIDATES["hog+default+alt votes2"]
#: ... and without dlib (``--detector haar``): OpenCV's frontal cascade with its own defaults;
#: no cascade setting or combination measured was at least as good on every column.
HAAR_DEFAULT = OPENCV_DEFAULT


def default_config() -> CascadeConfig:
    """:data:`DEFAULT` when dlib can be imported, else :data:`HAAR_DEFAULT`."""
    return DEFAULT if has_dlib() else HAAR_DEFAULT
