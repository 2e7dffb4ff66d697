"""Face detection: the bundled-cascade detector and the detection benchmark's small version
(drawn faces, no shared data)."""
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from face_assets import face_photo
from fer_fast.facedetect import (CANDIDATES, DEFAULT, OPENCV_DEFAULT, CascadeConfig,
                                 CascadeDetector, iou)

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


def test_default_detector_on_the_small_benchmark(small_set):
    default = bench.evaluate(CascadeDetector(DEFAULT), small_set)
    opencv = bench.evaluate(CascadeDetector(OPENCV_DEFAULT), small_set)
    assert default["faces"]["frontal"] >= 5
    assert default["recall"]["frontal"] >= 0.9
    assert default["recall"]["frontal"] >= opencv["recall"]["frontal"]
    assert default["precision"] >= 0.85
    assert default["false_positives_on_negatives"] == 0


def test_combined_cascades_merge_overlapping_boxes():
    gray = cv2.cvtColor(face_photo(0), cv2.COLOR_BGR2GRAY)
    combined = CascadeConfig(("frontalface_default", "frontalface_alt2"),
                             mirrored=("profileface",), min_votes=2)
    merged = CascadeDetector(combined).detections(gray)
    assert len(merged) >= 1
    box, votes, neighbours = max(merged, key=lambda d: d[1])
    assert votes >= 2 and neighbours >= 1 and iou(box, (105, 55, 110, 130)) > 0.3
    assert CascadeDetector(combined)(gray) == [box]
    assert "mirror(profileface)" in combined.describe()
    assert set(CANDIDATES.values()) >= {DEFAULT, OPENCV_DEFAULT}
    with pytest.raises(ValueError, match="not an OpenCV cascade classifier"):
        CascadeDetector(CascadeConfig(("no_such_cascade",)))
