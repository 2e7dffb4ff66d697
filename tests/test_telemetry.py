"""Telemetry: silent without NVML or GPU; with a fake pynvml the numbers reach the summary."""
import builtins
import sys
import threading
import types

import pytest

from fer_fast import telemetry


class _NVMLError(Exception):
    pass


def fake_pynvml(energy_supported: bool = True) -> types.ModuleType:
    """A pynvml stand-in: constant readings, an energy counter that grows 5 J per read."""
    m = types.ModuleType("pynvml")
    m.NVMLError = _NVMLError
    m.NVML_CLOCK_SM = 1
    m.calls = {"init": 0, "shutdown": 0}
    m.energy_mj = 1_000_000

    def init():
        m.calls["init"] += 1

    def shutdown():
        m.calls["shutdown"] += 1

    def energy(handle):
        if not energy_supported:
            raise _NVMLError("not supported")
        m.energy_mj += 5000
        return m.energy_mj

    m.nvmlInit, m.nvmlShutdown = init, shutdown
    m.nvmlDeviceGetHandleByIndex = lambda i: ("gpu", i)
    m.nvmlDeviceGetHandleByUUID = lambda u: ("gpu", u)
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=87, memory=40)
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=3 * 2**30, total=80 * 2**30)
    m.nvmlDeviceGetPowerUsage = lambda h: 412_500  # mW
    m.nvmlDeviceGetClockInfo = lambda h, clock: 1755 if clock == m.NVML_CLOCK_SM else 0
    m.nvmlDeviceGetTotalEnergyConsumption = energy
    return m


@pytest.fixture
def no_pynvml(monkeypatch):
    real_import = builtins.__import__

    def fail(name, *args, **kwargs):
        if name == "pynvml":
            raise ImportError("No module named 'pynvml' (test)")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.setattr(builtins, "__import__", fail)


def test_silent_without_nvml(no_pynvml):
    threads = threading.active_count()
    for device in ("cuda", "cpu"):
        t = telemetry.start(device)
        assert isinstance(t, telemetry.NullTelemetry) and not t.active
        t.epoch_begin()
        assert t.snapshot() == {} and t.epoch_end() == {}
        t.close()
    assert threading.active_count() == threads


def test_silent_on_cpu_even_with_nvml(monkeypatch):
    nvml = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert isinstance(telemetry.start("cpu"), telemetry.NullTelemetry)
    assert nvml.calls["init"] == 0


def test_silent_when_nvml_init_fails(monkeypatch):
    nvml = fake_pynvml()

    def broken():
        raise _NVMLError("driver not loaded")

    nvml.nvmlInit = broken
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert isinstance(telemetry.start("cuda"), telemetry.NullTelemetry)


def start_fake(monkeypatch, energy_supported=True):
    nvml = fake_pynvml(energy_supported)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(telemetry, "_nvml_handle", lambda m, device: m.nvmlDeviceGetHandleByIndex(0))
    return nvml, telemetry.start("cuda", interval=0.005)


@pytest.mark.parametrize("energy_supported", [True, False])
def test_summary_from_fake_nvml(monkeypatch, energy_supported):
    nvml, t = start_fake(monkeypatch, energy_supported)
    assert t.active
    try:
        t.epoch_begin()
        while not t.snapshot():  # wait for the sampler thread's first reading
            threading.Event().wait(0.005)
        summary = t.epoch_end()
    finally:
        t.close()
    assert summary["gpu_util_pct"] == 87
    assert summary["gpu_mem_peak_mib"] == 3 * 1024
    assert summary["gpu_power_w"] == pytest.approx(412.5)
    assert summary["gpu_sm_clock_mhz"] == 1755
    if energy_supported:
        assert summary["gpu_energy_j"] == pytest.approx(5.0)  # one read at begin, one at end
    else:
        assert "gpu_energy_j" not in summary
    assert set(summary) <= set(telemetry.COLUMNS)
    assert nvml.calls["shutdown"] == 1
