"""The "fused" block backend vs the eager reference ``conv_bn_act_ref``: forward output, gradients
of input, weight, bias, gamma, beta, and the running statistics; both orders, pool on/off, train
and eval, fp32 and fp16, odd shapes.

On CPU, the Triton kernels run under TRITON_INTERPRET=1 (set by conftest) with the interpreter's
tiles (bf16 too: these kernels use no tl.dot, the op the interpreter gets wrong in bf16); the
eager-math CPU path is checked by forcing it (``bn_act.runs_on`` patched to False). On a GPU the same checks run at the 8 real VGG shapes.
"""
import pytest
import torch

from conftest import in_fresh_process, requires_cuda
from fer_fast import ConvBNReLU2d, VGG, backends, block
from fer_fast.block import ORDERS, conv_bn_act_ref
from fer_fast.kernels import bn_act, is_interpreter
from tolerances import tolerance

F32, F16 = torch.float32, torch.float16


def _inputs(n, cin, cout, h, w, dtype, device, seed):
    """Block inputs as training sees them: activations/conv params in ``dtype``, BN in fp32."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=gen)
    weight = torch.randn(cout, cin, 3, 3, generator=gen) / (3 * cin ** 0.5)
    bias = 0.2 * torch.randn(cout, generator=gen)
    gamma = 0.5 + torch.rand(cout, generator=gen)
    beta = 0.3 * torch.randn(cout, generator=gen)
    running_mean = 0.1 * torch.randn(cout, generator=gen)
    running_var = 0.5 + torch.rand(cout, generator=gen)
    x = x.to(device, dtype).contiguous(memory_format=torch.channels_last)
    params = [weight.to(device, dtype), bias.to(device, dtype), gamma.to(device),
              beta.to(device)]
    return x, params, (running_mean.to(device), running_var.to(device))


def _run(fn, x, params, stats, *, training, order, pool, grad_seed):
    """Forward + backward of one block; returns (output, [dx, dW, db, dgamma, dbeta], stats)."""
    x = x.detach().clone().requires_grad_(True)
    params = [p.detach().clone().requires_grad_(True) for p in params]
    running_mean, running_var = (s.clone() for s in stats)
    out = fn(x, *params, running_mean, running_var, training=training, momentum=0.1, eps=1e-5,
             order=order, pool=pool)
    gen = torch.Generator().manual_seed(grad_seed)
    dout = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
    grads = torch.autograd.grad(out, [x, *params], dout)
    return out, grads, (running_mean, running_var)


def _check(x, params, stats, *, training, order, pool, seed, tie_fraction=0.0):
    """Compare with the reference. ``tie_fraction``: the share of input-gradient elements that
    may differ, because at full size a few 2x2 windows hold values that round to a tie in one
    implementation and not in the other (the two compute the BN affine in different fp32
    orders), so the pool routes their gradient to another position; the gradient as a whole
    must still agree within the tolerance."""
    dtype = x.dtype
    got = _run(block.conv_bn_act_fused, x, params, stats, training=training, order=order,
               pool=pool, grad_seed=seed)
    want = _run(conv_bn_act_ref, x, params, stats, training=training, order=order, pool=pool,
                grad_seed=seed)
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got[0], want[0], **tolerance("block_forward", dtype))
    tol = tolerance("block_backward", dtype)
    for name, g, r in zip(("x", "weight", "bias", "gamma", "beta"), got[1], want[1]):
        assert g.dtype == r.dtype, name
        if name == "x" and tie_fraction:
            g, r = g.float(), r.float()
            far = ~torch.isclose(g, r, **tol)
            assert far.float().mean().item() <= tie_fraction, f"{far.sum().item()} elements"
            assert (g - r).norm().item() <= tol["rtol"] * r.norm().item()
        else:
            torch.testing.assert_close(g, r, **tol, msg=lambda m: f"gradient of {name}: {m}")
    for g, r in zip(got[2], want[2]):
        torch.testing.assert_close(g, r, **tolerance("running_stats", dtype))
    if not training:
        torch.testing.assert_close(got[2][0], stats[0], rtol=0, atol=0)


# every (order, pool, training, dtype) once, on shapes that rotate through the odd cases:
# batch 1, spatial 2..5 (odd sizes drop the last row/column under pool), channels 3, 17, 40
# (40 > the interpreter's 32-channel tile: two channel blocks)
_SHAPES = [(2, 3, 17, 5, 7), (1, 4, 3, 5, 5), (3, 5, 40, 4, 3), (4, 2, 6, 2, 2)]
_CASES = [pytest.param(order, pool, training, dtype, _SHAPES[k % len(_SHAPES)],
                       id=f"{order}-pool{int(pool)}-{'train' if training else 'eval'}-"
                          f"{str(dtype)[6:]}")
          for k, (order, pool, training, dtype) in enumerate(
              (o, p, t, d) for o in ORDERS for p in (False, True) for t in (True, False)
              for d in (F32, F16))]


@pytest.mark.parametrize("order, pool, training, dtype, shape", _CASES)
def test_triton_matches_reference(order, pool, training, dtype, shape):
    """Triton kernels (interpreter on CPU) against the eager reference."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not bn_act.runs_on(torch.device(device)):
        pytest.skip(reason="Triton kernels do not run here (CPU without TRITON_INTERPRET=1)")
    x, params, stats = _inputs(*shape, dtype, device, seed=sum(shape))
    _check(x, params, stats, training=training, order=order, pool=pool, seed=7)


@pytest.mark.parametrize("order", ORDERS)
def test_triton_bfloat16_matches_reference(order):
    """bf16 activations through the Triton kernels (the interpreter on CPU), train and eval."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not bn_act.runs_on(torch.device(device)):
        pytest.skip(reason="Triton kernels do not run here (CPU without TRITON_INTERPRET=1)")
    x, params, stats = _inputs(2, 3, 17, 5, 7, torch.bfloat16, device, seed=3)
    for training in (True, False):
        _check(x, params, stats, training=training, order=order, pool=True, seed=5,
               tie_fraction=0.02)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("pool", (False, True))
@pytest.mark.parametrize("dtype", (F32, F16))
def test_eager_math_path_matches_reference(order, pool, dtype, monkeypatch):
    """The CPU path without the interpreter (eager ops) against the reference, train and eval."""
    monkeypatch.setattr(bn_act, "runs_on", lambda device: False)
    for training, shape in ((True, (2, 3, 17, 5, 7)), (False, (1, 4, 3, 4, 5))):
        x, params, stats = _inputs(*shape, dtype, "cpu", seed=3)
        _check(x, params, stats, training=training, order=order, pool=pool, seed=5)


def test_spatial_one_without_pool():
    """1x1 images: statistics over the batch only; eval with batch 1 too."""
    x, params, stats = _inputs(5, 3, 17, 1, 1, F32, "cpu", seed=11)
    for order in ORDERS:
        _check(x, params, stats, training=True, order=order, pool=False, seed=1)
        _check(x[:1], params, stats, training=False, order=order, pool=False, seed=1)


def test_split_reduction_over_many_chunks_is_stable():
    """Several programs x several chunks each (Chan's combine), channels with a large mean
    (1e3 x their std): the variance must not cancel."""
    if not is_interpreter():
        pytest.skip(reason="needs TRITON_INTERPRET=1")
    gen = torch.Generator().manual_seed(4)
    rows = 5 * bn_act.INTERPRETER_TILES.rows + 17  # 6 row blocks -> 3 programs x 2 chunks
    y = (1000.0 + torch.randn(rows, 5, 1, 1, generator=gen)).contiguous(
        memory_format=torch.channels_last)
    gamma, beta = torch.ones(5), torch.zeros(5)
    rm, rv = torch.zeros(5), torch.ones(5)
    out, coef = bn_act.forward(y, gamma, beta, rm, rv, training=True, momentum=0.1, eps=1e-5,
                               order="bn_relu", pool=False)
    y64 = y.double()
    torch.testing.assert_close(coef[0].double(), y64.mean(dim=(0, 2, 3)), rtol=1e-7, atol=0)
    var = y64.var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close((coef[1].double() ** -2 - 1e-5), var, rtol=2e-3, atol=0)
    torch.testing.assert_close(rv.double(), 0.9 + 0.1 * var * rows / (rows - 1), rtol=2e-4,
                               atol=0)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # interpreter
@pytest.mark.parametrize("order", ORDERS)
def test_nonfinite_values_propagate(order):
    """An inf in the conv output poisons its channel (NaN), in forward and backward, so that
    GradScaler sees it and skips the step; other channels stay finite."""
    x, params, stats = _inputs(2, 3, 4, 4, 4, F16, "cpu", seed=2)
    y = torch.nn.functional.conv2d(x, params[0], params[1], padding=1)
    y = y.contiguous(memory_format=torch.channels_last)
    y[1, 2, 3, 1] = float("inf")
    y.requires_grad_(True)
    gamma, beta = (p.detach().requires_grad_(True) for p in params[2:])
    out = block.BNActFunction.apply(y, gamma, beta, stats[0].clone(), stats[1].clone(), True,
                                    0.1, 1e-5, order, True)
    assert not torch.isfinite(out[:, 2]).any()
    assert torch.isfinite(out[:, [0, 1, 3]]).all()
    out.float().sum().backward()
    assert not torch.isfinite(gamma.grad[2]) and torch.isfinite(gamma.grad[[0, 1, 3]]).all()
    assert not torch.isfinite(y.grad[:, 2]).all()


def test_module_and_model_use_the_fused_backend():
    """ConvBNReLU2d(backend="fused") loads the eager block's state_dict and matches it; the
    backend is registered for CPU and CUDA and is the best one by priority (which "auto" takes
    where the selfcheck passed it: tests/test_selfcheck.py)."""
    assert "fused" in backends.available("block", "cpu")
    assert backends.available("block", "cuda")[0] == "fused"
    assert backends.resolve("block", "fused", "cuda") is block.conv_bn_act_fused
    torch.manual_seed(0)
    ref = ConvBNReLU2d(3, 5, order="relu_bn", pool=True)
    blk = ConvBNReLU2d(3, 5, order="relu_bn", pool=True, backend="fused")
    blk.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(blk(x), ref(x), **tolerance("block_forward", F32))
    torch.testing.assert_close(blk.bn.running_var, ref.bn.running_var,
                               **tolerance("running_stats", F32))
    assert blk.bn.num_batches_tracked.item() == 1
    blk.eval(), ref.eval()
    torch.testing.assert_close(blk(x), ref(x), **tolerance("block_forward", F32))


def test_bad_inputs_raise_clear_errors():
    y = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    g, b = torch.ones(4), torch.zeros(4)
    kw = dict(training=True, momentum=0.1, eps=1e-5, pool=False)
    with pytest.raises(ValueError, match="unknown order"):
        bn_act.forward(y, g, b, None, None, order="relu_relu", **kw)
    with pytest.raises(ValueError, match="not channels_last"):
        bn_act.forward(y.contiguous(), g, b, None, None, order="bn_relu", **kw)
    with pytest.raises(ValueError, match="contiguous vector of 4 channels"):
        bn_act.forward(y, torch.ones(5), b, None, None, order="bn_relu", **kw)
    with pytest.raises(TypeError, match="share a dtype"):
        bn_act.forward(y, g, b, torch.zeros(4, dtype=F16), torch.ones(4, dtype=F16),
                       order="bn_relu", **kw)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn_act.forward(y[:1, :, :1, :1].contiguous(), g, b, None, None, order="bn_relu", **kw)
    with pytest.raises(ValueError, match="H, W >= 2"):
        bn_act.forward(y[:, :, :1].contiguous(memory_format=torch.channels_last), g, b, None,
                       None, order="bn_relu", **{**kw, "pool": True})
    with pytest.raises(ValueError, match="eval mode needs running"):
        bn_act.forward(y, g, b, None, None, order="bn_relu", **{**kw, "training": False})
    _, coef = bn_act.forward(y, g, b, None, None, order="bn_relu", **kw)
    with pytest.raises(ValueError, match="does not match the block output"):
        bn_act.backward(y, y, coef, training=True, order="bn_relu", pool=True)


@pytest.mark.parametrize("native", [False, True])
def test_ops_registered_with_fake_impls(native):
    """Both implementations behind the custom ops (the Triton kernels / eager math, and the
    native C++ kernels) pass torch.library's schema and fake-tensor checks."""
    if native and not block.native_supports("cpu"):
        pytest.skip(reason="fer_fast._C is not built (pip install -e .)")
    x, params, stats = _inputs(2, 3, 4, 4, 4, F32, "cpu", seed=9)
    y = torch.nn.functional.conv2d(x, params[0], params[1], padding=1).contiguous(
        memory_format=torch.channels_last)
    pool = not native  # the native kernels leave the pool to torch
    args = (y, params[2], params[3], stats[0].clone(), stats[1].clone(), True, 0.1, 1e-5,
            "relu_bn", pool, native)
    torch.library.opcheck(torch.ops.fer_fast.bn_act_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    out, coef = torch.ops.fer_fast.bn_act_fwd(*args)
    torch.library.opcheck(torch.ops.fer_fast.bn_act_bwd.default,
                          (torch.randn_like(out), y, coef, True, "relu_bn", pool, native, False))


@in_fresh_process
def test_torch_compile_fullgraph():
    """A compiled tiny VGG (fullgraph: no graph breaks) trains like the uncompiled one."""
    torch.manual_seed(1)
    model = VGG(width=1 / 16, dropout=0.0, backend="fused")
    twin = VGG(width=1 / 16, dropout=0.0, backend="fused")
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 40, 40)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    out = compiled(x)
    out.square().sum().backward()
    ref = twin(x)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(model.conv1a.weight.grad, twin.conv1a.weight.grad, rtol=0, atol=0)
    torch.testing.assert_close(model.bn4b.running_mean, twin.bn4b.running_mean, rtol=0, atol=0)


# --- GPU: the 8 real VGG shapes, Triton kernels, under fp16 autocast as in training ----------
VGG_SHAPES = [("1a", 1, 64, 40, False), ("1b", 64, 64, 40, True), ("2a", 64, 128, 20, False),
              ("2b", 128, 128, 20, True), ("3a", 128, 256, 10, False),
              ("3b", 256, 256, 10, True), ("4a", 256, 512, 5, False), ("4b", 512, 512, 5, True)]


@requires_cuda
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name, cin, cout, hw, pool", VGG_SHAPES, ids=[s[0] for s in VGG_SHAPES])
@pytest.mark.parametrize("dtype", (F32, F16, torch.bfloat16))
def test_gpu_real_shapes(name, cin, cout, hw, pool, order, dtype):
    x, params, stats = _inputs(640, cin, cout, hw, hw, dtype, "cuda", seed=cout + hw)
    ties = 1e-5 if pool and dtype != F32 else 0.0
    for training in (True, False):
        _check(x, params, stats, training=training, order=order, pool=pool, seed=3,
               tie_fraction=ties)
