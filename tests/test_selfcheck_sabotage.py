"""The selfcheck has teeth: small deliberate defects, one at a time, each of a kind the selfcheck
must catch (forward values, each gradient, batch and running statistics, eval mode, fp16-only
paths, the native C++ kernel), fail the right row, and "auto" then refuses the backend.

A defect is applied by wrapping the registered backend function (its inputs, outputs or
gradients perturbed as the broken kernel would); only the op, backend and dtype the defect lives
in are checked, at the selfcheck's CPU sizes.
"""
import dataclasses
import types

import pytest
import torch

from fer_fast import backends, selfcheck, verdict

CPU = torch.device("cpu")
F32, F16 = torch.float32, torch.float16


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times ``factor`` (a broken gradient kernel)."""

    @staticmethod
    def forward(ctx, t, factor):
        ctx.factor = factor
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


# --- the defects: each takes the backend's function and returns the broken one ----------------
def interpolation_weight(fn):
    """0.1 % of each bilinear weight moved to the next pixel."""
    def broken(images, params, dtype):
        out = fn(images, params, dtype)
        return (0.999 * out.float() + 0.001 * out.float().roll(1, dims=-1)).to(out.dtype)
    return broken


def erase_box_wider(fn):
    """Every erase box one column wider."""
    def broken(images, params, dtype):
        erase = params.erase.clone()
        inside = (erase[..., 3] > 0) & (erase[..., 1] + erase[..., 3] < 40)
        erase[..., 3] += inside.to(erase.dtype)
        return fn(images, type(params)(params.geom, erase), dtype)
    return broken


def native_one_pixel_shift(fn):
    """The native kernel's crops one pixel to the right."""
    def broken(images, params, dtype):
        return fn(images, params, dtype).roll(1, dims=-1)
    return broken


def biased_running_variance(fn):
    """The running variance updated with the biased batch variance."""
    def broken(x, weight, bias, gamma, beta, mean, var, *, training, momentum, **kw):
        old = var.clone()
        out = fn(x, weight, bias, gamma, beta, mean, var, training=training, momentum=momentum,
                 **kw)
        if training:
            n = x.shape[0] * x.shape[2] * x.shape[3]
            var.copy_((var - (1 - momentum) * old) * (n - 1) / n + (1 - momentum) * old)
        return out
    return broken


def batch_variance_plus(fn):
    """Training normalises by the batch variance + 1e-3."""
    def broken(*args, training, eps, **kw):
        return fn(*args, training=training, eps=eps + (1e-3 if training else 0.0), **kw)
    return broken


def eval_running_mean(fn):
    """Eval mode normalises with the running mean x 1.02."""
    def broken(x, weight, bias, gamma, beta, mean, var, *, training, **kw):
        if not training:
            mean = mean * 1.02
        return fn(x, weight, bias, gamma, beta, mean, var, training=training, **kw)
    return broken


def eval_batch_statistics(fn):
    """Eval mode normalises with the batch statistics instead of the running ones."""
    def broken(x, weight, bias, gamma, beta, mean, var, *, training, **kw):
        if not training:
            mean, var = mean.clone(), var.clone()  # (the running statistics stay untouched)
        return fn(x, weight, bias, gamma, beta, mean, var, training=True, **kw)
    return broken


def conv_epilogue(fn):
    """The convolution's output x 1.001."""
    def broken(x, weight, bias, *args, **kw):
        return fn(x, weight * 1.001, bias * 1.001, *args, **kw)
    return broken


def weight_gradient(fn):
    """The conv weight's gradient x 1.001."""
    def broken(x, weight, *args, **kw):
        return fn(x, _ScaleGrad.apply(weight, 1.001), *args, **kw)
    return broken


def eval_running_variance(fn):
    """The whole stack's eval mode normalises with the running variance x 1.05."""
    def broken(x, convs, bns, pools, **kw):
        if bns[0].training:
            return fn(x, convs, bns, pools, **kw)
        saved = [b.running_var.clone() for b in bns]
        for b in bns:
            b.running_var.mul_(1.05)
        try:
            return fn(x, convs, bns, pools, **kw)
        finally:
            for b, v in zip(bns, saved):
                b.running_var.copy_(v)
    return broken


def fp16_first_layer_gradient(fn):
    """Under fp16 autocast only: the first conv's weight gradient negated."""
    def broken(x, convs, bns, pools, **kw):
        if torch.is_autocast_enabled(x.device.type):
            first = convs[0]
            convs = [types.SimpleNamespace(
                weight=_ScaleGrad.apply(first.weight, -1.0), bias=first.bias,
                kernel_size=first.kernel_size, padding=first.padding, stride=first.stride),
                *convs[1:]]
        return fn(x, convs, bns, pools, **kw)
    return broken


SABOTAGE = [  # (defect, op, backend, dtype checked, the row that must fail)
    (interpolation_weight, "augment", "triton", F32, "parity fp32"),
    (erase_box_wider, "augment", "triton", F16, "parity fp16"),
    (native_one_pixel_shift, "augment", "native", F32, "parity fp32"),
    (biased_running_variance, "block", "fused", F32, "running stats fp32"),
    (batch_variance_plus, "block", "fused", F32, "forward fp32"),
    (eval_running_mean, "block", "fused", F32, "eval fp32"),
    (eval_batch_statistics, "block", "fused", F32, "eval fp32"),
    (conv_epilogue, "block", "fused", F32, "running stats fp32"),
    (weight_gradient, "block", "fused", F32, "gradients fp32"),
    (eval_running_variance, "stack", "triton", F32, "eval fp32"),
    (fp16_first_layer_gradient, "stack", "triton", F16, "gradients fp16"),
]


def _break(monkeypatch, op, name, defect):
    real = backends._REGISTRY[op][name]
    monkeypatch.setitem(backends._REGISTRY[op], name, dataclasses.replace(real, fn=defect(real.fn)))


@pytest.mark.parametrize("defect, op, name, dtype, row", SABOTAGE,
                         ids=[s[0].__name__ for s in SABOTAGE])
def test_a_small_defect_fails_its_row_and_auto_refuses_the_backend(verdict_cache, monkeypatch,
                                                                   defect, op, name, dtype, row):
    if name not in backends.available(op, CPU):
        pytest.skip(reason=f"{op} backend {name!r} does not run here")
    _break(monkeypatch, op, name, defect)
    # the stack at its smallest input (16x16, half the interpreter's time): only the broken
    # row is asserted here, the clean rows at the selfcheck's shape below
    sz = dataclasses.replace(selfcheck.sizes(CPU, quick=True), dtypes=(dtype,), stack_size=16)
    rows = selfcheck._CHECKS[op](name, CPU, sz)
    failed = {r["check"] for r in rows if not r["passed"]}
    assert row in failed, selfcheck.format_table({"device": "cpu", "rows": rows, "checks": 1,
                                                  "passed": False})
    verdict.save(CPU, {"device": "cpu", "env": verdict.environment(CPU), "rows": rows,
                       "passed": False})
    assert name not in verdict.auto_order(op, CPU, [name, "eager"])


@pytest.mark.parametrize("op, name, dtypes", [("augment", "triton", (F32, F16)),
                                              ("augment", "native", (F32, F16)),
                                              ("block", "fused", (F32, F16)),
                                              ("stack", "triton", (F32,))])
def test_without_a_defect_every_row_passes(op, name, dtypes):
    """The same checks on the real backends pass (the tolerances are not below their error)."""
    if name not in backends.available(op, CPU):
        pytest.skip(reason=f"{op} backend {name!r} does not run here")
    sz = dataclasses.replace(selfcheck.sizes(CPU, quick=True), dtypes=dtypes)
    rows = selfcheck._CHECKS[op](name, CPU, sz)
    assert rows and all(r["passed"] and r["margin"] <= 1 for r in rows), \
        selfcheck.format_table({"device": "cpu", "rows": rows, "checks": 1, "passed": False})


def test_the_command_exits_1_on_the_failed_row(verdict_cache, monkeypatch, capsys):
    if "native" not in backends.available("augment", CPU):
        pytest.skip(reason="the native extension is not built")
    _break(monkeypatch, "augment", "native", native_one_pixel_shift)
    code = selfcheck.main(["--device", "cpu", "--quick", "--op", "augment", "--backend", "native"])
    out = capsys.readouterr().out
    assert code == 1
    (line,) = [ln for ln in out.splitlines() if ln.startswith("augment") and "parity fp32" in ln]
    assert "FAIL" in line and "native" in line
    assert "auto augment: eager" in out and "native failed parity fp32" in out


def test_a_broken_bf16_cpu_training_path_is_refused(verdict_cache, monkeypatch):
    """The CPU training path in bf16 with the loss taken against the wrong class: its row
    fails and ``--precision auto`` trains in fp32."""
    from fer_fast import devices, step
    if not devices.cpu_has_native_bf16():
        pytest.skip(reason="this CPU has no native bf16: the path is not checked")
    real = step.F.cross_entropy

    def wrong_class(logits, labels, **options):
        if torch.is_autocast_enabled("cpu"):
            labels = (labels + 1) % logits.shape[1]
        return real(logits, labels, **options)

    monkeypatch.setattr(step, "F", types.SimpleNamespace(cross_entropy=wrong_class))
    rows = selfcheck.check_cpu_precision(CPU, selfcheck.sizes(CPU, quick=True))
    assert [r["check"] for r in rows if not r["passed"]] == ["train 2 steps vs fp32"]
    verdict.save(CPU, {"device": "cpu", "env": verdict.environment(CPU), "rows": rows,
                       "passed": False})
    assert verdict.cpu_precision() == "fp32"
    assert step.resolve_precision("auto", CPU) == "fp32"
