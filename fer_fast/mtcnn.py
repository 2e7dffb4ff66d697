"""MTCNN face detector (Zhang et al. 2016, "Joint Face Detection and Alignment using Multi-task
Cascaded Convolutional Networks") in torch, with the weights of the ``mtcnn`` package.

The ``mtcnn`` wheel (MIT) ships the three networks' weights as joblib pickles of Keras layers
(``mtcnn/assets/weights/{pnet,rnet,onet}.lz4``) and runs them on TensorFlow. fer_fast reads the
arrays with an unpickler that builds nothing but numpy arrays (:func:`read_weights`) and runs the
networks here, on the CPU: a proposal net slides over an image pyramid, a refinement net and an
output net re-score and re-box the proposals on 24x24 and 48x48 crops.
"""
from __future__ import annotations

import importlib.util
import io
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MTCNN", "weights_dir", "read_weights"]

#: Image pyramid step and the proposal net's window (the paper's values).
PYRAMID_STEP, WINDOW = 0.709, 12
#: Face-probability thresholds of the three stages and their non-maximum-suppression IoUs (the
#: ``mtcnn`` package's defaults).
THRESHOLDS = (0.6, 0.7, 0.8)
NMS_IOU = (0.5, 0.7, 0.7, 0.7)  # per pyramid level, across levels, refinement, output (min)


def weights_dir() -> Path | None:
    """The ``mtcnn`` package's weights folder (its ``__init__`` imports TensorFlow, so it is
    not imported), or None when it is not installed."""
    from .facedetect import package_folder

    folder = package_folder("mtcnn")
    if folder is None:
        return None
    path = folder / "assets" / "weights"
    return path if all((path / f"{n}.lz4").is_file() for n in ("pnet", "rnet", "onet")) else None


class _ArrayHeader:
    """Stands for joblib's ``NumpyArrayWrapper``: the shape, order and dtype of the array whose
    bytes follow it in the stream."""

    def __setstate__(self, state):
        self.__dict__.update(state)


class _ArraysUnpickler(pickle._Unpickler):
    """Unpickles a joblib file of numpy arrays and refuses every other kind of object."""

    _ALLOWED = {("joblib.numpy_pickle", "NumpyArrayWrapper"): _ArrayHeader,
                ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}

    def __init__(self, file, name):
        super().__init__(file)
        self.file, self.name = file, name

    def find_class(self, module, name):
        try:
            return self._ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"{self.name}: holds a {module}.{name}, not only "
                                         f"arrays") from None

    def load_build(self):
        super().load_build()
        header = self.stack[-1]
        if isinstance(header, _ArrayHeader):  # the array's bytes follow, after a padding
            dtype = np.dtype(header.dtype)
            if header.subclass is not np.ndarray or dtype.hasobject or header.order != "C":
                raise pickle.UnpicklingError(f"{self.name}: an array of an unexpected kind")
            self.file.read(self.file.read(1)[0])
            count = int(np.prod(header.shape))
            data = self.file.read(count * dtype.itemsize)
            if len(data) != count * dtype.itemsize:
                raise pickle.UnpicklingError(f"{self.name}: truncated")
            self.stack[-1] = np.frombuffer(data, dtype).reshape(header.shape)

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build


def read_weights(path: Path) -> list[np.ndarray]:
    """The list of arrays in one of the ``mtcnn`` package's lz4-compressed joblib files."""
    import lz4.frame

    raw = lz4.frame.decompress(Path(path).read_bytes())
    arrays = _ArraysUnpickler(io.BytesIO(raw), str(path)).load()
    if not isinstance(arrays, list) or not all(isinstance(a, np.ndarray) for a in arrays):
        raise pickle.UnpicklingError(f"{path}: not a list of arrays")
    return arrays


def _conv(cin, cout, k):
    return nn.Sequential(nn.Conv2d(cin, cout, k), nn.PReLU(cout))


class _Net(nn.Module):
    """A stage: convolutions with PReLU and max-pools (``trunk``), then either 1x1 convolutions
    (the proposal net) or a PReLU dense layer (the others) into the heads; the heads' first
    output is the box regression, the last the face probability."""

    def __init__(self, trunk, dense, heads):
        super().__init__()
        self.trunk = nn.Sequential(*trunk)
        self.dense = dense
        self.heads = nn.ModuleList(heads)

    def forward(self, x):
        x = self.trunk(x)
        if self.dense is not None:
            # Keras flattened (width, height, channels) after a permute: the networks were
            # trained on transposed pictures
            x = self.dense(x.permute(0, 3, 2, 1).flatten(1))
        outs = [head(x) for head in self.heads]
        return outs[0], outs[-1].softmax(1)[:, 1]


def _pool(k, ceil=True):
    return nn.MaxPool2d(k, 2, ceil_mode=ceil)


def _pnet():
    return _Net([_conv(3, 10, 3), _pool(2), _conv(10, 16, 3), _conv(16, 32, 3)], None,
                [nn.Conv2d(32, 4, 1), nn.Conv2d(32, 2, 1)])


def _rnet():
    return _Net([_conv(3, 28, 3), _pool(3), _conv(28, 48, 3), _pool(3, False), _conv(48, 64, 2)],
                nn.Sequential(nn.Linear(576, 128), nn.PReLU(128)),
                [nn.Linear(128, 4), nn.Linear(128, 2)])


def _onet():
    return _Net([_conv(3, 32, 3), _pool(3), _conv(32, 64, 3), _pool(3, False), _conv(64, 64, 3),
                 _pool(2), _conv(64, 128, 2)],
                nn.Sequential(nn.Linear(1152, 256), nn.PReLU(256)),
                [nn.Linear(256, 4), nn.Linear(256, 10), nn.Linear(256, 2)])


def _load(net: nn.Module, arrays: list[np.ndarray], name: str) -> nn.Module:
    """Keras' weights in layer order: a convolution's kernel (kh, kw, in, out) and bias, a
    PReLU's slopes, a dense layer's (in, out) matrix and bias."""
    params = list(net.parameters())
    if len(params) != len(arrays):
        raise ValueError(f"{name}: {len(arrays)} arrays for {len(params)} parameters")
    with torch.no_grad():
        for p, a in zip(params, arrays):
            t = torch.from_numpy(np.array(a, np.float32))
            t = t.permute(3, 2, 0, 1) if t.ndim == 4 else t.T if p.ndim == 2 else t.reshape(-1)
            if t.shape != p.shape:
                raise ValueError(f"{name}: an array of shape {list(a.shape)} for a parameter "
                                 f"of shape {list(p.shape)}")
            p.copy_(t)
    return net.eval()


def _nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, by_min=False):
    """Indices of the boxes (x1, y1, x2, y2) kept by greedy non-maximum suppression, best first;
    overlap is the intersection over the union, or over the smaller box (``by_min``)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order, keep = scores.argsort(descending=True), []
    while len(order):
        best, rest = order[0], order[1:]
        keep.append(best)
        lt = torch.maximum(boxes[best, :2], boxes[rest, :2])
        rb = torch.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = (rb - lt).clamp(min=0).prod(1)
        if by_min:
            denom = torch.minimum(area[best], area[rest])
        else:
            denom = area[best] + area[rest] - inter
        order = rest[inter / denom.clamp(min=1e-9) <= threshold]
    return torch.stack(keep) if keep else order


def _square(boxes: torch.Tensor) -> torch.Tensor:
    side = (boxes[:, 2:] - boxes[:, :2]).max(1).values
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    return torch.cat([centre - side[:, None] / 2, centre + side[:, None] / 2], 1)


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + offsets * size


def _crops(image: torch.Tensor, boxes: torch.Tensor, side: int) -> torch.Tensor:
    """The boxes' contents resampled (bilinear) to side x side; outside the picture: 0."""
    _, _, h, w = image.shape
    steps = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    xs = boxes[:, 0:1] + steps * (boxes[:, 2:3] - boxes[:, 0:1])
    ys = boxes[:, 1:2] + steps * (boxes[:, 3:4] - boxes[:, 1:2])
    grid = torch.stack([(xs * 2 / w - 1)[:, None, :].expand(-1, side, -1),
                        (ys * 2 / h - 1)[:, :, None].expand(-1, -1, side)], -1)
    return F.grid_sample(image.expand(len(boxes), -1, -1, -1), grid, align_corners=False)


def _normalized(gray: np.ndarray) -> torch.Tensor:
    """[1, 3, H, W] network input of a uint8 gray picture: (v - 127.5) / 128 in each channel."""
    h, w = gray.shape
    return torch.from_numpy((gray.astype(np.float32) - 127.5) / 128).expand(1, 3, h, w)


class MTCNN:
    """Callable: uint8 2-D gray picture, smallest face side -> [((x, y, w, h), probability)] of
    the output net's faces (boxes from brow to chin, taller than wide, as the networks were
    trained). ``weights``: a folder of ``pnet/rnet/onet.lz4`` (default: the ``mtcnn``
    package's); ``thresholds``: the three stages' face-probability thresholds."""

    def __init__(self, weights: Path | None = None, thresholds: tuple = THRESHOLDS):
        self.thresholds = thresholds
        weights = weights_dir() if weights is None else Path(weights)
        if weights is None or importlib.util.find_spec("lz4") is None:
            raise ValueError("the MTCNN face detector needs its weights and lz4: pip install "
                             "mtcnn (or fer_fast[predict])")
        self.nets = [_load(make(), read_weights(weights / f"{name}.lz4"), name)
                     for make, name in ((_pnet, "pnet"), (_rnet, "rnet"), (_onet, "onet"))]

    @torch.inference_mode()
    def __call__(self, gray: np.ndarray, min_face: int = 24):
        import cv2

        pnet, rnet, onet = self.nets
        h, w = gray.shape
        image = _normalized(gray)
        found = []
        scale = WINDOW / min_face
        while min(h, w) * scale >= WINDOW:
            sh, sw = int(np.ceil(h * scale)), int(np.ceil(w * scale))
            small = cv2.resize(gray, (sw, sh), interpolation=cv2.INTER_AREA if scale < 1
                               else cv2.INTER_LINEAR)
            offsets, prob = pnet(_normalized(small))
            ys, xs = torch.nonzero(prob[0] > self.thresholds[0], as_tuple=True)
            if len(ys):
                cells = torch.stack([xs, ys, xs, ys], 1).float() * 2
                cells[:, 2:] += WINDOW
                boxes = _regress(cells, offsets[0, :, ys, xs].T) / scale
                scores = prob[0, ys, xs]
                keep = _nms(boxes, scores, NMS_IOU[0])
                found.append((boxes[keep], scores[keep]))
            scale *= PYRAMID_STEP
        if not found:
            return []
        boxes, scores = (torch.cat(t) for t in zip(*found))
        boxes = _square(boxes[_nms(boxes, scores, NMS_IOU[1])])
        for net, side, threshold, overlap in ((rnet, 24, self.thresholds[1], NMS_IOU[2]),
                                              (onet, 48, self.thresholds[2], NMS_IOU[3])):
            if not len(boxes):
                return []
            offsets, prob = net(_crops(image, boxes, side))
            keep = prob > threshold
            boxes, scores = _regress(boxes[keep], offsets[keep]), prob[keep]
            keep = _nms(boxes, scores, overlap, by_min=net is onet)
            boxes, scores = boxes[keep], scores[keep]
            if net is rnet:
                boxes = _square(boxes)
        return [((float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])), float(s))
                for b, s in zip(boxes, scores)]
