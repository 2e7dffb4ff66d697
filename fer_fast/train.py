"""Training: ``python -m fer_fast train [--data PATH] [--preset full|quick|cpu] ...``: set the
run up (or resume it), train its epochs, finish it.

The released recipe (docs/spec.md, "Training"): SGD + Nesterov (lr 0.01, momentum 0.9, weight decay 1e-4
on every parameter), ReduceLROnPlateau(max, factor 0.75, patience 5) stepped per epoch on the
validation ten-crop accuracy, mean cross-entropy over the 640 crops of a 64-image batch, fp16
autocast with dynamic loss scaling on CUDA, ten-crop validation each epoch, best / periodic /
last checkpoints, exact resume. Every choice of the paper's experiments is a flag.

The parts: ``fer_fast.config`` (Config, presets, the command line, resume checks),
``fer_fast.step`` (TrainStep and its factories), ``fer_fast.rundir`` (the run folder, its lock,
metrics, checkpoints and final files); this module runs them in order.

Data-parallel (``torchrun --nproc-per-node N -m fer_fast.train ...``, or ``srun``; see
``fer_fast.distributed``): every process holds the data on its device and trains the same model
in DistributedDataParallel on its rows of each global batch (``--batch-size`` stays the global
batch), with BatchNorm statistics of the global batch (``--bn-sync global``); validation is
sharded and its counts all-reduced. Rank 0 alone decides what every process must agree on (the
run folder, the backends), prints, and writes the run folder; the final evaluation is its own.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from . import backends, cli, distributed, telemetry
from .augmentation import NUM_CROPS
from .checkpoint import CheckpointError, load_checkpoint, load_params
from .config import Config, parse_args
from .data import FERData, Split
from .distributed import World
from .evaluate import evaluate_split
from .files import write_text
from .loader import DeviceLoader, TenCropBatches, load_run_data
from .model import VGG
from .rundir import (check_run_dir, copy_best, default_run_dir, finish, last_checkpoint,
                     lock_run_dir, save_epoch, set_rng_state, unlock_run_dir, write_metrics)
from .stack import resolve_model_backend
from .step import (TrainStep, make_model, make_optimizer, make_scaler, make_scheduler,
                   resolve_precision)
from .verdict import prepare_auto

__all__ = ["Run", "setup", "run_epoch", "end_epoch", "train", "main"]

#: splits a run needs; without a test split (e.g. FER2013 without PublicTest) the run trains,
#: chooses best.pt by validation and reports the test accuracy as not available
REQUIRED_SPLITS = ("train", "val")


#: training steps timed for the estimate printed early in a run (after a few warm-up steps)
ESTIMATE_WARMUP, ESTIMATE_STEPS = 3, 20

#: the world of a run in one process
SINGLE = World(rank=0, size=1, local_rank=0)


# ----------------------------------------------------------------------------------------------
# Setup (or resume)
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
    val: TenCropBatches  # this process's share of the validation split
    test: TenCropBatches | None  # None: the data has no test split
    final: tuple | None  # (val, test) whole, for the final evaluation (rank 0; else None)
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
    world: World = SINGLE


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def setup(config: Config, resume: Path | None = None, world: World = SINGLE,
          device: torch.device | None = None) -> Run:
    """Check everything the command line names before saying or doing anything else (the run
    directory before any data is read, the checkpoint, the data), then resolve the backends
    (the selfcheck line), warn, build model / loader / optimizer / scheduler, and restore the
    checkpoint's state when resuming; writes config.json and the (resumed) metrics.csv.
    ``world``: this process's place in a data-parallel job (its process group joined, see
    ``train``); rank 0 claims the run folder."""
    device = cli.resolve_device(config.device) if device is None else device
    claimed = {}

    def claim() -> Path:
        run_dir = default_run_dir(config)
        check_run_dir(run_dir, resume)
        claimed.update(created=not run_dir.exists(), lock=lock_run_dir(run_dir), dir=run_dir)
        check_run_dir(run_dir, resume)  # again under the lock: another run may have written it
        return run_dir

    try:
        run_dir = _on_main(world, claim)
        run = _setup(config, resume, device, run_dir, world)
    except BaseException:
        if "lock" in claimed:
            unlock_run_dir(claimed["lock"], claimed["dir"], claimed["created"])
        raise
    run.lock = claimed.get("lock")
    return run


def _on_main(world: World, fn):
    """``fn()`` run by rank 0 alone, its result (or its user error) on every rank: what every
    process must agree on (the run folder, the backends)."""
    if world.size == 1:
        return fn()
    outcome = None
    if world.main:
        try:
            outcome = ("ok", fn())
        except cli.USER_ERRORS as e:
            distributed.broadcast_object(("error", str(e)))
            raise
    kind, value = distributed.broadcast_object(outcome)
    if kind == "error":
        raise cli.UserError(value)  # reported once, by rank 0
    return value


def _resolve_backends(config: Config, device: torch.device) -> tuple[dict, str, str, str]:
    """(what config.json records of "auto", model backend, augmentation backend, precision)."""
    auto = prepare_auto(device, needed="auto" in (config.model_backend, config.augment_backend,
                                                  config.precision))
    try:
        model_backend = resolve_model_backend(config.model_backend, device)
        augment_backend = (backends.auto_choice("augment", device)
                           if config.augment_backend == "auto" else config.augment_backend)
        backends.resolve("augment", augment_backend or "auto", device)
    except (ValueError, RuntimeError) as e:
        raise cli.UserError(str(e)) from None
    # after the selfcheck: on a CPU "auto" is bf16 only where its verdict says so
    return auto, model_backend, augment_backend, resolve_precision(config.precision, device)


def _check_backends(model_backend: str, augment_backend: str, device: torch.device) -> None:
    """Rank 0's choices run on this process's device too."""
    try:
        resolve_model_backend(model_backend, device)
        backends.resolve("augment", augment_backend or "auto", device)
    except (ValueError, RuntimeError) as e:
        raise cli.UserError(f"{e} (the backend rank 0 chose)") from None


def _shard_split(split: Split, world: World) -> Split:
    """This process's rows of an evaluation split."""
    first, stop = distributed.shard(len(split), world.rank, world.size)
    if len(split) and first == stop:
        raise cli.UserError(f"an evaluation split of {len(split)} images cannot be shared by "
                            f"{world.size} processes; use fewer processes")
    return Split(split.images[first:stop], split.labels[first:stop])


def _setup(config: Config, resume: Path | None, device: torch.device, run_dir: Path,
           world: World = SINGLE) -> Run:
    ckpt = _resume_checkpoint(resume, config, device, world)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    data, data_id = _run_data(config, ckpt, resume)
    auto, model_backend, augment_backend, precision = _on_main(
        world, lambda: _resolve_backends(config, device))
    if not world.main:
        _check_backends(model_backend, augment_backend, device)
    if ckpt is not None and "resolved" in ckpt and config.precision == "auto":
        precision = ckpt["resolved"]["precision"]
    if world.main:
        _warn_before_start(config, device, precision)

    model = make_model(config, device, model_backend)
    if config.init and ckpt is None:
        load_params(model, load_checkpoint(config.init, trust=config.trust_checkpoint)["params"],
                    config.init)
    try:
        loader = DeviceLoader(_train_split(data, config.train_on), batch_size=config.batch_size,
                              device=device, recipe=config.recipe, seed=config.seed,
                              rank=world.rank, world=world.size)
    except ValueError as e:
        raise cli.UserError(str(e)) from None

    def batches(split):
        return TenCropBatches(split, batch_size=config.eval_batch_size, device=device,
                              augment_backend=augment_backend) if len(split) else None
    val, test = (batches(_shard_split(split, world)) for split in (data.val, data.test))
    final = None
    if world.main:
        final = (val, test) if world.size == 1 else (batches(data.val), batches(data.test))
    optimizer = make_optimizer(config, model.parameters(), fused=device.type == "cuda")
    scheduler, sched_unit = make_scheduler(config, optimizer, len(loader))
    scaler = make_scaler(device, precision)
    run = Run(config=config, run_dir=run_dir, device=device, precision=precision, model=model,
              loader=loader, val=val, test=test, final=final, optimizer=optimizer,
              scheduler=scheduler, sched_unit=sched_unit, scaler=scaler, step=None, history=[],
              best={"val_acc": -1.0, "epoch": 0}, start_epoch=0, data_id=data_id,
              saved_epoch=None, epoch_times=[], world=world)
    if ckpt is not None:
        _restore(run, ckpt, resume)
    # after the restore: DistributedDataParallel starts every process from rank 0's weights
    trained = distributed.data_parallel(model, device) if world.size > 1 else model
    run.step = TrainStep(trained, optimizer, scaler, device_type=device.type,
                         precision=precision, augment_backend=augment_backend,
                         scheduler=scheduler if sched_unit == "step" else None,
                         label_smoothing=config.label_smoothing)
    config.out = str(run_dir)
    if not world.main:
        return run

    run_dir.mkdir(parents=True, exist_ok=True)
    if resume is not None and run_dir.resolve() != resume.parent.resolve() \
            and resume.name == "last.pt":
        copy_best(resume.parent, run_dir)  # a copy of the run: its best model comes along
    resolved = {"device": str(device), "model_backend": model_backend, "precision": precision,
                "augment_backend": augment_backend, "data_source": data.source,
                "data_sha256": data_id["sha256"], "torch": torch.__version__, "auto": auto,
                "sizes": {"train": loader.num_images, "val": len(data.val), "test": len(data.test)},
                "world_size": world.size,
                "bn_sync": config.bn_sync if world.size > 1 else "single process"}
    write_text(run_dir / "config.json", json.dumps(
        {**dataclasses.asdict(config), "resolved": resolved}, indent=2) + "\n", overwrite=True)
    write_metrics(run_dir / "metrics.csv", run.history)
    print(f"fer_fast.train: {config.preset} preset, VGG(recipe={config.recipe!r}, "
          f"width={config.width}), {config.optimizer}+{config.scheduler}, lr {config.lr}, "
          f"{config.epochs} epoch{cli.plural_s(config.epochs)} of {loader.num_images} images, batch "
          f"{config.batch_size}, {device} {precision}, model {model_backend}, augment "
          f"{augment_backend}; data {data.source}; run dir {run_dir}"
          + (f"; {world.size} processes (data-parallel, BatchNorm statistics "
             f"{config.bn_sync})" if world.size > 1 else ""), flush=True)
    return run


def _resume_checkpoint(resume: Path | None, config: Config, device: torch.device,
                       world: World = SINGLE) -> dict | None:
    """The checkpoint to resume from (None for a new run), checked to fit this machine: the
    same kind of device, and the run's precision ("auto" keeps the one the run started with).
    Another number of processes is allowed (said once): with global BatchNorm statistics the
    run continues as it would have, beyond rounding; with local ones each process's share of
    a batch changes, and with it the statistics."""
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
    before = saved.get("world_size", 1) if saved else 1
    if before != world.size and world.main:
        print(f"fer_fast.train: {resume} was trained by {before} process"
              f"{'es' if before != 1 else ''}, now {world.size}: "
              + ("the data order, augmentation, dropout and BatchNorm statistics (global) do "
                 "not depend on it: the run continues as before, up to rounding"
                 if config.bn_sync == "global" else
                 f"with --bn-sync local the BatchNorm statistics now come from shares of "
                 f"{config.batch_size / world.size:g} images instead of "
                 f"{config.batch_size / before:g}"), flush=True)
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
    set_rng_state(ckpt["rng"], run.device)
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


def _train_split(data: FERData, train_on: str) -> Split:
    if train_on == "train":
        return data.train
    return Split(torch.cat([data.train.images, data.val.images]),
                 torch.cat([data.train.labels, data.val.labels]))


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


# ----------------------------------------------------------------------------------------------
# The epochs
# ----------------------------------------------------------------------------------------------

def run_epoch(run: Run, epoch: int) -> dict:
    """Train one epoch; returns its row's training columns (loss, accuracy, times)."""
    config, device, loader = run.config, run.device, run.loader
    show = config.progress and sys.stderr.isatty() and run.world.main
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
    for i, batch in enumerate(loader.batches(epoch)):
        loss, logits = run.step(*batch)
        n = logits.shape[0]
        loss_sum += loss.float() * n
        correct += (logits.argmax(1) == batch.labels.repeat_interleave(NUM_CROPS)).sum()
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
    totals = distributed.all_reduce_sum(torch.stack([
        loss_sum.double(), correct.double(), torch.tensor(float(seen), device=device,
                                                          dtype=torch.float64)]))
    loss_total, correct_total, seen = totals.tolist()
    train_loss, train_acc = loss_total / seen, correct_total / seen
    if not math.isfinite(train_loss):
        raise cli.UserError(f"epoch {epoch}: the training loss is {train_loss}: the run diverged "
                            f"(a smaller --lr may help); {last_checkpoint(run)}")
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
        if not run.world.main:
            return timing_from
        tqdm.write(f"estimated training time: {_fmt_duration(per_epoch)} per epoch, "
                   f"~{_fmt_duration(per_epoch * left)} for the {left} epoch{cli.plural_s(left)} left "
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
    val_acc = _accuracy(run, run.val)
    if config.scheduler == "plateau":
        run.scheduler.step(val_acc)
    elif run.sched_unit == "epoch":
        run.scheduler.step()
    test_acc = None
    if config.test_every and epoch % config.test_every == 0 and run.test is not None:
        test_acc = _accuracy(run, run.test)
    row = {**stats, "val_acc": val_acc, "test_acc": test_acc,
           "epoch_time_s": time.perf_counter() - run.epoch_started,
           "images_per_s": run.loader.num_images / stats["train_time_s"],
           **run.meter.epoch_end()}
    run.history.append(row)
    run.epoch_times.append(row["epoch_time_s"])
    improved = val_acc > run.best["val_acc"]
    if improved:
        run.best = {"val_acc": val_acc, "epoch": epoch}
    if not run.world.main:
        run.saved_epoch = epoch
        return
    save_epoch(run, epoch, improved)
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


def _accuracy(run: Run, batches: TenCropBatches) -> float:
    """Ten-crop accuracy of a split of which ``batches`` is this process's share (in a
    data-parallel run the counts of every process summed)."""
    acc, cm = evaluate_split(run.model, batches)
    if run.world.size == 1:
        return acc
    counts = distributed.all_reduce_sum(torch.stack([cm.diagonal().sum(), cm.sum()]).to(
        batches.device))
    return counts[0].item() / max(1, counts[1].item())


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


# ----------------------------------------------------------------------------------------------
# The whole run
# ----------------------------------------------------------------------------------------------

def train(config: Config, resume: Path | None = None) -> dict:
    """Run (or continue) a training run; returns its result (result.json's content; in a
    data-parallel job rank 0's, the other ranks return {})."""
    world, device = _join(config)
    try:
        return _train(config, resume, world, device)
    finally:
        distributed.shutdown()


def _join(config: Config) -> tuple[World, torch.device | None]:
    """(this process's World, its device): SINGLE and None (``setup`` resolves --device), or
    under torchrun / srun its rank and device, the process group joined: a CUDA device means
    the GPU of its LOCAL_RANK."""
    try:
        world = distributed.from_environment()
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    if world is None:
        return SINGLE, None
    device = cli.resolve_device(config.device)
    if device.type == "cuda":
        device = cli.resolve_device(f"cuda:{world.local_rank}", "LOCAL_RANK")
        torch.cuda.set_device(device)
    try:
        distributed.init(world, device)
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    return world, device


def _train(config: Config, resume: Path | None, world: World, device) -> dict:
    run = setup(config, resume, world, device)
    sync = world.size > 1 and config.bn_sync == "global"
    try:
        run.meter = telemetry.start(run.device)
        epoch = run.start_epoch
        try:
            with distributed.bn_sync() if sync else contextlib.nullcontext():
                for epoch in range(run.start_epoch + 1, config.epochs + 1):
                    run.meter.epoch_begin()
                    end_epoch(run, run_epoch(run, epoch))
        except KeyboardInterrupt:
            raise cli.Interrupted(f"stopped in epoch {epoch}; {last_checkpoint(run)}") from None
        finally:
            run.meter.close()
        if not world.main:
            return {}
        return finish(run.model, *run.final, run.run_dir, run.best, run.history)
    finally:
        if run.lock is not None:
            run.lock.close()  # the run folder is free for the next process


@cli.command
def main(argv=None) -> int:
    config, resume = parse_args(argv)
    train(config, resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
