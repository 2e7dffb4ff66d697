"""The 3x3 convolution alone, per VGG layer shape and pass (forward, data gradient, weight gradient):
the library convolution (``torch``: cuDNN on a GPU with channels_last fp16 and cudnn.benchmark,
oneDNN on a CPU in fp32) against the implicit-GEMM Triton kernels of ``fer_fast.kernels.conv``
(GPU only): ``triton`` the bare conv, ``triton_fused`` as the "triton" features backend runs it
(forward: previous block's BN affine + ReLU, and at a stage start its 2x2 max-pool, applied
while loading; batch statistics, BN coefficients and running statistics in the epilogue; data
gradient: this block's BN backward while loading, the previous block's pool / ReLU backward and
BN-gradient partials in the epilogue; weight gradient: both prologues). extra_info: TFLOP/s and
the fraction of the measured matmul peak.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import harness

PASSES = ("fwd", "dgrad", "wgrad")
PROVIDERS = ("torch", "triton", "triton_fused")


def _torch_pass(name, x, w, b, dy):
    if name == "fwd":
        return lambda: F.conv2d(x, w, b, padding=1)
    mask = [True, False, False] if name == "dgrad" else [False, True, True]
    return lambda: torch.ops.aten.convolution_backward(
        dy, x, w, [w.shape[0]], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)


def _triton_pass(name, x, w, b, dy, fused=False, pool=False):
    try:
        from fer_fast.kernels import conv as K
        fwd, dgrad, wgrad = K.conv3x3, K.conv3x3_dgrad, K.conv3x3_wgrad
        pack, pack_dgrad = K.pack_weight, K.pack_weight_dgrad
    except (ImportError, AttributeError) as err:
        pytest.skip(f"fer_fast.kernels.conv does not provide the implicit-GEMM conv ({err})")
    x_nhwc, dy_nhwc = x.permute(0, 2, 3, 1), dy.permute(0, 2, 3, 1)  # channels_last: contiguous
    fusion, grad_fusion, boundary = {}, {}, {}
    if fused:
        cin, cout, dev = x.shape[1], dy.shape[1], x.device
        scale, shift = torch.rand(cin, device=dev) + 0.5, torch.randn(cin, device=dev)
        fusion = dict(pool=pool)  # the released block order (relu_first False)
        # this block's BN backward formed while loading dy (from dz and the stored conv output)
        grad_fusion = dict(bn=(torch.randn_like(dy_nhwc), torch.randn(4, cout, device=dev)))
        if cin > 1:  # the previous block's BN + ReLU while loading x, and its pool / ReLU / BN
            fusion.update(scale=scale, shift=shift)  # partials in the data gradient's epilogue
            coef = torch.stack([torch.randn(cin, device=dev), scale, scale, shift])
            boundary = dict(prev=(x_nhwc, coef), pool=pool)
    if name == "fwd":
        wp = pack(w, x.dtype)
        cout = w.shape[0]
        bn = None
        if fused:  # batch statistics -> coefficients + running statistics in the epilogue
            ones = torch.ones(cout, device=x.device)
            bn = K.BatchNormArgs(ones, torch.zeros_like(ones), torch.zeros_like(ones), ones.clone())
        return lambda: fwd(x_nhwc, wp, b, bn=bn, **fusion)
    if name == "dgrad":
        wd = pack_dgrad(w, x.dtype)
        return lambda: dgrad(dy_nhwc, wd, **grad_fusion, **boundary)
    return lambda: wgrad(x_nhwc, dy_nhwc, **fusion, **grad_fusion)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("layer", harness.VGG_LAYERS, ids=[l[0] for l in harness.VGG_LAYERS])
def test_conv(benchmark, layer, pass_, provider, device, quick, flusher, matmul_peak):
    if provider != "torch" and device.type != "cuda":
        pytest.skip("Triton conv kernels: GPU only here (the interpreter measures Python)")
    label, cin, cout, hw, _ = layer
    index = harness.VGG_LAYERS.index(layer)
    pool_in = provider == "triton_fused" and index > 0 and harness.VGG_LAYERS[index - 1][4]
    sizes = harness.sizes_for(device, quick)
    n, cuda = sizes.block_batch, device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    gen = torch.Generator(device=device).manual_seed(3)

    def randn(*shape, scale=1.0):
        t = scale * torch.randn(*shape, device=device, generator=gen)
        return t.to(dtype).contiguous(memory_format=torch.channels_last) if len(shape) == 4 \
            else t.to(dtype)

    x, dy = randn(n, cin, *(2 * [2 * hw if pool_in else hw])), randn(n, cout, hw, hw)
    w, b = randn(cout, cin, 3, 3, scale=(cin * 9) ** -0.5), randn(cout, scale=0.1)
    torch.backends.cudnn.benchmark = True
    if provider == "torch":
        op = _torch_pass(pass_, x, w, b, dy)
    else:
        op = _triton_pass(pass_, x, w, b, dy, fused=provider == "triton_fused", pool=pool_in)

    def run():
        out = op()
        harness.sync(device)
        return out

    outs = run()
    outs = outs if isinstance(outs, tuple) else (outs,)
    assert all(torch.isfinite(t).all() for t in outs if isinstance(t, torch.Tensor))
    benchmark.group = f"conv-{label}-{pass_}"
    benchmark.pedantic(run, setup=flusher if cuda else None, rounds=sizes.block_rounds,
                       warmup_rounds=sizes.warmup)
    device_ms = (harness.event_median_ms(op, flusher, sizes.events_repeats)
                 if cuda and sizes.events_repeats else None)
    harness.record(benchmark, items=n, item="crops", flops=harness.conv_flops(n, cin, cout, hw),
                   peak_flops=matmul_peak["flops_per_s"], layer=label, conv_pass=pass_,
                   backend=provider, shape=[n, cin, cout, hw], device_ms=device_ms)
