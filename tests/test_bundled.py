"""The model shipped in the package (fer_fast/models/): its checksum and card, every way it
loads, its logits on fixed inputs; and bundling a run (a CSV without PublicTest, end to end)."""
import json

import numpy as np
import pytest
import torch

from fer_fast import Predictor, bundled
from fer_fast.checkpoint import file_sha256, model_from_checkpoint
from fer_fast.evaluate import main as evaluate_main
from fer_fast.export import load_safetensors
from fer_fast.export import main as export_main
from fer_fast.model import CLASS_NAMES
from fer_fast.predict import main as predict_main
from fer_fast.synthetic import generate
from fer_fast import train as T

BUNDLE = bundled.BUNDLE_DIR
#: the bundled logits are recomputed in fp32 with the same ops: only summation order may differ
LOGIT_ATOL = 1e-4


def info():
    return json.loads((BUNDLE / bundled.INFO_FILE).read_text())


def test_weights_match_their_checksum_and_card():
    sha = file_sha256(BUNDLE / bundled.MODEL_FILE)
    sidecar = (BUNDLE / (bundled.MODEL_FILE + ".sha256")).read_text().split()
    assert sidecar == [sha, bundled.MODEL_FILE]
    assert info()["sha256"] == sha
    assert f"sha256 `{sha}`" in (BUNDLE / bundled.CARD_FILE).read_text()
    assert bundled.model_path() == BUNDLE / bundled.MODEL_FILE


def test_card_is_rendered_from_the_bundle_record_and_the_run():
    record = info()
    assert (BUNDLE / bundled.CARD_FILE).read_text() == bundled.render_card(record)
    config = json.loads((BUNDLE / "config.json").read_text())
    assert (config["width"], config["recipe"], config["epochs"]) == (
        record["width"], record["recipe"], record["epochs"])
    assert config["resolved"]["precision"] == record["precision"]
    cm = np.asarray(record["val_confusion"])
    assert cm.sum() == record["val_images"] == 3589  # FER2013 PrivateTest
    assert np.trace(cm) == record["val_correct"]
    assert record["val_acc"] == pytest.approx(np.trace(cm) / cm.sum())
    rows = (BUNDLE / "metrics.csv").read_text().splitlines()
    assert len(rows) - 1 == record["epochs_done"]
    if (BUNDLE / "result.json").is_file():  # a finished run: the card's numbers are its own
        result = json.loads((BUNDLE / "result.json").read_text())
        assert result["best_val_acc"] == pytest.approx(record["val_acc"], abs=1e-12)
        assert result["val_confusion"] == record["val_confusion"]
        assert result["epochs"] == record["epochs_done"] == record["epochs"]
    else:
        assert "an interim snapshot" in (BUNDLE / bundled.CARD_FILE).read_text()


def test_logits_on_fixed_inputs_match_those_recorded_at_bundling():
    want = np.asarray(json.loads((BUNDLE / bundled.REFERENCE_FILE).read_text())["logits"])
    got = bundled.ten_crop_logits(bundled.load(), bundled.reference_faces())
    np.testing.assert_allclose(got, want, rtol=0, atol=LOGIT_ATOL)
    assert np.ptp(want) > 1.0  # the recorded logits are not degenerate


def test_every_loading_path_gives_the_same_model(tmp_path, capsys):
    faces = bundled.reference_faces()
    want = bundled.ten_crop_logits(bundled.load(), faces)
    assert export_main(["--pt", str(tmp_path / "m.pt"), "--weights", str(tmp_path / "m.st"),
                        "--onnx", str(tmp_path / "m.onnx")]) == 0
    printed = capsys.readouterr()
    assert "using the bundled model" in printed.err and "ok" in printed.out
    from_pt, _ = model_from_checkpoint(tmp_path / "m.pt")
    np.testing.assert_allclose(bundled.ten_crop_logits(from_pt, faces), want, atol=1e-6)
    from_st = load_safetensors(tmp_path / "m.st")
    np.testing.assert_allclose(bundled.ten_crop_logits(from_st, faces), want, atol=1e-6)
    probs = {}
    for model in (None, tmp_path / "m.onnx", tmp_path / "m.pt"):
        probs[model] = Predictor(model, device="cpu", detector="none").classify(faces)
    want_probs = torch.softmax(torch.from_numpy(want), 1).numpy()
    for p in probs.values():
        np.testing.assert_allclose(p, want_probs, atol=1e-4)


def test_predict_without_a_model_uses_the_bundled_one(tmp_path, capsys):
    from PIL import Image

    faces = bundled.reference_faces()
    Image.fromarray(faces[0]).save(tmp_path / "face.png")
    assert predict_main([str(tmp_path / "face.png"), "--detector", "none", "--json",
                         "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    assert "using the bundled model" in out.err
    row = json.loads(out.out.splitlines()[0])
    assert row["label"] in CLASS_NAMES
    assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)


def test_damaged_bundle_is_refused(tmp_path):
    import shutil

    copy = tmp_path / "models"
    shutil.copytree(BUNDLE, copy)
    data = bytearray((copy / bundled.MODEL_FILE).read_bytes())
    data[-100] ^= 0xFF
    (copy / bundled.MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(bundled.BundledModelError, match="does not match its sha256"):
        bundled.load(copy)
    (copy / bundled.MODEL_FILE).unlink()
    with pytest.raises(bundled.BundledModelError, match="missing"):
        bundled.load(copy)


# ----------------------------------------------------------------------------------------------
# A CSV without PublicTest: trains, evaluates, and bundles
# ----------------------------------------------------------------------------------------------

def _csv_without_test(path, sizes=(96, 48)):
    lines = ["emotion,pixels,Usage"]
    for stream, (usage, n) in enumerate(zip(("Training", "PrivateTest"), sizes)):
        faces, labels = generate(n, seed=3, stream=stream)
        lines += [f"{label},{' '.join(map(str, face.ravel()))},{usage}"
                  for face, label in zip(faces, labels)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_data_without_a_test_split_trains_evaluates_and_bundles(tmp_path, capsys):
    csv_path = _csv_without_test(tmp_path / "fer.csv")
    run_dir = tmp_path / "run"
    config, _ = T.parse_args(["--data", str(csv_path), "--preset", "quick", "--epochs", "2",
                              "--width", "0.0625", "--batch-size", "16", "--no-progress",
                              "--device", "cpu", "--out", str(run_dir)])
    summary = T.train(config)
    printed = capsys.readouterr().out
    assert "test accuracy: not available (the data has no test split)" in printed
    result = json.loads((run_dir / "result.json").read_text())
    assert result["splits"] == ["train", "val"]
    assert result["test_acc"] is None and result["confusion"] is None
    assert result["test_acc_last"] is None and result["per_class_acc"] is None
    assert result["best_val_acc"] == summary["best_val_acc"] > 0
    assert np.asarray(result["val_confusion"]).sum() == 48
    assert (run_dir / "confusion.png").is_file()  # the validation confusion, drawn
    assert not (run_dir / "test_confusion.csv").exists()

    assert evaluate_main([str(run_dir / "best.pt"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "splits in the data: train, val" in printed
    assert "test: not available (the data has no test split)" in printed
    assert evaluate_main([str(run_dir / "best.pt"), "--splits", "test"]) == 2
    assert "split 'test'" in capsys.readouterr().err

    out = tmp_path / "bundle"
    assert bundled.main([str(run_dir), "--data", str(csv_path), "--out", str(out)]) == 0
    record = json.loads((out / bundled.INFO_FILE).read_text())
    assert record["val_acc"] == pytest.approx(result["best_val_acc"], abs=1e-12)
    assert record["val_confusion"] == result["val_confusion"]
    assert (out / bundled.CARD_FILE).read_text() == bundled.render_card(record)
    assert record["command"].endswith("--data fer.csv --preset quick")
    reference = json.loads((out / bundled.REFERENCE_FILE).read_text())["logits"]
    np.testing.assert_allclose(bundled.ten_crop_logits(bundled.load(out),
                                                       bundled.reference_faces()),
                               reference, atol=LOGIT_ATOL)
    assert bundled.main([str(run_dir), "--data", str(csv_path), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
