"""Saliency maps: shape and range, the crop-to-canvas gradient mapping, example picking, CLI."""
import sys

import numpy as np
import pytest
import torch
from torch import nn

from fer_fast import VGG, ten_crop
from fer_fast.augmentation import CROP_CORNERS, CROP_SIZE, IMAGE_SIZE
from fer_fast.checkpoint import model_from_checkpoint, save_atomic
from fer_fast.loader import load_run_data
from fer_fast.model import NUM_CLASSES
from fer_fast.saliency import main, pick_examples, saliency_map


def _images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=g),
            torch.randint(0, NUM_CLASSES, (n,), generator=g))


class OnePixel(nn.Module):
    """Logits = pixel (row, col) of each crop times a fixed vector: only that crop pixel matters."""

    def __init__(self, row, col):
        super().__init__()
        self.row, self.col = row, col
        self.w = nn.Parameter(torch.randn(NUM_CLASSES))

    def forward(self, x):
        return x[:, 0, self.row, self.col, None] * self.w


class PositiveLinear(nn.Module):
    """Linear logit 0 with positive weights, others 0: for labels != 0 every input gradient is
    positive, so sum |gradient| equals the gradient through any differentiable crop function."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.rand(CROP_SIZE * CROP_SIZE) + 0.1)

    def forward(self, x):
        logit0 = x.flatten(1) @ self.w
        return torch.cat([logit0[:, None], logit0.new_zeros(x.shape[0], NUM_CLASSES - 1)], 1)


def _sliced_crops(image):
    """The ten crops by slicing (independent of fer_fast.augmentation's index arithmetic)."""
    mirrored = torch.flip(image, [-1])
    return torch.stack([src[r:r + CROP_SIZE, c:c + CROP_SIZE]
                        for src in (image, mirrored) for r, c in CROP_CORNERS])


def test_map_shape_range_and_model_untouched():
    torch.manual_seed(0)
    model = VGG(width=0.0625).train()
    images, labels = _images(5, seed=1)
    sal = saliency_map(model, images, labels)
    assert sal.shape == (5, IMAGE_SIZE, IMAGE_SIZE) and sal.dtype == torch.float32
    assert torch.isfinite(sal).all() and sal.min() >= 0
    assert torch.allclose(sal.amax((1, 2)), torch.ones(5))
    assert model.training and all(p.grad is None for p in model.parameters())
    # images are independent: one image alone gives the same map (eval-mode BN, summed loss)
    alone = saliency_map(model, images[2:3], labels[2:3])
    torch.testing.assert_close(alone[0], sal[2], rtol=1e-4, atol=1e-6)
    # the label matters
    other = saliency_map(model, images, (labels + 1) % NUM_CLASSES)
    assert not torch.allclose(other, sal)


@pytest.mark.parametrize("row,col", [(3, 5), (39, 0), (17, 31)])
def test_one_crop_pixel_lands_at_its_canvas_positions(row, col):
    torch.manual_seed(row * 40 + col)
    model = OnePixel(row, col)
    images, labels = _images(2, seed=row + col)
    sal = saliency_map(model, images, labels)
    expected = torch.zeros(IMAGE_SIZE, IMAGE_SIZE)
    for r, c in CROP_CORNERS:  # every crop contributes the same |gradient| at its source pixel
        expected[r + row, c + col] += 1
        expected[r + row, IMAGE_SIZE - 1 - (c + col)] += 1  # crops 5..9: mirrored image
    expected /= expected.max()
    for m in sal:
        torch.testing.assert_close(m, expected, rtol=1e-5, atol=1e-7)
    centre = saliency_map(model, images, labels, crops="centre")
    only = torch.zeros(IMAGE_SIZE, IMAGE_SIZE)
    only[CROP_CORNERS[-1][0] + row, CROP_CORNERS[-1][1] + col] = 1
    for m in centre:
        assert torch.equal(m, only)


def test_overlapping_crops_sum_like_autograd_through_slicing():
    torch.manual_seed(7)
    model = PositiveLinear()
    images, _ = _images(3, seed=8)
    labels = torch.tensor([1, 4, 6])  # not class 0: every input gradient is positive
    sal = saliency_map(model, images, labels)
    for image, label, m in zip(images, labels, sal):
        source = (image.float() / 255).requires_grad_(True)
        crops = _sliced_crops(source)
        assert torch.equal(crops.detach(), ten_crop(image[None], backend="eager")[:, 0])
        logits = model(crops[:, None]).mean(0, keepdim=True)
        loss = nn.functional.cross_entropy(logits, label[None])
        (grad,) = torch.autograd.grad(loss, source)
        assert (grad > 0).sum() > 0.9 * IMAGE_SIZE ** 2
        torch.testing.assert_close(m, grad / grad.max(), rtol=1e-4, atol=1e-6)


def test_bad_inputs_are_named():
    model = VGG(width=0.0625)
    images, labels = _images(2, seed=3)
    with pytest.raises(ValueError, match="images must be uint8"):
        saliency_map(model, images.float(), labels)
    with pytest.raises(ValueError, match=r"labels must be .* shape \[2\]"):
        saliency_map(model, images, labels[:1])
    with pytest.raises(ValueError, match="crops must be one of"):
        saliency_map(model, images, labels, crops="five")


def test_pick_examples_prefers_correct_then_falls_back():
    labels = torch.tensor([3, 0, 3, 3, 0, 5, 3, 6, 6, 2, 4, 0])
    preds = torch.tensor([0, 1, 3, 2, 0, 5, 3, 0, 1, 2, 4, 0])
    picked = pick_examples(labels, preds, per_class=2)
    assert [p.tolist() for p in picked] == [[4, 11], [], [9], [2, 6], [10], [5], [7, 8]]
    assert [p.tolist() for p in pick_examples(labels, preds, per_class=1)][3] == [2]


def _checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "run" / "best.pt"
    path.parent.mkdir()
    save_atomic({"params": VGG(width=0.0625).state_dict(),
                 "config": {"recipe": "released", "width": 0.0625, "seed": 2,
                            "synthetic_sizes": [8, 8, 30]}}, path)
    return path


def test_cli_writes_npz_and_png(tmp_path, capsys):
    path = _checkpoint(tmp_path)
    out = tmp_path / "maps"
    assert main([str(path), "--out", str(out), "--per-class", "2", "--batch-size", "7"]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "saliency.png" in text
    with np.load(out / "saliency.npz") as z:
        images, maps, labels, preds, indices = (z[k] for k in ("images", "maps", "labels",
                                                               "predictions", "indices"))
    split = load_run_data(None, seed=2, synthetic_sizes=(8, 8, 30)).test
    counts = torch.bincount(split.labels, minlength=NUM_CLASSES)
    assert len(labels) == sum(min(2, int(n)) for n in counts)
    assert np.array_equal(split.images[indices].numpy(), images)
    assert np.array_equal(split.labels[indices].numpy(), labels)
    assert images.shape == (len(labels), IMAGE_SIZE, IMAGE_SIZE) and images.dtype == np.uint8
    assert maps.shape == images.shape and maps.min() >= 0
    np.testing.assert_allclose(maps.max((1, 2)), 1.0, rtol=1e-6)
    assert preds.shape == labels.shape and indices.shape == labels.shape
    # the stored maps are those of saliency_map on the stored images and labels
    model, _ = model_from_checkpoint(path)
    again = saliency_map(model, torch.from_numpy(images), torch.from_numpy(labels))
    np.testing.assert_allclose(again.numpy(), maps, rtol=1e-4, atol=1e-6)
    png = (out / "saliency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_cli_reports_missing_class_and_works_without_matplotlib(tmp_path, capsys, monkeypatch):
    path = _checkpoint(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "maps"
    # 3 test images cannot cover 7 classes: some class is reported as having no image
    assert main([str(path), "--out", str(out), "--synthetic-sizes", "4,4,3"]) == 0
    text = capsys.readouterr().out
    assert "has no test image" in text and "pip install fer_fast[plot]" in text
    assert (out / "saliency.npz").is_file() and not (out / "saliency.png").exists()
    with np.load(out / "saliency.npz") as z:
        assert 1 <= len(z["labels"]) <= 3


def test_cli_errors(tmp_path, capsys):
    assert main([str(tmp_path / "absent.pt")]) == 2
    assert "absent.pt" in capsys.readouterr().err
    from fer_fast.__main__ import main as fer_fast_main
    assert fer_fast_main(["saliency", str(tmp_path / "other.pt")]) == 2  # dispatched here
    assert "other.pt: no such checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(_checkpoint(tmp_path)), "--per-class", "0"])
