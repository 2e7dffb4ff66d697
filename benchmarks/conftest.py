"""Benchmark session set-up: device, sizes, the measured matmul peak, metadata in the JSON.

Run with ``pytest benchmarks/`` (``pytest tests/`` never collects this folder). On a machine with
a CUDA GPU the benchmarks run there at the real sizes; elsewhere on the CPU at small sizes.
``--bench-quick`` shrinks everything to a smoke run (used by the device check's CPU test).
With ``TRITON_INTERPRET=1`` in the environment every benchmark is skipped: Triton kernels would
run in the interpreter, which measures Python, not a kernel.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest
import torch

import harness
from fer_fast.kernels import is_interpreter


def pytest_addoption(parser):
    group = parser.getgroup("fer_fast benchmarks")
    group.addoption("--bench-quick", action="store_true",
                    help="tiny sizes and 1-2 rounds: checks that every benchmark runs")
    group.addoption("--bench-compile-mode", default=None,
                    help="torch.compile mode of the 'compile' provider "
                         "(default: max-autotune on a GPU, default on a CPU)")
    group.addoption("--bench-compile-cpu", action="store_true",
                    help="also run the 'compile' provider on a CPU (skipped by default: its first "
                         "step takes minutes there)")


def pytest_collection_modifyitems(config, items):
    if is_interpreter():
        skip = pytest.mark.skip(reason="TRITON_INTERPRET=1: Triton would run in its interpreter; "
                                "unset it to benchmark")
        for item in items:
            if item.path.parent == _HERE:
                item.add_marker(skip)


_HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def device() -> torch.device:
    return harness.bench_device()


@pytest.fixture(scope="session")
def quick(pytestconfig) -> bool:
    return pytestconfig.getoption("--bench-quick")


@pytest.fixture(scope="session")
def matmul_peak(pytestconfig, device) -> dict:
    """The roofline ceiling, measured once per session on the benchmark device."""
    peak = harness.measure_matmul_peak(device)
    pytestconfig.stash[_PEAK] = peak
    return peak


@pytest.fixture(scope="session")
def flusher(device) -> harness.L2Flusher:
    return harness.L2Flusher(device)


_PEAK = pytest.StashKey[dict]()


def _versions() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Device, versions, the measured peak and the registry's backends, in the JSON."""
    device = harness.bench_device()
    from fer_fast import backends
    output_json["fer_fast"] = {
        "device": str(device),
        "device_name": harness.device_name(device),
        "quick": config.getoption("--bench-quick"),
        "matmul_peak": config.stash.get(_PEAK, None),
        "backends": {op: backends.available(op, device) for op in ("augment", "block")},
        **_versions(),
    }
