"""The full training step as ``fer_fast.train`` runs it (``TrainStep``): uint8 images ->
augmentation -> forward -> loss -> scaled backward -> SGD-Nesterov step.

Providers ``<model>+<augmentation>`` (see ``harness.step_providers``): ``authors`` (torchvision/PIL
pipeline in a DataLoader feeding the eager model's step), ``eager+eager`` (device-resident data,
eager augmentation, channels_last, AMP, cudnn.benchmark), ``eager+<best>`` and ``compile+<best>``
(the same with the fastest augmentation backend; torch.compile max-autotune on a GPU), and every
other registered model backend. GPU: 64 images x 10 crops at width 1, fp16 autocast + GradScaler.
CPU: width 0.125, fp32, few rounds.
"""
from __future__ import annotations

import pytest

import harness


@pytest.mark.parametrize("provider", harness.step_providers(harness.bench_device()))
def test_train_step(benchmark, provider, device, quick, matmul_peak, pytestconfig):
    model_name = provider.partition("+")[0]
    if model_name == "authors" and harness.torchvision_or_none() is None:
        pytest.skip("torchvision is not installed (or does not load with this torch): the "
                    "authors' pipeline cannot run")
    compile_mode = pytestconfig.getoption("--bench-compile-mode")
    if model_name == "compile":
        if device.type == "cpu" and not pytestconfig.getoption("--bench-compile-cpu"):
            pytest.skip("torch.compile on a CPU: the first step takes minutes (docs/notes.md; "
                        "--bench-compile-cpu runs it)")
        if compile_mode is None and device.type == "cuda":
            compile_mode = "max-autotune"
    sizes = harness.sizes_for(device, quick)
    step = harness.make_train_step(provider, device, sizes, compile_mode=compile_mode)
    step()  # first step outside the warm-up count: compilation, autotuning, cuDNN plans
    harness.reset_peak_memory(device)
    benchmark.group = "train-step"
    benchmark.pedantic(step, rounds=sizes.step_rounds, warmup_rounds=sizes.warmup)
    harness.record(benchmark, items=sizes.step_images, item="images",
                   flops=sizes.step_images * harness.train_flops_per_image(sizes.step_width),
                   peak_flops=matmul_peak["flops_per_s"], provider=provider,
                   width=sizes.step_width, crops_per_step=sizes.step_images * 10,
                   peak_mem_mb=harness.peak_memory_mb(device),
                   compile_mode=compile_mode if model_name == "compile" else None)
