"""Face boxes of a grayscale picture, offline: OpenCV's bundled Haar cascades, dlib's HOG and
dlib's CNN (MMOD) face detector, MTCNN (:mod:`fer_fast.mtcnn`) and CenterFace
(:mod:`fer_fast.centerface`).

:class:`CascadeDetector` runs one or more of the cascades that ship inside the
opencv-python(-headless) 4.x wheels (``cv2.data.haarcascades``), optionally on the mirrored
picture too (the profile cascade finds faces turned one way only) and on a 2x upscaled copy of a
small picture, optionally dlib's HOG frontal-face detector (compiled into dlib: the
``dlib-bin`` wheel, Boost licence) and dlib's CNN face detector (MMOD; its weights,
``mmod_human_face_detector.dat``, ship in the ``face-recognition-models`` package, CC0), whose
boxes are tighter than a FER2013 crop and are enlarged to it, then merges the boxes of all passes
by overlap (non-maximum suppression). A merged box is kept when enough different passes found it
(``min_votes``; a HOG box counts as a pass when its score is >= ``hog_vote``), when the HOG score
alone is >= ``hog_alone`` or a CNN confidence >= ``cnn_alone``, or when one cascade found it with
many neighbours (``strong``); CenterFace's and MTCNN's boxes are passes too, CenterFace's kept on
their own. :func:`default_config` (the best of what is installed: CenterFace, a learned detector
run on OpenCV's DNN module, where its weights are) was chosen on the project's detection
benchmark (``benchmarks/detection.py``; numbers in ``docs/detection.md``); :data:`CANDIDATES`
are the alternatives it measures.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import importlib.util

import numpy as np

__all__ = ["CascadeConfig", "CascadeDetector", "CENTERFACE_DEFAULT", "CNN_DEFAULT", "DEFAULT",
           "MTCNN_DEFAULT", "HAAR_DEFAULT", "OPENCV_DEFAULT", "CANDIDATES", "DETECT_SIDE",
           "has_dlib", "cnn_model_path", "default_config", "detect_shrunk", "iou", "cascade_path"]

Box = tuple[int, int, int, int]

# Pictures are searched for faces at a long side of at most this many pixels (a 12-megapixel
# photo took 2.3 minutes and 12 GB with the CNN pass at full size): docs/detection.md.
DETECT_SIDE = 1280


def detect_shrunk(find, gray: np.ndarray, max_side: int, min_face: int) -> list[Box]:
    """``find(picture, min_face) -> boxes`` run on ``gray`` shrunk (area averaging) to a long
    side of at most ``max_side`` pixels (0: as it is); the boxes in ``gray``'s pixels, those
    with a side under ``min_face`` dropped. Faces that end up under the detectors' smallest
    window (24 px) are not found."""
    height, width = gray.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return list(find(gray, min_face))
    import cv2

    scale = max_side / max(height, width)
    small = cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA)
    boxes = [tuple(int(round(v / scale)) for v in box)
             for box in find(small, max(1, int(round(min_face * scale))))]
    return [box for box in boxes if min(box[2], box[3]) >= min_face]


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
    passes found it or one pass found it with >= ``strong`` neighbours (0: no such rule).
    ``hog``: dlib's HOG detector is a pass (``hog_vote``, ``hog_alone``: score thresholds);
    ``cnn``: dlib's CNN detector is a pass, run on the picture scaled by ``cnn_upscale``, whose
    boxes of confidence >= ``cnn_alone`` are kept on their own; ``hog_fuse``: a merged face
    whose box is a CNN box that a HOG box joined takes this share of the HOG box (coordinates
    averaged: the two err on a FER2013 crop's framing in different ways); ``contained``: a kept
    box lying by at least this share of its area inside a bigger kept box is dropped (0: never).
    ``mtcnn``: the MTCNN detector (:mod:`fer_fast.mtcnn`) is a pass; ``centerface``: the
    CenterFace detector (:mod:`fer_fast.centerface`) is a pass, whose boxes are kept on their
    own and rank first."""

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
    cnn: bool = False
    cnn_upscale: float = 1.0
    cnn_alone: float = 0.0
    hog_fuse: float = 0.0
    contained: float = 0.0
    mtcnn: bool = False
    centerface: bool = False

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
        if self.cnn:
            parts.insert(0, f"cnn({self.cnn_upscale:g}x,alone>={self.cnn_alone}"
                            + (f",hog share {self.hog_fuse:g}" if self.hog_fuse else "") + ")+")
        if self.mtcnn:
            parts.insert(0, "mtcnn+")
        if self.centerface:
            parts.insert(0, "centerface+")
        if self.contained:
            parts.append(f"drop boxes {self.contained:g} inside a bigger one")
        if len(self.cascades) + len(self.mirrored) + self.hog + self.cnn + self.mtcnn \
                + self.centerface > 1:
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


def package_folder(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (the weights' packages
    import what fer_fast does not need: pkg_resources, TensorFlow), or None."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def cnn_model_path() -> Path | None:
    """dlib's CNN face-detector weights as installed by ``pip install face-recognition-models``
    (its ``__init__`` needs the retired pkg_resources), or None."""
    folder = package_folder("face_recognition_models")
    path = folder / "models" / "mmod_human_face_detector.dat" if folder else None
    return path if path and path.is_file() else None


#: dlib HOG box -> FER2013-crop box: side x HOG_SCALE, centre moved down by HOG_SHIFT x side
#: (medians of HOG boxes on the benchmark's Training-face set: side 0.86 of the crop, centre
#: 0.065 of the side above the crop's).
HOG_SCALE, HOG_SHIFT = 1.16, 0.065
#: dlib CNN box -> FER2013-crop box: side x CNN_SCALE (median side 0.83 of the crop on the
#: Training-face set, centred within 2 % of the side).
CNN_SCALE = 1.2
#: MTCNN box (taller than wide) -> FER2013-crop box: a square of side h x MTCNN_SCALE on the
#: same centre (median side 0.97 of the box's height on the Training-face set, centred within
#: 1 % of it).
MTCNN_SCALE = 0.97
#: CenterFace box (taller than wide) -> FER2013-crop box: a square on the same centre whose side
#: is the mean of w / CENTERFACE_W and h / CENTERFACE_H (medians of its boxes on the
#: Training-face set: width 0.79 and height 0.96 of the crop's side, centred within 2 %).
CENTERFACE_W, CENTERFACE_H = 0.79, 0.96
#: CenterFace misses large faces (on the benchmark's development set enlarged 4x it found 97 % of
#: the upright faces of 200-400 px, 92 % of 400-600 px, 5 of 11 of 600-800 px, none of 7 larger),
#: so it also runs on the picture halved, whose boxes of faces of at least this many pixels join
#: the others (chosen there: the most faces found without changing the set as made).
CENTERFACE_LARGE = 250


def _intersection(a, b) -> float:
    """Area shared by two (x, y, w, h) boxes."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return iw * ih if iw > 0 and ih > 0 else 0.0


def iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    inter = _intersection(a, b)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter) if inter else 0.0


class CascadeDetector:
    """Callable: uint8 2-D gray picture (and optionally the smallest face side, if not
    ``min_face``) -> face boxes (x, y, w, h), sorted left to right."""

    def __init__(self, config: CascadeConfig = None, min_face: int = 24):
        import cv2

        self.config = config or default_config()
        self.min_face = min_face
        self.cascades = {}
        self.hog = self.cnn = self.mtcnn = self.centerface = None
        if self.config.mtcnn:
            from .mtcnn import MTCNN

            self.mtcnn = MTCNN()
        if self.config.centerface:
            from .centerface import CenterFace

            self.centerface = CenterFace()
        if self.config.hog or self.config.cnn:
            try:
                import dlib
            except ImportError:
                raise ValueError("the HOG and CNN face detectors need dlib: pip install dlib-bin "
                                 "(or fer_fast[predict])") from None
            if self.config.hog:
                self.hog = dlib.get_frontal_face_detector()
            if self.config.cnn:
                path = cnn_model_path()
                if path is None:
                    raise ValueError("the CNN face detector needs its weights: pip install "
                                     "face-recognition-models (or fer_fast[predict])")
                self.cnn = dlib.cnn_face_detection_model_v1(str(path))
        for name in dict.fromkeys(self.config.cascades + self.config.mirrored):
            path = cascade_path(name)
            try:
                cascade = cv2.CascadeClassifier(str(path))
            except (cv2.error, SystemError):  # a malformed file fails inside the constructor
                cascade = None
            if cascade is None or cascade.empty():
                raise ValueError(f"{path}: not an OpenCV cascade classifier")
            self.cascades[name] = cascade

    def _pass(self, name: str, gray: np.ndarray, scale: float, mirror: bool, min_face: int):
        c = self.config
        min_side = max(1, int(round(min_face * scale)))
        boxes, counts = self.cascades[name].detectMultiScale2(
            gray, scaleFactor=c.scale_factor,
            minNeighbors=c.neighbors.get(name, c.min_neighbors), minSize=(min_side, min_side))
        width = gray.shape[1]
        out = []
        for (x, y, w, h), n in zip(boxes, counts):
            if mirror:
                x = width - x - w
            out.append(_Found((x / scale, y / scale, w / scale, h / scale), int(n),
                              (name, mirror)))
        return out

    def detections(self, gray: np.ndarray, min_face: int | None = None
                   ) -> list[tuple[Box, int, int, bool]]:
        """(box, votes, most cascade neighbours, kept alone) of every merged face, before the
        keep rule; a merged face takes the box of its strongest pass (CNN, HOG, cascades).
        ``min_face``: the smallest face side, if not the detector's own."""
        import cv2

        c = self.config
        min_face = self.min_face if min_face is None else min_face
        if c.equalize:
            gray = cv2.equalizeHist(gray)
        images = [(gray, 1.0)]
        if c.upscale_below and min(gray.shape) < c.upscale_below:
            images.append((cv2.resize(gray, None, fx=2, fy=2,
                                      interpolation=cv2.INTER_LINEAR), 2.0))
        found = []
        if self.centerface is not None:
            found += self._centerface(gray, min_face)
        if self.mtcnn is not None:
            found += self._mtcnn(gray, min_face)
        if self.cnn is not None:
            found += self._cnn(gray, min_face)
        if self.hog is not None:
            found += self._hog(gray, min_face)
        for image, scale in images:
            for name in c.cascades:
                found += self._pass(name, image, scale, False, min_face)
            if c.mirrored:
                flipped = np.ascontiguousarray(image[:, ::-1])
                for name in c.mirrored:
                    found += self._pass(name, flipped, scale, True, min_face)
        found.sort(key=lambda f: -f.rank)
        clusters = []  # [box, passes, most neighbours, alone, strongest box of each pass]
        for f in found:
            for cluster in clusters:
                if iou(cluster[0], f.box) >= c.merge_iou:
                    break
            else:
                cluster = [f.box, set(), 0, False, {}]
                clusters.append(cluster)
            if f.vote:
                cluster[1].add(f.source)
            cluster[2] = max(cluster[2], f.neighbours)
            cluster[3] = cluster[3] or f.alone
            cluster[4].setdefault(f.source, f)
        out = []
        for box, passes, n, alone, strongest in clusters:
            if c.hog_fuse and "cnn" in strongest and "hog" in strongest \
                    and strongest["hog"].vote and box is strongest["cnn"].box:
                box = tuple((1 - c.hog_fuse) * a + c.hog_fuse * b
                            for a, b in zip(box, strongest["hog"].box))
            out.append((tuple(int(round(v)) for v in box), len(passes), n, alone))
        return out

    def _hog(self, gray: np.ndarray, min_face: int):
        c = self.config
        rects, scores, _ = self.hog.run(np.ascontiguousarray(gray), 0, min(c.hog_vote,
                                                                           c.hog_alone))
        out = []
        for r, score in zip(rects, scores):
            w = r.width() * HOG_SCALE
            cx = r.left() + r.width() / 2
            cy = r.top() + r.height() / 2 + HOG_SHIFT * r.height()
            if w >= min_face:
                out.append(_Found((cx - w / 2, cy - w / 2, w, w), 0, "hog", 1000 + score,
                                  vote=score >= c.hog_vote, alone=score >= c.hog_alone))
        return out

    def _cnn(self, gray: np.ndarray, min_face: int):
        import cv2

        c = self.config
        scale = c.cnn_upscale
        image = gray if scale == 1 else cv2.resize(gray, None, fx=scale, fy=scale,
                                                   interpolation=cv2.INTER_LINEAR)
        out = []
        for d in self.cnn(np.ascontiguousarray(image), 0):
            r = d.rect
            w = r.width() * CNN_SCALE / scale
            cx = (r.left() + r.width() / 2) / scale
            cy = (r.top() + r.height() / 2) / scale
            if w >= min_face:
                out.append(_Found((cx - w / 2, cy - w / 2, w, w), 0, "cnn",
                                  2000 + d.confidence, alone=d.confidence >= c.cnn_alone))
        return out

    def _mtcnn(self, gray: np.ndarray, min_face: int):
        out = []
        for (x, y, w, h), p in self.mtcnn(gray, min_face):
            side = h * MTCNN_SCALE
            if side >= min_face:
                out.append(_Found((x + w / 2 - side / 2, y + h / 2 - side / 2, side, side), 0,
                                  "mtcnn", 3000 + p))
        return out

    def _centerface(self, gray: np.ndarray, min_face: int):
        import cv2

        levels = [(gray, 1.0, 1.0, min_face)]
        if min(gray.shape) >= CENTERFACE_LARGE:
            half = cv2.resize(gray, (gray.shape[1] // 2, gray.shape[0] // 2),
                              interpolation=cv2.INTER_AREA)
            levels.append((half, gray.shape[1] / half.shape[1], gray.shape[0] / half.shape[0],
                           max(min_face, CENTERFACE_LARGE)))
        out = []
        for image, sx, sy, smallest in levels:
            for (x, y, w, h), score in self.centerface(image):
                side = (w * sx / CENTERFACE_W + h * sy / CENTERFACE_H) / 2
                cx, cy = (x + w / 2) * sx, (y + h / 2) * sy
                if side >= smallest:
                    out.append(_Found((cx - side / 2, cy - side / 2, side, side), 0,
                                      "centerface", 4000 + score, alone=True))
        return out

    def __call__(self, gray: np.ndarray, min_face: int | None = None) -> list[Box]:
        c = self.config
        kept = [box for box, votes, n, alone in self.detections(gray, min_face)
                if votes >= c.min_votes or alone or (c.strong and n >= c.strong)]
        if c.contained:
            kept = [box for box in kept if not any(
                other[2] > box[2] and _inside(box, other) >= c.contained for other in kept)]
        return sorted(kept)


def _inside(a, b) -> float:
    """The share of box a's area that lies inside box b."""
    return _intersection(a, b) / (a[2] * a[3])


@dataclass
class _Found:
    """One box of one pass: ``rank`` orders the boxes of a merged face (CenterFace 4000 + score,
    MTCNN 3000 + probability, CNN 2000 + confidence,
    HOG 1000 + score, a cascade its neighbours), ``vote``: counts as its pass's vote,
    ``alone``: keeps its face on its own."""

    box: tuple[float, float, float, float]
    neighbours: int
    source: object
    rank: float = None
    vote: bool = True
    alone: bool = False

    def __post_init__(self):
        if self.rank is None:
            self.rank = self.neighbours


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
    "cnn": CascadeConfig((), cnn=True),
    "mtcnn": CascadeConfig((), mtcnn=True),
    "centerface": CascadeConfig((), centerface=True, contained=0.7),
    "cnn+hog+default+alt votes2": CascadeConfig(_FRONTAL2, scale_factor=1.05, min_neighbors=3,
                                                min_votes=2, hog=True, hog_alone=0.0,
                                                hog_vote=-0.5, cnn=True),
}
CANDIDATES["cnn+hog+default+alt votes2 fused"] = replace(
    CANDIDATES["cnn+hog+default+alt votes2"], hog_fuse=0.25, contained=0.7)

#: The detector of ``predict`` (``--detector auto``) when CenterFace's weights are installed:
#: the only one measured to reach 95 % recall at 95 % precision on both of the benchmark's sets,
#: and 20x faster than the CNN's default.
CENTERFACE_DEFAULT = CANDIDATES["centerface"]
#: ... without them, when dlib and the CNN's weights are installed.
CNN_DEFAULT = CANDIDATES["cnn+hog+default+alt votes2 fused"]
#: ... when dlib is installed without the CNN's weights.
DEFAULT = CANDIDATES["hog+default+alt votes2"]
#: ... without dlib: MTCNN, better than OpenCV's cascade in every column.
MTCNN_DEFAULT = CANDIDATES["mtcnn"]
#: ... and without dlib and MTCNN's weights (``--detector haar``): OpenCV's frontal cascade with
#: its own defaults; no cascade setting or combination measured was at least as good on every
#: column.
HAAR_DEFAULT = OPENCV_DEFAULT


def default_config() -> CascadeConfig:
    """:data:`CENTERFACE_DEFAULT` when CenterFace's weights are installed, else
    :data:`CNN_DEFAULT` when dlib and the CNN's weights are, else :data:`DEFAULT` when dlib is,
    else :data:`MTCNN_DEFAULT` when MTCNN's weights are, else :data:`HAAR_DEFAULT`."""
    from .centerface import weights_path

    if weights_path() is not None:
        return CENTERFACE_DEFAULT
    if not has_dlib():
        from .mtcnn import weights_dir

        return MTCNN_DEFAULT if weights_dir() is not None else HAAR_DEFAULT
    return CNN_DEFAULT if cnn_model_path() is not None else DEFAULT
