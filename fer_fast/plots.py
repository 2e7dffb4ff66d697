"""What a finished run leaves besides its checkpoints: ``result.json`` and two pictures.

``result.json`` (written at the very end of a run, so its presence means the run finished) holds
everything needed to redraw the pictures and to compare runs without loading a checkpoint:

- ``test_acc``: ten-crop test accuracy of the best-validation checkpoint (the reported number),
  ``test_acc_last``: of the last model; ``best_val_acc``, ``best_epoch``, ``val_acc_last``;
- ``epochs``: epochs done; ``wall_time_s``: training + validation time summed over the epochs
  (resumed runs included, start-up and the final test excluded); ``images_per_s``: training
  images per second over all epochs;
- ``splits``: the splits the data had (``test_acc``, ``test_acc_last``, ``confusion`` and
  ``per_class_acc`` are null without a test split: not available, never 0);
- ``classes``, ``confusion`` (test counts of the ``test_acc`` model, rows = true class, columns =
  predicted) and ``per_class_acc`` (the recall of each class; null for a class without images);
  ``val_confusion`` and ``val_per_class_acc``: the same on the validation split (best model).

``curves.png`` (train loss, train / validation (/ test) accuracy and the learning rate per epoch,
from ``metrics.csv``) and ``confusion.png`` (the row-normalised test confusion matrix with the
counts; the validation one when the data has no test split) need matplotlib, an optional extra (``pip install "fer_fast[plot]"``); without it the run
still finishes and says how to draw them later: ``python -m fer_fast plot RUN_DIR``.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from . import cli, files
from .model import CLASS_NAMES

__all__ = ["RESULT_FILE", "run_result", "write_run_outputs", "read_metrics", "check_result",
           "draw_run",
           "plot_curves", "plot_confusion", "new_figure", "main"]

RESULT_FILE = "result.json"
HINT = ('plots not drawn: matplotlib is not installed (pip install "fer_fast[plot]", then '
        'python -m fer_fast plot {run_dir})')


def run_result(summary: dict, confusion, history: list[dict], classes=CLASS_NAMES) -> dict:
    """The content of result.json from the trainer's summary, the test confusion counts (a
    [C, C] tensor or nested list; None without a test split) and the per-epoch history rows."""
    counts = _counts(confusion)
    val_counts = _counts(summary.get("val_confusion"))
    train_time = sum(float(r["train_time_s"]) for r in history)
    images = sum(float(r["images_per_s"]) * float(r["train_time_s"]) for r in history)
    return {
        "test_acc": summary["test_acc"],
        "test_acc_last": summary["test_acc_last"],
        "best_val_acc": summary["best_val_acc"],
        "best_epoch": summary["best_epoch"],
        "val_acc_last": history[-1]["val_acc"] if history else None,
        "epochs": len(history),
        "wall_time_s": sum(float(r["epoch_time_s"]) for r in history),
        "images_per_s": images / train_time if train_time > 0 else None,
        "splits": summary.get("splits", ["train", "val", "test"]),
        "classes": list(classes),
        "confusion": counts,
        "per_class_acc": _recalls(counts),
        "val_confusion": val_counts,
        "val_per_class_acc": _recalls(val_counts),
    }


def _counts(confusion) -> list[list[int]] | None:
    if confusion is None:
        return None
    rows = confusion.tolist() if hasattr(confusion, "tolist") else confusion
    return [[int(v) for v in row] for row in rows]


def _recalls(counts) -> list[float | None] | None:
    if counts is None:
        return None
    return [row[i] / sum(row) if sum(row) else None for i, row in enumerate(counts)]


def write_run_outputs(run_dir, summary: dict, confusion, history: list[dict]) -> dict:
    """End of a training run: write result.json (the run's "finished" mark, kept even if
    drawing fails), then draw the pictures or print how to get them."""
    run_dir = Path(run_dir)
    result = run_result(summary, confusion, history)
    files.write_text(run_dir / RESULT_FILE, json.dumps(result, indent=2) + "\n", overwrite=True)
    try:
        for path in draw_run(run_dir, result):
            print(f"wrote {path}")
    except ImportError:
        print(HINT.format(run_dir=run_dir))
    return result


#: the metrics.csv columns every row fills (the curves are drawn from them)
REQUIRED_METRICS = ("epoch", "lr", "train_loss", "train_acc", "val_acc")


def read_metrics(path) -> list[dict]:
    """metrics.csv rows with numbers as floats (None for empty cells); a ValueError naming the
    file when a required column, or a number, is missing or malformed."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_METRICS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(missing)} (columns: "
                             f"{', '.join(reader.fieldnames or []) or 'none'})")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                values = {k: (float(v) if v not in ("", None) else None) for k, v in row.items()
                          if k is not None}
            except ValueError as e:
                raise ValueError(f"{path}, line {line}: {e}") from None
            empty = [c for c in REQUIRED_METRICS if values.get(c) is None]
            if empty:
                raise ValueError(f"{path}, line {line}: no value in column {', '.join(empty)}")
            rows.append(values)
        return rows


def check_result(result, path=RESULT_FILE) -> dict:
    """``result`` (a parsed result.json) if it has the shape the pictures and reports read,
    else a ValueError naming the file and the field."""
    if not isinstance(result, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(result).__name__}")
    classes = result.get("classes", list(CLASS_NAMES))
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise ValueError(f"{path}: field 'classes' must be a list of class names, got "
                         f"{classes!r}")
    n = len(classes)
    for field in ("confusion", "val_confusion"):
        counts = result.get(field)
        if counts is not None and not (
                isinstance(counts, list) and len(counts) == n
                and all(isinstance(row, list) and len(row) == n and all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in row)
                        for row in counts)):
            raise ValueError(f"{path}: field '{field}' must be a {n}x{n} matrix of counts")
    for field in ("test_acc", "test_acc_last", "best_val_acc", "val_acc_last", "wall_time_s",
                  "images_per_s", "epochs", "best_epoch"):
        value = result.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{path}: field '{field}' must be a number, got {value!r}")
    return result


def new_figure(**kwargs):
    """A matplotlib Figure drawn with the Agg canvas, without pyplot (no global backend state,
    nothing kept alive after saving)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def plot_curves(rows: list[dict], path, title: str = "") -> None:
    """Three panels on shared epochs: training loss; train / validation (/ test) accuracy;
    learning rate (log scale when it changes)."""
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    fig = new_figure(figsize=(7, 7.5))
    loss_ax, acc_ax, lr_ax = fig.subplots(3, 1, sharex=True)
    loss_ax.plot(epochs, [r["train_loss"] for r in rows], marker=".", color="tab:red")
    loss_ax.set_ylabel("train loss")
    for key, label, color in (("train_acc", "train", "tab:blue"), ("val_acc", "validation",
                              "tab:orange"), ("test_acc", "test", "tab:green")):
        points = [(e, 100 * r[key]) for e, r in zip(epochs, rows) if r.get(key) is not None]
        if points:
            acc_ax.plot(*zip(*points), marker=".", label=label, color=color)
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.legend(loc="lower right")
    lrs = [r["lr"] for r in rows]
    lr_ax.plot(epochs, lrs, marker=".", color="tab:purple")
    if lrs and min(lrs) > 0 and max(lrs) > min(lrs):
        lr_ax.set_yscale("log")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("epoch")
    lr_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with files.temporary_path(path, overwrite=True) as tmp:  # a run's own picture, redrawn
        fig.savefig(tmp, dpi=100)


def plot_confusion(counts: list[list[int]], classes, path, title: str = "",
                   split: str = "test") -> None:
    """Row-normalised confusion matrix of ``split`` (rows = true class); each cell shows its
    share of the row and its count."""
    import numpy as np

    counts = np.asarray(counts, dtype=np.int64)
    totals = counts.sum(1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    fig = new_figure(figsize=(7.5, 6.5))
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, f"{100 * shares[i, j]:.0f}%\n{counts[i, j]}", ha="center", va="center",
                    fontsize=8, color="white" if shares[i, j] > 0.55 else "black")
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    correct, total = int(np.trace(counts)), int(counts.sum())
    ax.set_title((title + "\n" if title else "")
                 + f"{split}: {correct}/{total} = {100 * correct / max(1, total):.2f}%")
    fig.tight_layout()
    with files.temporary_path(path, overwrite=True) as tmp:  # a run's own picture, redrawn
        fig.savefig(tmp, dpi=100)


def draw_run(run_dir, result: dict | None = None) -> list[Path]:
    """Draw curves.png (from metrics.csv) and confusion.png (from result.json, or ``result``)
    into the run directory; returns the files written. ImportError without matplotlib."""
    run_dir = Path(run_dir)
    if result is None:
        result = check_result(json.loads((run_dir / RESULT_FILE).read_text()),
                              run_dir / RESULT_FILE)
    written = []
    rows = read_metrics(run_dir / "metrics.csv")
    if rows:
        plot_curves(rows, run_dir / "curves.png", title=run_dir.name)
        written.append(run_dir / "curves.png")
    split, counts = (("test", result["confusion"]) if result.get("confusion") is not None
                     else ("validation", result.get("val_confusion")))
    if counts is not None:
        plot_confusion(counts, result["classes"], run_dir / "confusion.png", title=run_dir.name,
                       split=split)
        written.append(run_dir / "confusion.png")
    return written


@cli.command
def main(argv=None) -> int:
    p = cli.Parser(prog="python -m fer_fast plot",
                   description="(Re)draw curves.png and confusion.png of a finished training run.")
    p.add_argument("run_dir", help="a run directory written by fer_fast.train")
    cli.add_debug_arg(p)
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    for name in ("metrics.csv", RESULT_FILE):
        if not (run_dir / name).is_file():
            raise cli.UserError(f"{run_dir}: no {name} (not a finished fer_fast.train run "
                                f"directory)")
    try:
        written = draw_run(run_dir)
    except ImportError:
        raise cli.UserError('plotting needs matplotlib: pip install "fer_fast[plot]"') from None
    except (ValueError, KeyError, TypeError) as e:
        raise cli.UserError(f"{run_dir}: unreadable run files ({e})") from None
    for path in written:
        print(f"wrote {path}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
