"""Ten-crop augmentation, images/s per backend of the registry and of the authors' pipeline.

CPU backends run with 1 thread and with all threads (``torch.set_num_threads``, and the
backend's own ``num_threads`` argument where it has one). GPU backends run per 64-image batch;
their extra_info also holds the CUDA-event device time with L2 flushed before each repeat.
"""
from __future__ import annotations

import inspect
import os
import time

import pytest
import torch

import harness
from fer_fast import backends
from fer_fast.augmentation import sample_params

ALL_THREADS = os.cpu_count() or 1
#: images/s of the authors' pipeline measured in this session (for the ratio in extra_info)
_AUTHORS_RATE: dict[str, float] = {}


def _cases():
    cases = []
    for name in backends.available("augment", "cpu"):
        for threads in sorted({1, ALL_THREADS}):
            cases.append(pytest.param("cpu", name, threads, id=f"cpu-{name}-t{threads}"))
    if torch.cuda.is_available():
        for name in backends.available("augment", "cuda"):
            cases.append(pytest.param("cuda", name, None, id=f"cuda-{name}"))
    return cases


def _timed_first_call(fn):
    """Run ``fn`` once (also the warm-up of the lazy parts); its result and its seconds."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _rounds(device: torch.device, sizes: harness.Sizes, quick: bool, first_call_s: float) -> int:
    """The size's round count on a GPU and in quick runs; on a CPU about a second of calls (at
    least that count): the first few calls of a millisecond kernel are up to 2x slower (fresh
    output pages, cold caches) and would otherwise set the median of 5 rounds."""
    if device.type == "cuda" or quick:
        return sizes.augment_rounds
    return max(sizes.augment_rounds, int(1.0 / first_call_s))


def test_authors_pipeline(benchmark, quick):
    """The released torchvision/PIL transforms in a DataLoader (0 workers), one thread."""
    if harness.torchvision_or_none() is None:
        pytest.skip("torchvision is not installed (or does not load with this torch): the "
                    "authors' pipeline cannot run")
    sizes = harness.sizes_for(torch.device("cpu"), quick)
    images, labels = harness.synthetic_u8(4 * sizes.augment_batch, torch.device("cpu"))
    batches = harness.authors_loader(images, labels, sizes.augment_batch)
    benchmark.group = "augment"
    with harness.cpu_threads(1):
        _, first_s = _timed_first_call(lambda: next(batches))
        benchmark.pedantic(lambda: next(batches),
                           rounds=_rounds(torch.device("cpu"), sizes, quick, first_s),
                           warmup_rounds=sizes.warmup)
    harness.record(benchmark, items=sizes.augment_batch, item="images", device="cpu",
                   backend="authors", threads=1)
    if "images_per_s" in benchmark.extra_info:
        _AUTHORS_RATE["t1"] = benchmark.extra_info["images_per_s"]


@pytest.mark.parametrize("dev, name, threads", _cases())
def test_augment(benchmark, dev, name, threads, quick, flusher):
    device = torch.device(dev)
    sizes = harness.sizes_for(device, quick)
    fn = backends.resolve("augment", name, device)
    kwargs = {}
    if threads is not None and "num_threads" in inspect.signature(fn).parameters:
        kwargs["num_threads"] = threads
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    images, _ = harness.synthetic_u8(sizes.augment_batch, device)
    gen = torch.Generator(device=device).manual_seed(1)
    params = sample_params("released", sizes.augment_batch, generator=gen)

    def run():
        out = fn(images, params, dtype, **kwargs)
        harness.sync(device)
        return out

    benchmark.group = "augment"
    with harness.cpu_threads(threads):
        out, first_s = _timed_first_call(run)
        assert out.shape == (sizes.augment_batch * 10, 1, 40, 40) and out.dtype == dtype
        benchmark.pedantic(run, setup=flusher if device.type == "cuda" else None,
                           rounds=_rounds(device, sizes, quick, first_s), warmup_rounds=sizes.warmup)
        device_ms = (harness.event_median_ms(lambda: fn(images, params, dtype, **kwargs), flusher,
                                             sizes.events_repeats)
                     if device.type == "cuda" and sizes.events_repeats else None)
    harness.record(benchmark, items=sizes.augment_batch, item="images", device=dev, backend=name,
                   threads=threads, dtype=str(dtype).replace("torch.", ""), device_ms=device_ms)
    rate = benchmark.extra_info.get("images_per_s")
    if rate and threads == 1 and "t1" in _AUTHORS_RATE:
        benchmark.extra_info["ratio_vs_authors_1thread"] = rate / _AUTHORS_RATE["t1"]
