"""A run's folder and what is written into it: the folder rules and the lock that keep runs from
overwriting each other, metrics.csv, the RNG state and the checkpoints of every epoch, and the
final evaluation with its files (result.json, test_confusion.csv, the figures).
"""
from __future__ import annotations

import csv
import dataclasses
import errno
import fcntl
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import cli, telemetry
from .checkpoint import checksum_path, load_checkpoint, load_params, save_atomic
from .config import Config
from .evaluate import evaluate_split, format_confusion
from .files import open_atomic, temporary_path
from .loader import TenCropBatches
from .model import CLASS_NAMES, VGG
from .plots import write_run_outputs

if TYPE_CHECKING:
    from .train import Run

__all__ = ["LOCK_FILE", "METRIC_COLUMNS", "default_run_dir", "check_run_dir", "lock_run_dir",
           "unlock_run_dir", "write_metrics", "rng_state", "set_rng_state", "copy_best",
           "save_epoch", "last_checkpoint", "finish"]


def default_run_dir(config: Config) -> Path:
    """--out, or a new folder runs/<timestamp>-<recipe>[-n]."""
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


def unlock_run_dir(lock, run_dir: Path, created: bool) -> None:
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


def rng_state(device: torch.device) -> dict:
    """The global RNG states as tensors and plain values (a checkpoint loads with
    weights_only). The data order, the augmentation and the dropout masks of a run do not
    draw from them (they are functions of seed, epoch and batch: fer_fast.loader)."""
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                        "gauss": gauss}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore ``rng_state``'s states (a "loader" entry of older runs is not needed)."""
    torch.set_rng_state(state["torch"])
    python = state["python"]
    if isinstance(python, dict):
        python = (python["version"], tuple(python["state"].tolist()), python["gauss"])
    random.setstate(python)
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def copy_best(source: Path, run_dir: Path) -> None:
    """Resuming a run's last.pt into another folder: bring its best.pt (and checksum) along."""
    best = source / "best.pt"
    if best.is_file():  # through temporary files: a full disk leaves no half copy
        for src, dst in ((best, run_dir / "best.pt"),
                         (checksum_path(best), checksum_path(run_dir / "best.pt"))):
            if src.is_file():
                with temporary_path(dst, overwrite=True) as tmp:
                    shutil.copy2(src, tmp)


def _checkpoint_state(run: Run, epoch: int) -> dict:
    return {"params": run.model.state_dict(),
            "logs": {"history": run.history, "best_val_acc": run.best["val_acc"],
                     "best_epoch": run.best["epoch"]},
            "config": dataclasses.asdict(run.config), "epoch": epoch,
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(), "rng": rng_state(run.device),
            "best": run.best, "data": run.data_id,
            "resolved": {"device_type": run.device.type, "precision": run.precision,
                         "world_size": run.world.size}}


def save_epoch(run: Run, epoch: int, improved: bool) -> None:
    """metrics.csv and the checkpoints of an epoch (last.pt, periodic, best.pt: all written
    before any is renamed into place); a full disk, or any other failed write, leaves the
    previous files whole (the run resumable) and stops the run with one line saying so."""
    run_dir, state = run.run_dir, _checkpoint_state(run, epoch)
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
                            f"free some space or fix the folder. {last_checkpoint(run)}"
                            ) from None
    run.saved_epoch = epoch


def _is_disk_full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def last_checkpoint(run: Run) -> str:
    """Where a stopped run stands: its last checkpoint and the command that continues it."""
    if run.saved_epoch is None:
        return (f"no checkpoint was written yet; {run.run_dir} holds only its config.json and "
                f"metrics.csv (remove it to start again there)")
    return (f"the last checkpoint is {run.run_dir / 'last.pt'} (epoch {run.saved_epoch}); "
            f"continue with: python -m fer_fast train --resume {run.run_dir}")


def finish(model: VGG, val: TenCropBatches, test: TenCropBatches | None, run_dir: Path,
            best: dict, history: list[dict]) -> dict:
    """Final ten-crop accuracies of the best-validation checkpoint (validation, and test when
    the data has a test split) and the test accuracy of the last model; the confusion matrices
    go to result.json, the best model's test one also to test_confusion.csv."""
    summary = {"epochs": len(history), "best_epoch": best["epoch"],
               "best_val_acc": best["val_acc"], "splits": ["train", "val"] + (["test"] if test
                                                                           else []),
               "test_acc_last": None, "test_acc": None}
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
            summary["test_acc"], cm = evaluate_split(model, test)
    elif test is not None:
        summary["test_acc"] = last_acc
    _, val_cm = evaluate_split(model, val)
    summary["val_confusion"], cm = val_cm.tolist(), (cm if test is not None else None)
    print(f"validation ten-crop accuracy (best model, epoch {best['epoch']}): "
          f"{100 * best['val_acc']:.2f}%")
    print(format_confusion(val_cm))
    if test is not None:
        print(f"test ten-crop accuracy (best validation {100 * best['val_acc']:.2f}% at epoch "
              f"{best['epoch']}): {100 * summary['test_acc']:.2f}%")
        print(format_confusion(cm))
        with open_atomic(run_dir / "test_confusion.csv", overwrite=True, newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["true\\predicted", *CLASS_NAMES])
            for name, row in zip(CLASS_NAMES, cm.tolist()):
                writer.writerow([name, *row])
    result = write_run_outputs(run_dir, summary, cm, history)  # result.json, the figures
    files = sorted(p.name for p in run_dir.iterdir() if p.suffix != ".sha256"
                   and p.name != LOCK_FILE)
    print(f"run dir {run_dir}: {', '.join(files)} (best.pt: best validation; last.pt: "
          f"--resume {run_dir} --epochs N trains further)")
    return result
