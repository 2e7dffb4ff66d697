"""``python -m fer_fast selfcheck [--device DEV] [--json PATH] [--quick] [--op OP] [--backend B]``:
verify every fast backend against the eager reference on this machine, then time the ones that
passed; and, on a CPU, the training precision ``--precision auto`` may take.

Every parity row compares tensors by their error, max |fast - reference| / max |reference| per
tensor, against one numeric tolerance; the row shows the tensor of the largest margin (error /
tolerance) and passes at margin <= 1. fp32 is measured against the fp32 reference within
``tolerances.SELFCHECK_FP32`` (summation order only); fp16 and bf16 against the fp32 reference
of the same rounded inputs within ``tolerances.rounding_tolerance`` (unit roundoff, reduction
length, depth). A tolerance that would admit an all-zero result (>= 1) fails its row as vacuous.
docs/selfcheck.md lists the clean errors against the tolerances.

Per op and backend available on the device (``fer_fast.backends.available``):

- ``augment``: the ten crops of random images with sampled parameters of both recipes, fp32,
  fp16 (and bf16 on GPUs), with the identical zero pattern (geometric fill, erase boxes).
- ``block``: one conv+BN+ReLU(+pool) block at each of the VGG's eight layer shapes, both orders:
  training mode (output, gradients of input, weight, bias, gamma, beta; running statistics) and
  eval mode (output and gradients with the running statistics; the no-grad output of predict).
- ``stack``: the VGG's whole conv stack at once (the same eight layers) under autocast:
  output, input and parameter gradients, running statistics; eval mode (running statistics
  near, not equal to, this batch's own) and the no-grad output.
- ``train`` rows: each block / whole-stack backend trains a whole VGG a few SGD-Nesterov steps
  (on a CPU the interpreted ones a narrower VGG on 2 crops per step); losses, parameters and
  buffers within ``SELFCHECK_TRAIN`` of eager.
- ``precision`` (CPU with native bf16): the training step (``step.TrainStep``) in bf16
  autocast + channels_last vs fp32 NCHW, a few steps from the same init on the same batches,
  then a step of each timed: ``fer_fast.verdict.cpu_precision`` takes bf16 only where it passed
  and was faster.
- ``time``: each passing backend that "auto" may take here, and eager, at the training shape
  (augmentation of 64 images; the VGG's conv stack forward + backward on 640 crops, fp16
  autocast on CUDA). CUDA: CUDA events after warm-up; CPU: wall clock at reduced sizes.

On the CPU the Triton kernels run under ``TRITON_INTERPRET=1`` (the command sets it and
re-runs itself when needed) at reduced shapes (channel counts / 16, sides / 4, batch 1, the two
block orders on alternate layers; the stack at width 1/32 on two 24x24 crops) and bf16 is not
checked (the interpreter's ``tl.dot`` is wrong in bf16); ``--quick`` means fewer training
steps and timing repetitions.

The outcome is printed once, as one table streamed row by row, then the outcome, what was not
checked and why, and one line per op saying what "auto" takes and why
(``fer_fast.verdict.decisions``); written as JSON (``--json``): ``{"device", "env"
(``fer_fast.verdict.environment``), "rows": [{"op", "backend", "check", "passed", "max_error",
"tolerance", "margin", "worst", "time_ms", "speedup", "detail"}], "checks", "passed",
"skipped"}``; a full run (no ``--op`` / ``--backend`` filter) is also stored as this machine's
verdict (``fer_fast.verdict``), which "auto" decides by. Exit status: 0 when every parity
check passed, 1 when one failed or none ran, 2 for a usage error (e.g. a ``--backend`` that is
no fast backend of the ops). :func:`ensure_verdict` runs the selfcheck in a child process when
no verdict exists.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import backends, cli, devices, files, verdict
from .augmentation import augment_ref, sample_params
from .block import ORDERS, conv_bn_act_ref
from .kernels import INTERPRETER_ENV, is_interpreter
from .model import VGG, stage_channels
from .tolerances import (SELFCHECK_FP32, SELFCHECK_TRAIN, UNIT_ROUNDOFF, VACUOUS,
                         rounding_tolerance)
from .verdict import ensure_verdict

__all__ = ["run", "main", "ensure_verdict", "interpreter_conflict", "sgd_losses", "VGG_LAYERS",
           "OPS"]

OPS = ("augment", "block", "stack", "precision")
#: the backends each op's fast path is checked as (op "precision": the CPU training path)
_PRECISION_BACKENDS = ("bf16",)
#: (name, C_in, C_out, H = W, max-pool after) of the VGG's eight blocks
VGG_LAYERS = (("1a", 1, 64, 40, False), ("1b", 64, 64, 40, True), ("2a", 64, 128, 20, False),
              ("2b", 128, 128, 20, True), ("3a", 128, 256, 10, False),
              ("3b", 256, 256, 10, True), ("4a", 256, 512, 5, False), ("4b", 512, 512, 5, True))
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
#: environment variable, tests only: the selfcheck aborts at once (a kernel that faults)
_ABORT_ENV = "FER_FAST_SELFCHECK_TEST_ABORT"


@dataclass(frozen=True)
class Sizes:
    """Problem sizes: the real ones on CUDA, reduced ones on the CPU (the interpreter runs each
    Triton program in Python)."""
    augment_batch: int  # images per parity call
    block_batch: int
    channel_div: int  # block parity: the VGG's channel counts / this
    spatial_div: int  # block parity: the VGG's layer sides / this
    both_orders: bool  # block parity: each layer in both orders (else alternating)
    stack_width: float  # conv-stack parity: VGG width
    stack_batch: int
    stack_size: int  # conv-stack parity: crop side (16 or more: four 2x2 pools; the last
    # BatchNorm must see several values, else its gradients are pure rounding noise)
    train_width: float
    train_batch: int  # crops per training step
    train_steps: int
    time_images: int  # images per augmentation call timed
    time_crops: int  # crops per conv-stack step timed
    time_width: float
    time_reps: int
    precision_crops: int  # crops per CPU training step timed (op precision)
    dtypes: tuple  # the compute dtypes checked (bf16 only on GPUs, see ``BF16_SKIPPED``)


#: why bf16 is not checked on the CPU
BF16_SKIPPED = ("bf16 not checked under the Triton interpreter (its tl.dot is wrong in bf16, "
                "see fer_fast.devices); checked on GPUs")


def sizes(device: torch.device, quick: bool) -> Sizes:
    if device.type == "cuda":
        return Sizes(augment_batch=16, block_batch=8, channel_div=1, spatial_div=1,
                     both_orders=True, stack_width=1.0, stack_batch=8, stack_size=40,
                     train_width=1.0, train_batch=640, train_steps=3 if quick else 6,
                     time_images=64, time_crops=640, time_width=1.0,
                     time_reps=10 if quick else 30, precision_crops=0,
                     dtypes=(F32, F16, BF16))
    return Sizes(augment_batch=1, block_batch=1, channel_div=16, spatial_div=4,
                 both_orders=False, stack_width=1 / 32, stack_batch=2,
                 stack_size=24, train_width=1 / 8, train_batch=16, train_steps=2,
                 time_images=16, time_crops=32, time_width=0.125, time_reps=2 if quick else 5,
                 precision_crops=64, dtypes=(F32, F16))


def _row(op, backend, check, passed, max_error=None, tol=None, margin=None, time_ms=None,
         speedup=None, detail=None) -> dict:
    return {"op": op, "backend": backend, "check": check, "passed": bool(passed),
            "max_error": None if max_error is None else float(max_error),
            "tolerance": tol, "margin": None if margin is None else float(margin),
            "time_ms": time_ms, "speedup": speedup, "detail": detail, "worst": None}


class _Compare:
    """The worst tensor of one check. A tensor's error is max |got - want| / max |scale|
    (``scale`` defaults to the reference ``want``), its margin error / tolerance; the row
    reports the tensor of the largest margin. A tolerance of ``VACUOUS`` or more fails the row:
    a check that admits an all-zero result cannot fail."""

    def __init__(self):
        self.margin, self.error, self.tol, self.where = 0.0, 0.0, None, None
        self.loosest = 0.0  # the largest tolerance of any tensor (vacuous or not)
        self.failures: list[str] = []

    def add(self, got, want, tol: float, name: str, scale=None):
        got, want = got.detach().float(), want.detach().float()
        if got.shape != want.shape:
            self.fail(f"{name}: shape {tuple(got.shape)} instead of {tuple(want.shape)}")
            return
        size = (want if scale is None else scale).detach().float().abs().max().item() \
            if want.numel() else 0.0
        diff = (got - want).abs().max().item() if want.numel() else 0.0
        error = diff / size if size > 0 else diff
        margin = error / tol
        self.loosest = max(self.loosest, tol)
        if self.tol is None or not margin <= self.margin:  # NaN counts as the worst
            self.margin, self.error, self.tol, self.where = margin, error, tol, name

    def fail(self, why: str):
        """A property that has no error number (zero pattern, shape): fails the row."""
        self.failures.append(why)

    def row(self, op, backend, check, note: str | None = None) -> dict:
        """The row; ``note``: what the detail says besides failures (e.g. a reduced shape)."""
        if self.tol is None and not self.failures:
            self.fail("nothing compared")
        vacuous = self.loosest >= VACUOUS
        passed = self.margin <= 1 and not vacuous and not self.failures
        why = list(self.failures) + ([note] if note else [])
        if vacuous:
            why.append(f"tolerance {self.loosest:.3g} >= {VACUOUS:g} admits an all-zero result: "
                       f"vacuous at this shape")
        if not self.margin <= 1:
            why.append(f"worst: {self.where}")
        return {**_row(op, backend, check, passed, self.error, self.tol, self.margin,
                       detail="; ".join(why) or None), "worst": self.where}


def _dtype_name(dtype) -> str:
    return {F32: "fp32", F16: "fp16", BF16: "bf16"}[dtype]


def _tol(check: str, dtype, reduction: int, depth: int = 1) -> float:
    """fp32: the written ``SELFCHECK_FP32[check]``; fp16/bf16: from the unit roundoff and the
    reduction length (``rounding_tolerance``)."""
    if dtype == F32:
        return SELFCHECK_FP32[check]
    return rounding_tolerance(dtype, reduction, depth)


# ---------------------------------------------------------------------------------- augment
def check_augment(name, device, sz: Sizes) -> list[dict]:
    """Ten crops of random images, both recipes, vs the reference in fp32; fp16/bf16 vs the
    same fp32 reference (one rounding of values in [0, 1]: 2u); the zero pattern (fill, erase
    boxes) identical."""
    fn = backends.resolve("augment", name, device)
    rows = []
    for dtype in sz.dtypes:
        worst = _Compare()
        for seed, recipe in enumerate(("released", "paper")):
            gen = torch.Generator(device=device).manual_seed(seed)
            params = sample_params(recipe, sz.augment_batch, gen)
            images = torch.randint(0, 256, (sz.augment_batch, 48, 48), dtype=torch.uint8,
                                   generator=gen, device=device)
            out, ref = fn(images, params, dtype), augment_ref(images, params, F32)
            tol = SELFCHECK_FP32["augment"] if dtype == F32 else 2 * UNIT_ROUNDOFF[dtype]
            worst.add(out, ref, tol, recipe)
            if not torch.equal(out == 0, ref.to(dtype) == 0):
                worst.fail(f"{recipe}: zero pattern (fill / erase) differs")
        rows.append(worst.row("augment", name, f"parity {_dtype_name(dtype)}"))
    return rows


# ------------------------------------------------------------------------------------ block
def _block_inputs(n, cin, cout, hw, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, hw, hw, generator=gen)
    weight = torch.randn(cout, cin, 3, 3, generator=gen) / (3 * cin ** 0.5)
    bias = 0.2 * torch.randn(cout, generator=gen)
    gamma, beta = 0.5 + torch.rand(cout, generator=gen), 0.3 * torch.randn(cout, generator=gen)
    stats = (0.1 * torch.randn(cout, generator=gen), 0.5 + torch.rand(cout, generator=gen))
    x = x.to(device, dtype).contiguous(memory_format=torch.channels_last)
    params = [weight.to(device, dtype), bias.to(device, dtype), gamma.to(device), beta.to(device)]
    return x, params, [s.to(device) for s in stats]


def _block_run(fn, x, params, stats, *, training, order, pool, seed, grad_dtype):
    """(output, gradients of x and the parameters, running statistics after) of one call; the
    output gradient is random, rounded to ``grad_dtype`` (the same values for every dtype)."""
    x = x.detach().clone().requires_grad_(True)
    params = [p.detach().clone().requires_grad_(True) for p in params]
    stats = [s.clone() for s in stats]
    out = fn(x, *params, *stats, training=training, momentum=0.1, eps=1e-5, order=order,
             pool=pool)
    gen = torch.Generator().manual_seed(seed)
    dout = torch.randn(out.shape, generator=gen).to(grad_dtype).to(out.device, out.dtype)
    return out, torch.autograd.grad(out, [x, *params], dout), stats


_GRADS = ("x", "weight", "bias", "gamma", "beta")


def check_block(name, device, sz: Sizes) -> list[dict]:
    """Each VGG layer shape (reduced on the CPU), training and eval mode, against the fp32
    reference of the same (rounded) inputs: output, gradients of input and parameters, running
    statistics; eval: output and gradients with the running statistics, and the no-grad output
    (the inference path of predict / evaluate)."""
    fn = backends.resolve("block", name, device)
    rows = []
    for dtype in sz.dtypes:
        fwd, bwd, stats_err, ev = _Compare(), _Compare(), _Compare(), _Compare()
        notes = set()
        for k, (layer, cin, cout, hw, pool) in enumerate(VGG_LAYERS):
            cin, cout = max(1, cin // sz.channel_div), max(1, cout // sz.channel_div)
            hw = max(2, hw // sz.spatial_div)
            reduction = max(9 * cin, 9 * cout, sz.block_batch * hw * hw)
            while dtype != F32 and rounding_tolerance(dtype, reduction) >= VACUOUS / 2:
                # vacuous (or nearly) at this layer's shape: check it at a smaller one
                cin, cout, hw = max(1, cin // 2), max(1, cout // 2), max(4, hw // 2)
                reduction = max(9 * cin, 9 * cout, sz.block_batch * hw * hw)
                notes.add(f"{_dtype_name(dtype)}: layers halved where the bound is vacuous "
                          f"at the VGG's shape")
            orders = ORDERS if sz.both_orders else (ORDERS[k % 2],)
            for order in orders:
                x, params, stats = _block_inputs(sz.block_batch, cin, cout, hw, dtype, device,
                                                 seed=k)
                ref_in = x.float(), [p.float() for p in params]
                where = f"{layer} {order}"
                for training in (True, False):
                    run = dict(training=training, order=order, pool=pool, seed=k,
                               grad_dtype=dtype)
                    got = _block_run(fn, x, params, stats, **run)
                    want = _block_run(conv_bn_act_ref, *ref_in, stats, **run)
                    mode = "" if training else "eval "
                    out_cmp, grad_cmp = (fwd, bwd) if training else (ev, ev)
                    out_cmp.add(got[0], want[0], _tol("forward" if training else "eval", dtype,
                                                      reduction), f"{mode}{where} output")
                    for gname, g, r in zip(_GRADS, got[1], want[1]):
                        # conv -> training BN: the conv bias's gradient is exactly 0 in exact
                        # arithmetic, rounding noise of sums of ~|dW| in both: measured
                        # against the weight gradient's scale
                        scale = want[1][1] if (gname == "bias" and order == "bn_relu"
                                               and training) else None
                        grad_cmp.add(g, r, _tol("gradients" if training else "eval", dtype,
                                                reduction), f"{mode}{where} d{gname}", scale)
                    if training:
                        for sname, g, r in zip(("mean", "var"), got[2], want[2]):
                            stats_err.add(g, r, _tol("running stats", dtype, reduction),
                                          f"{where} running {sname}")
                with torch.no_grad():
                    out = fn(x, *params, *[s.clone() for s in stats], training=False,
                             momentum=0.1, eps=1e-5, order=order, pool=pool)
                    ref = conv_bn_act_ref(*ref_in[:1], *ref_in[1], *stats, training=False,
                                          momentum=0.1, eps=1e-5, order=order, pool=pool)
                ev.add(out, ref, _tol("eval", dtype, reduction), f"no-grad {where} output")
        d = _dtype_name(dtype)
        for check, cmp in ((f"forward {d}", fwd), (f"gradients {d}", bwd),
                           (f"running stats {d}", stats_err), (f"eval {d}", ev)):
            rows.append(cmp.row("block", name, check, note="; ".join(sorted(notes)) or None))
    return rows


# ------------------------------------------------------------------------------------ stack
def _stack_pass(model, x, grad, dtype):
    x = x.clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != F32):
        out = model.features(x)
    out.backward(grad.to(out.dtype))
    return out, x.grad


def _round_params(model, dtype):
    """Round the conv weights and biases to ``dtype`` (kept fp32): the fp32 reference then
    computes on exactly the values the low-precision path reads."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("conv"):
                p.copy_(p.to(dtype).float())


def check_stack(name, device, sz: Sizes) -> list[dict]:
    """The VGG's whole conv stack (training mode, then eval mode and the no-grad eval output)
    vs the eager fp32 VGG on the same (rounded) inputs and parameters; fp16/bf16 under
    autocast, within ``rounding_tolerance`` over the stack's depth and longest reduction."""
    rows = []
    for dtype in sz.dtypes:
        width = sz.stack_width
        while dtype != F32 and rounding_tolerance(dtype, 9 * stage_channels(width)[-1],
                                                  len(VGG_LAYERS)) >= VACUOUS / 2:
            width /= 2  # vacuous (or nearly) at this width: check at a narrower stack
        note = None if width == sz.stack_width else (
            f"at width {width:g}: the {_dtype_name(dtype)} bound is vacuous at width "
            f"{sz.stack_width:g}")
        torch.manual_seed(0)
        ref = VGG("released", width=width, dropout=0.0).to(device)
        _round_params(ref, dtype)
        fast = copy.deepcopy(ref)
        fast.backend = name
        gen = torch.Generator().manual_seed(5)
        x = torch.rand(sz.stack_batch, 1, sz.stack_size, sz.stack_size,
                       generator=gen).to(dtype).float().to(device)
        side = sz.stack_size // 16
        grad = torch.randn(sz.stack_batch, ref.conv4b.out_channels, side, side,
                           generator=gen).to(dtype).float().to(device)
        convs = [m for m in ref.modules() if isinstance(m, torch.nn.Conv2d)]
        # the convs' dot products (the batch reductions of statistics and weight gradients
        # average fp32 sums of rounded terms: no cancellation of their own)
        reduction, depth = max(9 * c.in_channels for c in convs), len(convs)

        def tol(check):
            return _tol(check, dtype, reduction, depth)

        fwd, bwd, stats_err, ev = _Compare(), _Compare(), _Compare(), _Compare()
        want, got = _stack_pass(ref, x, grad, F32), _stack_pass(fast, x, grad, dtype)
        fwd.add(got[0], want[0], tol("forward"), "output")
        bwd.add(got[1], want[1], tol("gradients"), "input gradient")
        p_ref, p_fast = dict(ref.named_parameters()), dict(fast.named_parameters())
        for pname, p in p_ref.items():
            if not pname.startswith(("conv", "bn")):
                continue
            # conv -> training BN: the conv bias's gradient is exactly 0 in exact arithmetic,
            # rounding noise of sums of ~|dW| in both: measured against the weight's scale
            scale = p_ref[pname.replace("bias", "weight")].grad if (
                pname.startswith("conv") and pname.endswith("bias")) else None
            bwd.add(p_fast[pname].grad, p.grad, tol("gradients"), f"d{pname}", scale)
        for (bname, b_ref), b in zip(ref.named_buffers(), fast.buffers()):
            stats_err.add(b, b_ref, tol("running stats"), bname)
        # eval from the same running statistics: this batch's own, moved by a tenth of a
        # standard deviation and a fifth of the variance (eval normalises almost like training,
        # a well-conditioned comparison, yet an eval path using the batch statistics fails)
        bns = [m for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        with torch.no_grad():
            for bn in bns:
                bn.momentum = 1.0
            ref.features(x)
            for bn in bns:
                bn.momentum = 0.1
                c = bn.num_features
                bn.running_mean.add_(0.1 * bn.running_var.sqrt()
                                     * torch.randn(c, generator=gen).to(device))
                bn.running_var.mul_(1 + 0.2 * torch.rand(c, generator=gen).to(device))
        fast.load_state_dict(ref.state_dict())
        ref.eval(), fast.eval()
        want, got = _stack_pass(ref, x, grad, F32), _stack_pass(fast, x, grad, dtype)
        ev.add(got[0], want[0], tol("eval"), "eval output")
        if dtype == F32:  # low precision: eval has no BatchNorm to renormalise the gradient, and
            # a ReLU mask flipped by rounding changes it by O(1) (eager autocast alike)
            ev.add(got[1], want[1], tol("eval"), "eval input gradient")
        with torch.no_grad():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != F32):
                out = fast.features(x)
            ev.add(out, ref.features(x), tol("eval"), "no-grad output")
        d = _dtype_name(dtype)
        for check, cmp in ((f"forward {d}", fwd), (f"gradients {d}", bwd),
                           (f"running stats {d}", stats_err), (f"eval {d}", ev)):
            rows.append(cmp.row("stack", name, check, note=note))
    return rows


# ------------------------------------------------------------------------------------ train
def sgd_losses(model, images, labels, amp: bool) -> torch.Tensor:
    """Loss per step of ``images.shape[0]`` steps of the released recipe's optimiser (SGD 0.01,
    Nesterov 0.9, weight decay 1e-4; fp16 autocast + GradScaler when ``amp``) on crops
    ``images[step]`` [B, 1, 40, 40] with ``labels[step]`` [B]; dropout masks seeded per step, so
    two backends see the same ones."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=1e-4)
    scaler = torch.amp.GradScaler(images.device.type, enabled=amp)
    losses = []
    for step in range(images.shape[0]):
        torch.manual_seed(100 + step)
        with torch.autocast(images.device.type, dtype=F16, enabled=amp):
            loss = F.cross_entropy(model(images[step]), labels[step])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.detach().float())
    return torch.stack(losses)


def check_train(op, name, device, sz: Sizes) -> dict:
    """A few training steps of a whole VGG with backend ``name`` vs eager at the same precision
    (fp16 autocast + GradScaler on CUDA): losses, parameters and buffers within
    ``SELFCHECK_TRAIN``."""
    amp = device.type == "cuda"
    dtype = F16 if amp else F32
    torch.manual_seed(0)
    fast = VGG(width=sz.train_width, backend=name).to(device)
    eager = VGG(width=sz.train_width, backend="eager").to(device)
    eager.load_state_dict(fast.state_dict())
    if amp:
        fast, eager = (m.to(memory_format=torch.channels_last) for m in (fast, eager))
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(sz.train_steps, sz.train_batch, 1, 40, 40, generator=gen).to(device)
    labels = torch.randint(0, 7, (sz.train_steps, sz.train_batch), generator=gen).to(device)
    tol = SELFCHECK_TRAIN[dtype]
    worst = _Compare()
    worst.add(sgd_losses(fast, images, labels, amp), sgd_losses(eager, images, labels, amp), tol,
              "loss")
    for (pname, a), (_, b) in zip(fast.state_dict().items(), eager.state_dict().items()):
        worst.add(a, b, tol, pname)
    return worst.row(op, name, f"train {sz.train_steps} steps {_dtype_name(dtype)}")


# ------------------------------------------------------------------------ CPU training path
def check_cpu_precision(device, sz: Sizes) -> list[dict]:
    """What ``--precision auto`` may take on this CPU (``fer_fast.verdict.cpu_precision``): a
    few training steps (``fer_fast.step.TrainStep``, SGD-Nesterov) of a small VGG in bf16
    autocast, channels_last, vs the fp32 NCHW eager reference from the same init on the same
    batches: losses, parameters and running statistics within ``SELFCHECK_TRAIN[bf16]``; then
    one training step of each timed at the timing shape."""
    from .step import TrainStep

    def train(model, precision, crops, labels):
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                              weight_decay=1e-4)
        step = TrainStep(model, opt, torch.amp.GradScaler(device.type, enabled=False),
                         device_type=device.type, precision=precision)
        return torch.stack([step.on_crops(c, y)[0].float() for c, y in zip(crops, labels)])

    def models(width):
        torch.manual_seed(0)
        ref = VGG(width=width, dropout=0.0).to(device)
        return ref, copy.deepcopy(ref).to(memory_format=torch.channels_last)

    ref, fast = models(sz.train_width)
    gen = torch.Generator().manual_seed(1)
    crops = torch.rand(sz.train_steps, sz.train_batch, 1, 40, 40, generator=gen).to(device)
    labels = torch.randint(0, 7, (sz.train_steps, sz.train_batch), generator=gen).to(device)
    tol = SELFCHECK_TRAIN[BF16]
    worst = _Compare()
    worst.add(train(fast, "bf16", crops, labels), train(ref, "fp32", crops, labels), tol, "loss")
    state = ref.state_dict()
    for (pname, a), (_, b) in zip(fast.state_dict().items(), state.items()):
        if a.is_floating_point():
            # biases and running means start at 0: measured against their layer's weight
            # (running variance) scale, as the conv bias against its weight elsewhere
            scale = state[pname.replace("bias", "weight").replace("running_mean",
                                                                  "running_var")]
            worst.add(a, b, tol, pname, scale)
    rows = [worst.row("precision", "bf16", f"train {sz.train_steps} steps vs fp32")]
    if rows[0]["passed"]:
        ref, fast = models(sz.time_width)
        crops = torch.rand(1, sz.precision_crops, 1, 40, 40, generator=gen).to(device)
        labels = torch.randint(0, 7, (1, sz.precision_crops), generator=gen).to(device)
        base = _time_ms(lambda: train(ref, "fp32", crops, labels), device, sz.time_reps)
        ms = _time_ms(lambda: train(fast, "bf16", crops, labels), device, sz.time_reps)
        rows += [_row("precision", "fp32", "time", True, time_ms=base, speedup=1.0),
                 _row("precision", "bf16", "time", True, time_ms=ms, speedup=base / ms)]
    return rows


# ------------------------------------------------------------------------------------- time
def _time_ms(fn, device, reps) -> float:
    """Median milliseconds of ``fn()`` after warm-up (CUDA events on a GPU)."""
    for _ in range(3 if device.type == "cuda" else 1):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def time_augment(name, device, sz: Sizes) -> float:
    fn = backends.resolve("augment", name, device)
    gen = torch.Generator(device=device).manual_seed(0)
    params = sample_params("released", sz.time_images, gen)
    images = torch.randint(0, 256, (sz.time_images, 48, 48), dtype=torch.uint8, generator=gen,
                           device=device)
    dtype = F16 if device.type == "cuda" else F32
    return _time_ms(lambda: fn(images, params, dtype), device, sz.time_reps)


def time_model(name, device, sz: Sizes) -> float:
    """The VGG's conv stack, forward and backward, at the training shape."""
    torch.manual_seed(0)
    model = VGG(width=sz.time_width, backend=name).to(device)
    amp = device.type == "cuda"
    if amp:
        model = model.to(memory_format=torch.channels_last)
    x = torch.rand(sz.time_crops, 1, 40, 40, device=device)

    def step():
        with torch.autocast(device.type, dtype=F16, enabled=amp):
            out = model.features(x)
        out.float().sum().backward()

    return _time_ms(step, device, sz.time_reps)


# ---------------------------------------------------------------------------------- the run
_CHECKS = {"augment": check_augment, "block": check_block, "stack": check_stack}


def _guarded(fn, op, name, check):
    """Rows of ``fn()``; an exception is a failed row naming it."""
    try:
        out = fn()
        return out if isinstance(out, list) else [out]
    except Exception as exc:  # a backend that raises fails its check, the others go on
        return [_row(op, name, check, False, detail=f"{type(exc).__name__}: {exc}"[:500])]


@contextlib.contextmanager
def _without_tf32():
    """fp32 convolutions and matmuls in IEEE fp32 (TF32, cuDNN's default on recent GPUs, would
    put the fp32 reference itself ~1e-3 off); the caller's settings restored after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@_without_tf32()
def run(device: torch.device | str = "cpu", *, quick: bool = False, ops=OPS,
        only_backends=None, log=None) -> dict:
    """Run the checks and timings (in IEEE fp32: no TF32); returns the JSON-able result (see
    the module docstring). ``log(row)`` sees each row as it is made. A run without a single
    parity check fails."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    sz = sizes(device, quick)
    rows: list[dict] = []

    def emit(new):
        rows.extend(new)
        for r in new:
            log and log(r)

    kernel_ops = [op for op in ops if op != "precision"]
    skipped = [BF16_SKIPPED] if kernel_ops and BF16 not in sz.dtypes else []
    for op in kernel_ops:
        fast = [n for n in backends.available(op, device) if n != "eager"
                and (only_backends is None or n in only_backends)]
        for name in fast:
            emit(_guarded(lambda: _CHECKS[op](name, device, sz), op, name, "parity"))
            if op != "augment":  # interpreted backends train a narrower VGG on fewer crops
                train_sz = sz if device.type == "cuda" or name in backends.eligible(
                    op, device) else dataclasses.replace(sz, train_width=1 / 16, train_batch=2)
                emit(_guarded(lambda: check_train(op, name, device, train_sz), op, name,
                              "train"))
    if "precision" in ops and device.type == "cpu" and (only_backends is None
                                                        or "bf16" in only_backends):
        if devices.cpu_has_native_bf16():
            emit(_guarded(lambda: check_cpu_precision(device, sz), "precision", "bf16", "train"))
        else:
            skipped.append("precision: this CPU has no native bf16 (auto trains in fp32)")
    # time eager and every backend that passed and that "auto" may take here
    for op in kernel_ops:
        timed_op = "block" if op == "stack" else op
        names = [n for n in backends.eligible(op, device)
                 if all(r["passed"] for r in rows if r["op"] == op and r["backend"] == n)
                 and any(r["op"] == op and r["backend"] == n for r in rows)]
        if op != "stack":
            names = ["eager"] + [n for n in names if n != "eager"]
        base = next((r["time_ms"] for r in rows if r["op"] == timed_op
                     and r["backend"] == "eager" and r["check"] == "time"), None)
        for name in names:
            timer = time_augment if op == "augment" else time_model
            new = _guarded(lambda: _row(op, name, "time", True, time_ms=timer(name, device, sz)),
                           op, name, "time")
            for r in new:
                if r["time_ms"] is not None:
                    base = r["time_ms"] if name == "eager" else base
                    r["speedup"] = base / r["time_ms"] if base else None
            emit(new)
    checks = sum(r["check"] != "time" for r in rows)
    return {"device": str(device), "env": verdict.environment(device), "quick": quick,
            "rows": rows, "checks": checks,
            "passed": checks > 0 and all(r["passed"] for r in rows),
            "skipped": skipped}


def _fmt(value, spec) -> str:
    return "-" if value is None else format(value, spec)


_HEADER = ("op", "backend", "check", "result", "error", "tolerance", "margin", "time ms",
           "speed-up")
_WIDTHS = (9, 8, 22, 6, 9, 9, 7, 9, 8)


def format_header() -> str:
    head = "  ".join(h.ljust(w) for h, w in zip(_HEADER, _WIDTHS)).rstrip()
    return head + "\n" + "-" * len(head)


def format_row(r: dict) -> str:
    """One table line: error = max |fast - reference| / max |reference| of the worst tensor,
    margin = error / tolerance (a row passes at margin <= 1)."""
    result = "-" if r["check"] == "time" and r["passed"] else ("ok" if r["passed"] else "FAIL")
    cells = (r["op"], r["backend"], r["check"], result, _fmt(r["max_error"], ".2e"),
             _fmt(r["tolerance"], ".1e"), _fmt(r.get("margin"), ".2f"), _fmt(r["time_ms"], ".3f"),
             "-" if r["speedup"] is None else f"{r['speedup']:.2f}x")
    line = "  ".join(str(c).ljust(w) for c, w in zip(cells, _WIDTHS)).rstrip()
    return line + (f"\n    {r['detail']}" if r.get("detail") else "")


def format_footer(result: dict) -> str:
    """The outcome, what was not checked and why, and the decision of "auto" per op."""
    failed = sum(not r["passed"] for r in result["rows"])
    lines = [f"selfcheck on {result['device']}: " + (
        f"{result['checks']} checks, every backend passed" if result["passed"]
        else "no check ran" if not result["checks"] else f"{failed} check(s) FAILED")]
    lines += [f"not checked: {why}" for why in result.get("skipped", [])]
    lines += verdict.decisions(result, torch.device(result["device"]))
    return "\n".join(lines)


def format_table(result: dict) -> str:
    """The result as one table: the rows, the outcome, the decisions."""
    return "\n".join([format_header()] + [format_row(r) for r in result["rows"]]
                     + [format_footer(result)])


def _parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog="python -m fer_fast selfcheck", description=(
        "Verify every fast backend against the eager reference on this device, time those that "
        "passed, print one table; exit 1 if any parity check failed. A full run is stored as "
        "this machine's verdict, which backend='auto' decides by."))
    cli.add_device_arg(p)
    p.add_argument("--json", type=Path, help="also write the result as JSON to this file (default: none written)")
    p.add_argument("--quick", action="store_true",
                   help="fewer training steps and timing repetitions")
    p.add_argument("--op", action="append", choices=OPS,
                   help="check only this op (repeatable; a partial run is not stored) (default: every op)")
    p.add_argument("--backend", action="append",
                   help="check only this backend (repeatable; a partial run is not stored) (default: every "
                        "backend)")
    cli.add_debug_arg(p)
    return p


def interpreter_conflict() -> str | None:
    """Why the Triton interpreter cannot run here, or None: before Triton 3.7 it converts
    1-element arrays with ``int()``, which numpy 2.4 refuses."""
    import numpy
    import triton

    def major_minor(version):
        return tuple(int(p) for p in version.split(".")[:2])

    if major_minor(triton.__version__) < (3, 7) and major_minor(numpy.__version__) >= (2, 4):
        return (f"the Triton {triton.__version__} interpreter fails on numpy "
                f"{numpy.__version__}: install numpy<2.4 with triton<3.7")
    return None


@cli.command
def main(argv=None) -> int:
    if os.environ.get(_ABORT_ENV) == "1":
        os.abort()
    args = _parser().parse_args(argv)
    device = cli.resolve_device(args.device)
    ops = tuple(args.op or OPS)
    if args.backend:
        known = {n for op in ops for n in (_PRECISION_BACKENDS if op == "precision"
                                           else backends.names(op))} - {"eager"}
        unknown = sorted(set(args.backend) - known)
        if unknown:
            raise cli.UserError(f"--backend {', '.join(unknown)}: not a fast backend of "
                                f"{', '.join(ops)}; choose from {sorted(known)}")
    if device.type == "cpu" and interpreter_conflict():
        raise cli.UserError(interpreter_conflict())
    if device.type == "cpu" and not is_interpreter():
        # the Triton kernels are interpreted only when defined under TRITON_INTERPRET=1
        env = dict(os.environ, **{INTERPRETER_ENV: "1"})
        os.execve(sys.executable, [sys.executable, "-m", "fer_fast", "selfcheck", *argv], env)
    if args.json is not None and args.json.is_dir():
        raise cli.UserError(f"--json {args.json}: is a directory; give a file path")
    t0 = time.perf_counter()
    print(format_header(), flush=True)
    result = run(device, quick=args.quick, ops=ops,
                 only_backends=set(args.backend) if args.backend else None,
                 log=lambda row: print(format_row(row), flush=True))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(format_footer(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        files.write_text(args.json, json.dumps(result, indent=1) + "\n")
    if args.op is None and args.backend is None and not verdict.disabled():
        print(f"verdict stored: {verdict.save(device, result)}")
    print(f"selfcheck took {result['seconds']} s")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
