"""The synthetic FER-like faces: determinism, layout, balance, speed, and learnability."""
import time

import numpy as np
import pytest

from fer_fast.synthetic import FER2013_TRAIN_COUNTS, SyntheticSpec, class_counts, generate


def test_same_seed_same_bytes_other_seed_or_stream_differs():
    images, labels = generate(150, seed=11)
    again_images, again_labels = generate(150, seed=11)
    assert images.tobytes() == again_images.tobytes()
    assert np.array_equal(labels, again_labels)
    for other in (generate(150, seed=12), generate(150, seed=11, stream=1)):
        assert (other[0] != images).mean() > 0.5


def test_layout_and_balance():
    images, labels = generate(707, seed=1)
    assert images.dtype == np.uint8 and images.shape == (707, 48, 48)
    assert labels.dtype == np.int64 and labels.shape == (707,)
    assert np.bincount(labels, minlength=7).tolist() == [101] * 7
    assert not np.array_equal(labels[:7], np.arange(7))  # shuffled, not in class order
    assert sorted(set(generate(7, seed=2)[1].tolist())) == list(range(7))
    assert generate(0)[0].shape == (0, 48, 48)
    with pytest.raises(ValueError, match="non-negative"):
        generate(-1)


def test_class_counts():
    counts = class_counts(1000, FER2013_TRAIN_COUNTS)
    assert counts.sum() == 1000
    share = np.array(FER2013_TRAIN_COUNTS) / sum(FER2013_TRAIN_COUNTS) * 1000
    assert np.abs(counts - share).max() < 1
    _, labels = generate(500, seed=3, class_weights=FER2013_TRAIN_COUNTS)
    assert np.bincount(labels, minlength=7).tolist() == class_counts(500, FER2013_TRAIN_COUNTS).tolist()
    for bad in ((1.0,) * 6, (1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0), (0.0,) * 7):
        with pytest.raises(ValueError, match="class_weights"):
            class_counts(10, bad)
    assert SyntheticSpec().sizes == (SyntheticSpec.n_train, SyntheticSpec.n_val, SyntheticSpec.n_test)


@pytest.fixture(scope="module")
def faces():
    """(train images, labels, test images, labels), shared by the content tests."""
    return (*generate(1400, seed=6, stream=0), *generate(700, seed=6, stream=1))


def test_images_are_varied_faces(faces):
    images, labels = faces[:2]
    x = images.astype(np.float32)
    assert x.std(0).mean() > 25  # pose, lighting and tone vary between samples
    spread = x.max((1, 2)) - x.min((1, 2))
    assert np.median(spread) > 100  # each image has real contrast, not a flat field
    # The class lives in the expression: per-pixel F ratio (between-class over within-class
    # variance of the pixel) is high at the mouth and the eyes/brows and near its null value
    # (about 1) on the image border, which holds only background, hair and occluders.
    means = np.stack([x[labels == c].mean(0) for c in range(7)])
    within = np.mean([x[labels == c].var(0) for c in range(7)], axis=0)
    f_ratio = means.var(0) / within * (len(x) / 7)
    border = np.concatenate([f_ratio[:4].ravel(), f_ratio[-4:].ravel(), f_ratio[:, :4].ravel(),
                             f_ratio[:, -4:].ravel()])
    assert np.median(border) < 3
    assert f_ratio[30:40, 16:32].max() > 4 * np.median(border)  # mouth
    assert f_ratio[12:22, 10:38].max() > 4 * np.median(border)  # eyes and brows


def test_generation_speed():
    generate(32, seed=0)  # warm-up
    start = time.perf_counter()
    generate(1000, seed=5)
    assert time.perf_counter() - start < 5.0  # ~0.5 s on an idle 2-core CPU


def _pooled(images):
    """4x4 average-pooled, per-image standardised pixels."""
    x = images.astype(np.float32).reshape(len(images), 12, 4, 12, 4).mean((2, 4))
    x = x.reshape(len(images), -1)
    return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)


def test_learnable_above_chance_but_not_trivially(faces):
    """Ridge regression on raw pooled pixels: well above chance (1/7), far from perfect."""
    train_x, train_y, test_x, test_y = faces
    features = np.hstack([_pooled(train_x), np.ones((len(train_x), 1), np.float32)])
    targets = np.eye(7, dtype=np.float32)[train_y]
    gram = features.T @ features + 30.0 * np.eye(features.shape[1], dtype=np.float32)
    weights = np.linalg.solve(gram, features.T @ targets)
    test_features = np.hstack([_pooled(test_x), np.ones((len(test_x), 1), np.float32)])
    accuracy = ((test_features @ weights).argmax(1) == test_y).mean()
    assert 0.3 < accuracy < 0.9, accuracy
