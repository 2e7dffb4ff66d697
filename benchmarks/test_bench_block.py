"""One VGG block (conv3x3 + BatchNorm + ReLU [+ 2x2 max-pool]), forward + backward, per layer shape
and per registered block backend.

GPU: batch 640 (one step's crops), channels_last, fp16 autocast as in training, L2 flushed before
every round; extra_info holds the CUDA-event device time too. CPU: a small batch in fp32.
FLOPs count the convolution only (forward, data and weight gradient: 3 x forward).
"""
from __future__ import annotations

import pytest
import torch

import harness
from fer_fast import backends
from fer_fast.block import RECIPE_ORDER


def _cases():
    device = harness.bench_device()
    return [pytest.param(layer, name, id=f"{layer[0]}-{name}")
            for layer in harness.VGG_LAYERS for name in backends.available("block", device)]


@pytest.mark.parametrize("layer, name", _cases())
def test_block(benchmark, layer, name, device, quick, flusher, matmul_peak):
    label, cin, cout, hw, pool = layer
    sizes = harness.sizes_for(device, quick)
    n, cuda = sizes.block_batch, device.type == "cuda"
    fn = backends.resolve("block", name, device)
    gen = torch.Generator(device=device).manual_seed(2)
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1).to(device)
    x = torch.randn(n, cin, hw, hw, device=device, generator=gen)
    x = x.to(torch.float16 if cuda else torch.float32).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    weight = conv.weight.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    bias = conv.bias.detach().clone().requires_grad_(True)
    gamma = (1 + 0.1 * torch.randn(cout, device=device, generator=gen)).requires_grad_(True)
    beta = (0.1 * torch.randn(cout, device=device, generator=gen)).requires_grad_(True)
    running_mean = torch.zeros(cout, device=device)
    running_var = torch.ones(cout, device=device)
    out_hw = hw // 2 if pool else hw
    grad_out = torch.randn(n, cout, out_hw, out_hw, device=device, generator=gen).to(x.dtype)
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    inputs = (x, weight, bias, gamma, beta)
    torch.backends.cudnn.benchmark = True

    def work():
        with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            y = fn(x, weight, bias, gamma, beta, running_mean, running_var, training=True,
                   momentum=0.1, eps=1e-5, order=RECIPE_ORDER["released"], pool=pool)
        return y, torch.autograd.grad(y, inputs, grad_out.to(y.dtype))

    def fwd_bwd():
        result = work()
        harness.sync(device)
        return result

    y, grads = fwd_bwd()
    assert y.shape == grad_out.shape and all(torch.isfinite(g).all() for g in grads)
    benchmark.group = f"block-{label}"
    harness.reset_peak_memory(device)
    benchmark.pedantic(fwd_bwd, setup=flusher if cuda else None, rounds=sizes.block_rounds,
                       warmup_rounds=sizes.warmup)
    device_ms = (harness.event_median_ms(work, flusher, sizes.events_repeats)
                 if cuda and sizes.events_repeats else None)
    harness.record(benchmark, items=n, item="crops",
                   flops=3 * harness.conv_flops(n, cin, cout, hw),
                   peak_flops=matmul_peak["flops_per_s"], layer=label, backend=name,
                   shape=[n, cin, cout, hw], pool=pool, peak_mem_mb=harness.peak_memory_mb(device),
                   device_ms=device_ms)
