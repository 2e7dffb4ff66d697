"""The training step and what it is built from: ``TrainStep`` (augment -> forward -> loss ->
backward -> optimizer step) and the factories of its model, optimizer, scheduler, loss scaler and
precision. ``fer_fast.train`` and the step benchmark (benchmarks/harness.py) build the same step
from them.

Precision on CPU defaults to fp32: bf16 autocast makes a step cheaper but not the whole run, and
learns less (docs/notes.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import devices
from .augmentation import NUM_CROPS, AugmentParams, augment
from .config import OPTIMIZERS, SCHEDULERS, Config
from .loader import random_key
from .model import VGG
from .verdict import cpu_precision

__all__ = ["TrainStep", "augment_batch", "DTYPES", "resolve_precision", "make_model",
           "make_optimizer", "make_scheduler", "make_scaler"]


def resolve_precision(name: str, device: torch.device) -> str:
    """"auto": fp16 on CUDA; on a CPU bf16 where it has native bf16 arithmetic (oneDNN's
    AVX512-BF16 / AMX kernels) and the selfcheck verdict has the bf16 training path passing
    and faster than fp32 here (``fer_fast.verdict.cpu_precision``), else fp32."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "fp16"
    return "bf16" if devices.cpu_has_native_bf16() and cpu_precision() == "bf16" else "fp32"


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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


def augment_batch(images: torch.Tensor, params: AugmentParams, labels: torch.Tensor, *,
                  backend: str = "auto", dtype: torch.dtype = torch.float32):
    """``(crops [b*10, 1, 40, 40], crop labels [b*10])`` of uint8 ``images`` [b, 48, 48] with
    image ``labels`` [b]: crop ``i*10 + k`` is the k-th crop of image i."""
    return (augment(images, params, backend=backend, dtype=dtype),
            labels.repeat_interleave(NUM_CROPS))


class TrainStep:
    """One optimizer step, the code every training run (and the benchmark) executes:
    augmentation -> forward -> mean cross-entropy over the crops (with torch's
    ``label_smoothing``) -> (scaled) backward -> optimizer step (-> per-step scheduler step).

    ``step(images, params, labels, shard=None)`` (or ``step(*loader_batch)``): uint8 ``images``
    [b, 48, 48] and int64 ``labels`` [b] on the model's device, ``params`` their
    ``AugmentParams``; returns the detached loss (a 0-d tensor, the mean over this batch's
    crops) and logits [b*10, 7], without a host synchronisation. The crops go to the model as
    the augmentation writes them, contiguous [b*10, 1, 40, 40]: with one channel that is also the
    channels_last layout of the CUDA model (the same strides), so no conversion is needed.

    ``shard`` (``fer_fast.loader.Shard``, what the trainer passes): the batch is rows
    [first, stop) of a global batch of ``total`` images over ``world`` processes. The loss is
    then the mean over the global batch's crops (this process's part of it, times ``world``:
    DistributedDataParallel averages the gradients), and a model with ``dropout_masks`` (the
    VGG) takes its dropout masks from the global batch's key, so that the step does not depend
    on the number of processes.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, *, device_type: str, precision: str = "fp32",
                 augment_backend: str = "auto", scheduler=None, label_smoothing: float = 0.0):
        self.model, self.optimizer, self.scaler, self.scheduler = model, optimizer, scaler, scheduler
        self.label_smoothing = label_smoothing
        self.device_type, self.dtype = device_type, DTYPES[precision]
        self.autocast = precision != "fp32"
        self.augment_backend = augment_backend
        self.generator = None  # the dropout masks' (see on_crops), made on first use

    def __call__(self, images: torch.Tensor, params: AugmentParams, labels: torch.Tensor,
                 shard=None) -> tuple[torch.Tensor, torch.Tensor]:
        crops, crop_labels = augment_batch(images, params, labels, backend=self.augment_backend,
                                           dtype=self.dtype)
        return self.on_crops(crops, crop_labels, shard)

    def on_crops(self, crops: torch.Tensor, crop_labels: torch.Tensor,
                 shard=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The step after the augmentation: ``crops`` [b*10, 1, 40, 40] (float, pixels / 255)
        and int64 ``crop_labels`` [b*10] on the model's device."""
        kwargs, share = {}, 1.0
        if shard is not None:
            net = getattr(self.model, "module", self.model)  # under DistributedDataParallel
            if hasattr(net, "dropout_masks"):
                if self.generator is None:
                    self.generator = torch.Generator(crops.device)
                # a stream of its own: not the numbers the batch's augmentation drew
                self.generator.manual_seed(random_key(shard.key, "dropout"))
                kwargs["dropout_masks"] = net.dropout_masks(
                    self.generator, shard.total * NUM_CROPS, shard.first * NUM_CROPS,
                    shard.stop * NUM_CROPS)
            share = (shard.stop - shard.first) * shard.world / shard.total
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.autocast):
            logits = self.model(crops, **kwargs)
            loss = F.cross_entropy(logits, crop_labels, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss * share if share != 1.0 else loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach(), logits.detach()
