"""Ten-crop evaluation: ``python -m fer_fast.evaluate CHECKPOINT [--data PATH]``.

The SPEC's protocol: fp32, BatchNorm in eval mode, TenCrop(40) of the unmodified image, the
logits of the 10 crops averaged, argmax. Prints the accuracy of every split and the confusion
matrix (rows = true class) of each.
"""
from __future__ import annotations

import argparse
import sys

import torch

from .augment import NUM_CROPS
from .checkpoint import CheckpointError, model_from_checkpoint
from .data import SPLITS, DataError
from .loader import TenCropBatches, load_run_data
from .model import CLASS_NAMES, NUM_CLASSES

__all__ = ["predict", "confusion_matrix", "evaluate_split", "format_confusion", "sizes_arg",
           "main"]


@torch.no_grad()
def predict(model: torch.nn.Module, batches: TenCropBatches) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted classes, true labels) of every image of ``batches``, on the device.
    Evaluation is fp32 (SPEC): TF32 convolutions and matmuls are off while it runs."""
    was_training = model.training
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    model.eval()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    preds, labels = [], []
    try:
        for crops, y in batches:
            logits = model(crops.float()).float()
            preds.append(logits.view(-1, NUM_CROPS, logits.shape[-1]).mean(1).argmax(1))
            labels.append(y)
    finally:
        model.train(was_training)
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return torch.cat(preds), torch.cat(labels)


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor,
                     num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """int64 [C, C] counts, rows = true class, columns = predicted class."""
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes,
                                                                          num_classes)


def evaluate_split(model: torch.nn.Module, batches: TenCropBatches) -> tuple[float, torch.Tensor]:
    """(ten-crop accuracy, confusion matrix on the CPU) of one split."""
    preds, labels = predict(model, batches)
    cm = confusion_matrix(preds, labels).cpu()
    return cm.diagonal().sum().item() / max(1, labels.numel()), cm


def format_confusion(cm: torch.Tensor, names=CLASS_NAMES) -> str:
    """The confusion matrix as a text table (rows = true class, columns = predicted)."""
    width = max(max(len(n) for n in names), len(str(int(cm.max()))) if cm.numel() else 1) + 1
    head = " " * width + " | " + "".join(f"{n[:width]:>{width}}" for n in names) + " |  recall"
    lines = ["true \\ predicted", head, "-" * len(head)]
    for i, name in enumerate(names):
        row = cm[i]
        recall = row[i].item() / row.sum().item() if row.sum() > 0 else float("nan")
        lines.append(f"{name:>{width}} | " + "".join(f"{int(v):>{width}}" for v in row)
                     + f" | {100 * recall:6.2f}%")
    return "\n".join(lines)


def sizes_arg(text: str) -> tuple[int, int, int]:
    """argparse type of TRAIN,VAL,TEST synthetic sizes."""
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers TRAIN,VAL,TEST, "
                                         f"got {text!r}")
    return sizes


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """The arguments shared by the commands that load a trained model and its data."""
    p.add_argument("checkpoint", help="a .pt file written by fer_fast.train, or the authors' "
                   "{'params': state_dict} file")
    p.add_argument("--data", default=None, help="fer2013.csv or image-folder root "
                   "(default: the synthetic dataset)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the synthetic dataset (default: the checkpoint's, else 0)")
    p.add_argument("--synthetic-sizes", type=sizes_arg, default=None, metavar="TRAIN,VAL,TEST",
                   help="synthetic dataset sizes (default: the checkpoint's run, else the "
                        "SyntheticSpec defaults)")
    p.add_argument("--device", default=default_device())
    p.add_argument("--batch-size", type=int, default=256, help="images per batch")
    p.add_argument("--block-backend", default="eager")
    p.add_argument("--augment-backend", default="auto")


def load_model_and_data(args: argparse.Namespace):
    """(model, FERData) for parsed ``add_checkpoint_args`` arguments; the synthetic dataset is
    rebuilt with the checkpoint run's seed and sizes unless the arguments say otherwise."""
    model, ckpt = model_from_checkpoint(args.checkpoint, device=args.device,
                                        backend=args.block_backend)
    config = ckpt.get("config") or {}
    seed = args.seed if args.seed is not None else config.get("seed", 0)
    sizes = args.synthetic_sizes or config.get("synthetic_sizes")
    return model, load_run_data(args.data, seed=seed, synthetic_sizes=sizes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fer_fast.evaluate", description=__doc__.split("\n")[0])
    add_checkpoint_args(p)
    p.add_argument("--splits", default=",".join(SPLITS), help="comma-separated splits to evaluate")
    args = p.parse_args(argv)
    splits = [s for s in args.splits.split(",") if s]
    for s in splits:
        if s not in SPLITS:
            p.error(f"--splits: unknown split {s!r}; choose from {SPLITS}")
    try:
        model, data = load_model_and_data(args)
    except (CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"checkpoint {args.checkpoint}: VGG(recipe={model.recipe!r}, width={model.width}); "
          f"data: {data.source}")
    for name in splits:
        batches = TenCropBatches(data.split(name), batch_size=args.batch_size, device=args.device,
                                 augment_backend=args.augment_backend)
        acc, cm = evaluate_split(model, batches)
        print(f"\n{name}: ten-crop accuracy {100 * acc:.2f}% "
              f"({int(cm.diagonal().sum())}/{batches.num_images})")
        print(format_confusion(cm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
