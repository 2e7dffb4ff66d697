"""GPU telemetry during training, through NVML (the ``nvidia-ml-py`` package, module ``pynvml``).

A background thread samples utilisation, memory used, power and SM clock of the training GPU
every ``interval`` seconds; per epoch the samples are summarised and the energy is read from
the total-energy counter when the GPU has one. Without a CUDA device, or when NVML cannot be
imported or initialised, :func:`start` returns a :class:`NullTelemetry`: no thread, no cost,
no output, and the same (empty) columns in the metrics.
"""
from __future__ import annotations

import threading

import torch

__all__ = ["COLUMNS", "Telemetry", "NullTelemetry", "start"]

#: metric names, in CSV column order
COLUMNS = ("gpu_util_pct", "gpu_mem_peak_mib", "gpu_power_w", "gpu_sm_clock_mhz", "gpu_energy_j")


class NullTelemetry:
    """Telemetry that measures nothing (no GPU or no NVML)."""

    active = False

    def epoch_begin(self) -> None:
        pass

    def snapshot(self) -> dict:
        return {}

    def epoch_end(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def _nvml_handle(nvml, device: torch.device):
    """NVML handle of a CUDA device (matched by UUID, so CUDA_VISIBLE_DEVICES does not matter)."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        text = str(uuid)
        try:
            return nvml.nvmlDeviceGetHandleByUUID(text if text.startswith("GPU-") else f"GPU-{text}")
        except nvml.NVMLError:
            pass  # e.g. a MIG or differently spelled UUID: fall back to the index
    return nvml.nvmlDeviceGetHandleByIndex(index)


class Telemetry:
    """Background NVML sampler of one GPU; ``epoch_end`` returns that epoch's summary."""

    active = True

    def __init__(self, nvml, handle, interval: float = 0.2):
        self._nvml, self._handle, self._interval = nvml, handle, interval
        self._lock = threading.Lock()
        self._samples: list[tuple[float, float, float, float]] = []
        self._energy0 = self._energy()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fer_fast-telemetry", daemon=True)
        self._thread.start()

    def _energy(self) -> float | None:
        """Total energy since driver load, mJ; None where unsupported."""
        try:
            return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except self._nvml.NVMLError:
            return None

    def _sample(self) -> tuple[float, float, float, float]:
        nvml, h = self._nvml, self._handle
        util = nvml.nvmlDeviceGetUtilizationRates(h).gpu
        mem = nvml.nvmlDeviceGetMemoryInfo(h).used / 2**20
        power = nvml.nvmlDeviceGetPowerUsage(h) / 1000.0
        clock = nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)
        return float(util), float(mem), float(power), float(clock)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sample = self._sample()
            except self._nvml.NVMLError:
                return  # the GPU stopped answering: keep what we have, stop sampling
            with self._lock:
                self._samples.append(sample)
            self._stop.wait(self._interval)

    def epoch_begin(self) -> None:
        with self._lock:
            self._samples.clear()
        self._energy0 = self._energy()

    def snapshot(self) -> dict:
        """Summary of the samples of the running epoch (no energy)."""
        with self._lock:
            samples = list(self._samples)
        if not samples:
            return {}
        n = len(samples)
        return {"gpu_util_pct": sum(s[0] for s in samples) / n,
                "gpu_mem_peak_mib": max(s[1] for s in samples),
                "gpu_power_w": sum(s[2] for s in samples) / n,
                "gpu_sm_clock_mhz": sum(s[3] for s in samples) / n}

    def epoch_end(self) -> dict:
        summary = self.snapshot()
        energy = self._energy()
        if energy is not None and self._energy0 is not None:
            summary["gpu_energy_j"] = (energy - self._energy0) / 1000.0
        return summary

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass


def start(device: torch.device | str, interval: float = 0.2) -> Telemetry | NullTelemetry:
    """Start sampling the GPU of ``device``; a silent NullTelemetry when that is not possible."""
    device = torch.device(device)
    if device.type != "cuda":
        return NullTelemetry()
    try:
        import pynvml
    except ImportError:
        return NullTelemetry()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return NullTelemetry()
    try:
        return Telemetry(pynvml, _nvml_handle(pynvml, device), interval)
    except pynvml.NVMLError:
        pynvml.nvmlShutdown()
        return NullTelemetry()
