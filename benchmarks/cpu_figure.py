"""docs/cpu.png: the measurements behind the CPU recipe (docs/cpu.md) in one figure.

Left: training images/s per VGG width and CPU path (docs/cpu_measurements.json). Middle: the
recipe's choices compared in short runs on the real data, validation (PrivateTest) ten-crop
accuracy per epoch (docs/cpu_recipe_runs/*.csv, the runs' metrics.csv, on the Xeon; dashed:
docs/cpu_recipe_runs/epyc/*.csv, on the AMD EPYC). Right: the bundled
model's training run (fer_fast/models/metrics.csv) and the other full-length runs of the recipe
(docs/cpu_recipe_runs/30-epoch/*.csv). ``python benchmarks/cpu_figure.py``
rewrites docs/cpu.png.
"""
import json
from pathlib import Path

from fer_fast import files
from fer_fast.plots import new_figure, read_metrics

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    measured = json.loads((ROOT / "docs" / "cpu_measurements.json").read_text())
    rows = read_metrics(ROOT / "fer_fast" / "models" / "metrics.csv")
    fig = new_figure(figsize=(16, 4.5))
    speed, choices, curve = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.4, 1, 1]})
    labels, values = [], []
    for width, paths in measured["step_images_per_s"].items():
        for path, rate in paths.items():
            labels.append(f"w{width} {path}")
            values.append(rate)
    speed.barh(range(len(values)), values, color="tab:blue")
    speed.set_yticks(range(len(values)), labels, fontsize=8)
    speed.invert_yaxis()
    speed.set_xlabel("training images/s (x10 crops), 2 cores")
    speed.set_title("one training step, batch 64")
    runs = ROOT / "docs" / "cpu_recipe_runs"
    for folder, style, machine in ((runs, dict(marker="."), ""),
                                   (runs / "epyc", dict(marker="x", ls="--"), " (EPYC)")):
        for run in sorted(folder.glob("*.csv")):
            compared = read_metrics(run)
            choices.plot([r["epoch"] for r in compared], [100 * r["val_acc"] for r in compared],
                         label=run.stem + machine, **style)
    choices.set_xlabel("epoch")
    choices.set_ylabel("validation ten-crop accuracy (%)")
    choices.set_title("choices compared: 6-epoch runs")
    choices.grid(alpha=0.3)
    choices.legend(loc="lower right", fontsize=8)
    epochs = [r["epoch"] for r in rows]
    curve.plot(epochs, [100 * r["val_acc"] for r in rows], marker=".", label="validation")
    curve.plot(epochs, [100 * r["train_acc"] for r in rows], marker=".", label="train (crops)")
    for run in sorted((ROOT / "docs" / "cpu_recipe_runs" / "30-epoch").glob("*.csv")):
        other = read_metrics(run)
        curve.plot([r["epoch"] for r in other], [100 * r["val_acc"] for r in other], ls="--",
                   color="gray", label=f"validation, {run.stem} (not bundled)")
    curve.set_xlabel("epoch")
    curve.set_ylabel("ten-crop accuracy (%)")
    curve.set_title("the bundled model's run (--preset cpu)")
    curve.grid(alpha=0.3)
    curve.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with files.temporary_path(ROOT / "docs" / "cpu.png", overwrite=True) as tmp:
        fig.savefig(tmp, dpi=100)
    print(f"wrote {ROOT / 'docs' / 'cpu.png'}")


if __name__ == "__main__":
    main()
