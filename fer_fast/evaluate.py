"""Ten-crop evaluation: ``python -m fer_fast.evaluate CHECKPOINT [--data PATH]``.

The protocol of docs/spec.md: fp32, BatchNorm in eval mode, TenCrop(40) of the unmodified image, the
logits of the 10 crops averaged, argmax. Prints the accuracy of every split and the confusion
matrix (rows = true class) of each. Without ``--data`` it evaluates on the data the
checkpoint's run was trained on (from its saved configuration).
"""
from __future__ import annotations

import sys

import torch

from . import cli
from .augmentation import NUM_CROPS
from .data import SPLITS
from .loader import TenCropBatches
from .model import CLASS_NAMES, NUM_CLASSES

__all__ = ["predict", "confusion_matrix", "evaluate_split", "format_confusion", "main"]


@torch.no_grad()
def predict(model: torch.nn.Module, batches: TenCropBatches) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted classes, true labels) of every image of ``batches``, on the device.
    Evaluation is fp32 (docs/spec.md): TF32 convolutions and matmuls are off while it runs."""
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
        recall = f"{100 * row[i].item() / row.sum().item():6.2f}%" if row.sum() > 0 \
            else "    n/a"  # no image of this class
        lines.append(f"{name:>{width}} | " + "".join(f"{int(v):>{width}}" for v in row)
                     + f" | {recall}")
    return "\n".join(lines)


@cli.command
def main(argv=None) -> int:
    p = cli.Parser(prog="python -m fer_fast evaluate", description=__doc__.split("\n")[0])
    cli.add_checkpoint_args(p)
    p.add_argument("--splits", default=None, help="comma-separated splits to evaluate, each of "
                   f"{', '.join(SPLITS)} (default: every split the data has)")
    args = p.parse_args(argv)
    splits = SPLITS if args.splits is None else [s for s in args.splits.split(",") if s]
    for s in splits:
        if s not in SPLITS:
            p.error(f"--splits: unknown split {s!r}; choose from {SPLITS}")
    if not splits:
        p.error("--splits: no split given")
    model, data, device = cli.load_model_and_data(args, () if args.splits is None else splits)
    present = [name for name in SPLITS if len(data.split(name))]
    print(f"checkpoint {args.checkpoint}: VGG(recipe={model.recipe!r}, width={model.width}); "
          f"data: {data.source}; splits in the data: {', '.join(present) or 'none'}")
    for name in splits:
        if not len(data.split(name)):
            print(f"\n{name}: not available (the data has no {name} split)")
            continue
        batches = TenCropBatches(data.split(name), batch_size=args.batch_size, device=device,
                                 augment_backend=args.augment_backend)
        acc, cm = evaluate_split(model, batches)
        print(f"\n{name}: ten-crop accuracy {100 * acc:.2f}% "
              f"({int(cm.diagonal().sum())}/{batches.num_images})")
        print(format_confusion(cm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
