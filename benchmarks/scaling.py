"""Data-parallel scaling: training images/s of ``python -m fer_fast train`` launched by
``torchrun --nproc-per-node N`` for each N, same data, seed and global batch.

    python benchmarks/scaling.py [--device cpu|cuda] [--procs 1,2] [--epochs 2]
                                 [--json OUT.json] [-- TRAIN ARGS...]

Each run trains ``--epochs`` epochs of the synthetic data (default sizes, or what the train
arguments after ``--`` say) and reports the images/s of its last epoch (the first carries the
warm-up: compilation, autotuning, cuDNN's choices), the speed-up over one process and the
efficiency (speed-up / N). On a CPU the machine's cores are divided between the processes
(OMP_NUM_THREADS = cores / N), so N processes use the cores one process uses: what is measured
is the cost of the split (gloo all-reduces, smaller per-process batches), not more hardware.
On GPUs each process takes one GPU (LOCAL_RANK).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the training run each N repeats (small enough for a CPU; the arguments after -- override)
DEFAULT_TRAIN = {"cpu": ["--preset", "quick", "--synthetic-sizes", "1024,64,64",
                         "--batch-size", "64"],
                 "cuda": ["--width", "1", "--synthetic-sizes", "8192,512,512",
                          "--batch-size", "64", "--scheduler", "constant"]}


def run(procs: int, device: str, epochs: int, train_args: list[str], work: Path) -> dict:
    """One launch with ``procs`` processes; its last epoch's numbers."""
    out = work / f"procs{procs}"
    env = dict(os.environ)
    if device == "cpu":
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // procs))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={procs}", f"--log-dir={work / f'torchrun{procs}'}",
               "-m", "fer_fast", "train", *train_args,
               "--device", device, "--epochs", str(epochs), "--no-progress", "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"scaling: {procs} process(es) failed (status {proc.returncode}):\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    with open(out / "metrics.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    return {"processes": procs, "images_per_s": float(last["images_per_s"]),
            "epoch_train_s": float(last["train_time_s"]), "val_acc": float(last["val_acc"]),
            "train_loss": float(last["train_loss"]), "wall_s": round(wall, 1),
            "threads_per_process": int(env.get("OMP_NUM_THREADS", 0)) or None}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    train_args = []
    if "--" in argv:
        argv, train_args = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--procs", default="1,2", help="comma-separated process counts")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    procs = [int(n) for n in args.procs.split(",") if n]
    train_args = train_args or DEFAULT_TRAIN[args.device]
    with tempfile.TemporaryDirectory() as work:
        rows = [run(n, args.device, args.epochs, train_args, Path(work)) for n in procs]
    base = rows[0]["images_per_s"] * (1 if procs[0] == 1 else 1 / procs[0])
    for row in rows:
        row["speedup"] = row["images_per_s"] / base
        row["efficiency"] = row["speedup"] / row["processes"]
    print(f"data-parallel scaling on {args.device}, train args: {' '.join(train_args)}")
    print(f"{'processes':>9} {'images/s':>9} {'speed-up':>8} {'efficiency':>10} {'val acc':>8}")
    for row in rows:
        print(f"{row['processes']:>9} {row['images_per_s']:>9.0f} {row['speedup']:>8.2f} "
              f"{row['efficiency']:>10.2f} {100 * row['val_acc']:>7.2f}%")
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "train_args": train_args,
                                         "epochs": args.epochs, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
