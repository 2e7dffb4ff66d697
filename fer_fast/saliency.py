"""Saliency maps: ``python -m fer_fast.saliency CHECKPOINT [--data PATH] [--split test] [--out DIR]``.

The paper's figure: for one test image per class, the gradient of the loss w.r.t. the input
pixels, shown beside and over the image. The loss is that of the evaluation protocol (fp32,
BatchNorm in eval mode): cross-entropy of the ten-crop-averaged logits against the true label.
The gradient is taken w.r.t. the pixels of the 40x40 crops the model sees; every crop pixel is a
copy of one pixel of the 48x48 image (crops 5..9 from the mirrored image, see
``fer_fast.augmentation.CROP_CORNERS``), so the map of an image is the sum of the crops' |gradient|
at their source positions, normalised per image to a maximum of 1.

Writes ``saliency.npz`` (images, maps, labels, predictions, indices in the split) and, when
matplotlib is installed (``pip install fer_fast[plot]``), ``saliency.png``: one row per class,
each example as (image, map, map over the image).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import cli, files
from .augmentation import CROP_CORNERS, CROP_SIZE, IMAGE_SIZE, NUM_CROPS, crop_grid, ten_crop
from .data import SPLITS
from .evaluate import predict
from .loader import TenCropBatches
from .model import CLASS_NAMES, NUM_CLASSES

__all__ = ["CROP_SETS", "canvas_index", "saliency_map", "pick_examples", "save_figure", "main"]

#: Crops whose averaged logits define the loss: the evaluation protocol's ten, or only the
#: unmirrored centre crop (corner (4, 4)).
CROP_SETS = {"ten": tuple(range(NUM_CROPS)), "centre": (len(CROP_CORNERS) - 1,)}


def canvas_index(device=None) -> torch.Tensor:
    """int64 [10, 40, 40]: the flat 48x48 canvas index (row * 48 + col) each crop pixel copies."""
    x, y = crop_grid(device)
    return (y * IMAGE_SIZE + x).long()


def saliency_map(model: torch.nn.Module, images_u8: torch.Tensor, labels: torch.Tensor, *,
                 crops: str = "ten", augment_backend: str = "auto") -> torch.Tensor:
    """float32 [B, 48, 48] saliency of uint8 ``images_u8`` [B, 48, 48] for ``labels`` [B].

    Loss = cross-entropy (summed over the batch, so each image's gradient is that of its own
    loss) of the logits averaged over the crops of ``CROP_SETS[crops]``; the map is the sum of
    |d loss / d crop pixel| over the crops at each source pixel, divided by its maximum (an
    all-zero gradient gives an all-zero map). The model runs in eval mode in fp32 (its mode is
    restored afterwards); its parameters' ``.grad`` are not touched.
    """
    if crops not in CROP_SETS:
        raise ValueError(f"saliency_map: crops must be one of {tuple(CROP_SETS)}, got {crops!r}")
    if not isinstance(images_u8, torch.Tensor) or images_u8.dtype != torch.uint8 \
            or images_u8.dim() != 3 or tuple(images_u8.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"saliency_map: images must be uint8 [B, {IMAGE_SIZE}, {IMAGE_SIZE}], got "
                         f"{getattr(images_u8, 'dtype', type(images_u8).__name__)} "
                         f"{list(getattr(images_u8, 'shape', []))}")
    b = images_u8.shape[0]
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (b,) \
            or labels.dtype.is_floating_point:
        raise ValueError(f"saliency_map: labels must be an integer tensor of shape [{b}], got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} "
                         f"{list(getattr(labels, 'shape', []))}")
    device = next(model.parameters()).device
    selected = torch.tensor(CROP_SETS[crops], device=device)
    k = selected.numel()
    x = ten_crop(images_u8.to(device), backend=augment_backend, dtype=torch.float32)
    x = x.view(b, NUM_CROPS, 1, CROP_SIZE, CROP_SIZE)[:, selected]
    x = x.reshape(b * k, 1, CROP_SIZE, CROP_SIZE).requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(x).float()
            logits = logits.view(b, k, logits.shape[-1]).mean(1)
            loss = F.cross_entropy(logits, labels.to(device, torch.int64), reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
    finally:
        model.train(was_training)
    index = canvas_index(device)[selected].reshape(-1)
    sal = torch.zeros(b, IMAGE_SIZE * IMAGE_SIZE, device=device)
    sal.index_add_(1, index, grad.abs().reshape(b, -1))
    peak = sal.amax(1, keepdim=True)
    sal = torch.where(peak > 0, sal / peak.clamp_min(torch.finfo(sal.dtype).tiny), 0.0)
    return sal.view(b, IMAGE_SIZE, IMAGE_SIZE)


def pick_examples(labels: torch.Tensor, preds: torch.Tensor, per_class: int,
                  num_classes: int = NUM_CLASSES) -> list[torch.Tensor]:
    """Per class, the indices of up to ``per_class`` images: correctly classified ones first,
    then (if too few are correct) misclassified ones, each group in index order. A class
    without images gets an empty tensor."""
    picked = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        wrong = (preds[idx] != c).to(torch.int8)
        picked.append(idx[torch.sort(wrong, stable=True).indices][:per_class])
    return picked


def save_figure(path: Path, images: np.ndarray, maps: np.ndarray, labels: np.ndarray,
                predictions: np.ndarray, indices: np.ndarray, per_class: int, split: str,
                names=CLASS_NAMES, overwrite: bool = False) -> None:
    """The grid: one row per class, per example three panels (image, map, map over the image);
    a class without examples gets a row saying so. Needs matplotlib (Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(names), 3 * per_class
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    slot = np.zeros(rows, dtype=int)
    for image, sal, label, pred, index in zip(images, maps, labels, predictions, indices):
        ax_img, ax_map, ax_over = axes[label, 3 * slot[label]: 3 * slot[label] + 3]
        slot[label] += 1
        ax_img.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax_img.set_title(f"{names[label]} #{index}\npredicted {names[pred]}", fontsize=8,
                         color="black" if pred == label else "red")
        ax_map.imshow(sal, cmap="inferno", vmin=0, vmax=1)
        ax_map.set_title("|d loss / d pixel|", fontsize=8)
        ax_over.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax_over.imshow(sal, cmap="inferno", vmin=0, vmax=1, alpha=0.55)
        ax_over.set_title("overlay", fontsize=8)
    for c in np.flatnonzero(slot == 0):
        axes[c, 0].text(0.0, 0.5, f"{names[c]}: no {split} image", fontsize=9,
                        transform=axes[c, 0].transAxes)
    fig.tight_layout()
    try:
        with files.temporary_path(path, overwrite=overwrite) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)


@cli.command
def main(argv=None) -> int:
    p = cli.Parser(prog="python -m fer_fast saliency", description=__doc__.split("\n")[0])
    cli.add_checkpoint_args(p)
    p.add_argument("--split", default="test", choices=SPLITS,
                   help="split to draw the examples from")
    p.add_argument("--out", default=None,
                   help="folder for saliency.png and saliency.npz (default: the checkpoint's)")
    p.add_argument("--per-class", type=cli.number(int, low=1), default=1,
                   help="examples per class")
    p.add_argument("--crops", default="ten", choices=tuple(CROP_SETS),
                   help="crops whose averaged logits define the loss")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing saliency.npz / saliency.png in --out")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out is not None else Path(args.checkpoint).parent
    if out.exists() and not out.is_dir():
        raise cli.UserError(f"--out {out}: is a file, not a folder")
    hint = "pass --overwrite to replace it, or choose another --out"
    if out.is_dir():
        for name in ("saliency.npz", "saliency.png"):
            files.refuse_existing(out / name, overwrite=args.overwrite, hint=hint)
    model, data, device = cli.load_model_and_data(args, (args.split,))
    out.mkdir(parents=True, exist_ok=True)
    split = data.split(args.split)
    print(f"checkpoint {args.checkpoint}: VGG(recipe={model.recipe!r}, width={model.width}); "
          f"data: {data.source}, split {args.split} ({len(split)} images)")

    batches = TenCropBatches(split, batch_size=args.batch_size, device=device,
                             augment_backend=args.augment_backend)
    preds = predict(model, batches)[0].cpu()
    picked = pick_examples(split.labels, preds, args.per_class)
    for c, idx in enumerate(picked):
        if idx.numel() == 0:
            print(f"note: class {c} ({CLASS_NAMES[c]}) has no {args.split} image: no map")
            continue
        wrong = int((preds[idx] != c).sum())
        if wrong:
            print(f"note: class {c} ({CLASS_NAMES[c]}): {wrong} of {idx.numel()} example(s) "
                  f"misclassified (too few correct ones)")
        if idx.numel() < args.per_class:
            print(f"note: class {c} ({CLASS_NAMES[c]}) has only {idx.numel()} {args.split} "
                  f"image(s)")
    indices = torch.cat(picked)
    images, labels = split.images[indices], split.labels[indices]
    maps = torch.cat([saliency_map(model, images[i:i + args.batch_size],
                                   labels[i:i + args.batch_size], crops=args.crops,
                                   augment_backend=args.augment_backend).cpu()
                      for i in range(0, indices.numel(), args.batch_size)]) \
        if indices.numel() else torch.zeros(0, IMAGE_SIZE, IMAGE_SIZE)
    arrays = dict(images=images.numpy(), maps=maps.numpy(), labels=labels.numpy(),
                  predictions=preds[indices].numpy(), indices=indices.numpy())
    with files.temporary_path(out / "saliency.npz", overwrite=args.overwrite, hint=hint) as tmp:
        np.savez(tmp, **arrays)
    print(f"wrote {out / 'saliency.npz'} ({indices.numel()} maps)")
    try:
        save_figure(out / "saliency.png", **arrays, per_class=args.per_class, split=args.split,
                    overwrite=args.overwrite)
    except ImportError:
        print("note: saliency.png not written: plotting needs matplotlib "
              "(pip install fer_fast[plot])")
        return 0
    print(f"wrote {out / 'saliency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
