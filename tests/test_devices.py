"""Kernels run on their tensors' device: every launch of the fused block, the triton stack and
the augmentation happens inside ``fer_fast.devices.on_device`` of the op's tensors (checked on
CPU by recording the guard and every Triton launch), and on a two-GPU machine the ops run on
``cuda:1`` while ``cuda:0`` stays the current device."""
import contextlib

import pytest
import torch

import fer_fast
from fer_fast import augmentation, devices
from fer_fast.augmentation import augment_ref, sample_params
from fer_fast.kernels import augment as augment_kernels
from fer_fast.kernels import bn_act, is_interpreter
from fer_fast.kernels import conv as conv_kernels
from fer_fast import ConvBNReLU2d, ConvBNReLUStack
from tolerances import tolerance

INTERPRETED = is_interpreter()


class _GuardRecorder:
    """Stands in for ``devices.on_device``: records the devices guarded and which are active."""

    def __init__(self):
        self.entered, self.active = [], []

    @contextlib.contextmanager
    def __call__(self, tensor):
        self.entered.append(tensor.device)
        self.active.append(tensor.device)
        try:
            yield
        finally:
            self.active.pop()


class _GuardedLaunch:
    """Stands in for a Triton kernel: records each ``kernel[grid](...)`` launch with the guard
    active at that moment (None: launched outside any guard)."""

    def __init__(self, name, kernel, guard, launches):
        self.name, self.kernel, self.guard, self.launches = name, kernel, guard, launches

    def __getitem__(self, grid):
        self.launches.append((self.name, self.guard.active[-1] if self.guard.active else None))
        return self.kernel[grid]


@pytest.fixture
def guarded(monkeypatch):
    """(guard recorder, launch list) with every Triton kernel of the project recorded."""
    guard, launches = _GuardRecorder(), []
    monkeypatch.setattr(devices, "on_device", guard)
    for module in (bn_act, conv_kernels, augment_kernels):
        for name in dir(module):
            if name.endswith("_kernel"):
                wrapper = _GuardedLaunch(name, getattr(module, name), guard, launches)
                monkeypatch.setattr(module, name, wrapper)
    return guard, launches


def test_on_device_is_a_no_op_off_cuda_and_guards_the_cuda_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "device", lambda d: calls.append(d) or contextlib.nullcontext())
    with devices.on_device(torch.zeros(1)):
        pass
    assert calls == []

    class OnSecondGpu:  # what on_device reads of a tensor on cuda:1
        device = torch.device("cuda", 1)

    with devices.on_device(OnSecondGpu()):
        pass
    assert calls == [torch.device("cuda", 1)]


def _assert_all_guarded(launches, kernels):
    names = {name for name, _ in launches}
    assert kernels <= names, f"expected launches of {kernels}, got {names}"
    assert all(device == torch.device("cpu") for _, device in launches), launches


@pytest.mark.skipif(not INTERPRETED, reason="needs TRITON_INTERPRET=1 (Triton kernels on CPU)")
def test_fused_block_launches_inside_the_guard(guarded):
    guard, launches = guarded
    block = ConvBNReLU2d(3, 4, pool=True, backend="fused")
    x = torch.randn(2, 3, 4, 6, requires_grad=True)
    block(x).sum().backward()
    _assert_all_guarded(launches, {"_apply_kernel", "_bwd_reduce_kernel", "_bwd_dy_kernel"})


@pytest.mark.skipif(not INTERPRETED, reason="needs TRITON_INTERPRET=1 (Triton kernels on CPU)")
def test_triton_stack_launches_inside_the_guard_forward_and_backward(guarded):
    guard, launches = guarded
    stack = ConvBNReLUStack(2, [(4, True), (3, False)], backend="triton")
    out = stack(torch.randn(2, 2, 4, 4, requires_grad=True))
    _assert_all_guarded(launches, {"conv3x3_kernel", "_apply_kernel"})
    del launches[:]
    out.sum().backward()
    _assert_all_guarded(launches, {"conv3x3_wgrad_kernel", "conv3x3_dgrad_kernel",
                                   "_bwd_dy_kernel"})


def _images(b, seed):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, 48, 48), dtype=torch.uint8, generator=gen)
    return images, sample_params("released", b, gen)


@pytest.mark.skipif(not INTERPRETED, reason="needs TRITON_INTERPRET=1")
def test_triton_augmentation_launches_inside_the_guard(guarded):
    guard, launches = guarded
    images, params = _images(2, 1)
    fer_fast.augment(images, params, backend="triton")
    _assert_all_guarded(launches, {"_augment_kernel"})


@pytest.mark.skipif(not augmentation.native_available(), reason="fer_fast._C is not built")
def test_native_augmentation_runs_inside_the_guard(guarded, monkeypatch):
    guard, _ = guarded
    calls = []

    class RecordingNative:  # forwards to _C, noting the guard active at each kernel call
        def __getattr__(self, name):
            fn = getattr(native, name)
            if not name.startswith("augment_"):
                return fn
            return lambda *args: calls.append(list(guard.active)) or fn(*args)

    native = augmentation._C
    monkeypatch.setattr(augmentation, "_C", RecordingNative())
    images, params = _images(2, 2)
    out = fer_fast.augment(images, params, backend="native")
    assert calls == [[torch.device("cpu")]]
    torch.testing.assert_close(out, augment_ref(images, params), rtol=0, atol=0)


# --- two GPUs: the ops on cuda:1 while cuda:0 is current -------------------------------------
requires_two_gpus = pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (ops on cuda:1 while cuda:0 is "
    "current); on CPU the tests above check that every launch is guarded")


@requires_two_gpus
def test_ops_run_on_the_second_gpu_and_leave_the_current_device():
    torch.cuda.set_device(0)
    dev = torch.device("cuda", 1)
    images, params = _images(6, 3)
    images, params = images.to(dev), params.to(dev)
    want = augment_ref(images, params, torch.float16)
    for backend in fer_fast.backends.available("augment", dev):
        out = fer_fast.augment(images, params, backend=backend, dtype=torch.float16)
        torch.cuda.synchronize(dev)
        assert torch.cuda.current_device() == 0, backend
        torch.testing.assert_close(out, want, **tolerance("augment", torch.float16), msg=backend)

    torch.manual_seed(0)
    ref = ConvBNReLUStack(3, [(16, True), (32, False)]).to(dev)
    x = torch.randn(4, 3, 10, 12, device=dev)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # fp32 reference
        want = ref(x)
    for backend in ("fused", "triton"):
        model = ConvBNReLUStack(3, [(16, True), (32, False)], backend=backend).to(dev)
        model.load_state_dict(ref.state_dict())
        xi = x.clone().requires_grad_()
        out = model(xi)
        out.sum().backward()
        torch.cuda.synchronize(dev)
        assert torch.cuda.current_device() == 0, backend
        assert out.device == dev and xi.grad.device == dev
        torch.testing.assert_close(out, want, **tolerance("block_forward", torch.float32),
                                   msg=backend)


@requires_two_gpus
def test_evaluate_cli_on_the_second_gpu(tmp_path, capsys):
    from fer_fast.checkpoint import save_atomic
    from fer_fast.evaluate import main
    model = fer_fast.VGG("released", width=0.0625)
    path = tmp_path / "best.pt"
    save_atomic({"params": model.state_dict(), "config": {"recipe": "released", "width": 0.0625,
                                                          "synthetic_sizes": [16, 12, 10]}},
                path)
    torch.cuda.set_device(0)
    assert main([str(path), "--splits", "test", "--device", "cuda:1",
                 "--model-backend", "fused"]) == 0
    assert "test: ten-crop accuracy" in capsys.readouterr().out
    assert torch.cuda.current_device() == 0


def test_training_device_gets_its_cuda_index(monkeypatch):
    """A run's CUDA device is indexed ("cuda" = the current device), so every generator,
    tensor and random state of the run names the same GPU; an index past the last GPU is
    refused."""
    from fer_fast.cli import UserError, resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="--device cuda:2: no such GPU"):
        resolve_device("cuda:2")
