"""Shared pieces of the benchmarks: sizes per device, FLOP counts, timing, the providers.

Imported by the ``test_bench_*.py`` modules (pytest puts this folder on ``sys.path``) and by
``report.py`` (the backends of the device check's training runs). Nothing here depends on pytest.

Timing model: pytest-benchmark's wall clock around a callable that ends with
``torch.cuda.synchronize()`` on a GPU, so every round is the time until the device finished.
Per-op GPU benchmarks also report the device time of the op alone, from CUDA events, with the
L2 cache flushed before each repeat (their inputs fit in the 50 MB L2 of an H100).
"""
from __future__ import annotations

import contextlib
import itertools
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from fer_fast import backends
from fer_fast.augmentation import CROP_SIZE, NUM_CROPS
from fer_fast.config import Config
from fer_fast.data import Split
from fer_fast.loader import DeviceLoader
from fer_fast.model import BLOCKS, stage_channels
from fer_fast.step import TrainStep, make_model, make_optimizer, make_scaler, resolve_precision

#: (name, C_in, C_out, H = W, max-pool after) of the eight conv blocks at width 1.
VGG_LAYERS = tuple(
    (name, cin, cout, hw, pool)
    for (name, _, pool), cin, cout, hw in zip(
        BLOCKS, (1, 64, 64, 128, 128, 256, 256, 512), (64, 64, 128, 128, 256, 256, 512, 512),
        (40, 40, 20, 20, 10, 10, 5, 5)))
IMAGES_PER_STEP = 64
L2_FLUSH_BYTES = 256 * 1024 * 1024


# ----------------------------------------------------------------------------------------------
# Sizes: real on a GPU, small on a CPU, tiny with --bench-quick (CI run of the device check)
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sizes:
    """Problem sizes and repeat counts of one benchmark session."""

    augment_batch: int      # images per augmentation call
    augment_rounds: int
    block_batch: int        # crops per block call
    block_rounds: int
    step_images: int        # images per training step (x10 crops)
    step_width: float       # VGG width of the training step
    step_rounds: int
    warmup: int             # warm-up rounds before every timed series
    events_repeats: int     # CUDA-event repeats of per-op GPU benchmarks


def sizes_for(device: torch.device, quick: bool = False) -> Sizes:
    if quick:
        return Sizes(augment_batch=8, augment_rounds=2, block_batch=2, block_rounds=1,
                     step_images=8, step_width=0.0625, step_rounds=1, warmup=0, events_repeats=5)
    if device.type == "cuda":
        return Sizes(augment_batch=IMAGES_PER_STEP, augment_rounds=200, block_batch=640,
                     block_rounds=20, step_images=IMAGES_PER_STEP, step_width=1.0, step_rounds=30,
                     warmup=10, events_repeats=50)
    return Sizes(augment_batch=IMAGES_PER_STEP, augment_rounds=5, block_batch=8, block_rounds=3,
                 step_images=IMAGES_PER_STEP, step_width=0.125, step_rounds=3, warmup=1,
                 events_repeats=0)


# ----------------------------------------------------------------------------------------------
# FLOPs (2 per multiply-add; training = 3x forward: forward, data gradient, weight gradient)
# ----------------------------------------------------------------------------------------------

def conv_flops(batch: int, cin: int, cout: int, hw: int) -> int:
    """Forward FLOPs of a 3x3, stride-1, padding-1 convolution over ``batch`` hw x hw maps."""
    return 2 * batch * hw * hw * cin * cout * 9


def forward_flops_per_crop(width: float = 1.0) -> int:
    """Convolutions and linear layers of the VGG for one 40x40 crop (BN, ReLU, pool not counted)."""
    channels = stage_channels(width)
    total, cin = 0, 1
    for (_, _, _, hw, _), (_, stage, _) in zip(VGG_LAYERS, BLOCKS):
        total += conv_flops(1, cin, channels[stage], hw)
        cin = channels[stage]
    hidden = max(1, round(4096 * width))
    for fin, fout in ((channels[3] * 4, hidden), (hidden, hidden), (hidden, 7)):
        total += 2 * fin * fout
    return total


def train_flops_per_image(width: float = 1.0) -> int:
    """The roofline count of docs/spec.md: 3x forward, 10 crops per image (about 21 GFLOP at width 1)."""
    return 3 * NUM_CROPS * forward_flops_per_crop(width)


# ----------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------

def bench_device() -> torch.device:
    """Where the benchmarks run: the GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class L2Flusher:
    """Writes a 256 MB buffer so that the next op's inputs come from device memory, not L2."""

    def __init__(self, device: torch.device):
        self.buffer = (torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
                       if device.type == "cuda" else None)

    def __call__(self) -> None:
        if self.buffer is not None:
            self.buffer.fill_(1)


def _event_times_ms(fn: Callable[[], object], flush: L2Flusher, repeats: int) -> list[float]:
    """Device time of ``fn`` in ms per repeat, from CUDA events, L2 flushed before each."""
    times = []
    for _ in range(repeats):
        flush()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def event_median_ms(fn: Callable[[], object], flush: L2Flusher, repeats: int) -> float:
    return statistics.median(_event_times_ms(fn, flush, repeats))


def event_min_ms(fn: Callable[[], object], flush: L2Flusher, repeats: int) -> float:
    return min(_event_times_ms(fn, flush, repeats))


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Run the body with ``n`` intra-op CPU threads (None: leave as is)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_matmul_peak(device: torch.device) -> dict:
    """The roofline's ceiling: the best rate of repeated dense products, fp16 8192^3 matmul on a
    GPU (CUDA events, L2 flushed); on a CPU (wall clock, all threads) the better of an fp32
    2048^3 matmul and a 3x3 convolution, since oneDNN's convolutions outrun MKL's GEMM there."""
    gen = torch.Generator(device=device).manual_seed(0)
    if device.type == "cuda":
        n = 8192
        a = torch.randn(n, n, device=device, dtype=torch.float16, generator=gen)
        b = torch.randn(n, n, device=device, dtype=torch.float16, generator=gen)
        for _ in range(10):  # warm-up: library heuristics, clocks
            torch.mm(a, b)
        sync(device)
        seconds = event_min_ms(lambda: torch.mm(a, b), L2Flusher(device), 20) / 1e3
        return {"flops_per_s": 2 * n ** 3 / seconds, "dtype": "float16", "n": n, "threads": None}

    def best_rate(fn, flops, repeats=8):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return flops / min(times)

    n = 2048
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    x = torch.randn(8, 256, 20, 20, generator=gen).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, generator=gen).contiguous(memory_format=torch.channels_last)
    rate = max(best_rate(lambda: torch.mm(a, b), 2 * n ** 3),
               best_rate(lambda: F.conv2d(x, w, padding=1), conv_flops(8, 256, 256, 20)))
    return {"flops_per_s": rate, "dtype": "float32", "n": n, "threads": torch.get_num_threads()}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak allocated device memory since the last reset; None on a CPU (no per-op counter)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def record(benchmark, *, items: int, item: str, flops: int | None = None,
           peak_flops: float | None = None, device_ms: float | None = None, **extra) -> None:
    """Put throughput, spread and roofline fraction into the benchmark's extra_info.

    ``<item>_per_s`` comes from the wall-clock median; TFLOP/s and the roofline fraction from
    the CUDA-event ``device_ms`` when given (the kernels' own time), else from that median."""
    info = benchmark.extra_info
    info.update({k: v for k, v in extra.items() if v is not None})
    if device_ms is not None:
        info["device_ms"] = device_ms
    info["items_per_call"], info["item"] = items, item
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: nothing was timed
        return
    median, iqr = stats.stats.median, stats.stats.iqr
    info["median_s"], info["iqr_s"] = median, iqr
    info[f"{item}_per_s"] = items / median
    if flops is not None:
        seconds = device_ms / 1e3 if device_ms is not None else median
        info["flops_per_call"] = flops
        info["tflops_per_s"] = flops / seconds / 1e12
        if peak_flops:
            info["roofline_frac"] = flops / seconds / peak_flops


# ----------------------------------------------------------------------------------------------
# The authors' pipeline: torchvision transforms on PIL images in a DataLoader
# ----------------------------------------------------------------------------------------------

def torchvision_or_none():
    try:
        import torchvision  # noqa: F401
        from torchvision import transforms
    except Exception:  # absent, or built for another torch
        return None
    return transforms


def authors_loader(images_u8: torch.Tensor, labels: torch.Tensor, batch: int):
    """An endless iterator over (crops [B, 10, 1, 40, 40], labels [B]) as the released code makes them.

    As released: images are float64 arrays, ``Image.fromarray`` gives a mode-"F" PIL image,
    ToTensor per crop, Normalize(mean 0, std 255) per crop (the /255), RandomErasing per crop;
    a DataLoader with shuffling and 0 workers. Requires torchvision.
    """
    import numpy as np
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    T = torchvision_or_none()
    if T is None:
        raise RuntimeError("the authors' pipeline needs torchvision")
    to_tensor, normalize, erase = T.ToTensor(), T.Normalize(mean=(0.0,), std=(255.0,)), T.RandomErasing()
    transform = T.Compose([
        T.RandomResizedCrop(48, scale=(0.8, 1.2)),
        T.RandomApply([T.RandomAffine(0, translate=(0.2, 0.2))], p=0.5),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.RandomRotation(10)], p=0.5),
        T.TenCrop(CROP_SIZE),
        T.Lambda(lambda crops: torch.stack([to_tensor(c) for c in crops])),
        T.Lambda(lambda tensors: torch.stack([normalize(t) for t in tensors])),
        T.Lambda(lambda tensors: torch.stack([erase(t) for t in tensors])),
    ])

    class ReleasedDataset(Dataset):
        def __init__(self):
            self.images = images_u8.cpu().numpy().astype(np.float64)
            self.labels = labels.cpu().numpy()

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return transform(Image.fromarray(self.images[i])), int(self.labels[i])

    loader = DataLoader(ReleasedDataset(), batch_size=batch, shuffle=True, num_workers=0,
                        drop_last=True)
    while True:
        yield from loader


# ----------------------------------------------------------------------------------------------
# Training-step providers
# ----------------------------------------------------------------------------------------------

def best_augment(device: torch.device) -> str:
    """The augmentation backend "auto" picks on ``device``."""
    return backends.available("augment", device)[0]


def available_model_backends(device: torch.device) -> list[str]:
    """Backends ``VGG(backend=...)`` takes on ``device``: those of op "block" (one block per call)
    and of op "stack" (the whole conv stack per call), best first, "eager" included."""
    names = backends.available("stack", device) + backends.available("block", device)
    return list(dict.fromkeys(names))


#: the variant of a CPU step provider ("<model>+<augmentation>/<variant>") that runs as the
#: trainer did before its CPU fast path: fp32, NCHW activations (the baseline of docs/cpu.md)
CPU_BASELINE = "fp32-nchw"


def step_providers(device: torch.device) -> list[str]:
    """Provider ids "<model>+<augmentation>": the authors' pipeline, eager with the eager and the
    best augmentation, torch.compile, and every other registered model backend; on a CPU first
    the eager baseline "eager+<best>/fp32-nchw" (every other provider runs as the trainer does:
    channels_last, its "auto" precision)."""
    aug = best_augment(device)
    models = ["eager", "compile"] + [b for b in available_model_backends(device) if b != "eager"]
    providers = ["authors", "eager+eager"]
    if device.type == "cpu":
        providers.insert(0, f"eager+{aug}/{CPU_BASELINE}")
    providers += [f"{m}+{aug}" for m in models if f"{m}+{aug}" not in providers]
    return providers


def synthetic_u8(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images [n, 48, 48] and labels [n] on ``device`` (benchmark input only)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 48, 48), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 7, (n,), generator=gen)
    return images.to(device), labels.to(device)


def make_train_step(provider: str, device: torch.device, sizes: Sizes,
                    compile_mode: str | None = None) -> Callable[[], None]:
    """One training step of ``provider`` as ``fer_fast.train`` runs it: the model, optimizer,
    precision and loss scaler built by ``fer_fast.step``'s functions, batches from its
    ``DeviceLoader``, then ``TrainStep`` (augmentation -> forward -> loss -> scaled backward ->
    SGD-Nesterov step): fp16 autocast with a GradScaler on a GPU, the trainer's "auto" precision
    on a CPU (fp32 NCHW for the ``/fp32-nchw`` baseline)."""
    provider, _, variant = provider.partition("/")
    model_name, _, aug = provider.partition("+")
    config = Config(width=sizes.step_width, batch_size=sizes.step_images)
    precision = "fp32" if variant == CPU_BASELINE else resolve_precision(config.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = make_model(config, device,
                       "eager" if model_name in ("authors", "compile") else model_name)
    if variant == CPU_BASELINE:
        model = model.to(memory_format=torch.contiguous_format)
    optimizer = make_optimizer(config, model.parameters(), fused=device.type == "cuda")
    forward = torch.compile(model, mode=compile_mode) if model_name == "compile" else model
    step = TrainStep(forward, optimizer, make_scaler(device, precision),
                     device_type=device.type, precision=precision, augment_backend=aug or "auto")
    b = sizes.step_images
    images, labels = synthetic_u8(b * max(8, -(-512 // b)), device)

    if model_name == "authors":
        # the authors' crops come augmented from torchvision on the CPU, so only the step after
        # the augmentation (TrainStep.on_crops) is theirs and ours alike
        batches = authors_loader(images, labels, b)

        def run() -> None:
            crops, y = next(batches)
            step.on_crops(crops.reshape(b * NUM_CROPS, 1, CROP_SIZE, CROP_SIZE).to(device),
                          y.to(device).repeat_interleave(NUM_CROPS))
            sync(device)
    else:
        loader = DeviceLoader(Split(images, labels), batch_size=b, device=device,
                              recipe=config.recipe)
        batches = itertools.chain.from_iterable(loader for _ in itertools.count())

        def run() -> None:
            step(*next(batches))
            sync(device)

    return run
