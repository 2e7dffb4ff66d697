"""``python -m fer_fast selfcheck [--device DEV] [--json PATH] [--quick]``: verify every fast
backend against the eager reference on this machine, then time the ones that passed.

Per op and backend available on the device (``fer_fast.backends.available``):

- ``augment``: the ten crops of random images with sampled parameters of both recipes, fp32 and
  fp16, within the written tolerance of the reference and with the identical zero pattern
  (geometric fill, erase boxes).
- ``block``: one conv+BN+ReLU(+pool) block at each of the VGG's eight layer shapes, both orders,
  training mode, fp32 and fp16: forward output, gradients of input, weight, bias, gamma, beta,
  and the running statistics.
- ``stack``: the VGG's whole conv stack at once (the same eight layers): output, input and
  parameter gradients, running statistics; fp16 under autocast, measured against the fp32
  reference within twice the error of eager autocast plus the tolerance.
- ``train``: each block / whole-stack backend trains a whole VGG a few SGD-Nesterov steps; the
  losses and every parameter and buffer stay within the ``convergence`` tolerance of eager.
- ``time``: each passing backend that "auto" may take here, and eager, at the training shape
  (augmentation of 64 images; the VGG's conv stack forward + backward on 640 crops, fp16
  autocast on CUDA). CUDA: CUDA events after warm-up; CPU: wall clock at reduced sizes.

On the CPU the Triton kernels run under ``TRITON_INTERPRET=1`` (the command sets it and
re-runs itself when needed) at reduced shapes (channel counts / 16, sides / 4, batch 1, the two
block orders on alternate layers) and only the backends "auto" may take there run training
steps; ``--quick`` means fewer training steps and timing repetitions.

The outcome is printed as one table and written as JSON (``--json``): ``{"device", "env"
(``fer_fast.verdict.environment``), "rows": [{"op", "backend", "check", "passed", "max_error",
"tolerance", "time_ms", "speedup", "detail"}], "passed"}``; a full run (no ``--op`` /
``--backend`` filter) is also stored as this machine's verdict (``fer_fast.verdict``), which
"auto" decides by. Exit status: 0 when every parity check passed, 1 when one failed.
:func:`ensure_verdict` runs the selfcheck in a child process when no verdict exists.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import backends, cli, files, verdict
from .augmentation import augment_ref, sample_params
from .block import ORDERS, conv_bn_act_ref
from .kernels import INTERPRETER_ENV, is_interpreter
from .model import VGG
from .tolerances import tolerance
from .verdict import ensure_verdict

__all__ = ["run", "main", "ensure_verdict", "interpreter_conflict", "sgd_losses", "VGG_LAYERS",
           "OPS"]

OPS = ("augment", "block", "stack")
#: (name, C_in, C_out, H = W, max-pool after) of the VGG's eight blocks
VGG_LAYERS = (("1a", 1, 64, 40, False), ("1b", 64, 64, 40, True), ("2a", 64, 128, 20, False),
              ("2b", 128, 128, 20, True), ("3a", 128, 256, 10, False),
              ("3b", 256, 256, 10, True), ("4a", 256, 512, 5, False), ("4b", 512, 512, 5, True))
F32, F16 = torch.float32, torch.float16
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
    stack_size: int  # conv-stack parity: crop side (16 or more: four 2x2 pools)
    train_width: float
    train_batch: int  # crops per training step
    train_steps: int
    time_images: int  # images per augmentation call timed
    time_crops: int  # crops per conv-stack step timed
    time_width: float
    time_reps: int


def sizes(device: torch.device, quick: bool) -> Sizes:
    if device.type == "cuda":
        return Sizes(augment_batch=16, block_batch=8, channel_div=1, spatial_div=1,
                     both_orders=True, stack_width=1.0, stack_batch=8, stack_size=40,
                     train_width=1.0, train_batch=640, train_steps=3 if quick else 6,
                     time_images=64, time_crops=640, time_width=1.0,
                     time_reps=10 if quick else 30)
    return Sizes(augment_batch=1, block_batch=1, channel_div=16, spatial_div=4,
                 both_orders=False, stack_width=1 / 32, stack_batch=1,
                 stack_size=16, train_width=1 / 32, train_batch=1, train_steps=2,
                 time_images=16, time_crops=32, time_width=0.125, time_reps=2 if quick else 5)


def _row(op, backend, check, passed, max_error=None, tol=None, time_ms=None, speedup=None,
         detail=None) -> dict:
    return {"op": op, "backend": backend, "check": check, "passed": bool(passed),
            "max_error": None if max_error is None else float(max_error),
            "tolerance": tol, "time_ms": time_ms, "speedup": speedup, "detail": detail}


def _tol_text(tol: dict) -> str:
    return f"atol {tol['atol']:g} rtol {tol['rtol']:g}"


class _Worst:
    """Largest absolute error over several tensors, and whether all were within tolerance."""

    def __init__(self):
        self.error, self.ok, self.where = 0.0, True, None

    def add(self, got, want, *, atol, rtol, name=""):
        got, want = got.detach().float(), want.detach().float()
        diff = (got - want).abs()
        error = diff.max().item() if diff.numel() else 0.0
        bad = ~torch.isclose(got, want, atol=atol, rtol=rtol, equal_nan=True)
        if bad.any() and self.ok:
            self.ok, self.where = False, name
        if not error <= self.error:  # NaN counts as the worst
            self.error = error

    def bound(self, error, limit, name=""):
        """A scalar error against its own limit (the autocast criterion of the conv stack)."""
        if not error <= limit and self.ok:
            self.ok, self.where = False, name
        if not error <= self.error:
            self.error = error


# ---------------------------------------------------------------------------------- augment
def check_augment(name, device, sz: Sizes) -> list[dict]:
    fn = backends.resolve("augment", name, device)
    rows = []
    for dtype in (F32, F16):
        tol = tolerance("augment", dtype)
        worst, zeros = _Worst(), True
        for seed, recipe in enumerate(("released", "paper")):
            gen = torch.Generator(device=device).manual_seed(seed)
            params = sample_params(recipe, sz.augment_batch, gen)
            images = torch.randint(0, 256, (sz.augment_batch, 48, 48), dtype=torch.uint8,
                                   generator=gen, device=device)
            out, ref = fn(images, params, dtype), augment_ref(images, params, dtype)
            worst.add(out, ref, **tol, name=recipe)
            zeros &= torch.equal(out == 0, ref == 0)
        detail = None if zeros else "zero pattern (fill / erase) differs"
        rows.append(_row("augment", name, f"parity {_dtype_name(dtype)}", worst.ok and zeros,
                         worst.error, _tol_text(tol) + ", same zeros", detail=detail))
    return rows


def _dtype_name(dtype) -> str:
    return {F32: "fp32", F16: "fp16"}[dtype]


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


def _block_run(fn, x, params, stats, *, order, pool, seed):
    x = x.detach().clone().requires_grad_(True)
    params = [p.detach().clone().requires_grad_(True) for p in params]
    stats = [s.clone() for s in stats]
    out = fn(x, *params, *stats, training=True, momentum=0.1, eps=1e-5, order=order, pool=pool)
    gen = torch.Generator().manual_seed(seed)
    dout = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
    return out, torch.autograd.grad(out, [x, *params], dout), stats


def check_block(name, device, sz: Sizes) -> list[dict]:
    fn = backends.resolve("block", name, device)
    rows = []
    for dtype in (F32, F16):
        fwd, bwd, stats_err = _Worst(), _Worst(), _Worst()
        tf, tb, ts = (tolerance(k, dtype) for k in ("block_forward", "block_backward",
                                                      "running_stats"))
        for k, (layer, cin, cout, hw, pool) in enumerate(VGG_LAYERS):
            cin, cout = max(1, cin // sz.channel_div), max(1, cout // sz.channel_div)
            hw = max(2, hw // sz.spatial_div)
            orders = ORDERS if sz.both_orders else (ORDERS[k % 2],)
            for order in orders:
                x, params, stats = _block_inputs(sz.block_batch, cin, cout, hw, dtype, device,
                                                 seed=k)
                got = _block_run(fn, x, params, stats, order=order, pool=pool, seed=k)
                want = _block_run(conv_bn_act_ref, x, params, stats, order=order, pool=pool,
                                  seed=k)
                where = f"{layer} {order}"
                fwd.add(got[0], want[0], **tf, name=where)
                for gname, g, r in zip(("x", "weight", "bias", "gamma", "beta"), got[1], want[1]):
                    atol = tb["atol"]
                    if gname == "bias" and order == "bn_relu":
                        # conv -> training BN: exactly 0 in exact arithmetic, rounding noise of
                        # sums of ~|dW| in both: measured against the weight gradient's scale
                        atol *= max(1.0, want[1][1].abs().max().item())
                    bwd.add(g, r, atol=atol, rtol=tb["rtol"], name=f"{where} d{gname}")
                for g, r in zip(got[2], want[2]):
                    stats_err.add(g, r, **ts, name=where)
        d = _dtype_name(dtype)
        for check, worst, tol in ((f"forward {d}", fwd, tf), (f"gradients {d}", bwd, tb),
                                  (f"running stats {d}", stats_err, ts)):
            rows.append(_row("block", name, check, worst.ok, worst.error, _tol_text(tol),
                             detail=None if worst.ok else f"first failure: {worst.where}"))
    return rows


# ------------------------------------------------------------------------------------ stack
def _stack_pass(model, x, grad, amp):
    x = x.clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=F16, enabled=amp):
        out = model.features(x)
    out.backward(grad.to(out.dtype))
    return out, x.grad


def check_stack(name, device, sz: Sizes) -> list[dict]:
    """The whole conv stack vs the eager fp32 VGG; fp16: autocast, error within twice eager
    autocast's own error plus the tolerance (times the reference's largest magnitude: through
    eight BatchNorms the gradients reach the hundreds)."""
    rows = []
    for dtype in (F32, F16):
        half = dtype == F16
        torch.manual_seed(0)
        ref = VGG("released", width=sz.stack_width, dropout=0.0).to(device)
        fast = copy.deepcopy(ref)
        fast.backend = name
        amp_ref = copy.deepcopy(ref) if half else None
        gen = torch.Generator().manual_seed(5)
        x = torch.rand(sz.stack_batch, 1, sz.stack_size, sz.stack_size,
                       generator=gen).to(device)
        side = sz.stack_size // 16
        grad = torch.randn(sz.stack_batch, ref.conv4b.out_channels, side, side,
                           generator=gen).to(device)
        want = _stack_pass(ref, x, grad, False)
        got = _stack_pass(fast, x, grad, half)
        eager_amp = _stack_pass(amp_ref, x, grad, True) if half else None
        tf, tb, ts = (tolerance(k, dtype) for k in ("block_forward", "block_backward",
                                                      "running_stats"))
        fwd, bwd, stats_err = _Worst(), _Worst(), _Worst()

        def compare(worst, g, r, a, tol, what, scale_of=None):
            scale = max(1.0, (r if scale_of is None else scale_of).abs().max().item())
            if a is None:
                worst.add(g, r, atol=tol["atol"] * scale, rtol=tol["rtol"], name=what)
            else:
                err = (g.float() - r.float()).abs().max().item()
                bound = 2 * (a.float() - r.float()).abs().max().item() + tol["atol"] * scale
                worst.bound(err, bound, what)

        compare(fwd, got[0], want[0], eager_amp[0] if half else None, tf, "output")
        compare(bwd, got[1], want[1], eager_amp[1] if half else None, tb, "input gradient")
        p_ref, p_fast = dict(ref.named_parameters()), dict(fast.named_parameters())
        p_amp = dict(amp_ref.named_parameters()) if half else {}
        for pname, p in p_ref.items():
            if not pname.startswith(("conv", "bn")):
                continue
            # conv -> training BN: the conv bias's gradient is exactly 0 in exact arithmetic,
            # rounding noise of sums of ~|dW| in both: measured against the weight's scale
            scale_of = p_ref[pname.replace("bias", "weight")].grad if (
                pname.startswith("conv") and pname.endswith("bias")) else None
            compare(bwd, p_fast[pname].grad, p.grad, p_amp[pname].grad if half else None, tb,
                    f"d{pname}", scale_of)
        for (bname, b_ref), b in zip(ref.named_buffers(), fast.buffers()):
            stats_err.add(b, b_ref, **ts, name=bname)
        d = _dtype_name(dtype)
        how = " x max|ref|" + (" + 2x eager amp error" if half else "")  # see the docstring
        for check, worst, tol in ((f"forward {d}", fwd, tf), (f"gradients {d}", bwd, tb),
                                  (f"running stats {d}", stats_err, ts)):
            rows.append(_row("stack", name, check, worst.ok, worst.error,
                             _tol_text(tol) + (how if check != f"running stats {d}" else ""),
                             detail=None if worst.ok else f"first failure: {worst.where}"))
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
    """A few training steps of a whole VGG with backend ``name`` vs eager: losses, parameters
    and buffers within the ``convergence`` tolerance (fp16 autocast + GradScaler on CUDA)."""
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
    tol = tolerance("convergence", dtype)
    worst = _Worst()
    worst.add(sgd_losses(fast, images, labels, amp), sgd_losses(eager, images, labels, amp), **tol,
              name="loss")
    for (pname, a), (_, b) in zip(fast.state_dict().items(), eager.state_dict().items()):
        worst.add(a, b, **tol, name=pname)
    return _row(op, name, f"train {sz.train_steps} steps {_dtype_name(dtype)}", worst.ok,
                worst.error, _tol_text(tol),
                detail=None if worst.ok else f"first failure: {worst.where}")


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


def run(device: torch.device | str = "cpu", *, quick: bool = False, ops=OPS,
        only_backends=None, log=None) -> dict:
    """Run the checks and timings; returns the JSON-able result (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    sz = sizes(device, quick)
    rows: list[dict] = []

    clock = [time.perf_counter()]

    def emit(new):
        rows.extend(new)
        now = time.perf_counter()
        if log:
            for r in new:
                log(f"{_format_row(r)}  [{now - clock[0]:.1f} s]")
        clock[0] = now

    for op in ops:
        fast = [n for n in backends.available(op, device) if n != "eager"
                and (only_backends is None or n in only_backends)]
        for name in fast:
            emit(_guarded(lambda: _CHECKS[op](name, device, sz), op, name, "parity"))
            # CPU: the training steps only of backends "auto" may take there (the interpreted
            # ones train in tests/test_convergence.py)
            if op != "augment" and (device.type == "cuda"
                                    or name in backends.eligible(op, device)):
                emit(_guarded(lambda: check_train(op, name, device, sz), op, name, "train"))
    # time eager and every backend that passed and that "auto" may take here
    for op in ops:
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
    passed = all(r["passed"] for r in rows)
    return {"device": str(device), "env": verdict.environment(device), "quick": quick,
            "rows": rows, "passed": passed}


def _fmt(value, spec) -> str:
    return "-" if value is None else format(value, spec)


_HEADER = ("op", "backend", "check", "parity", "max error", "tolerance", "time ms", "speed-up")
_WIDTHS = (8, 8, 20, 6, 10, 54, 10, 8)


def _format_row(r: dict) -> str:
    parity = "-" if r["check"] == "time" and r["passed"] else ("ok" if r["passed"] else "FAIL")
    cells = (r["op"], r["backend"], r["check"], parity, _fmt(r["max_error"], ".3g"),
             r["tolerance"] or "-", _fmt(r["time_ms"], ".3f"),
             "-" if r["speedup"] is None else f"{r['speedup']:.2f}x")
    line = "  ".join(str(c).ljust(w) for c, w in zip(cells, _WIDTHS)).rstrip()
    return line + (f"\n    {r['detail']}" if r.get("detail") and not r["passed"] else "")


def format_table(result: dict) -> str:
    """The result as one table (the rows, then the outcome)."""
    head = "  ".join(h.ljust(w) for h, w in zip(_HEADER, _WIDTHS)).rstrip()
    lines = [head, "-" * len(head)] + [_format_row(r) for r in result["rows"]]
    failed = sum(not r["passed"] for r in result["rows"])
    lines.append(f"selfcheck on {result['device']}: " + (
        "every backend passed" if result["passed"] else f"{failed} check(s) FAILED"))
    return "\n".join(lines)


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
    if device.type == "cpu" and interpreter_conflict():
        raise cli.UserError(interpreter_conflict())
    if device.type == "cpu" and not is_interpreter():
        # the Triton kernels are interpreted only when defined under TRITON_INTERPRET=1
        env = dict(os.environ, **{INTERPRETER_ENV: "1"})
        os.execve(sys.executable, [sys.executable, "-m", "fer_fast", "selfcheck", *argv], env)
    if args.json is not None and args.json.is_dir():
        raise cli.UserError(f"--json {args.json}: is a directory; give a file path")
    t0 = time.perf_counter()
    result = run(device, quick=args.quick, ops=tuple(args.op or OPS),
                 only_backends=set(args.backend) if args.backend else None,
                 log=lambda line: print(f"selfcheck: {line}", file=sys.stderr, flush=True))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(format_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        files.write_text(args.json, json.dumps(result, indent=1) + "\n")
    if args.op is None and args.backend is None and not verdict.disabled():
        print(f"verdict stored: {verdict.save(device, result)}")
    print(f"selfcheck took {result['seconds']} s")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
