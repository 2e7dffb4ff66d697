"""The "native" CPU block backend (oneDNN conv + the C++ BatchNorm + ReLU kernels of fer_fast._C,
torch's max-pool) vs the eager reference ``conv_bn_act_ref``: forward output, gradients of input,
weight, bias, gamma, beta, and the running statistics; both orders, pool on/off, train and eval,
fp32, fp16 and bf16 (CPU autocast), odd shapes; a VGG trained a few steps with it; its input checks;
and a kernel broken by 0.1 % that these tolerances catch."""
import pytest
import torch
import torch.nn.functional as F

from fer_fast import VGG, block
from fer_fast.block import ORDERS, conv_bn_act_native, conv_bn_act_ref
from tolerances import tolerance

pytestmark = pytest.mark.skipif(not block.native_supports("cpu"),
                                reason="fer_fast._C is not built (pip install -e .)")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _inputs(n, cin, cout, h, w, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    params = [torch.randn(cout, cin, 3, 3, generator=gen) / (3 * cin ** 0.5),
              0.2 * torch.randn(cout, generator=gen), 0.5 + torch.rand(cout, generator=gen),
              0.3 * torch.randn(cout, generator=gen)]
    stats = (0.1 * torch.randn(cout, generator=gen), 0.5 + torch.rand(cout, generator=gen))
    return x, params, stats


def _run(fn, x, params, stats, *, dtype, training, order, pool, seed):
    x = x.detach().clone().requires_grad_(True)
    params = [p.detach().clone().requires_grad_(True) for p in params]
    running = [s.clone() for s in stats]
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        out = fn(x, *params, *running, training=training, momentum=0.1, eps=1e-5, order=order,
                 pool=pool)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    return out, torch.autograd.grad(out, [x, *params], dout), running


def _compare(got, want, dtype, training, order):
    tol = tolerance("native_block", dtype)
    assert got[0].dtype == want[0].dtype == dtype
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got[0], want[0], **tol)
    for name, g, r in zip(("x", "weight", "bias", "gamma", "beta"), got[1], want[1]):
        grad_tol = (tolerance("native_block_backward", dtype) if name in ("x", "weight", "bias")
                    else tol)
        if name == "bias" and training and order == "bn_relu":  # sum of dy: zero up to rounding
            grad_tol = dict(atol=grad_tol["atol"] * r.numel(), rtol=0)
        torch.testing.assert_close(g, r, **grad_tol, msg=lambda m: f"gradient of {name}: {m}")
    for g, r in zip(got[2], want[2]):
        torch.testing.assert_close(g, r, **tolerance("running_stats", torch.float32))


# every (dtype, order, pool, training) once, shapes rotating through batch 1, odd sizes and
# channel counts that are not multiples of a vector
CASES = [(dtype, order, pool, training)
         for dtype in DTYPES for order in ORDERS for pool in (False, True)
         for training in (True, False)]
SHAPES = [(2, 3, 5, 7, 9), (1, 4, 17, 5, 6), (3, 8, 24, 6, 5), (4, 2, 40, 3, 3)]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_native_block_matches_eager(case):
    dtype, order, pool, training = CASES[case]
    x, params, stats = _inputs(*SHAPES[case % len(SHAPES)], seed=case)
    kw = dict(dtype=dtype, training=training, order=order, pool=pool, seed=case + 100)
    got = _run(conv_bn_act_native, x, params, stats, **kw)
    want = _run(conv_bn_act_ref, x, params, stats, **kw)
    _compare(got, want, dtype, training, order)
    if not training:
        torch.testing.assert_close(got[2][0], stats[0], rtol=0, atol=0)  # eval: untouched


def test_a_kernel_off_by_a_tenth_of_a_percent_fails(monkeypatch):
    x, params, stats = _inputs(2, 3, 6, 8, 8, seed=0)
    kw = dict(dtype=torch.float32, training=True, order="bn_relu", pool=True, seed=1)
    want = _run(conv_bn_act_ref, x, params, stats, **kw)
    forward = block._forward_native

    def off(*args, **kwargs):
        out, coef = forward(*args, **kwargs)
        return out * 1.001, coef

    monkeypatch.setattr(block, "_forward_native", off)
    with pytest.raises(AssertionError):
        _compare(_run(conv_bn_act_native, x, params, stats, **kw), want, torch.float32, True,
                 "bn_relu")
    monkeypatch.undo()
    backward = block._backward_native

    def off_grad(*args, **kwargs):
        dy, sums = backward(*args, **kwargs)
        return dy, sums * torch.tensor([[1.0], [1.001]])  # dgamma off by 0.1 %

    monkeypatch.setattr(block, "_backward_native", off_grad)
    with pytest.raises(AssertionError, match="gradient of gamma"):
        _compare(_run(conv_bn_act_native, x, params, stats, **kw), want, torch.float32, True,
                 "bn_relu")


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_vgg_trains_like_eager(dtype):
    """Four SGD steps of a narrow VGG from one init on the same crops: losses, parameters and
    running statistics of the native backend follow the eager reference."""
    gen = torch.Generator().manual_seed(0)
    crops = torch.rand(24, 1, 40, 40, generator=gen)
    labels = torch.randint(0, 7, (24,), generator=gen)
    results = []
    for backend in ("eager", "native"):
        torch.manual_seed(0)
        model = VGG(width=0.0625, dropout=0.0, backend=backend).to(
            memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        losses = []
        for _ in range(4):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                loss = F.cross_entropy(model(crops), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach().float())
        results.append((torch.stack(losses), model.state_dict()))
    tol = (tolerance("convergence", torch.float32) if dtype == torch.float32
           else dict(atol=2e-2, rtol=2e-2))  # bf16: rounding differences compound over steps
    torch.testing.assert_close(results[1][0], results[0][0], **tol)
    for name, value in results[0][1].items():
        if value.is_floating_point():
            torch.testing.assert_close(results[1][1][name], value, **tol, msg=name)


def test_bad_inputs_are_refused_before_the_kernel_runs():
    y = torch.randn(2, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    g, b = torch.ones(4), torch.zeros(4)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        block._native_shape(y.double(), "bn_relu")
    with pytest.raises(ValueError, match="channels_last"):
        block._forward_native(y.contiguous(), g, b, None, None, training=True, momentum=0.1,
                              eps=1e-5, order="bn_relu", pool=False)
    with pytest.raises(ValueError, match="weight"):
        block._forward_native(y, torch.ones(3), b, None, None, training=True, momentum=0.1,
                              eps=1e-5, order="bn_relu", pool=False)
    with pytest.raises(RuntimeError, match="CPU tensor"):
        block._native_shape(y.to("meta"), "bn_relu")


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_every_half_precision_value_loads_and_stores_exactly(dtype):
    """The kernels' 16-bit conversions on all 65,536 bit patterns: relu(x * s + 0) with s = 1
    and s = -1 equals torch's (zeros, subnormals, normals, infinities; NaN maps to 0 as in the
    ReLU's x > 0 test)."""
    bits = torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16)
    y = bits.view(dtype).view(-1, 8, 1, 1).contiguous(memory_format=torch.channels_last)
    shape = block._native_shape(y, "bn_relu")
    for sign in (1.0, -1.0):
        scale, shift = torch.full((8,), sign), torch.zeros(8)
        out = torch.empty_like(y)
        block._C.bn_act_forward_cpu(y.data_ptr(), out.data_ptr(), shape, scale.data_ptr(),
                                    shift.data_ptr(), 1)
        want = torch.relu(y.float() * sign).nan_to_num(0.0).to(dtype)
        assert torch.equal(out.float(), want.float())  # -0.0 may come out as +0.0
