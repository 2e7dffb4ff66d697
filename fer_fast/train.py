"""Training: ``python -m fer_fast.train [--data PATH] [--preset full|quick] ...``.

The released recipe (docs/spec.md, "Training"): SGD + Nesterov (lr 0.01, momentum 0.9, weight decay 1e-4
on every parameter), ReduceLROnPlateau(max, factor 0.75, patience 5) stepped per epoch on the
validation ten-crop accuracy, mean cross-entropy over the 640 crops of a 64-image batch, fp16
autocast with dynamic loss scaling on CUDA, ten-crop validation each epoch, best / periodic /
last checkpoints, exact resume. Every choice of the paper's experiments is a flag.

Presets: ``full`` (the released recipe: 300 epochs, width 1; the default with ``--data``) and
``quick`` (a small VGG on a small synthetic dataset, a couple of minutes on a 2-core CPU; the
default without ``--data``). Explicit flags override the preset; with ``--resume`` the run's
saved configuration is used and only ``--epochs``, ``--save-every``, ``--test-every``,
``--progress``/``--no-progress`` and ``--out`` may change.

Precision on CPU defaults to fp32: bf16 autocast makes a step cheaper but not the whole run, and
learns less (docs/notes.md).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import errno
import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import backends, cli, devices, telemetry
from .augmentation import NUM_CROPS, RECIPES, AugmentParams
from .checkpoint import (CheckpointError, checksum_path, infer_architecture, load_checkpoint,
                         load_params, save_atomic)
from .data import FERData, Split
from .files import open_atomic, temporary_path, write_text
from .evaluate import evaluate_split, format_confusion
from .loader import DeviceLoader, TenCropBatches, augment_batch, load_run_data
from .model import CLASS_NAMES, VGG, check_architecture
from .stack import model_backend_choices, resolve_model_backend
from .plots import write_run_outputs
from .verdict import cpu_precision, prepare_auto

__all__ = ["Config", "PRESETS", "OPTIMIZERS", "SCHEDULERS", "PRECISIONS", "parse_args", "train",
           "TrainStep", "make_model", "make_optimizer", "make_scaler", "setup", "run_epoch",
           "end_epoch", "main"]

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
    data: str | None = None  # stored absolute once the run starts
    strict_images: bool = False  # image folders: refuse, not convert, non-48x48-gray images
    synthetic_sizes: tuple[int, int, int] | None = None  # None: SyntheticSpec's defaults
    train_on: str = "train"
    seed: int = 0
    device: str = "auto"
    model_backend: str = "auto"
    augment_backend: str = "auto"
    precision: str = "auto"
    init: str | None = None  # stored absolute once the run starts
    save_every: int = 0   # 0: no periodic checkpoints
    test_every: int = 0   # 0: test accuracy only at the end
    progress: bool = True
    out: str | None = None
    preset: str = "full"
    trust_checkpoint: bool = False  # --init / --resume files may need full unpickling
    allow_recipe_change: bool = False  # --init with weights of the other block order


#: preset -> overrides of Config's defaults (which are the released recipe)
PRESETS = {
    "full": dict(save_every=50),
    # ~240 steps: the synthetic faces need ~100 steps of batch 32 at lr 0.02 before accuracy
    # leaves chance; batch 64 at lr 0.01 needs about twice the time on a CPU.
    "quick": dict(width=0.125, epochs=6, batch_size=32, lr=0.02,
                  synthetic_sizes=(1280, 256, 512)),
    # the bundled model's recipe: about 2 hours of 2 CPU cores on FER2013 (docs/cpu_recipe.md)
    "cpu": dict(width=0.25, epochs=30, scheduler="cosine", lr=0.02, save_every=5),
}

#: splits a run needs; without a test split (e.g. FER2013 without PublicTest) the run trains,
#: chooses best.pt by validation and reports the test accuracy as not available
REQUIRED_SPLITS = ("train", "val")

#: what a checkpoint must hold to continue its run exactly
RESUME_KEYS = {"config", "epoch", "logs", "best", "optimizer", "scheduler", "scaler", "rng"}
#: fields that may change when resuming a run (--data: the same data, moved)
RESUMABLE = {"epochs", "save_every", "test_every", "progress", "out", "data", "trust_checkpoint"}
#: Config fields renamed since runs were first saved: old name -> new name
_RENAMED_FIELDS = {"block_backend": "model_backend"}


def saved_config(config: dict) -> dict:
    """A saved run configuration (config.json, a checkpoint's "config") with the fields of
    older runs under their current names."""
    return {_RENAMED_FIELDS.get(k, k): v for k, v in config.items()}


#: upper bounds of the flags (a learning rate above MAX_LR overflows fp16/fp32 updates in a few
#: steps; a StepLR gamma above 1 makes the rate grow without bound)
MAX_EPOCHS, MAX_BATCH, MAX_LR = 1_000_000, 65_536, 10.0

#: training steps timed for the estimate printed early in a run (after a few warm-up steps)
ESTIMATE_WARMUP, ESTIMATE_STEPS = 3, 20


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    S = argparse.SUPPRESS  # absent flags stay absent, so presets and resume can fill them
    num = cli.number
    p = cli.Parser(prog="python -m fer_fast.train", argument_default=S,
                   description="Train the FER2013 VGG. Defaults shown are those of the full "
                               "preset (the released recipe).")
    d = Config()

    def default(name):  # the released recipe's value, shown by --help
        return {"default": S, "help": "(default: %s)" % getattr(d, name)}

    p.add_argument("--preset", choices=tuple(PRESETS),
                   help="full: the released recipe (default with --data); quick: small model on "
                        "small synthetic data for a CPU (default without --data)")
    p.add_argument("--recipe", choices=RECIPES, help="released (conv-BN-ReLU, released "
                   f"augmentation) or paper (conv-ReLU-BN, the paper's augmentation) "
                   f"(default: {d.recipe})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, **default("optimizer"))
    p.add_argument("--scheduler", choices=SCHEDULERS, **default("scheduler"))
    p.add_argument("--epochs", type=num(int, low=1, high=MAX_EPOCHS), **default("epochs"))
    p.add_argument("--batch-size", type=num(int, low=1, high=MAX_BATCH),
                   help=f"images per step (x10 crops) (default: {d.batch_size})")
    p.add_argument("--eval-batch-size", type=num(int, low=1, high=MAX_BATCH),
                   help=f"images per evaluation batch (default: {d.eval_batch_size})")
    p.add_argument("--lr", type=num(low=0, low_open=True, high=MAX_LR), **default("lr"))
    p.add_argument("--momentum", type=num(low=0, high=1, high_open=True),
                   help=f"SGD momentum (sgd, nesterov) (default: {d.momentum})")
    p.add_argument("--weight-decay", type=num(low=0, high=1), **default("weight_decay"))
    p.add_argument("--dropout", type=num(low=0, high=1, high_open=True), **default("dropout"))
    p.add_argument("--width", type=num(low=0, low_open=True),
                   help=f"channel multiplier (1 = the paper's VGG) (default: {d.width})")
    p.add_argument("--plateau-factor", type=num(low=0, high=1, low_open=True, high_open=True),
                   **default("plateau_factor"))
    p.add_argument("--plateau-patience", type=num(int, low=0, high=MAX_EPOCHS),
                   **default("plateau_patience"))
    p.add_argument("--step-size", type=num(int, low=1, high=MAX_EPOCHS),
                   help=f"StepLR period in epochs (default: {d.step_size})")
    p.add_argument("--gamma", type=num(low=0, low_open=True, high=1),
                   help=f"StepLR factor (default: {d.gamma})")
    p.add_argument("--restart-period", type=num(int, low=1, high=MAX_EPOCHS),
                   help=f"CosineAnnealingWarmRestarts T_0 in epochs (default: {d.restart_period})")
    p.add_argument("--data", help="fer2013.csv or image-folder root (default: synthetic data); "
                   "with --resume: the run's data at a new place")
    p.add_argument("--synthetic-sizes", type=cli.sizes_arg, metavar="TRAIN,VAL,TEST")
    p.add_argument("--strict-images", action="store_true", help="image folders: refuse images "
                   "that are not 48x48 8-bit grayscale instead of converting them")
    p.add_argument("--train-on", choices=TRAIN_ON, help="train+val: the fine-tuning stage on "
                   "the combined data (validation accuracy then no longer measures "
                   f"generalisation) (default: {d.train_on})")
    p.add_argument("--seed", type=num(int, low=0, high=cli.MAX_SEED), **default("seed"))
    cli.add_device_arg(p, default=None)
    p.add_argument("--model-backend", choices=tuple(model_backend_choices()),
                   help="model backend: auto (GPU: the fastest that passed the selfcheck there; "
                        "CPU: eager), a block backend (eager, fused) or a whole-stack one (triton) "
                        "(default: auto)")
    p.add_argument("--augment-backend", choices=("auto",) + tuple(backends.names("augment")),
                   help="auto (GPU: the fastest that passed the selfcheck there) (default: auto)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="auto: fp16 autocast + GradScaler on CUDA, fp32 on CPU (default: auto)")
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="start from these weights (fine-tuning); recipe and width follow it")
    p.add_argument("--allow-recipe-change", action="store_true",
                   help="with --init: allow a --recipe other than the checkpoint's (its weights "
                        "were trained with the other block order)")
    p.add_argument("--resume", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="continue an interrupted run exactly (RUN_DIR means RUN_DIR/last.pt)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow --init/--resume files that hold more than tensors and plain "
                        "values (unpickling them can run code: only for files you trust)")
    p.add_argument("--save-every", type=num(int, low=0, high=MAX_EPOCHS),
                   help="periodic checkpoint every N epochs (0: none) (default: full preset 50, "
                        "quick preset 0)")
    p.add_argument("--test-every", type=num(int, low=0, high=MAX_EPOCHS),
                   help="test accuracy every N epochs (0: at the end) (default: 0)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction,
                   help="progress bar (off when stderr is not a terminal) (default: on)")
    p.add_argument("--out", help="run directory, new or empty (default: runs/<timestamp>-<recipe>;"
                   " with --resume: the resumed run's directory)")
    cli.add_debug_arg(p)
    return p


def _resume_path(target: str) -> Path:
    path = Path(target)
    return path / "last.pt" if path.is_dir() else path


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_args(argv=None) -> tuple[Config, Path | None]:
    """(config, checkpoint to resume from). Precedence: Config defaults < preset < the --init
    checkpoint's architecture < explicit flags; with --resume: the saved config < flags."""
    p = _parser()
    given = vars(p.parse_args(argv))
    given.pop("debug", None)
    resume = given.pop("resume", None)
    if resume is not None:
        return _parse_resume(p, _resume_path(resume), given)
    preset = given.get("preset", "full" if given.get("data") else "quick")
    values = dict(PRESETS[preset], preset=preset)
    if given.get("init"):
        try:
            ckpt = load_checkpoint(given["init"], trust=given.get("trust_checkpoint", False))
            recipe, width = infer_architecture(ckpt, given["init"])
        except CheckpointError as e:
            p.error(str(e))
        if given.get("recipe", recipe) != recipe and not given.get("allow_recipe_change"):
            p.error(f"--init {given['init']}: its weights were trained with recipe {recipe!r} "
                    f"(block order {'conv-BN-ReLU' if recipe == 'released' else 'conv-ReLU-BN'}"
                    f"), not --recipe {given['recipe']}; pass --allow-recipe-change to start "
                    f"the other block order from them anyway")
        values.update(recipe=recipe, width=width)
    values.update(given)
    config = Config(**values)
    problem = check_architecture(config.recipe, config.width, dropout=config.dropout,
                                 training=True)
    if problem:  # before anything is allocated
        p.error(f"--width {config.width}: {problem.removeprefix(f'width {config.width}: ')}")
    return config, None


def _check_saved(p: argparse.ArgumentParser, path: Path, ckpt: dict) -> dict:
    """The checkpoint's saved configuration, every field checked against its flag's type and
    range (a file can hold anything), and the architecture against this machine's memory,
    before anything is built from it."""
    saved = ckpt.get("config")
    if not isinstance(saved, dict):
        p.error(f"--resume {path}: its 'config' is {type(saved).__name__}, not a dict")
    saved = saved_config(saved)
    if isinstance(ckpt["epoch"], bool) or not isinstance(ckpt["epoch"], int) or ckpt["epoch"] < 0:
        p.error(f"--resume {path}: field 'epoch' is {ckpt['epoch']!r}, not an epoch number")
    for field, keys in (("resolved", ("device_type", "precision")), ("data", ("sha256",))):
        value = ckpt.get(field)
        if value is not None and not (isinstance(value, dict) and all(
                isinstance(value.get(k), str) for k in keys)):
            p.error(f"--resume {path}: field '{field}' is {value!r}, not a dict with "
                    f"{', '.join(repr(k) for k in keys)}")
    for action in p._actions:
        value, kind = saved.get(action.dest), getattr(action.type, "kind", None)
        if value is None:
            continue
        problem = None
        if action.choices is not None and value not in action.choices:
            problem = f"not one of {tuple(action.choices)}"
        elif kind is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float
                                                         else int):
                problem = f"not {'a number' if kind is float else 'an integer'}"
            else:
                problem = cli.check_range(value, **action.type.bounds)
        elif action.type is cli.sizes_arg:
            try:
                cli.sizes_arg(",".join(str(v) for v in value))
            except (argparse.ArgumentTypeError, TypeError) as e:
                problem = str(e)
        elif isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
            problem = None if isinstance(value, bool) else "not true or false"
        elif action.type is None and not isinstance(value, str):
            problem = "not a string"
        if problem:
            p.error(f"--resume {path}: config field '{action.dest}' is {value!r}: {problem}")
    problem = check_architecture(saved.get("recipe", "released"), saved.get("width", 1.0),
                                 dropout=saved.get("dropout", 0.2), training=True)
    if problem:
        p.error(f"--resume {path}: config: {problem}")
    return saved


def _parse_resume(p: argparse.ArgumentParser, path: Path, given: dict) -> tuple[Config, Path]:
    try:
        ckpt = load_checkpoint(path, trust=given.get("trust_checkpoint", False))
    except CheckpointError as e:
        p.error(str(e))
    lacking = sorted(RESUME_KEYS - set(ckpt))
    if lacking:
        p.error(f"--resume {path}: the checkpoint lacks the resume state {lacking} (not "
                f"written by fer_fast.train); use --init to start from its weights")
    fixed = sorted(set(given) - RESUMABLE)
    if fixed:
        p.error(f"--resume continues a run with its saved configuration; these flags cannot "
                f"change: {', '.join(_flag(k) for k in fixed)}")
    known = {f.name for f in dataclasses.fields(Config)}
    config = Config(**{k: v for k, v in _check_saved(p, path, ckpt).items() if k in known})
    done = ckpt["epoch"]
    if "epochs" in given and given["epochs"] <= done:
        p.error(f"--resume {path}: the run has already done {done} epoch{_s(done)}; "
                f"--epochs {given['epochs']} must be larger to train further")
    finished = (path.parent / "result.json").is_file()  # written last by _finish
    if "epochs" not in given and done >= config.epochs and finished:
        p.error(f"--resume {path}: the run is finished ({done} of {config.epochs} "
                f"epoch{_s(config.epochs)}); to train it further pass --epochs N with N > {done}")
    config.trust_checkpoint = False  # trust is given per invocation, never inherited
    for k, v in given.items():
        setattr(config, k, v)
    config.out = given.get("out", str(path.parent))
    if config.synthetic_sizes is not None:
        config.synthetic_sizes = tuple(config.synthetic_sizes)
    return config, path


def _s(n: int) -> str:
    return "" if n == 1 else "s"


# ----------------------------------------------------------------------------------------------
# Building blocks of a run
# ----------------------------------------------------------------------------------------------

def resolve_precision(name: str, device: torch.device) -> str:
    """"auto": fp16 on CUDA; on a CPU bf16 where it has native bf16 arithmetic (oneDNN's
    AVX512-BF16 / AMX kernels) and the selfcheck verdict has the bf16 training path passing
    and faster than fp32 here (``fer_fast.verdict.cpu_precision``), else fp32."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "fp16"
    return "bf16" if devices.cpu_has_native_bf16() and cpu_precision() == "bf16" else "fp32"


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_model(config: Config, device: torch.device, backend: str) -> VGG:
    """The run's VGG on ``device`` with the resolved model ``backend``."""
    model = VGG(config.recipe, width=config.width, dropout=config.dropout,
                backend=backend).to(device)
    # NHWC activations: what cuDNN's fp16 kernels, oneDNN's CPU kernels and the fused blocks want
    return model.to(memory_format=torch.channels_last)


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Dynamic loss scaling for fp16; a pass-through scaler otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


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
    """Every RNG state as tensors and plain values (a checkpoint loads with weights_only)."""
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                        "gauss": gauss},
             "loader": loader.state_dict()}
    if device.type == "cuda":  # dropout draws on the training device
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, loader: DeviceLoader, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    python = state["python"]
    if isinstance(python, dict):
        python = (python["version"], tuple(python["state"].tolist()), python["gauss"])
    random.setstate(python)
    loader.load_state_dict(state["loader"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def data_fingerprint(data: FERData) -> dict:
    """Split sizes and a sha256 of every image and label: what identifies a run's data
    wherever its files are."""
    digest = hashlib.sha256()
    for name in ("train", "val", "test"):
        split = data.split(name)
        digest.update(split.images.contiguous().numpy().tobytes())
        digest.update(split.labels.contiguous().numpy().tobytes())
    return {"sizes": {name: len(data.split(name)) for name in ("train", "val", "test")},
            "sha256": digest.hexdigest()}


METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_acc", "test_acc",
                  "train_time_s", "epoch_time_s", "images_per_s") + telemetry.COLUMNS


def write_metrics(path: Path, rows: list[dict]) -> None:
    """Rewrite metrics.csv from the full history (so a resumed run has exactly its epochs)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if row.get(k) is None else row[k])
                                 for k in METRIC_COLUMNS})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


#: the lock file of a run folder: held (fcntl.flock, exclusive) by the one process writing the
#: run, from its start (or --resume) to its end; it holds that process's pid
LOCK_FILE = ".fer_fast.lock"


def lock_run_dir(run_dir: Path):
    """Create ``run_dir`` if needed and take its exclusive lock (an open file: the lock goes
    with the process, whatever way it ends). Another process holding it: a UserError naming
    its pid."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        pid = lock.read().strip() or "unknown"
        lock.close()
        raise cli.UserError(f"{run_dir}: is in use by another fer_fast.train (pid {pid}); wait "
                            f"for it to end or choose another --out") from None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            lock.close()
            raise
        print(f"warning: {run_dir}: this file system cannot lock files ({e.strerror}): nothing "
              f"keeps a second process from writing this run at the same time", file=sys.stderr)
        return lock
    except BaseException:
        lock.close()
        raise
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _unlock(lock, run_dir: Path, created: bool) -> None:
    """Release the lock of a run that stopped in setup: a folder it created and left empty
    goes too."""
    lock.close()
    if created and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
        (run_dir / LOCK_FILE).unlink(missing_ok=True)
        try:
            run_dir.rmdir()
        except OSError:
            pass


def check_run_dir(run_dir: Path, resume: Path | None) -> None:
    """The rules that keep runs from overwriting each other: a new run writes only into a
    folder that does not exist or is empty; a resumed run writes into its own folder (from its
    last.pt only: an older checkpoint would overwrite the later epochs) or into an empty one as
    a copy. Also refuses an --out that is a file or cannot be written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise cli.UserError(f"--out {run_dir}: is a file, not a folder")
    own = resume is not None and run_dir.resolve() == resume.parent.resolve()
    if own and resume.name != "last.pt":
        raise cli.UserError(
            f"--resume {resume}: not the run's last checkpoint (last.pt); continuing from it in "
            f"{run_dir} would overwrite the later epochs there. Continue it as a copy with "
            f"--out NEW_FOLDER, or resume {run_dir} itself")
    if not own and run_dir.is_dir():
        entries = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
        if entries:
            shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)"
                                              if len(entries) > 5 else "")
            if resume is None and "last.pt" in entries:
                raise cli.UserError(f"{run_dir}: already holds a run (last.pt); continue it with "
                                    f"--resume {run_dir} or choose another --out")
            what = "a new run" if resume is None else f"resuming {resume} as a copy"
            raise cli.UserError(f"--out {run_dir}: not empty (holds {shown}); {what} writes only "
                                f"into a new or empty folder: choose another --out")
    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise cli.UserError(f"--out {run_dir}: cannot write in {existing} (permission denied)")


def _fmt_postfix(values: dict) -> dict:
    names = {"gpu_util_pct": "util%", "gpu_mem_peak_mib": "memMiB", "gpu_power_w": "W",
             "gpu_sm_clock_mhz": "MHz", "gpu_energy_j": "J"}
    return {names.get(k, k): (f"{v:.4g}" if isinstance(v, float) else v)
            for k, v in values.items()}


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _is_disk_full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


# ----------------------------------------------------------------------------------------------
# The training step
# ----------------------------------------------------------------------------------------------

class TrainStep:
    """One optimizer step, the code every training run (and the benchmark) executes:
    augmentation -> forward -> mean cross-entropy over the crops -> (scaled) backward ->
    optimizer step (-> per-step scheduler step).

    ``step(images, params, labels)``: uint8 ``images`` [b, 48, 48] and int64 ``labels`` [b] on
    the model's device, ``params`` their ``AugmentParams``; returns the detached loss (a 0-d
    tensor) and logits [b*10, 7], without a host synchronisation. The crops go to the model as
    the augmentation writes them, contiguous [b*10, 1, 40, 40]: with one channel that is also the
    channels_last layout of the CUDA model (the same strides), so no conversion is needed.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, *, device_type: str, precision: str = "fp32",
                 augment_backend: str = "auto", scheduler=None):
        self.model, self.optimizer, self.scaler, self.scheduler = model, optimizer, scaler, scheduler
        self.device_type, self.dtype = device_type, _DTYPES[precision]
        self.autocast = precision != "fp32"
        self.augment_backend = augment_backend

    def __call__(self, images: torch.Tensor, params: AugmentParams,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        crops, crop_labels = augment_batch(images, params, labels, backend=self.augment_backend,
                                           dtype=self.dtype)
        return self.on_crops(crops, crop_labels)

    def on_crops(self, crops: torch.Tensor,
                 crop_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step after the augmentation: ``crops`` [b*10, 1, 40, 40] (float, pixels / 255)
        and int64 ``crop_labels`` [b*10] on the model's device."""
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.autocast):
            logits = self.model(crops)
            loss = F.cross_entropy(logits, crop_labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach(), logits.detach()


# ----------------------------------------------------------------------------------------------
# The run: setup (or resume), one epoch, end of epoch, finish
# ----------------------------------------------------------------------------------------------

@dataclass
class Run:
    """The state of a run between its phases."""

    config: Config
    run_dir: Path
    device: torch.device
    precision: str
    model: VGG
    loader: DeviceLoader
    val: TenCropBatches
    test: TenCropBatches | None  # None: the data has no test split
    optimizer: torch.optim.Optimizer
    scheduler: object
    sched_unit: str
    scaler: torch.amp.GradScaler
    step: TrainStep
    history: list
    best: dict
    start_epoch: int
    data_id: dict
    saved_epoch: int | None  # the epoch last.pt holds (None: no checkpoint yet)
    epoch_times: list  # seconds per epoch trained by this process (for the ETA)
    step_estimate: float | None = None  # seconds per training step, measured early
    meter: object = None  # telemetry.start(device) while the epochs run
    epoch_started: float = 0.0  # perf_counter() at the start of the current epoch
    lock: object = None  # the run folder's lock (lock_run_dir), held until the run ends


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def setup(config: Config, resume: Path | None = None) -> Run:
    """Resolve the device and backends, check the run directory (before any data is read),
    load the data, build model / loader / optimizer / scheduler, and restore the checkpoint's
    state when resuming; writes config.json and the (resumed) metrics.csv."""
    device = cli.resolve_device(config.device)
    auto = prepare_auto(device, needed="auto" in (config.model_backend, config.augment_backend))
    try:
        model_backend = resolve_model_backend(config.model_backend, device)
        augment_backend = (backends.auto_choice("augment", device)
                           if config.augment_backend == "auto" else config.augment_backend)
        backends.resolve("augment", augment_backend or "auto", device)
    except (ValueError, RuntimeError) as e:
        raise cli.UserError(str(e)) from None
    run_dir = _run_dir(config)
    check_run_dir(run_dir, resume)
    created = not run_dir.exists()
    lock = lock_run_dir(run_dir)
    try:
        check_run_dir(run_dir, resume)  # again under the lock: another run may have written it
        run = _setup(config, resume, device, auto, model_backend, augment_backend, run_dir)
    except BaseException:
        _unlock(lock, run_dir, created)
        raise
    run.lock = lock
    return run


def _setup(config: Config, resume: Path | None, device: torch.device, auto, model_backend: str,
           augment_backend: str, run_dir: Path) -> Run:
    ckpt = _resume_checkpoint(resume, config, device)
    precision = (ckpt["resolved"]["precision"] if ckpt is not None and "resolved" in ckpt
                 and config.precision == "auto" else resolve_precision(config.precision, device))
    _warn_before_start(config, device, precision)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    data, data_id = _run_data(config, ckpt, resume)

    model = make_model(config, device, model_backend)
    if config.init and ckpt is None:
        load_params(model, load_checkpoint(config.init, trust=config.trust_checkpoint)["params"],
                    config.init)
    loader = DeviceLoader(_train_split(data, config.train_on), batch_size=config.batch_size,
                          device=device, recipe=config.recipe, seed=config.seed,
                          augment_backend=augment_backend, dtype=_DTYPES[precision])
    val, test = (TenCropBatches(split, batch_size=config.eval_batch_size, device=device,
                                augment_backend=augment_backend) if len(split) else None
                 for split in (data.val, data.test))
    optimizer = make_optimizer(config, model.parameters(), fused=device.type == "cuda")
    scheduler, sched_unit = make_scheduler(config, optimizer, len(loader))
    scaler = make_scaler(device, precision)
    step = TrainStep(model, optimizer, scaler, device_type=device.type, precision=precision,
                     augment_backend=augment_backend,
                     scheduler=scheduler if sched_unit == "step" else None)
    run = Run(config=config, run_dir=run_dir, device=device, precision=precision, model=model,
              loader=loader, val=val, test=test, optimizer=optimizer, scheduler=scheduler,
              sched_unit=sched_unit, scaler=scaler, step=step, history=[],
              best={"val_acc": -1.0, "epoch": 0}, start_epoch=0, data_id=data_id,
              saved_epoch=None, epoch_times=[])
    if ckpt is not None:
        _restore(run, ckpt, resume)

    run_dir.mkdir(parents=True, exist_ok=True)
    if resume is not None and run_dir.resolve() != resume.parent.resolve() \
            and resume.name == "last.pt":
        _copy_best(resume.parent, run_dir)  # a copy of the run: its best model comes along
    config.out = str(run_dir)
    resolved = {"device": str(device), "model_backend": model_backend, "precision": precision,
                "augment_backend": augment_backend, "data_source": data.source,
                "data_sha256": data_id["sha256"], "torch": torch.__version__, "auto": auto,
                "sizes": {"train": loader.num_images, "val": len(data.val), "test": len(data.test)}}
    write_text(run_dir / "config.json", json.dumps(
        {**dataclasses.asdict(config), "resolved": resolved}, indent=2) + "\n", overwrite=True)
    write_metrics(run_dir / "metrics.csv", run.history)
    print(f"fer_fast.train: {config.preset} preset, VGG(recipe={config.recipe!r}, "
          f"width={config.width}), {config.optimizer}+{config.scheduler}, lr {config.lr}, "
          f"{config.epochs} epoch{_s(config.epochs)} of {loader.num_images} images, batch "
          f"{config.batch_size}, {device} {precision}, model {model_backend}, augment "
          f"{augment_backend}; data {data.source}; run dir {run_dir}", flush=True)
    return run


def _resume_checkpoint(resume: Path | None, config: Config,
                       device: torch.device) -> dict | None:
    """The checkpoint to resume from (None for a new run), checked to fit this machine: the
    same kind of device, and the run's precision ("auto" keeps the one the run started with)."""
    if resume is None:
        return None
    ckpt = load_checkpoint(resume, trust=config.trust_checkpoint)  # on the CPU: RNG states stay there
    saved = ckpt.get("resolved", {})
    if saved and saved["device_type"] != device.type:
        raise CheckpointError(f"{resume}: written by a run on {saved['device_type']} in "
                              f"{saved['precision']}, but this machine resolves to "
                              f"{device.type}; resume it on the same kind of device")
    precision = resolve_precision(config.precision, device)
    if saved and config.precision != "auto" and saved["precision"] != precision:
        raise CheckpointError(f"{resume}: the run trains in {saved['precision']}, not in "
                              f"{precision} (--precision); resume it without --precision")
    return ckpt


def _run_data(config: Config, ckpt: dict | None, resume: Path | None) -> tuple[FERData, dict]:
    """The run's data and its fingerprint; a resumed run's data must be the one it started with
    (the paths in the config become absolute here)."""
    config.data, config.init = _absolute(config.data), _absolute(config.init)
    if config.data is not None and not Path(config.data).exists() and ckpt is not None:
        raise cli.UserError(f"the data of run {resume.parent} is no longer at {config.data}; "
                            f"pass --data with its new place")
    data = load_run_data(config.data, seed=config.seed, synthetic_sizes=config.synthetic_sizes,
                         splits=REQUIRED_SPLITS, strict_images=config.strict_images)
    data_id = data_fingerprint(data)
    if ckpt is not None and "data" in ckpt and ckpt["data"]["sha256"] != data_id["sha256"]:
        raise cli.UserError(f"--data {config.data or 'synthetic'}: not the data run "
                            f"{resume.parent} was trained on (split sizes {data_id['sizes']} vs "
                            f"{ckpt['data']['sizes']}, different content)")
    return data, data_id


def _restore(run: Run, ckpt: dict, resume: Path) -> None:
    """Continue exactly where the checkpoint stopped: weights, optimizer, schedule, loss scale,
    every random state, history and best epoch."""
    load_params(run.model, ckpt["params"], resume)
    try:
        _restore_state(run, ckpt)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{resume}: its resume state is unusable ({type(e).__name__}: "
                              f"{e})") from e


def _restore_state(run: Run, ckpt: dict) -> None:
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    _set_rng_state(ckpt["rng"], run.loader, run.device)
    run.history, run.best = list(ckpt["logs"]["history"]), dict(ckpt["best"])
    if not all(isinstance(row, dict) for row in run.history):
        raise ValueError("'logs' history must be a list of per-epoch dicts")
    if not (isinstance(run.best.get("val_acc"), (int, float))
            and isinstance(run.best.get("epoch"), int)):
        raise ValueError(f"'best' must hold a number val_acc and an int epoch, got {run.best}")
    run.start_epoch = run.saved_epoch = ckpt["epoch"]


def _warn_before_start(config: Config, device: torch.device, precision: str) -> None:
    if device.type == "cpu" and config.preset == "full":
        print(f"warning: the full preset (width {config.width}, {config.epochs} epochs) on a CPU "
              f"takes days to weeks; for a CPU use --preset quick, or a smaller --width (e.g. "
              f"0.125) and fewer --epochs. An estimate follows after the first steps.",
              file=sys.stderr)
    if device.type == "cpu" and precision == "fp16":
        print("warning: --precision fp16 on a CPU is slower than fp32 (CPUs have no fast fp16 "
              "kernels); use fp32 or bf16 there", file=sys.stderr)


def _copy_best(source: Path, run_dir: Path) -> None:
    """Resuming a run's last.pt into another folder: bring its best.pt (and checksum) along."""
    best = source / "best.pt"
    if best.is_file():  # through temporary files: a full disk leaves no half copy
        for src, dst in ((best, run_dir / "best.pt"),
                         (checksum_path(best), checksum_path(run_dir / "best.pt"))):
            if src.is_file():
                with temporary_path(dst, overwrite=True) as tmp:
                    shutil.copy2(src, tmp)


def run_epoch(run: Run, epoch: int) -> dict:
    """Train one epoch; returns its row's training columns (loss, accuracy, times)."""
    config, device, loader = run.config, run.device, run.loader
    show = config.progress and sys.stderr.isatty()
    t0 = run.epoch_started = time.perf_counter()
    run.model.train()
    lr = run.optimizer.param_groups[0]["lr"]
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    remaining_epochs = config.epochs - epoch
    bar = tqdm(total=len(loader), desc=f"epoch {epoch}/{config.epochs}", leave=False,
               disable=not show, dynamic_ncols=True)
    shown = time.perf_counter()
    timing_from = None
    for i, (images, params, labels) in enumerate(loader.batches()):
        loss, logits = run.step(images, params, labels)
        n = logits.shape[0]
        loss_sum += loss.float() * n
        correct += (logits.argmax(1) == labels.repeat_interleave(NUM_CROPS)).sum()
        seen += n
        bar.update()
        if run.step_estimate is None:
            timing_from = _estimate(run, epoch, i, timing_from)
        if show and time.perf_counter() - shown > 0.5:  # one host sync per refresh
            shown = time.perf_counter()
            epoch_left = (shown - t0) / (i + 1) * (len(loader) - i - 1)
            bar.set_postfix(_fmt_postfix({
                "loss": loss_sum.item() / seen, "acc": correct.item() / seen,
                "img/s": seen / 10 / (shown - t0),
                "eta": _fmt_duration(epoch_left + remaining_epochs * _epoch_seconds(run)),
                **run.meter.snapshot()}))
    bar.close()
    train_loss, train_acc = loss_sum.item() / seen, correct.item() / seen
    if not math.isfinite(train_loss):
        raise cli.UserError(f"epoch {epoch}: the training loss is {train_loss}: the run diverged "
                            f"(a smaller --lr may help); {_last_checkpoint(run)}")
    return {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
            "train_time_s": time.perf_counter() - t0}


def _estimate(run: Run, epoch: int, i: int, timing_from):
    """Time ESTIMATE_STEPS steps after the warm-up and print what the whole run will take."""
    if i + 1 == ESTIMATE_WARMUP:
        _sync(run.device)
        return (time.perf_counter(), i)
    if timing_from is not None and i - timing_from[1] == ESTIMATE_STEPS:
        _sync(run.device)
        run.step_estimate = (time.perf_counter() - timing_from[0]) / ESTIMATE_STEPS
        per_epoch = run.step_estimate * len(run.loader)
        left = run.config.epochs - epoch + 1
        tqdm.write(f"estimated training time: {_fmt_duration(per_epoch)} per epoch, "
                   f"~{_fmt_duration(per_epoch * left)} for the {left} epoch{_s(left)} left "
                   f"(from {ESTIMATE_STEPS} steps; validation adds to it)", file=sys.stdout)
        sys.stdout.flush()
    return timing_from


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _epoch_seconds(run: Run) -> float:
    """Mean seconds per epoch so far (or the early estimate of the training part)."""
    if run.epoch_times:
        return sum(run.epoch_times) / len(run.epoch_times)
    return (run.step_estimate or 0.0) * len(run.loader)


def end_epoch(run: Run, stats: dict) -> None:
    """Validate, step an epoch scheduler, optionally test, record the row, write metrics.csv
    and the checkpoints (best / periodic / last), print the epoch line."""
    config, epoch = run.config, stats["epoch"]
    val_acc, _ = evaluate_split(run.model, run.val)
    if config.scheduler == "plateau":
        run.scheduler.step(val_acc)
    elif run.sched_unit == "epoch":
        run.scheduler.step()
    test_acc = None
    if config.test_every and epoch % config.test_every == 0 and run.test is not None:
        test_acc, _ = evaluate_split(run.model, run.test)
    row = {**stats, "val_acc": val_acc, "test_acc": test_acc,
           "epoch_time_s": time.perf_counter() - run.epoch_started,
           "images_per_s": run.loader.num_images / stats["train_time_s"],
           **run.meter.epoch_end()}
    run.history.append(row)
    run.epoch_times.append(row["epoch_time_s"])
    improved = val_acc > run.best["val_acc"]
    if improved:
        run.best = {"val_acc": val_acc, "epoch": epoch}
    _save_epoch(run, epoch, improved)
    tel = "".join(f" {k} {v}" for k, v in _fmt_postfix(
        {k: row[k] for k in telemetry.COLUMNS if k in row}).items())
    left = config.epochs - epoch
    eta = f" eta {_fmt_duration(left * _epoch_seconds(run))}" if left else ""
    tqdm.write(f"epoch {epoch:3d}/{config.epochs} lr {row['lr']:.3g} loss "
               f"{row['train_loss']:.4f} train acc {100 * row['train_acc']:.2f}% val acc "
               f"{100 * val_acc:.2f}%"
               + (f" test acc {100 * test_acc:.2f}%" if test_acc is not None else "")
               + f"{' *' if improved else ''} | {row['images_per_s']:.0f} img/s "
               f"{row['epoch_time_s']:.1f} s{eta}{tel}", file=sys.stdout)
    sys.stdout.flush()


def _checkpoint(run: Run, epoch: int) -> dict:
    return {"params": run.model.state_dict(),
            "logs": {"history": run.history, "best_val_acc": run.best["val_acc"],
                     "best_epoch": run.best["epoch"]},
            "config": dataclasses.asdict(run.config), "epoch": epoch,
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(), "rng": _rng_state(run.loader, run.device),
            "best": run.best, "data": run.data_id,
            "resolved": {"device_type": run.device.type, "precision": run.precision}}


def _save_epoch(run: Run, epoch: int, improved: bool) -> None:
    """metrics.csv and the checkpoints of an epoch (last.pt, periodic, best.pt: all written
    before any is renamed into place); a full disk, or any other failed write, leaves the
    previous files whole (the run resumable) and stops the run with one line saying so."""
    run_dir, state = run.run_dir, _checkpoint(run, epoch)
    targets = [run_dir / "last.pt"] + \
        ([run_dir / f"epoch{epoch:04d}.pt"] if run.config.save_every
         and epoch % run.config.save_every == 0 else []) + \
        ([run_dir / "best.pt"] if improved else [])
    try:
        write_metrics(run_dir / "metrics.csv", run.history)  # rewritten from last.pt on resume
        save_atomic(state, *targets)
    except OSError as e:
        what = (f"the disk is full ({e.strerror})" if _is_disk_full(e) else
                f"the file is too large for this system's limit ({e.strerror})"
                if e.errno == errno.EFBIG else f"{e.strerror or e}")
        raise cli.UserError(f"writing the epoch-{epoch} files in {run_dir} failed: {what}; "
                            f"free some space or fix the folder. {_last_checkpoint(run)}"
                            ) from None
    run.saved_epoch = epoch


def train(config: Config, resume: Path | None = None) -> dict:
    """Run (or continue) a training run; returns the final summary (also in ``summary.json``)."""
    run = setup(config, resume)
    try:
        run.meter = telemetry.start(run.device)
        epoch = run.start_epoch
        try:
            for epoch in range(run.start_epoch + 1, config.epochs + 1):
                run.meter.epoch_begin()
                end_epoch(run, run_epoch(run, epoch))
        except KeyboardInterrupt:
            raise cli.Interrupted(f"stopped in epoch {epoch}; {_last_checkpoint(run)}") from None
        finally:
            run.meter.close()
        return _finish(run.model, run.val, run.test, run.run_dir, run.best, run.history)
    finally:
        run.lock.close()  # the run folder is free for the next process


def _last_checkpoint(run: Run) -> str:
    """Where a stopped run stands: its last checkpoint and the command that continues it."""
    if run.saved_epoch is None:
        return (f"no checkpoint was written yet; {run.run_dir} holds only its config.json and "
                f"metrics.csv (remove it to start again there)")
    return (f"the last checkpoint is {run.run_dir / 'last.pt'} (epoch {run.saved_epoch}); "
            f"continue with: python -m fer_fast.train --resume {run.run_dir}")


def _finish(model: VGG, val: TenCropBatches, test: TenCropBatches | None, run_dir: Path,
            best: dict, history: list[dict]) -> dict:
    """Final ten-crop accuracies of the best-validation checkpoint (validation, and test when
    the data has a test split) and the test accuracy of the last model; the confusion matrices
    go to result.json, the best model's test one also to test_confusion.csv."""
    summary = {"epochs": len(history), "best_epoch": best["epoch"],
               "best_val_acc": best["val_acc"], "splits": ["train", "val"] + (["test"] if test
                                                                           else []),
               "test_acc_last": None, "test_acc_best": None}
    if test is not None:
        last_acc, cm = evaluate_split(model, test)
        summary["test_acc_last"] = last_acc
        print(f"test ten-crop accuracy (last model, epoch {len(history)}): {100 * last_acc:.2f}% "
              f"({int(cm.diagonal().sum())}/{test.num_images})")
    else:
        print("test accuracy: not available (the data has no test split); best.pt is the model "
              "of the best validation accuracy")
    best_path = run_dir / "best.pt"
    if best["epoch"] and best["epoch"] != len(history) and best_path.is_file():
        load_params(model, load_checkpoint(best_path)["params"], best_path)
        if test is not None:
            summary["test_acc_best"], cm = evaluate_split(model, test)
    elif test is not None:
        summary["test_acc_best"] = last_acc
    _, val_cm = evaluate_split(model, val)
    summary["val_confusion"], cm = val_cm.tolist(), (cm if test is not None else None)
    print(f"validation ten-crop accuracy (best model, epoch {best['epoch']}): "
          f"{100 * best['val_acc']:.2f}%")
    print(format_confusion(val_cm))
    if test is not None:
        print(f"test ten-crop accuracy (best validation {100 * best['val_acc']:.2f}% at epoch "
              f"{best['epoch']}): {100 * summary['test_acc_best']:.2f}%")
        print(format_confusion(cm))
        with open_atomic(run_dir / "test_confusion.csv", overwrite=True, newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["true\\predicted", *CLASS_NAMES])
            for name, row in zip(CLASS_NAMES, cm.tolist()):
                writer.writerow([name, *row])
    write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n", overwrite=True)
    write_run_outputs(run_dir, summary, cm, history)  # result.json, curves.png, confusion.png
    files = sorted(p.name for p in run_dir.iterdir() if p.suffix != ".sha256"
                   and p.name != LOCK_FILE)
    print(f"run dir {run_dir}: {', '.join(files)} (best.pt: best validation; last.pt: "
          f"--resume {run_dir} --epochs N trains further)")
    return summary


@cli.command
def main(argv=None) -> int:
    config, resume = parse_args(argv)
    train(config, resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
