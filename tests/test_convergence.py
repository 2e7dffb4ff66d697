"""Training with a fast backend ("fused" blocks, or the "triton" implicit-GEMM conv stack)
follows training with the eager reference: same init, same data, same dropout masks, several
SGD-Nesterov steps; losses, parameters and BatchNorm running statistics stay within tolerance
("convergence" in tests/tolerances.py).

CPU: a tiny VGG (width 1/16) with the Triton kernels under the interpreter (TRITON_INTERPRET=1,
set by conftest), fp32. GPU: the full-size VGG on one step's 640 crops, fp16 autocast with
GradScaler, channels_last, as in training.
"""
import pytest
import torch

from conftest import requires_cuda
from fer_fast import VGG
from fer_fast.kernels import is_interpreter
from fer_fast.selfcheck import sgd_losses
from tolerances import tolerance


def _compare(backend, width, batch, steps, device, *, amp):
    torch.manual_seed(0)
    fused = VGG(width=width, backend=backend).to(device)
    eager = VGG(width=width, backend="eager").to(device)
    eager.load_state_dict(fused.state_dict())
    if device == "cuda":
        fused, eager = (m.to(memory_format=torch.channels_last) for m in (fused, eager))
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(steps, batch, 1, 40, 40, generator=gen).to(device)
    labels = torch.randint(0, 7, (steps, batch), generator=gen).to(device)
    got = sgd_losses(fused, images, labels, amp)
    want = sgd_losses(eager, images, labels, amp)
    tol = tolerance("convergence", torch.float16 if amp else torch.float32)
    assert torch.isfinite(want).all()
    torch.testing.assert_close(got, want, **tol)
    assert not torch.allclose(want[0], want[-1]), "the reference did not train"
    for (name, a), (_, b) in zip(fused.state_dict().items(), eager.state_dict().items()):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")


BACKENDS = ["fused", "triton"]


#: the interpreter runs the implicit-GEMM convs' programs one by one: fewer, smaller steps
@pytest.mark.parametrize("backend,batch,steps", [("fused", 4, 4), ("triton", 2, 3)])
def test_tiny_vgg_trains_like_eager_cpu(backend, batch, steps):
    if not is_interpreter():
        pytest.skip(reason="needs TRITON_INTERPRET=1 (the CPU path would be eager math, not Triton)")
    _compare(backend, 1 / 16, batch=batch, steps=steps, device="cpu", amp=False)


@requires_cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_full_vgg_trains_like_eager_gpu(backend):
    _compare(backend, 1.0, batch=640, steps=6, device="cuda", amp=True)
