"""Per-run outputs: result.json, curves.png and confusion.png; ``python -m fer_fast plot``."""
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fer_fast import plots
from fer_fast.__main__ import main as fer_main
from fer_fast.model import CLASS_NAMES

from test_train import TINY, easy, history, run  # noqa: F401 - easy is a fixture


def assert_picture(path, min_size=(400, 300)):
    """A real PNG of a sensible size that is not one flat colour."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_size[0] and image.height >= min_size[1], image.size
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 5


def test_training_run_writes_result_and_pictures(tmp_path, easy, capsys):
    out = tmp_path / "run"
    returned, _ = run(TINY + ["--epochs", "2", "--lr", "0.05", "--out", str(out)])
    result = json.loads((out / "result.json").read_text())
    assert returned == result and not (out / "summary.json").exists()  # one file, one name each
    rows = history(out)
    counts = np.array(result["confusion"])
    assert counts.shape == (7, 7) and counts.sum() == 24  # easy_data's test split
    assert result["classes"] == list(CLASS_NAMES)
    assert result["test_acc"] == pytest.approx(np.trace(counts) / counts.sum())
    assert result["epochs"] == 2
    for i, acc in enumerate(result["per_class_acc"]):
        assert acc == pytest.approx(counts[i, i] / counts[i].sum())
    assert result["wall_time_s"] == pytest.approx(sum(float(r["epoch_time_s"]) for r in rows))
    assert result["images_per_s"] > 0
    assert_picture(out / "curves.png")
    assert_picture(out / "confusion.png")
    printed = capsys.readouterr().out
    assert f"wrote {out / 'curves.png'}" in printed


def fake_run(run_dir, epochs=3):
    """A run directory as the trainer leaves it before its pictures: metrics.csv, result.json."""
    from fer_fast.rundir import write_metrics
    rows = [{"epoch": e, "lr": 0.01 * 0.5 ** e, "train_loss": 2.0 / e, "train_acc": 0.2 * e,
             "val_acc": 0.15 * e, "test_acc": None, "train_time_s": 2.0, "epoch_time_s": 2.5,
             "images_per_s": 50.0} for e in range(1, epochs + 1)]
    run_dir.mkdir()
    write_metrics(run_dir / "metrics.csv", rows)
    cm = torch.arange(49).view(7, 7) % 5
    cm[1] = 0  # a class without test images
    summary = {"test_acc": 0.5, "test_acc_last": 0.4, "best_val_acc": 0.45,
               "best_epoch": epochs}
    return summary, cm, rows


def test_without_matplotlib_the_run_finishes_and_says_how(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    summary, cm, rows = fake_run(run_dir)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = plots.write_run_outputs(run_dir, summary, cm, rows)
    printed = capsys.readouterr().out
    assert 'pip install "fer_fast[plot]"' in printed and f"fer_fast plot {run_dir}" in printed
    assert json.loads((run_dir / "result.json").read_text()) == result
    assert result["per_class_acc"][1] is None and result["confusion"] == cm.tolist()
    assert result["wall_time_s"] == 7.5 and result["images_per_s"] == 50.0
    assert not (run_dir / "curves.png").exists()
    assert fer_main(["plot", str(run_dir)]) == 2
    assert "plotting needs matplotlib" in capsys.readouterr().err

    monkeypatch.delitem(sys.modules, "matplotlib")
    assert fer_main(["plot", str(run_dir)]) == 0
    assert_picture(run_dir / "curves.png")
    assert_picture(run_dir / "confusion.png")


def test_plot_refuses_a_directory_without_a_finished_run(tmp_path, capsys):
    assert fer_main(["plot", str(tmp_path)]) == 2
    assert "no metrics.csv" in capsys.readouterr().err
