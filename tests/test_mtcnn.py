"""fer_fast.mtcnn: the weights reader (arrays only), the networks against a numpy forward of
the Keras layers they were trained as, the crops and the detector on drawn faces."""
import importlib.util
import os
import pickle
import sys

import numpy as np
import pytest
import torch

from face_assets import face_photo
from fer_fast import mtcnn
from fer_fast.mtcnn import _crops, _load, _nms, _onet, _pnet, _rnet, read_weights, weights_dir

needs_joblib = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("joblib", "lz4")),
    reason="needs joblib and lz4 (pip install mtcnn)")
needs_weights = pytest.mark.skipif(weights_dir() is None, reason="needs the mtcnn package's "
                                                                 "weights (pip install mtcnn)")

# Keras layer specs of the three networks, in weight order: ("conv", k, cin, cout), ("pool", k,
# padding), ("flatten",), ("dense", cin, cout), ("head", ...) as the mtcnn package defines them
SPECS = {
    "pnet": [("conv", 3, 3, 10), ("pool", 2, "same"), ("conv", 3, 10, 16), ("conv", 3, 16, 32),
             ("heads", ("conv1", 32, 4), ("conv1", 32, 2))],
    "rnet": [("conv", 3, 3, 28), ("pool", 3, "same"), ("conv", 3, 28, 48), ("pool", 3, "valid"),
             ("conv", 2, 48, 64), ("flatten",), ("dense", 576, 128),
             ("heads", ("dense", 128, 4), ("dense", 128, 2))],
    "onet": [("conv", 3, 3, 32), ("pool", 3, "same"), ("conv", 3, 32, 64), ("pool", 3, "valid"),
             ("conv", 3, 64, 64), ("pool", 2, "same"), ("conv", 2, 64, 128), ("flatten",),
             ("dense", 1152, 256),
             ("heads", ("dense", 256, 4), ("dense", 256, 10), ("dense", 256, 2))],
}
MAKERS = {"pnet": _pnet, "rnet": _rnet, "onet": _onet}


def keras_arrays(spec, rng):
    """Random weights in Keras' layouts and order (kernel HWIO, bias, PReLU slopes)."""
    out = []
    for layer in spec:
        if layer[0] == "conv":
            _, k, cin, cout = layer
            out += [rng.normal(0, 0.3, (k, k, cin, cout)), rng.normal(0, 0.1, cout),
                    rng.uniform(0, 0.5, (1, 1, cout))]
        elif layer[0] == "dense":
            _, cin, cout = layer
            out += [rng.normal(0, 0.05, (cin, cout)), rng.normal(0, 0.1, cout),
                    rng.uniform(0, 0.5, cout)]
        elif layer[0] == "heads":
            for kind, cin, cout in layer[1:]:
                shape = (1, 1, cin, cout) if kind == "conv1" else (cin, cout)
                out += [rng.normal(0, 0.1, shape), rng.normal(0, 0.1, cout)]
    return [a.astype(np.float32) for a in out]


def keras_forward(spec, arrays, x):
    """The Keras networks in numpy, NHWC: valid convolutions, PReLU, TensorFlow's max-pool
    padding, Permute((2, 1, 3)) then Flatten, dense layers; softmax on the last head."""
    arrays = iter(arrays)

    def prelu(v, slope):
        return np.where(v > 0, v, v * slope.reshape(-1))

    for layer in spec:
        if layer[0] == "conv":
            kernel, bias, slope = next(arrays), next(arrays), next(arrays)
            k = kernel.shape[0]
            n, h, w, _ = x.shape
            out = np.zeros((n, h - k + 1, w - k + 1, kernel.shape[3]))
            for i in range(k):
                for j in range(k):
                    out += x[:, i:i + h - k + 1, j:j + w - k + 1] @ kernel[i, j]
            x = prelu(out + bias, slope)
        elif layer[0] == "pool":
            _, k, padding = layer
            n, h, w, c = x.shape
            if padding == "same":
                oh, ow = -(-h // 2), -(-w // 2)
                ph, pw = max((oh - 1) * 2 + k - h, 0), max((ow - 1) * 2 + k - w, 0)
                x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)),
                           constant_values=-np.inf)
            else:
                oh, ow = (h - k) // 2 + 1, (w - k) // 2 + 1
            x = np.stack([np.stack([x[:, 2 * i:2 * i + k, 2 * j:2 * j + k].max((1, 2))
                                    for j in range(ow)], 1) for i in range(oh)], 1)
        elif layer[0] == "flatten":
            x = x.transpose(0, 2, 1, 3).reshape(len(x), -1)
        elif layer[0] == "dense":
            weight, bias, slope = next(arrays), next(arrays), next(arrays)
            x = prelu(x @ weight + bias, slope)
        else:
            heads = []
            for kind, _, _ in layer[1:]:
                weight, bias = next(arrays), next(arrays)
                heads.append((x @ weight.reshape(weight.shape[-2:])) + bias)
            e = np.exp(heads[-1] - heads[-1].max(-1, keepdims=True))
            return heads[0], (e / e.sum(-1, keepdims=True))[..., 1]


@pytest.mark.parametrize("name,size", [("pnet", (12, 12)), ("pnet", (31, 25)),
                                       ("rnet", (24, 24)), ("onet", (48, 48))])
def test_networks_compute_the_keras_layers(name, size):
    """Kernels, slopes and dense matrices land where Keras had them (a transposed kernel or a
    flatten in the wrong order fails), and the pools pad as TensorFlow's do."""
    rng = np.random.default_rng(1)
    spec, arrays = SPECS[name], keras_arrays(SPECS[name], rng)
    x = rng.uniform(-1, 1, (3, *size, 3)).astype(np.float32)
    net = _load(MAKERS[name](), arrays, name)
    with torch.no_grad():
        offsets, prob = net(torch.from_numpy(x).permute(0, 3, 1, 2))
    want_offsets, want_prob = keras_forward(spec, arrays, x.astype(np.float64))
    if name == "pnet":  # maps: NCHW against NHWC
        offsets = offsets.permute(0, 2, 3, 1)
    np.testing.assert_allclose(offsets.numpy(), want_offsets, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(prob.numpy(), want_prob, rtol=1e-4, atol=1e-6)


def test_a_wrong_number_or_shape_of_arrays_is_refused():
    arrays = keras_arrays(SPECS["rnet"], np.random.default_rng(0))
    with pytest.raises(ValueError, match="rnet: 15 arrays for 16 parameters"):
        _load(_rnet(), arrays[:-1], "rnet")
    with pytest.raises(ValueError, match=r"rnet: an array of shape \[3, 3, 3, 27\] for a "
                                         r"parameter of shape \[28, 3, 3, 3\]"):
        _load(_rnet(), [arrays[0][:, :, :, :27]] + arrays[1:], "rnet")


@needs_joblib
def test_weights_are_read_as_the_arrays_joblib_wrote(tmp_path):
    import joblib

    arrays = keras_arrays(SPECS["onet"], np.random.default_rng(2))
    path = tmp_path / "onet.lz4"
    joblib.dump(arrays, path, compress="lz4")
    read = read_weights(path)
    assert len(read) == len(arrays)
    for a, b in zip(read, arrays):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@needs_joblib
def test_weights_holding_anything_but_arrays_are_refused_unrun(tmp_path):
    import lz4.frame

    marker = tmp_path / "ran"
    path = tmp_path / "pnet.lz4"
    path.write_bytes(lz4.frame.compress(pickle.dumps([_RunsACommand(marker)])))
    with pytest.raises(pickle.UnpicklingError, match=r"pnet.lz4: holds a \w+\.system"):
        read_weights(path)
    assert not marker.exists()
    path.write_bytes(lz4.frame.compress(pickle.dumps({"a": 1})))
    with pytest.raises(pickle.UnpicklingError, match="not a list of arrays"):
        read_weights(path)


def test_crops_resample_the_box_and_pad_with_zeros():
    image = torch.rand(1, 3, 20, 30)
    whole = _crops(image, torch.tensor([[0.0, 0.0, 30.0, 20.0]]), 24)
    assert whole.shape == (1, 3, 24, 24)
    same = _crops(image, torch.tensor([[5.0, 2.0, 17.0, 14.0]]), 12)
    torch.testing.assert_close(same[0], image[0, :, 2:14, 5:17])
    outside = _crops(image, torch.tensor([[24.0, 14.0, 36.0, 26.0]]), 12)
    torch.testing.assert_close(outside[0, :, :6, :6], image[0, :, 14:20, 24:30])
    assert outside[0, :, 6:, :].abs().max() == 0 and outside[0, :, :, 6:].abs().max() == 0


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 4, 4]],
                         dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.8, 0.7])
    assert _nms(boxes, scores, 0.5).tolist() == [1, 2, 3]
    assert _nms(boxes, scores, 0.5, by_min=True).tolist() == [1, 2]  # box 3 lies inside box 1


@needs_weights
def test_detector_finds_drawn_faces_in_a_photo():
    import cv2

    photo = face_photo(3, height=300, width=400, faces=((110, 150, 120), (300, 140, 90)))
    found = mtcnn.MTCNN()(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), 24)
    centres = sorted((x + w / 2, y + h / 2) for (x, y, w, h), p in found if p > 0.8)
    assert len(centres) == 2, found
    for (cx, cy), (tx, ty) in zip(centres, ((110, 150), (300, 140))):
        assert abs(cx - tx) < 15 and abs(cy - ty) < 20


def test_missing_weights_are_named(monkeypatch):
    monkeypatch.setattr(mtcnn, "weights_dir", lambda: None)
    with pytest.raises(ValueError, match="pip install mtcnn"):
        mtcnn.MTCNN()


def test_weights_are_found_without_importing_their_package(monkeypatch, tmp_path):
    package = tmp_path / "mtcnn"
    (package / "assets" / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('tensorflow')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mtcnn", raising=False)
    for name in ("pnet", "rnet"):
        (package / "assets" / "weights" / f"{name}.lz4").write_bytes(b"x")
    assert weights_dir() is None  # onet missing
    (package / "assets" / "weights" / "onet.lz4").write_bytes(b"x")
    assert weights_dir() == package / "assets" / "weights"
