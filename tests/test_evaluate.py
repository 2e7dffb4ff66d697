"""Evaluation: ten-crop protocol, confusion matrix, architecture inference, wrong checkpoints."""
import pytest
import torch

from fer_fast import VGG, ten_crop
from fer_fast.checkpoint import (CheckpointError, infer_architecture, load_checkpoint,
                                 model_from_checkpoint, save_atomic)
from fer_fast.data import Split
from fer_fast.evaluate import confusion_matrix, evaluate_split, format_confusion, main, predict
from fer_fast.loader import TenCropBatches
from fer_fast.model import CLASS_NAMES

SIZES = "16,12,10"


def _model(width=0.0625, recipe="released", seed=0):
    torch.manual_seed(seed)
    model = VGG(recipe, width=width)
    with torch.no_grad():  # non-trivial BN statistics, so eval mode matters
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    return model


def test_confusion_matrix_counts():
    labels = torch.tensor([0, 0, 1, 6, 6, 6, 3])
    preds = torch.tensor([0, 2, 1, 6, 5, 6, 3])
    cm = confusion_matrix(preds, labels)
    assert cm.shape == (7, 7) and cm.sum() == 7
    assert cm[0, 0] == 1 and cm[0, 2] == 1 and cm[6, 6] == 2 and cm[6, 5] == 1
    text = format_confusion(cm)
    assert all(name in text for name in CLASS_NAMES)


def test_predict_is_ten_crop_average_in_eval_mode():
    model = _model().train()
    g = torch.Generator().manual_seed(1)
    split = Split(torch.randint(0, 256, (7, 48, 48), dtype=torch.uint8, generator=g),
                  torch.randint(0, 7, (7,), generator=g))
    preds, labels = predict(model, TenCropBatches(split, batch_size=3, device="cpu"))
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        expected = model(ten_crop(split.images, backend="eager")).view(7, 10, 7).mean(1).argmax(1)
    assert torch.equal(preds, expected) and torch.equal(labels, split.labels)
    acc, cm = evaluate_split(model, TenCropBatches(split, batch_size=4, device="cpu"))
    assert acc == pytest.approx((expected == split.labels).float().mean().item())
    assert cm.sum() == 7


def test_infer_architecture_from_config_and_shapes(tmp_path):
    for width in (0.0625, 0.07, 0.2):
        authors = {"params": VGG(width=width).state_dict(), "logs": {}}
        recipe, inferred = infer_architecture(authors)
        model = VGG(recipe, width=inferred)
        model.load_state_dict(authors["params"])  # every shape agrees
    ours = {"params": VGG("paper", width=0.0625).state_dict(),
            "config": {"recipe": "paper", "width": 0.0625}}
    assert infer_architecture(ours) == ("paper", 0.0625)


def test_evaluate_cli_on_saved_checkpoint(tmp_path, capsys):
    model = _model(recipe="paper")
    path = tmp_path / "best.pt"
    save_atomic({"params": model.state_dict(),
                 "config": {"recipe": "paper", "width": 0.0625, "seed": 3,
                            "synthetic_sizes": [16, 12, 10]}}, path)
    assert main([str(path), "--splits", "val,test", "--batch-size", "5"]) == 0
    out = capsys.readouterr().out
    assert "VGG(recipe='paper', width=0.0625)" in out and "synthetic(seed=3" in out
    assert "val: ten-crop accuracy" in out and "test: ten-crop accuracy" in out
    assert "train: ten-crop" not in out and "Surprise" in out
    loaded, _ = model_from_checkpoint(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                  model.state_dict().values()))


def test_evaluate_cli_authors_layout(tmp_path, capsys):
    path = tmp_path / "authors.pt"
    torch.save({"params": _model(width=0.125).state_dict()}, path)  # no config, no logs
    assert main([str(path), "--splits", "test", "--synthetic-sizes", SIZES]) == 0
    assert "VGG(recipe='released', width=0.125)" in capsys.readouterr().out


def test_wrong_architecture_names_file_and_keys(tmp_path, capsys):
    params = _model(width=0.0625).state_dict()
    shapes = tmp_path / "shapes.pt"
    save_atomic({"params": params, "config": {"recipe": "released", "width": 0.125}}, shapes)
    with pytest.raises(CheckpointError, match=r"shapes\.pt.*conv1a\.weight: checkpoint \[4, 1, 3, 3\] "
                                              r"vs model \[8, 1, 3, 3\]"):
        model_from_checkpoint(shapes)
    missing = tmp_path / "missing.pt"
    broken = {k: v for k, v in params.items() if not k.startswith("lin3")}
    broken["fc.weight"] = torch.zeros(3)
    save_atomic({"params": broken}, missing)
    with pytest.raises(CheckpointError, match=r"missing\.pt.*missing keys \['lin3\.bias', "
                                              r"'lin3\.weight'\].*unexpected keys \['fc\.weight'\]"):
        model_from_checkpoint(missing)
    assert main([str(missing), "--synthetic-sizes", SIZES]) == 2
    err = capsys.readouterr().err
    assert "missing.pt" in err and "lin3.weight" in err


def test_unusable_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt: not a readable"):
        load_checkpoint(garbage)
    bare = tmp_path / "bare.pt"
    torch.save(VGG(width=0.0625).state_dict(), bare)  # a state_dict without the 'params' wrapper
    with pytest.raises(CheckpointError, match="bare.pt: expected a dict with a 'params'"):
        load_checkpoint(bare)
