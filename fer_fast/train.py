"""Training: ``python -m fer_fast.train [--data PATH] [--preset full|quick] ...``.

The released recipe (SPEC "Training"): SGD + Nesterov (lr 0.01, momentum 0.9, weight decay 1e-4
on every parameter), ReduceLROnPlateau(max, factor 0.75, patience 5) stepped per epoch on the
validation ten-crop accuracy, mean cross-entropy over the 640 crops of a 64-image batch, fp16
autocast with dynamic loss scaling on CUDA, ten-crop validation each epoch, best / periodic /
last checkpoints, exact resume. Every choice of the paper's experiments is a flag.

Presets: ``full`` (the released recipe: 300 epochs, width 1; the default with ``--data``) and
``quick`` (a small VGG on a small synthetic dataset, a couple of minutes on a 2-core CPU; the
default without ``--data``). Explicit flags override the preset; with ``--resume`` the run's
saved configuration is used and only ``--epochs``, ``--save-every``, ``--test-every``,
``--progress``/``--no-progress`` and ``--out`` may change.

Precision on CPU defaults to fp32. Measured on the 2-core development CPU (AMD EPYC with
avx512_bf16, OMP_WAIT_POLICY=PASSIVE): a bf16-autocast training step of the width-0.125 VGG takes
20-30 % less CPU time than fp32, but the whole quick run is no faster (81 vs 87 CPU s: data, the
fp32 evaluation and the optimizer do not shrink) and reached a lower accuracy (67 % vs 74 %).

On a busy machine, OpenMP's default spin-waiting made two-thread CPU steps up to 5x slower than
with OMP_WAIT_POLICY=PASSIVE (which must be set before torch is imported).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import backends, telemetry
from .augment import RECIPES
from .checkpoint import (CheckpointError, infer_architecture, load_checkpoint, load_params,
                         save_atomic)
from .data import DataError, FERData, Split
from .evaluate import sizes_arg, evaluate_split, format_confusion
from .loader import DeviceLoader, TenCropBatches, load_run_data
from .model import CLASS_NAMES, VGG, model_backends, resolve_backend
from .verdict import prepare_auto

__all__ = ["Config", "PRESETS", "OPTIMIZERS", "SCHEDULERS", "PRECISIONS", "parse_args", "train",
           "main"]

OPTIMIZERS = ("sgd", "nesterov", "asgd", "adam", "amsgrad", "adadelta", "adagrad")
SCHEDULERS = ("plateau", "cosine", "cosine-wr", "onecycle", "step", "constant")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
TRAIN_ON = ("train", "train+val")


@dataclass
class Config:
    """Everything that defines a run (saved as config.json and in every checkpoint)."""

    recipe: str = "released"
    optimizer: str = "nesterov"
    scheduler: str = "plateau"
    epochs: int = 300
    batch_size: int = 64
    eval_batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    dropout: float = 0.2
    width: float = 1.0
    # plateau: factor / patience; step: step_size (epochs) / gamma; cosine-wr: restart period
    plateau_factor: float = 0.75
    plateau_patience: int = 5
    step_size: int = 30
    gamma: float = 0.5
    restart_period: int = 10
    data: str | None = None
    synthetic_sizes: tuple[int, int, int] | None = None  # None: SyntheticSpec's defaults
    train_on: str = "train"
    seed: int = 0
    device: str = "auto"
    block_backend: str = "auto"
    augment_backend: str = "auto"
    precision: str = "auto"
    init: str | None = None
    save_every: int = 0   # 0: no periodic checkpoints
    test_every: int = 0   # 0: test accuracy only at the end
    progress: bool = True
    out: str | None = None
    preset: str = "full"


#: preset -> overrides of Config's defaults (which are the released recipe)
PRESETS = {
    "full": dict(save_every=50),
    # ~240 steps: the synthetic faces need ~100 steps of batch 32 at lr 0.02 before accuracy
    # leaves chance; batch 64 at lr 0.01 needs about twice the time on a CPU.
    "quick": dict(width=0.125, epochs=6, batch_size=32, lr=0.02,
                  synthetic_sizes=(1280, 256, 512)),
}

#: what a checkpoint must hold to continue its run exactly
RESUME_KEYS = {"config", "epoch", "logs", "best", "optimizer", "scheduler", "scaler", "rng"}
#: fields that may change when resuming a run
RESUMABLE = {"epochs", "save_every", "test_every", "progress", "out"}


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    S = argparse.SUPPRESS  # absent flags stay absent, so presets and resume can fill them
    p = argparse.ArgumentParser(prog="python -m fer_fast.train", argument_default=S,
                                description="Train the FER2013 VGG (see SPEC.md).")
    p.add_argument("--preset", choices=tuple(PRESETS),
                   help="full: the released recipe (default with --data); quick: small model on "
                        "small synthetic data for a CPU (default without --data)")
    p.add_argument("--recipe", choices=RECIPES, help="released (conv-BN-ReLU, released "
                   "augmentation) or paper (conv-ReLU-BN, the paper's augmentation)")
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--scheduler", choices=SCHEDULERS)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="images per step (x10 crops)")
    p.add_argument("--eval-batch-size", type=int, help="images per evaluation batch")
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float, help="SGD momentum (sgd, nesterov)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument("--width", type=float, help="channel multiplier (1 = the paper's VGG)")
    p.add_argument("--plateau-factor", type=float)
    p.add_argument("--plateau-patience", type=int)
    p.add_argument("--step-size", type=int, help="StepLR period in epochs")
    p.add_argument("--gamma", type=float, help="StepLR factor")
    p.add_argument("--restart-period", type=int, help="CosineAnnealingWarmRestarts T_0 (epochs)")
    p.add_argument("--data", help="fer2013.csv or image-folder root (default: synthetic data)")
    p.add_argument("--synthetic-sizes", type=sizes_arg, metavar="TRAIN,VAL,TEST")
    p.add_argument("--train-on", choices=TRAIN_ON, help="train+val: the fine-tuning stage on "
                   "the combined data (validation accuracy then no longer measures generalisation)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--block-backend", choices=tuple(model_backends()),
                   help="model backend: auto (GPU: the fastest that passed the selfcheck there; CPU: "
                        "eager), a block backend "
                        "(eager, fused) or a whole-stack one (triton)")
    p.add_argument("--augment-backend", choices=("auto",) + tuple(backends.names("augment")))
    p.add_argument("--precision", choices=PRECISIONS,
                   help="auto: fp16 autocast + GradScaler on CUDA, fp32 on CPU")
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="start from these weights (fine-tuning); recipe and width follow it")
    p.add_argument("--resume", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="continue an interrupted run exactly (RUN_DIR means RUN_DIR/last.pt)")
    p.add_argument("--save-every", type=int, help="periodic checkpoint every N epochs (0: none)")
    p.add_argument("--test-every", type=int, help="test accuracy every N epochs (0: at the end)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction,
                   help="progress bar (off when stderr is not a terminal)")
    p.add_argument("--out", help="run directory (default runs/<timestamp>-<recipe>)")
    return p


def _resume_path(target: str) -> Path:
    path = Path(target)
    return path / "last.pt" if path.is_dir() else path


def parse_args(argv=None) -> tuple[Config, Path | None]:
    """(config, checkpoint to resume from). Precedence: Config defaults < preset < the --init
    checkpoint's architecture < explicit flags; with --resume: the saved config < flags."""
    p = _parser()
    given = vars(p.parse_args(argv))
    resume = given.pop("resume", None)
    if resume is not None:
        path = _resume_path(resume)
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            p.error(str(e))
        lacking = sorted(RESUME_KEYS - set(ckpt))
        if lacking:
            p.error(f"--resume {path}: the checkpoint lacks the resume state {lacking} (not "
                    f"written by fer_fast.train); use --init to start from its weights")
        saved = ckpt["config"]
        fixed = sorted(set(given) - RESUMABLE)
        if fixed:
            p.error(f"--resume continues a run with its saved configuration; these flags cannot "
                    f"change: {', '.join('--' + k.replace('_', '-') for k in fixed)}")
        known = {f.name for f in dataclasses.fields(Config)}
        config = Config(**{k: v for k, v in saved.items() if k in known})
        for k, v in given.items():
            setattr(config, k, v)
        config.out = given.get("out", str(path.parent))
        if config.synthetic_sizes is not None:
            config.synthetic_sizes = tuple(config.synthetic_sizes)
        return config, path
    preset = given.get("preset", "full" if given.get("data") else "quick")
    values = dict(PRESETS[preset], preset=preset)
    if given.get("init"):
        try:
            recipe, width = infer_architecture(load_checkpoint(given["init"]), given["init"])
        except CheckpointError as e:
            p.error(str(e))
        values.update(recipe=recipe, width=width)
    values.update(given)
    config = Config(**values)
    for name in ("epochs", "batch_size", "eval_batch_size"):
        if getattr(config, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    if config.width <= 0 or config.lr <= 0:
        p.error("--width and --lr must be positive")
    return config, None


# ----------------------------------------------------------------------------------------------
# Building blocks of a run
# ----------------------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    return ("fp16" if device.type == "cuda" else "fp32") if name == "auto" else name


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_optimizer(config: Config, params, *, fused: bool = False) -> torch.optim.Optimizer:
    """``fused`` (CUDA): SGD and Adam run as one kernel and take GradScaler's inf check on the
    device, so a scaled step needs no host synchronisation."""
    lr, wd, name = config.lr, config.weight_decay, config.optimizer
    if name in ("sgd", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=wd,
                               nesterov=name == "nesterov", fused=fused or None)
    if name == "asgd":
        return torch.optim.ASGD(params, lr=lr, weight_decay=wd)
    if name in ("adam", "amsgrad"):
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, amsgrad=name == "amsgrad",
                                fused=fused or None)
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def make_scheduler(config: Config, optimizer, steps_per_epoch: int):
    """(scheduler, unit): unit "epoch" (stepped after validation; plateau gets the val
    accuracy) or "step" (after every optimizer step)."""
    s, sched = config.scheduler, torch.optim.lr_scheduler
    if s == "plateau":
        return sched.ReduceLROnPlateau(optimizer, mode="max", factor=config.plateau_factor,
                                       patience=config.plateau_patience), "epoch"
    if s == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=config.epochs), "epoch"
    if s == "cosine-wr":
        return sched.CosineAnnealingWarmRestarts(optimizer, T_0=config.restart_period), "epoch"
    if s == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=config.lr,
                                total_steps=config.epochs * steps_per_epoch), "step"
    if s == "step":
        return sched.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma), "epoch"
    if s == "constant":
        return sched.ConstantLR(optimizer, factor=1.0, total_iters=0), "epoch"
    raise ValueError(f"unknown scheduler {s!r}; choose one of {SCHEDULERS}")


def _train_split(data: FERData, train_on: str) -> Split:
    if train_on == "train":
        return data.train
    return Split(torch.cat([data.train.images, data.val.images]),
                 torch.cat([data.train.labels, data.val.labels]))


def _rng_state(loader: DeviceLoader, device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "loader": loader.state_dict()}
    if device.type == "cuda":  # dropout draws on the training device
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, loader: DeviceLoader, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    loader.load_state_dict(state["loader"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_acc", "test_acc",
                  "train_time_s", "epoch_time_s", "images_per_s") + telemetry.COLUMNS


def write_metrics(path: Path, rows: list[dict]) -> None:
    """Rewrite metrics.csv from the full history (so a resumed run has exactly its epochs)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})
    os.replace(tmp, path)


def _run_dir(config: Config) -> Path:
    if config.out is not None:
        return Path(config.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{stamp}-{config.recipe}"
    n = 1
    while path.exists():
        n += 1
        path = Path("runs") / f"{stamp}-{config.recipe}-{n}"
    return path


def _fmt_postfix(values: dict) -> dict:
    names = {"gpu_util_pct": "util%", "gpu_mem_peak_mib": "memMiB", "gpu_power_w": "W",
             "gpu_sm_clock_mhz": "MHz", "gpu_energy_j": "J"}
    return {names.get(k, k): (f"{v:.4g}" if isinstance(v, float) else v)
            for k, v in values.items()}


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------

def train(config: Config, resume: Path | None = None) -> dict:
    """Run (or continue) a training run; returns the final summary (also in ``summary.json``)."""
    device = resolve_device(config.device)
    auto = prepare_auto(device, needed="auto" in (config.block_backend, config.augment_backend))
    block_backend = resolve_backend(config.block_backend, device)
    precision = resolve_precision(config.precision, device)
    dtype = _DTYPES[precision]
    if device.type == "cuda":
        torch.cuda.set_device(device)  # Triton launches on the current device
        torch.backends.cudnn.benchmark = True
    run_dir = _run_dir(config)
    if resume is None and (run_dir / "last.pt").exists():
        raise CheckpointError(f"{run_dir}: already holds a run (last.pt); continue it with "
                              f"--resume {run_dir} or choose another --out")
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    data = load_run_data(config.data, seed=config.seed, synthetic_sizes=config.synthetic_sizes)
    model = VGG(config.recipe, width=config.width, dropout=config.dropout,
                backend=block_backend).to(device)
    if device.type == "cuda":  # NHWC activations: what cuDNN's fp16 kernels and the fused blocks want
        model = model.to(memory_format=torch.channels_last)
    if config.init and resume is None:
        load_params(model, load_checkpoint(config.init)["params"], config.init)
    loader = DeviceLoader(_train_split(data, config.train_on), batch_size=config.batch_size,
                          device=device, recipe=config.recipe, seed=config.seed,
                          augment_backend=config.augment_backend, dtype=dtype)
    val = TenCropBatches(data.val, batch_size=config.eval_batch_size, device=device,
                         augment_backend=config.augment_backend)
    test = TenCropBatches(data.test, batch_size=config.eval_batch_size, device=device,
                          augment_backend=config.augment_backend)
    optimizer = make_optimizer(config, model.parameters(), fused=device.type == "cuda")
    scheduler, sched_unit = make_scheduler(config, optimizer, len(loader))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    autocast = precision != "fp32"

    history: list[dict] = []
    best = {"val_acc": -1.0, "epoch": 0}
    start_epoch = 0
    if resume is not None:
        ckpt = load_checkpoint(resume)  # on the CPU: RNG states must stay CPU tensors
        saved = ckpt.get("resolved", {})
        here = {"device_type": device.type, "precision": precision}
        if saved and saved != here:
            raise CheckpointError(f"{resume}: written by a run on {saved['device_type']} in "
                                  f"{saved['precision']}, but this machine resolves to "
                                  f"{device.type} in {precision}; resume it on the same kind of "
                                  f"device")
        load_params(model, ckpt["params"], resume)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"], loader, device)
        history, best, start_epoch = list(ckpt["logs"]["history"]), dict(ckpt["best"]), \
            ckpt["epoch"]
    run_dir.mkdir(parents=True, exist_ok=True)
    config.out = str(run_dir)
    resolved = {"device": str(device), "block_backend": block_backend, "precision": precision,
                "data_source": data.source, "torch": torch.__version__, "auto": auto,
                "sizes": {"train": loader.num_images, "val": len(data.val), "test": len(data.test)}}
    (run_dir / "config.json").write_text(json.dumps(
        {**dataclasses.asdict(config), "resolved": resolved}, indent=2) + "\n")
    metrics_path = run_dir / "metrics.csv"
    write_metrics(metrics_path, history)
    print(f"fer_fast.train: {config.preset} preset, VGG(recipe={config.recipe!r}, "
          f"width={config.width}), {config.optimizer}+{config.scheduler}, lr {config.lr}, "
          f"{config.epochs} epochs of {loader.num_images} images, batch {config.batch_size}, "
          f"{device} {precision}, block {block_backend}, augment {config.augment_backend}; "
          f"data {data.source}; run dir {run_dir}", flush=True)

    def checkpoint(epoch: int) -> dict:
        return {"params": model.state_dict(),
                "logs": {"history": history, "best_val_acc": best["val_acc"],
                         "best_epoch": best["epoch"]},
                "config": dataclasses.asdict(config), "epoch": epoch,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": _rng_state(loader, device), "best": best,
                "resolved": {"device_type": device.type, "precision": precision}}

    show = config.progress and sys.stderr.isatty()
    meter = telemetry.start(device)
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            t0 = time.perf_counter()
            meter.epoch_begin()
            model.train()
            lr = optimizer.param_groups[0]["lr"]
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            seen = 0
            bar = tqdm(total=len(loader), desc=f"epoch {epoch}/{config.epochs}", leave=False,
                       disable=not show, dynamic_ncols=True)
            shown = time.perf_counter()
            for crops, labels in loader:
                with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                    logits = model(crops)
                    loss = F.cross_entropy(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if sched_unit == "step":
                    scheduler.step()
                loss_sum += loss.detach().float() * labels.numel()
                correct += (logits.detach().argmax(1) == labels).sum()
                seen += labels.numel()
                bar.update()
                if show and time.perf_counter() - shown > 0.5:  # one host sync per refresh
                    shown = time.perf_counter()
                    bar.set_postfix(_fmt_postfix({
                        "loss": loss_sum.item() / seen, "acc": correct.item() / seen,
                        "img/s": seen / 10 / (shown - t0), **meter.snapshot()}))
            bar.close()
            train_loss, train_acc = loss_sum.item() / seen, correct.item() / seen
            train_time = time.perf_counter() - t0
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"epoch {epoch}: training loss is {train_loss}")
            val_acc, _ = evaluate_split(model, val)
            if config.scheduler == "plateau":
                scheduler.step(val_acc)
            elif sched_unit == "epoch":
                scheduler.step()
            test_acc = None
            if config.test_every and epoch % config.test_every == 0:
                test_acc, _ = evaluate_split(model, test)
            row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
                   "val_acc": val_acc, "test_acc": test_acc, "train_time_s": train_time,
                   "epoch_time_s": time.perf_counter() - t0,
                   "images_per_s": loader.num_images / train_time, **meter.epoch_end()}
            history.append(row)
            improved = val_acc > best["val_acc"]
            if improved:
                best = {"val_acc": val_acc, "epoch": epoch}
            write_metrics(metrics_path, history)
            state = checkpoint(epoch)
            if improved:
                save_atomic(state, run_dir / "best.pt")
            if config.save_every and epoch % config.save_every == 0:
                save_atomic(state, run_dir / f"epoch{epoch:04d}.pt")
            save_atomic(state, run_dir / "last.pt")
            tel = "".join(f" {k} {v}" for k, v in _fmt_postfix(
                {k: row[k] for k in telemetry.COLUMNS if k in row}).items())
            tqdm.write(f"epoch {epoch:3d}/{config.epochs} lr {lr:.3g} loss {train_loss:.4f} "
                       f"train acc {100 * train_acc:.2f}% val acc {100 * val_acc:.2f}%"
                       + (f" test acc {100 * test_acc:.2f}%" if test_acc is not None else "")
                       + f"{' *' if improved else ''} | {row['images_per_s']:.0f} img/s "
                       f"{row['epoch_time_s']:.1f} s{tel}", file=sys.stdout)
            sys.stdout.flush()
    finally:
        meter.close()
    return _finish(model, test, run_dir, best, history)


def _finish(model: VGG, test: TenCropBatches, run_dir: Path, best: dict,
            history: list[dict]) -> dict:
    """Final ten-crop test accuracy of the last model and of the best-validation checkpoint;
    the best one's confusion matrix goes to test_confusion.csv."""
    last_acc, cm = evaluate_split(model, test)
    summary = {"test_acc_last": last_acc, "epochs": len(history),
               "best_epoch": best["epoch"], "best_val_acc": best["val_acc"]}
    print(f"test ten-crop accuracy (last model, epoch {len(history)}): {100 * last_acc:.2f}% "
          f"({int(cm.diagonal().sum())}/{test.num_images})")
    best_path = run_dir / "best.pt"
    if best["epoch"] and best["epoch"] != len(history) and best_path.is_file():
        load_params(model, load_checkpoint(best_path)["params"], best_path)
        best_acc, cm = evaluate_split(model, test)
    else:
        best_acc = last_acc
    summary["test_acc_best"] = best_acc
    print(f"test ten-crop accuracy (best validation {100 * best['val_acc']:.2f}% at epoch "
          f"{best['epoch']}): {100 * best_acc:.2f}%")
    print(format_confusion(cm))
    with open(run_dir / "test_confusion.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true\\predicted", *CLASS_NAMES])
        for name, row in zip(CLASS_NAMES, cm.tolist()):
            writer.writerow([name, *row])
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None) -> int:
    config, resume = parse_args(argv)
    try:
        train(config, resume)
    except (DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
