"""The model shipped inside the package, trained by fer_fast itself on FER2013.

``fer_fast/models/`` holds the weights (``MODEL_FILE``, safetensors with the architecture in its
metadata), their ``sha256sum`` sidecar, the model card, the training run's ``config.json``,
``metrics.csv`` and ``result.json`` (when the run had finished), and ``reference.json``: the
ten-crop logits of a few fixed inputs, recorded when the model was bundled (the regression test
of the inference path). ``Predictor()``, ``predict``, ``demo`` and ``export`` use it when no model
is given.

Bundling is a maintainer's step: ``python -m fer_fast.bundled RUN_DIR --data fer2013.csv``
evaluates the run's ``best.pt`` on the validation split (PrivateTest) and writes the folder.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from . import cli
from .checkpoint import file_sha256
from .model import CLASS_NAMES, VGG

__all__ = ["BUNDLE_DIR", "MODEL_FILE", "BundledModelError", "model_path", "load", "describe",
           "reference_faces", "ten_crop_logits", "render_card", "make"]

BUNDLE_DIR = Path(__file__).resolve().parent / "models"
MODEL_FILE = "fer2013_vgg_cpu.safetensors"
CARD_FILE = "MODEL_CARD.md"
REFERENCE_FILE = "reference.json"
INFO_FILE = "bundle.json"
#: the run's files kept beside the card
RUN_FILES = ("config.json", "metrics.csv", "result.json")


class BundledModelError(cli.UserError):
    """The bundled model is missing or does not match its recorded checksum."""


def model_path(folder: Path = BUNDLE_DIR) -> Path:
    """The bundled weights, checked against their sha256 sidecar."""
    path = folder / MODEL_FILE
    sidecar = path.with_name(path.name + ".sha256")
    if not path.is_file() or not sidecar.is_file():
        raise BundledModelError(f"{path}: the bundled model is missing from this installation "
                                f"(give a model file instead)")
    recorded = sidecar.read_text().split()[0].lower()
    if file_sha256(path) != recorded:
        raise BundledModelError(f"{path}: does not match its sha256 ({sidecar.name}); the "
                                f"installation is damaged (reinstall fer_fast)")
    return path


def load(folder: Path = BUNDLE_DIR, *, backend: str = "eager") -> VGG:
    """The bundled VGG in eval mode, on the CPU."""
    from .export import ExportError, load_safetensors

    try:
        return load_safetensors(model_path(folder), backend=backend)
    except (ExportError, ImportError) as exc:
        raise BundledModelError(f"the bundled model does not load: {exc}") from None


def describe(folder: Path = BUNDLE_DIR) -> str:
    """One line naming the bundled model and its validation accuracy."""
    info = json.loads((folder / INFO_FILE).read_text())
    return (f"the bundled model ({MODEL_FILE}: VGG width {info['width']}, {info['recipe']} "
            f"recipe, {100 * info['val_acc']:.2f}% FER2013 PrivateTest ten-crop; "
            f"{folder / CARD_FILE})")


def reference_faces() -> np.ndarray:
    """uint8 [6, 48, 48]: four synthetic faces and two fixed noise images (inputs whose logits
    the bundle records)."""
    from .synthetic import generate

    faces, _ = generate(4, seed=17)
    noise = np.random.default_rng(17).integers(0, 256, (2, 48, 48), dtype=np.uint8)
    return np.concatenate([faces, noise])


@torch.no_grad()
def ten_crop_logits(model: VGG, faces: np.ndarray) -> np.ndarray:
    """float64 [N, classes]: the evaluation protocol's averaged ten-crop logits (fp32, eval)."""
    from .augmentation import NUM_CROPS, ten_crop

    model = model.eval()
    crops = ten_crop(torch.from_numpy(np.ascontiguousarray(faces)), backend="eager")
    logits = model(crops.float()).float()
    return logits.view(-1, NUM_CROPS, logits.shape[-1]).mean(1).double().numpy()


# ----------------------------------------------------------------------------------------------
# Bundling (maintainers)
# ----------------------------------------------------------------------------------------------

def render_card(info: dict) -> str:
    """The model card, from ``bundle.json``'s content only (so a test can re-render it)."""
    cm = np.asarray(info["val_confusion"])
    recalls = [cm[i, i] / cm[i].sum() if cm[i].sum() else float("nan") for i in range(len(cm))]
    head = "| true \\ predicted | " + " | ".join(CLASS_NAMES) + " | recall |"
    rows = [head, "|" + "---|" * (len(CLASS_NAMES) + 2)]
    for name, row, recall in zip(CLASS_NAMES, cm.tolist(), recalls):
        rows.append(f"| **{name}** | " + " | ".join(str(v) for v in row)
                    + f" | {100 * recall:.1f}% |")
    finished = info["epochs_done"] == info["epochs"]
    state = ("the run finished" if finished else
             f"an interim snapshot: the run had done {info['epochs_done']} of its "
             f"{info['epochs']} epochs when this model was bundled")
    per_class = ", ".join(f"{n} {100 * r:.1f}%" for n, r in zip(CLASS_NAMES, recalls))
    return f"""# Model card: {MODEL_FILE}

The model that `fer_fast.Predictor()`, `python -m fer_fast predict`, `demo` and `export` use when
no model is given. Trained by fer_fast itself, on CPU cores, with one command.

| | |
|---|---|
| architecture | the paper's VGG (Khaireddin & Chen 2021) at width {info['width']} (channels {info['channels']}, head {info['hidden']}), {info['recipe']} recipe (conv → BatchNorm → ReLU), {info['parameters']:,} parameters |
| input | 48×48 grayscale face, pixels / 255; ten 40×40 crops, logits averaged |
| output | 7 classes: {', '.join(CLASS_NAMES)} |
| weights | `{MODEL_FILE}`, safetensors, fp32, sha256 `{info['sha256']}` |
| **PrivateTest accuracy** | **{100 * info['val_acc']:.2f}%** ten-crop ({info['val_correct']}/{info['val_images']}), best validation epoch {info['best_epoch']} |
| PublicTest accuracy | not measured here: PublicTest is withheld from this project's data |
| state of the run | {state} |

## How it was trained
```bash
{info['command']}
```
- Data: FER2013 ({info['data_rows']}), rebuilt from a public JPEG copy of the dataset (pixels may differ
  from the original CSV by JPEG rounding; class counts match). Splits: train = Training
  ({info['train_images']} faces), validation = PrivateTest ({info['val_images']} faces: {info['val_use']});
  PublicTest withheld.
- Recipe `--preset cpu`: {info['recipe_line']}.
- Epochs: {info['epochs_done']} of {info['epochs']}; training + validation time {info['wall_time']}
  ({info['images_per_s']:.0f} training images/s, each image = 10 augmented crops).
- Hardware and software: {info['hardware']}; {info['precision']} autocast, channels_last;
  torch {info['torch']}.
- The run's own files are beside this card: `config.json`, `metrics.csv`{', `result.json`' if finished else ''}.

## PrivateTest (validation) results of the bundled weights
Per class (recall): {per_class}.

{chr(10).join(rows)}

## Intended use and limits
- Research and demonstration: the expression of a frontal face in a photo, as FER2013 defines the
  seven classes. Not for decisions about people (hiring, policing, health, surveillance).
- The model sees 48×48 grayscale frontal faces as cropped by a face detector; profiles, strong
  occlusion, extreme lighting or faces under ~40 px are outside what it was trained on.
- FER2013 was collected by image search and labelled by crowd workers: labels are noisy (human
  agreement is estimated at ~65 %), Disgust has few examples ({info['disgust_train']} training faces) and
  is rarely predicted, and the faces' demographics are not balanced or documented; accuracy on
  a group of people can differ from the figure above.
- FER2013 is a research dataset (ICML 2013 representation-learning challenge); check its terms
  before any other use.
"""


def _human_duration(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def _hardware() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def make(run_dir: Path, data_path: Path, out: Path, command: str) -> dict:
    """Bundle ``run_dir``'s best.pt into the new or empty folder ``out``; returns bundle.json."""
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .data import load_data
    from .evaluate import evaluate_split
    from .export import save_safetensors
    from .loader import TenCropBatches
    from .model import stage_channels
    from .plots import read_metrics

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise cli.UserError(f"{out}: not empty (the bundle goes into a new or empty folder)")
    config = json.loads((run_dir / "config.json").read_text())
    model, _ = model_from_checkpoint(run_dir / "best.pt")
    best = load_checkpoint(run_dir / "best.pt")
    data = load_data(data_path, splits=("train", "val"))
    val = TenCropBatches(data.val, batch_size=256, device="cpu")
    acc, cm = evaluate_split(model, val)
    history = read_metrics(run_dir / "metrics.csv")
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(model, out / MODEL_FILE)
    sha = file_sha256(out / MODEL_FILE)
    (out / (MODEL_FILE + ".sha256")).write_text(f"{sha}  {MODEL_FILE}\n")
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out / name)
    faces = reference_faces()
    (out / REFERENCE_FILE).write_text(json.dumps(
        {"faces": "fer_fast.bundled.reference_faces()",
         "logits": ten_crop_logits(model, faces).tolist()}, indent=1) + "\n")
    width = float(config["width"])
    train_time = sum(r["train_time_s"] for r in history)
    info = {
        "width": width, "recipe": config["recipe"], "channels": list(stage_channels(width)),
        "hidden": model.lin1.out_features,
        "parameters": sum(p.numel() for p in model.parameters()),
        "sha256": sha, "val_acc": acc, "val_correct": int(cm.diagonal().sum()),
        "val_images": len(data.val), "train_images": len(data.train),
        "val_confusion": cm.tolist(), "best_epoch": best["epoch"],
        "recorded_best_val_acc": best["best"]["val_acc"],
        "epochs_done": len(history), "epochs": config["epochs"], "command": command,
        "data_rows": f"{len(data.train) + len(data.val)} rows: Training + PrivateTest",
        "recipe_line": (f"width {width}, {config['epochs']} epochs, batch {config['batch_size']} "
                        f"images (x10 crops), SGD-Nesterov lr {config['lr']} momentum "
                        f"{config['momentum']} weight decay {config['weight_decay']}, "
                        f"{config['scheduler']} schedule, dropout {config['dropout']}, "
                        + (f"label smoothing {config['label_smoothing']}, "
                           if config.get("label_smoothing") else "")
                        + f"seed {config['seed']}"),
        "wall_time": _human_duration(sum(r["epoch_time_s"] for r in history)),
        "images_per_s": sum(r["images_per_s"] * r["train_time_s"] for r in history)
        / max(train_time, 1e-9),
        "val_use": ("chooses best.pt and drives the learning-rate schedule"
                    if config["scheduler"] == "plateau" else "chooses best.pt only"),
        "hardware": _hardware(), "precision": config["resolved"]["precision"],
        "torch": config["resolved"]["torch"],
        "disgust_train": int((data.train.labels == 1).sum()),
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    (out / CARD_FILE).write_text(render_card(info))
    return info


@cli.command
def main(argv=None) -> int:
    p = cli.Parser(prog="python -m fer_fast.bundled",
                   description="Bundle a training run's best.pt as the package's model.")
    p.add_argument("run_dir", help="a fer_fast.train run directory (its best.pt is bundled)")
    p.add_argument("--data", required=True, help="the run's FER2013 CSV (validation split)")
    p.add_argument("--out", default=str(BUNDLE_DIR), help="new or empty folder")
    p.add_argument("--command", default=None, help="the training command for the card")
    cli.add_debug_arg(p)
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not (run_dir / "best.pt").is_file():
        raise cli.UserError(f"{run_dir}: no best.pt (not a fer_fast.train run directory)")
    config = json.loads((run_dir / "config.json").read_text())
    command = args.command or (f"python -m fer_fast train --data {Path(config['data']).name} "
                               f"--preset {config['preset']}")
    info = make(run_dir, Path(args.data), Path(args.out), command)
    print(f"bundled {run_dir / 'best.pt'} into {args.out}: PrivateTest ten-crop "
          f"{100 * info['val_acc']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
