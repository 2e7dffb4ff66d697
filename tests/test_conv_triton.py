"""Parity of the implicit-GEMM conv3x3 kernels (kernels/conv.py) with PyTorch's convolution and an
eager composition of the fused prologue / epilogue: forward, data gradient, weight and bias
gradient, fp32 and fp16, odd shapes (batch 1, spatial 1..5, C_in = 1, channels not multiples of
16). On CPU the kernels run under TRITON_INTERPRET=1 at tiny sizes; the real VGG shapes at batch
640 run on a GPU when present."""
import pytest
import torch
import torch.nn.functional as F

from conftest import in_fresh_process, requires_cuda
from tolerances import tolerance

from fer_fast.kernels import bn_stats
from fer_fast.kernels import conv as K
from fer_fast.kernels import conv_configs as C

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16]
#: (batch, C_in, C_out, H, W): C_in = 1, C not multiple of 16, K-aligned 32, spatial 1..5
SHAPES = [(2, 1, 5, 5, 4), (1, 3, 7, 1, 1), (2, 20, 17, 3, 5), (1, 32, 16, 2, 3)]


def _nhwc(t, dtype):
    return t.permute(0, 2, 3, 1).to(dtype).contiguous()


def _nchw(t):
    return t.permute(0, 3, 1, 2).float()


def _prologue_ref(x, scale, shift, relu_first, pool):
    """Eager composition of what the conv sees: pool2x2(prologue(x)), fp32, NCHW. With
    ``scale`` x is the previous block's stored conv output and the prologue its BN, and in the
    bn_relu order its ReLU (relu_bn: the producing conv stored x ReLU'd); none without."""
    if scale is not None:
        x = x * scale[None, :, None, None] + shift[None, :, None, None]
        if not relu_first:
            x = F.relu(x)
    return F.max_pool2d(x, 2, 2) if pool else x


def _make(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    nb, cin, cout, h, w = shape
    x = torch.randn(nb, cin, h, w, generator=g)
    weight = torch.randn(cout, cin, 3, 3, generator=g) / (3 * cin ** 0.5)
    bias = torch.randn(cout, generator=g)
    # round operands to dtype once: the reference then sees exactly the kernel's inputs
    x, weight, bias = (t.to(dtype).float().to(DEVICE) for t in (x, weight, bias))
    return x, weight, bias


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_conv2d(shape, dtype):
    x, weight, bias = _make(shape, dtype)
    y = K.conv3x3(_nhwc(x, dtype), K.pack_weight(weight, dtype), bias.to(dtype))
    assert y.dtype == dtype and y.shape == (shape[0], shape[3], shape[4], shape[2])
    torch.testing.assert_close(_nchw(y), F.conv2d(x, weight, bias, padding=1),
                               **tolerance("conv3x3", dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_data_and_weight_gradients(shape, dtype):
    x, weight, _ = _make(shape, dtype)
    nb, cin, cout, h, w = shape
    dy = torch.randn(nb, cout, h, w, generator=torch.Generator().manual_seed(1))
    dy = dy.to(dtype).float().to(DEVICE)
    dx = K.conv3x3_dgrad(_nhwc(dy, dtype), K.pack_weight_dgrad(weight, dtype))
    torch.testing.assert_close(_nchw(dx), torch.nn.grad.conv2d_input(x.shape, weight, dy, padding=1),
                               **tolerance("conv3x3", dtype))
    dw, db = K.conv3x3_wgrad(_nhwc(x, dtype), _nhwc(dy, dtype))
    assert dw.dtype == torch.float32 and dw.shape == (9 * cin, cout)
    torch.testing.assert_close(K.unpack_weight_grad(dw, cin),
                               torch.nn.grad.conv2d_weight(x, weight.shape, dy, padding=1),
                               **tolerance("conv3x3", dtype))
    torch.testing.assert_close(db, dy.sum((0, 2, 3)), **tolerance("conv3x3", dtype))


def test_weight_gradient_split_over_many_tiles():
    """M spans several BM chunks and several splits: partial sums must add up exactly once."""
    x, weight, _ = _make((3, 4, 6, 5, 5), torch.float32)
    dy = torch.randn(3, 6, 5, 5, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    dw, db = K.conv3x3_wgrad(_nhwc(x, torch.float32), _nhwc(dy, torch.float32))
    torch.testing.assert_close(K.unpack_weight_grad(dw, 4),
                               torch.nn.grad.conv2d_weight(x, weight.shape, dy, padding=1),
                               **tolerance("conv3x3", torch.float32))
    torch.testing.assert_close(db, dy.sum((0, 2, 3)), **tolerance("conv3x3", torch.float32))


def _stats_bn(c, device=DEVICE):
    """A BatchNorm with gamma = 1, beta = 0, eps = 0, so that its coefficients give the batch
    statistics: mean = coef[0], biased var = coef[1] ** -2."""
    ones = torch.ones(c, device=device)
    return K.BatchNormArgs(ones, torch.zeros_like(ones), eps=0.0)


#: (relu_first, prologue, pool): either block order, with the previous block's BN (the stack's
#: blocks after the first) or without (the first block, on the crops)
FUSIONS = [(False, True, False), (False, True, True), (True, True, True), (True, True, False),
           (False, False, True), (True, False, False)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu_first,prologue,pool", FUSIONS)
def test_fused_forward_matches_eager_composition(relu_first, prologue, pool, dtype):
    """prologue (the previous block's BN, then its ReLU in the bn_relu order; negative scales
    included) + pool + zero padding in the normalised space; epilogue bias, the ReLU in the
    relu_bn order and the batch statistics of the stored output."""
    nb, cin, cout, hin, win = 2, 20, 17, 7, 9  # pooled: 3x4; odd sizes drop the last row/col
    g = torch.Generator().manual_seed(3)
    x = torch.randn(nb, cin, hin, win, generator=g).to(dtype).float().to(DEVICE)
    weight = (torch.randn(cout, cin, 3, 3, generator=g) / 12).to(dtype).float().to(DEVICE)
    bias = torch.randn(cout, generator=g).to(dtype).float().to(DEVICE)
    scale = (torch.randn(cin, generator=g) * 1.5).to(DEVICE)
    shift = torch.randn(cin, generator=g).to(DEVICE)
    if not prologue:
        scale = shift = None
    y, coef = K.conv3x3(_nhwc(x, dtype), K.pack_weight(weight, dtype), bias.to(dtype),
                        scale=scale, shift=shift, relu_first=relu_first, pool=pool,
                        bn=_stats_bn(cout))
    mean, var = coef[0], coef[1] ** -2
    ref = F.conv2d(_prologue_ref(x, scale, shift, relu_first, pool), weight, bias, padding=1)
    if relu_first:
        ref = F.relu(ref)
    tol = tolerance("conv3x3", dtype)
    torch.testing.assert_close(_nchw(y), ref, **tol)
    stored = _nchw(y)  # statistics are those of the values as stored
    torch.testing.assert_close(mean, stored.mean((0, 2, 3)), **tolerance("running_stats", dtype))
    torch.testing.assert_close(var, stored.var((0, 2, 3), unbiased=False),
                               **tolerance("running_stats", dtype))


def test_statistics_are_stable_for_a_large_offset():
    """Chan's merge of per-tile (mean, M2): mean/std = 5e5, where the fp32 E[x^2] - E[x]^2
    formula loses every digit (its error ~ 1e6 * 2^-24 >> var = 4e-6); only the rounding of the
    fp32 tile means (ulp 6e-5 at 1000) remains."""
    nb, cin, cout, h, w = 6, 4, 3, 7, 7  # 294 rows: several tiles
    x = torch.randn(nb, cin, h, w).to(DEVICE) * 1e-3
    weight = torch.zeros(cout, cin, 3, 3, device=DEVICE)
    weight[:, :, 1, 1] = 1.0
    bias = torch.full((cout,), 1000.0, device=DEVICE)
    y, coef = K.conv3x3(_nhwc(x, torch.float32), K.pack_weight(weight, torch.float32), bias,
                        bn=_stats_bn(cout))
    ref = _nchw(y).double()
    torch.testing.assert_close((coef[1] ** -2).double(), ref.var((0, 2, 3), unbiased=False),
                               rtol=5e-2, atol=0)


def _tuning_configs():
    """Two interpreter-sized candidates with different tilings (several M tiles each)."""
    small = dict(C.INTERPRETER_CONFIG, BN=16)
    return [dict(small, BM=32), small]


@pytest.mark.parametrize("training", [True, False])
def test_tuning_runs_leave_running_statistics_and_counters_untouched(training, monkeypatch):
    """The tuner launches every candidate several times (the timing runs) and then the chosen
    one: the running statistics are updated exactly once, the coefficients are those of the
    batch (training) or of the running statistics (eval), the arrival counters end at zero,
    and a candidate the GPU rejects (OutOfResources) is skipped."""
    from triton.runtime.errors import OutOfResources
    configs = _tuning_configs()
    timed = []

    def fake_do_bench(fn, **_):
        timed.append(fn)
        if len(timed) == 1:
            raise OutOfResources(300000, 232448, "shared memory")
        for _ in range(3):
            fn()
        return float(len(timed))

    monkeypatch.setattr(C, "_TUNED", {})
    monkeypatch.setattr(C, "candidates", lambda *a, **k: [dict(configs[0]), *configs])
    monkeypatch.setattr(C.triton.testing, "do_bench", fake_do_bench)
    g = torch.Generator().manual_seed(12)
    nb, cin, cout, h, w = 3, 5, 7, 6, 5
    x = torch.randn(nb, cin, h, w, generator=g).to(DEVICE)
    weight = (torch.randn(cout, cin, 3, 3, generator=g) / 6).to(DEVICE)
    gamma, beta = torch.randn(cout, generator=g).to(DEVICE), torch.randn(cout, generator=g).to(DEVICE)
    rmean, rvar = torch.randn(cout, generator=g).to(DEVICE), torch.rand(cout, generator=g).to(DEVICE) + 0.5
    rmean0, rvar0 = rmean.clone(), rvar.clone()
    bn = K.BatchNormArgs(gamma, beta, rmean, rvar, training=training, momentum=0.25, eps=1e-3)
    y, coef = K.conv3x3(_nhwc(x, torch.float32), K.pack_weight(weight, torch.float32), bn=bn)
    assert len(timed) == 3, "every candidate is timed once"
    stored = _nchw(y)
    mean, var = stored.mean((0, 2, 3)), stored.var((0, 2, 3), unbiased=False)
    tol = tolerance("running_stats", torch.float32)
    if training:
        torch.testing.assert_close(rmean, 0.75 * rmean0 + 0.25 * mean, **tol)
        torch.testing.assert_close(rvar, 0.75 * rvar0 + 0.25 * stored.var((0, 2, 3)), **tol)
    else:
        mean, var = rmean0, rvar0
        assert torch.equal(rmean, rmean0) and torch.equal(rvar, rvar0)
    rstd = (var + 1e-3).rsqrt()
    torch.testing.assert_close(coef, torch.stack([mean, rstd, gamma * rstd,
                                                  beta - mean * gamma * rstd]), **tol)
    assert all(not c.any() for c in bn_stats._COUNTERS.values()), "arrival counters must end at 0"


@pytest.mark.parametrize("relu_first,pool", [(False, True), (True, False)])
def test_weight_gradient_recomputes_the_normalised_input(relu_first, pool):
    nb, cin, cout, hin, win = 2, 20, 6, 6, 5
    g = torch.Generator().manual_seed(4)
    x = torch.randn(nb, cin, hin, win, generator=g).to(DEVICE)
    scale, shift = torch.randn(cin, generator=g).to(DEVICE), torch.randn(cin, generator=g).to(DEVICE)
    z = _prologue_ref(x, scale, shift, relu_first, pool)
    dy = torch.randn(nb, cout, *z.shape[2:], generator=g).to(DEVICE)
    dw, db = K.conv3x3_wgrad(_nhwc(x, torch.float32), _nhwc(dy, torch.float32), scale=scale,
                             shift=shift, relu_first=relu_first, pool=pool)
    torch.testing.assert_close(K.unpack_weight_grad(dw, cin),
                               torch.nn.grad.conv2d_weight(z, (cout, cin, 3, 3), dy, padding=1),
                               **tolerance("conv3x3", torch.float32))
    torch.testing.assert_close(db, dy.sum((0, 2, 3)), **tolerance("conv3x3", torch.float32))


def _bn_grad_ref(dz, y, gcoef, relu_first):
    """Eager ``_load_grad``: the conv-output gradient from the BN-output gradient dz (NCHW)."""
    c1, c2, c3, mean = (r[None, :, None, None] for r in gcoef)
    g = c1 * dz + c2 * (y - mean) + c3
    return torch.where(y <= 0, 0.0, g) if relu_first else g  # NaN passes, as threshold_backward


BOUNDARIES = [(False, False, True), (True, False, True), (False, True, True), (True, True, False),
              (False, True, False)]


#: (batch, C_prev, C_out, H, W of the conv; with pool the previous block's output is 2H+1 x 2W+1:
#: odd, its last row and column dropped by the pool): channels not multiples of 16, spatial 1
BOUNDARY_SHAPES = [(2, 20, 17, 3, 4), (1, 5, 3, 1, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BOUNDARY_SHAPES)
@pytest.mark.parametrize("relu_first,pool,training", BOUNDARIES)
def test_gradients_through_the_block_boundary(relu_first, pool, training, shape, dtype):
    """Data gradient with this block's BN / ReLU backward in its prologue and the previous
    block's pool / ReLU backward + BN-gradient sums in its epilogue, the coefficients that the
    next kernels' prologues apply, and the weight gradient with the same prologue: against
    autograd through an eager composition."""
    g = torch.Generator().manual_seed(11)
    nb, c_prev, c_out, h, w = shape
    eh, ew = (2 * h + 1, 2 * w + 1) if pool else (h, w)

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g) * s).to(dtype).float().to(DEVICE)

    y_prev, y, dz = rnd(nb, c_prev, eh, ew), rnd(nb, c_out, h, w), rnd(nb, c_out, h, w)
    weight = rnd(c_out, c_prev, 3, 3, s=1 / 12)
    mean, rstd = torch.randn(c_prev, generator=g) * 0.3, torch.rand(c_prev, generator=g) + 0.5
    gamma, beta = torch.randn(c_prev, generator=g), torch.randn(c_prev, generator=g)
    coef_prev = torch.stack([mean, rstd, gamma * rstd, beta - mean * gamma * rstd]).to(DEVICE)
    gcoef = torch.randn(4, c_out, generator=g).to(DEVICE)
    # reference: dL/d(BN output of the previous block) by autograd
    x_prev = F.relu(y_prev) if relu_first else y_prev
    bn_out = (x_prev * coef_prev[2, None, :, None, None] + coef_prev[3, None, :, None, None])
    bn_out = bn_out.detach().requires_grad_()
    z = bn_out if relu_first else F.relu(bn_out)
    v = F.max_pool2d(z, 2, 2) if pool else z
    dy_ref = _bn_grad_ref(dz, y, gcoef, relu_first)
    (F.conv2d(v, weight, padding=1) * dy_ref).sum().backward()
    x_hat = (x_prev - mean.to(DEVICE)[None, :, None, None]) * rstd.to(DEVICE)[None, :, None, None]
    sums_ref = torch.stack([bn_out.grad.sum((0, 2, 3)), (bn_out.grad * x_hat).sum((0, 2, 3))])

    bn = (_nhwc(y, dtype), gcoef)
    dz_prev, sums, gcoef_prev = K.conv3x3_dgrad(
        _nhwc(dz, dtype), K.pack_weight_dgrad(weight, dtype), bn=bn, relu_first=relu_first,
        prev=(_nhwc(y_prev, dtype), coef_prev), pool=pool, training=training)
    tol = tolerance("conv3x3", dtype)
    assert dz_prev.dtype == dtype and dz_prev.shape == (nb, eh, ew, c_prev)
    torch.testing.assert_close(_nchw(dz_prev), bn_out.grad, **tol)
    m = nb * eh * ew
    torch.testing.assert_close(sums, sums_ref, atol=tol["atol"] * 10, rtol=tol["rtol"])
    c2 = -coef_prev[2] * coef_prev[1] * sums[1] / m if training else torch.zeros_like(sums[1])
    c3 = -coef_prev[2] * sums[0] / m if training else torch.zeros_like(sums[0])
    torch.testing.assert_close(gcoef_prev, torch.stack([coef_prev[2], c2, c3, coef_prev[0]]))
    # the weight gradient forms the same conv-output gradient
    dw, db = K.conv3x3_wgrad(_nhwc(v.detach(), dtype), _nhwc(dz, dtype), bn=bn,
                             relu_first=relu_first)
    torch.testing.assert_close(K.unpack_weight_grad(dw, c_prev),
                               torch.nn.grad.conv2d_weight(v.detach(), weight.shape, dy_ref,
                                                           padding=1), **tol)
    torch.testing.assert_close(db, dy_ref.sum((0, 2, 3)), **tol)
    # and without a previous block: the plain data gradient of the formed dy
    dx = K.conv3x3_dgrad(_nhwc(dz, dtype), K.pack_weight_dgrad(weight, dtype), bn=bn,
                         relu_first=relu_first)
    torch.testing.assert_close(_nchw(dx), torch.nn.grad.conv2d_input(v.shape, weight, dy_ref,
                                                                      padding=1), **tol)


def test_nan_passes_the_relu_backward_like_torch():
    """A NaN conv output keeps its gradient through the ReLU mask (threshold_backward passes it),
    so the data and weight gradients carry it."""
    g = torch.Generator().manual_seed(13)
    y, dz = torch.randn(1, 5, 3, 4, generator=g), torch.randn(1, 5, 3, 4, generator=g)
    y[0, 2, 1, 1] = float("nan")
    weight = torch.randn(5, 3, 3, 3, generator=g)
    gcoef = torch.randn(4, 5, generator=g)
    dy_ref = _bn_grad_ref(dz, y, gcoef, True)
    assert dy_ref.isnan().sum() == 1
    y, dz, weight, gcoef, dy_ref = (t.to(DEVICE) for t in (y, dz, weight, gcoef, dy_ref))
    dx = K.conv3x3_dgrad(_nhwc(dz, torch.float32), K.pack_weight_dgrad(weight, torch.float32),
                         bn=(_nhwc(y, torch.float32), gcoef), relu_first=True)
    ref = torch.nn.grad.conv2d_input((1, 3, 3, 4), weight, dy_ref, padding=1)
    assert ref.isnan().any()
    torch.testing.assert_close(_nchw(dx), ref, equal_nan=True,
                               **tolerance("conv3x3", torch.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_repeated_launches_are_identical_and_leave_counters_zero(dtype):
    """What the tuner relies on: a launch can be repeated (outputs overwritten, nothing
    accumulated) with bit-identical results, and the arrival counters of the in-kernel
    reductions are re-armed to zero after every launch."""
    g = torch.Generator().manual_seed(14)
    x = torch.randn(3, 7, 9, 6, generator=g).to(DEVICE, dtype)  # NHWC, pooled to 3x4
    wp = K.pack_weight(torch.randn(10, 6, 3, 3, generator=g) / 8, dtype).to(DEVICE)
    coef_prev = torch.stack([torch.randn(6, generator=g), torch.rand(6, generator=g) + 0.5,
                             torch.randn(6, generator=g), torch.randn(6, generator=g)]).to(DEVICE)
    ones = torch.ones(10, device=DEVICE)
    outs = []
    for _ in range(2):
        y, coef = K.conv3x3(x, wp, scale=coef_prev[2], shift=coef_prev[3], pool=True,
                            bn=K.BatchNormArgs(ones, torch.zeros_like(ones)))
        dz = torch.randn(y.shape, generator=torch.Generator().manual_seed(15)).to(DEVICE, dtype)
        gcoef = torch.stack([coef[2], -coef[1], torch.full_like(ones, 0.1), coef[0]])
        grads = K.conv3x3_dgrad(dz, K.pack_weight_dgrad(torch.randn(
            10, 6, 3, 3, generator=torch.Generator().manual_seed(16)), dtype).to(DEVICE),
            bn=(y, gcoef), prev=(x, coef_prev), pool=True)
        outs.append((y, coef, *grads))
        assert all(not c.any() for c in bn_stats._COUNTERS.values()), "counters must be re-armed"
    for first, second in zip(*outs):
        assert torch.equal(first, second)


def test_bad_inputs_are_rejected_with_a_clear_error():
    x = torch.randn(1, 4, 4, 3, device=DEVICE)
    wp = K.pack_weight(torch.randn(5, 3, 3, 3, device=DEVICE), torch.float32)
    with pytest.raises(ValueError, match="NHWC"):
        K.conv3x3(x[0], wp)
    with pytest.raises(ValueError, match="packed weight has dtype"):
        K.conv3x3(x, wp.half())
    with pytest.raises(ValueError, match=r"packed weight has shape"):
        K.conv3x3(x, K.pack_weight(torch.randn(5, 4, 3, 3, device=DEVICE), torch.float32))
    with pytest.raises(ValueError, match="scale has dtype"):
        K.conv3x3(x, wp, scale=torch.ones(3, dtype=torch.float16, device=DEVICE),
                  shift=torch.zeros(3, device=DEVICE))
    with pytest.raises(ValueError, match="both scale and shift"):
        K.conv3x3(x, wp, scale=torch.ones(3, device=DEVICE))
    with pytest.raises(ValueError, match="dy has shape"):
        K.conv3x3_wgrad(x, torch.randn(1, 4, 3, 5, device=DEVICE))
    ones = torch.ones(5, device=DEVICE)
    with pytest.raises(ValueError, match="BatchNorm weight has shape"):
        K.conv3x3(x, wp, bn=K.BatchNormArgs(ones[:4], ones))
    with pytest.raises(ValueError, match="eval mode needs running_mean"):
        K.conv3x3(x, wp, bn=K.BatchNormArgs(ones, ones, training=False))
    with pytest.raises(ValueError, match="previous conv output has shape"):
        K.conv3x3_dgrad(torch.randn(1, 4, 4, 5, device=DEVICE), K.pack_weight_dgrad(
            torch.randn(5, 3, 3, 3, device=DEVICE), torch.float32),
            prev=(torch.randn(1, 7, 9, 3, device=DEVICE), torch.zeros(4, 3, device=DEVICE)),
            pool=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        K.conv3x3(x[:, :1, :1], wp, bn=K.BatchNormArgs(ones, ones))
    with pytest.raises(ValueError, match="gradient coefficients has shape"):
        K.conv3x3_dgrad(torch.randn(1, 4, 4, 5, device=DEVICE), wp,
                        bn=(torch.randn(1, 4, 4, 5, device=DEVICE), torch.zeros(3, 5, device=DEVICE)))


def test_gpu_configs_are_compiled_ahead_of_time_and_offered_only_when_aligned():
    """Every GPU config this Triton release offers on some target is an AOT spec (spill / HGMMA
    checked by test_aot), and the K-aligned ones, whose specs assume 16-divisible channels and
    strides, only serve shapes that are."""
    names = {s["name"] for s in K.AOT_SPECS}
    tables = {"wgrad_released_": (C.WGRAD_CONFIGS, ()), "wgrad_paper_": (C.WGRAD_CONFIGS, ()),
              "fwd_small_k_released_pool_": (C.SMALL_K_CONFIGS, C.SMALL_K_CONFIGS_FP32),
              "dgrad_small_k_paper_pool_": (C.SMALL_K_CONFIGS, C.SMALL_K_CONFIGS_FP32)}
    for recipe in ("released", "paper"):  # the compile variants are named after the recipes
        tables.update({
            f"fwd_{recipe}_": (C.FWD_CONFIGS, C.FWD_CONFIGS_FP32),
            f"fwd_{recipe}_pool_": (C.FWD_POOL_CONFIGS, C.FWD_POOL_CONFIGS_FP32),
            f"dgrad_{recipe}_": (C.DGRAD_CONFIGS, C.DGRAD_CONFIGS_FP32),
            f"dgrad_{recipe}_pool_": (C.DGRAD_POOL_CONFIGS, C.DGRAD_POOL_CONFIGS_FP32),
            f"wgrad_{recipe}_pool_": (C.WGRAD_CONFIGS, C.WGRAD_CONFIGS_FP32),
            f"wgrad_small_k_{recipe}_pool_": (C.SMALL_K_CONFIGS, C.SMALL_K_CONFIGS_FP32)})
    for prefix, (fp16, fp32) in tables.items():
        for table, dtype in ((fp16, "fp16"), (fp32, "fp32")):
            for cfg in table:
                assert (f"{prefix}{dtype}_{C.cfg_name(cfg)}" in names) == bool(cfg["targets"])
    x = torch.empty(2, 5, 5, 64)
    assert C.aligned(x, 128, 64) and C.aligned(x, 64, 32)
    assert not C.aligned(x, 100, 64)  # C_out not a multiple of 16
    assert not C.aligned(x, 128, 128)  # C_in not a multiple of BK
    assert not C.aligned(torch.empty(2, 5, 5, 24), 128, 8)  # C_in not a multiple of 16
    assert not C.aligned(x.permute(0, 2, 1, 3), 128, 64)  # not contiguous NHWC


@pytest.mark.parametrize("capability,shared,target", [
    ((9, 0), 232448, "sm_90a"), ((10, 0), 232448, "sm_90a"), ((8, 0), 166912, "sm_80"),
    ((9, 0), 166912, "sm_80"), ((8, 9), 101376, "sm_89"), ((8, 6), 101376, "sm_89"),
    ((12, 0), 101376, "sm_89"), ((7, 5), 65536, "sm_89")])
def test_device_gets_the_configs_of_its_shared_memory_class(capability, shared, target,
                                                            monkeypatch):
    """A GPU runs the configs of the largest class whose shared memory per block it has, and on
    the 99 KB class (RTX 3090 / 4090 / 5090) every kernel still has K-aligned configs."""
    monkeypatch.setattr(C, "_max_shared", lambda device: shared)
    monkeypatch.setattr(C.torch.cuda, "get_device_capability", lambda device=None: capability)
    assert C.device_target(torch.device("cuda")) == target
    monkeypatch.setattr(C, "is_interpreter", lambda: False)
    x = torch.empty(2, 5, 5, 64, dtype=torch.float16)
    tables = (C.FWD_CONFIGS, C.FWD_POOL_CONFIGS, C.DGRAD_CONFIGS, C.DGRAD_POOL_CONFIGS,
              C.WGRAD_CONFIGS)
    fp32_tables = (C.FWD_CONFIGS_FP32, C.FWD_POOL_CONFIGS_FP32, C.DGRAD_CONFIGS_FP32,
                   C.DGRAD_POOL_CONFIGS_FP32, C.WGRAD_CONFIGS_FP32)
    for table, dtype in [(t, torch.float16) for t in tables] + [(t, torch.float32)
                                                               for t in fp32_tables]:
        offered = C.candidates(table, x.to(dtype), 64)
        assert offered and all(c in table and target in c["targets"] for c in offered), (
            f"{target}: no K-aligned config of {[C.cfg_name(c) for c in table]}")


def _fake_configs(n):
    return [dict(BM=16 * (i + 1), BN=16, BK=16, num_warps=4, num_stages=1, targets=("sm_89",))
            for i in range(n)]


def _fake_launch(log, rejects=()):
    """A launch that records (config index, final) and raises OutOfResources for ``rejects``."""
    from triton.runtime.errors import OutOfResources

    def launch(cfg, final):
        i = cfg["BM"] // 16 - 1
        if i in rejects:
            raise OutOfResources(300000, 101376, "shared memory")
        log.append((i, final))
        return i
    return launch


def test_tuning_cache_is_keyed_by_device_model(monkeypatch):
    """A config tuned on one GPU model / capability is not replayed on another: the second one
    is timed afresh (here it finds another config fastest)."""
    configs = _fake_configs(3)
    device = {"sig": ("NVIDIA H100", (9, 0)), "fastest": 2}
    monkeypatch.setattr(C, "_TUNED", {})
    monkeypatch.setattr(C, "_device_signature", lambda d: device["sig"])

    def fake_do_bench(fn, **_):
        return 0.0 if fn() == device["fastest"] else 1.0
    monkeypatch.setattr(C.triton.testing, "do_bench", fake_do_bench)
    log = []
    assert C.tuned(("fwd", 1), torch.device("cpu"), configs, _fake_launch(log)) == 2
    assert C.tuned(("fwd", 1), torch.device("cpu"), configs, _fake_launch(log)) == 2
    device.update(sig=("NVIDIA A100", (8, 0)), fastest=0)
    assert C.tuned(("fwd", 1), torch.device("cpu"), configs, _fake_launch(log)) == 0
    assert len(C._TUNED) == 2 and {k[0] for k in C._TUNED} == {("NVIDIA H100", (9, 0)),
                                                               ("NVIDIA A100", (8, 0))}
    finals = [i for i, final in log if final]
    assert finals == [2, 2, 0]


def test_cached_config_that_no_longer_fits_falls_back(monkeypatch):
    """A cached config the GPU rejects (OutOfResources) is dropped and the shape re-tuned among
    the others, instead of crashing; only when nothing fits is it an error, naming the configs."""
    configs = _fake_configs(3)
    monkeypatch.setattr(C, "_TUNED", {})
    monkeypatch.setattr(C.triton.testing, "do_bench", lambda fn, **_: float(fn()))
    log = []
    assert C.tuned(("k",), torch.device("cpu"), configs, _fake_launch(log)) == 0
    assert C.tuned(("k",), torch.device("cpu"), configs, _fake_launch(log, rejects={0})) == 1
    assert list(C._TUNED.values()) == [configs[1]]
    with pytest.raises(RuntimeError, match=r"no config fits.*BM32_BN16\S* \(cached\).*BM16_BN16.*BM48_BN16"):
        C.tuned(("k",), torch.device("cpu"), configs, _fake_launch(log, rejects={0, 1, 2}))


def test_no_tuning_during_cuda_graph_capture(monkeypatch):
    """Under graph capture nothing is timed (timing synchronises): the first config that fits
    is launched once and not cached, so eager calls still tune."""
    configs = _fake_configs(3)
    monkeypatch.setattr(C, "_TUNED", {})
    monkeypatch.setattr(C, "_device_signature", lambda d: ("GPU", (8, 9)))
    monkeypatch.setattr(C.torch.cuda, "is_current_stream_capturing", lambda: True)

    def no_timing(fn, **_):
        raise AssertionError("timed during capture")
    monkeypatch.setattr(C.triton.testing, "do_bench", no_timing)
    log = []
    assert C.tuned(("k",), torch.device("cuda"), configs, _fake_launch(log, rejects={0})) == 1
    assert log == [(1, True)] and C._TUNED == {}


class _GridRecorder:
    """Stands in for a kernel: records the launch grid instead of running."""

    def __init__(self):
        self.grids = []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return lambda *args, **kwargs: None


def test_operands_of_2_31_elements_or_more_are_accepted(monkeypatch):
    """Element offsets are int64: a forward whose output has more than 2**31 elements, a data
    gradient into such a previous conv output and a weight gradient over such an input pass the
    launchers' checks and launch one grid covering every pixel (meta tensors, kernels recorded);
    only pixel counts (N*H*W) are bounded by int32."""
    for name in ("conv3x3_kernel", "conv3x3_dgrad_kernel", "conv3x3_wgrad_kernel"):
        monkeypatch.setattr(K, name, _GridRecorder())
    nb, h, w, c = 21000, 40, 40, 64  # 33.6e6 pixels x 64 channels = 2.15e9 elements
    assert nb * h * w * c >= 2 ** 31
    meta = torch.device("meta")
    x = torch.empty(nb, h, w, c, dtype=torch.float16, device=meta)
    wp = torch.empty(9 * c, c, dtype=torch.float16, device=meta)
    ones = torch.ones(c, device=meta)
    y, _ = K.conv3x3(x, wp, bn=K.BatchNormArgs(ones, ones, ones, ones))
    assert y.shape == (nb, h, w, c)
    cfg = C.INTERPRETER_CONFIG
    (grid,), = K.conv3x3_kernel.grids
    assert grid == -(-nb * h * w // cfg["BM"]) * -(-c // 32)
    dy = torch.empty(nb, h // 2, w // 2, c, dtype=torch.float16, device=meta)
    dz, _, _ = K.conv3x3_dgrad(dy, wp, bn=(dy, torch.empty(4, c, device=meta)),
                               prev=(x, torch.empty(4, c, device=meta)), pool=True)
    assert dz.shape == x.shape and len(K.conv3x3_dgrad_kernel.grids) == 1
    dw, db = K.conv3x3_wgrad(x, torch.empty(nb, h, w, c, dtype=torch.float16, device=meta))
    assert dw.shape == (9 * c, c) and len(K.conv3x3_wgrad_kernel.grids) == 1
    too_many = torch.empty(2 ** 31 // (h * w) + 1, h, w, 1, dtype=torch.float16, device=meta)
    with pytest.raises(ValueError, match="pixels"):
        K.conv3x3(too_many, torch.empty(9, c, dtype=torch.float16, device=meta))


#: the eight VGG conv layers at batch 640: (C_in, C_out, H of the conv, pool on the input)
VGG_LAYERS = [(1, 64, 40, False), (64, 64, 40, False), (64, 128, 20, True), (128, 128, 20, False),
              (128, 256, 10, True), (256, 256, 10, False), (256, 512, 5, True),
              (512, 512, 5, False)]


@requires_cuda
@pytest.mark.parametrize("cin,cout,h,pool", VGG_LAYERS)
def test_vgg_shapes_on_gpu(cin, cout, h, pool):
    dtype, nb = torch.float16, 640
    hin = 2 * h if pool else h
    x = torch.randn(nb, cin, hin, hin, device="cuda").half().float()
    weight = (torch.randn(cout, cin, 3, 3, device="cuda") / (3 * cin ** 0.5)).half().float()
    bias = torch.randn(cout, device="cuda").half().float()
    scale, shift = torch.rand(cin, device="cuda") + 0.5, torch.randn(cin, device="cuda")
    if cin == 1:  # the first layer: no prologue
        scale = shift = None
    y, coef = K.conv3x3(_nhwc(x, dtype), K.pack_weight(weight, dtype), bias.half(),
                        scale=scale, shift=shift, pool=pool, bn=_stats_bn(cout, "cuda"))
    var = coef[1] ** -2
    z = _prologue_ref(x, scale, shift, False, pool)
    ref = F.conv2d(z, weight, bias, padding=1)
    torch.testing.assert_close(_nchw(y), ref, **tolerance("conv3x3", dtype))
    torch.testing.assert_close(var, _nchw(y).var((0, 2, 3), unbiased=False), rtol=1e-3, atol=1e-3)
    dy = torch.randn_like(ref).half()
    dx = K.conv3x3_dgrad(_nhwc(dy, dtype), K.pack_weight_dgrad(weight, dtype))
    torch.testing.assert_close(_nchw(dx), torch.nn.grad.conv2d_input(z.shape, weight, dy.float(),
                                                                     padding=1),
                               **tolerance("conv3x3", dtype))
    dw, _ = K.conv3x3_wgrad(_nhwc(x, dtype), _nhwc(dy, dtype), scale=scale, shift=shift,
                            pool=pool)
    ref_dw = torch.nn.grad.conv2d_weight(z.half().float(), weight.shape, dy.float(), padding=1)
    torch.testing.assert_close(K.unpack_weight_grad(dw, cin), ref_dw, atol=5e-1, rtol=5e-2)


# ----------------------------------------------------------------------------------------------
# Integration: fer_fast.VGG(backend="triton") (op "stack") against the eager VGG.
import copy  # noqa: E402

import fer_fast  # noqa: E402
from fer_fast.block import ORDERS  # noqa: E402


def _vgg_pair(recipe, seed=0, width=1 / 16):
    torch.manual_seed(seed)
    ref = fer_fast.VGG(recipe, width=width, dropout=0.0).to(DEVICE)
    fast = copy.deepcopy(ref)
    fast.backend = "triton"
    return ref, fast


def _crops(batch, seed, size=32):
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


FEATURE_CASES = [("released", torch.float32, True), ("paper", torch.float32, True),
                 ("released", torch.float32, False), ("paper", torch.float32, False),
                 ("released", torch.float16, True), ("paper", torch.float16, True)]


def _check(actual, expected, tol, eager_amp=None, msg=""):
    """fp32: assert_close, atol relative to the reference's largest magnitude (through eight
    BatchNorms over a handful of values the gradients reach the hundreds, and summation order
    alone moves their near-zero entries by ~1e-6 of that). fp16: the error against the fp32
    reference must be within twice that of eager autocast (``eager_amp``) plus the tolerance
    relative to the reference's largest magnitude: fp16 rounding is amplified the same way,
    far beyond one block's tolerance, for eager autocast as much as for this backend."""
    scale = max(1.0, expected.abs().max().item())
    if eager_amp is None:
        torch.testing.assert_close(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale,
                                   msg=msg)
        return
    err = (actual.float() - expected).abs().max().item()
    eager_err = (eager_amp.float() - expected).abs().max().item()
    bound = 2 * eager_err + tol["atol"] * scale
    assert err <= bound, f"{msg}: max error {err:.3g} > {bound:.3g} (eager autocast: {eager_err:.3g})"


@pytest.mark.parametrize("recipe,dtype,training", FEATURE_CASES)
def test_features_forward_backward_and_running_stats(recipe, dtype, training):
    _features_parity(recipe, dtype, training, batch=4, size=16, width=1 / 16)


@requires_cuda
@pytest.mark.parametrize("recipe", ["released", "paper"])
def test_features_full_width_on_gpu(recipe):
    """The real channel counts (64..512, K-aligned configs, tuning) and crop size (40x40)."""
    _features_parity(recipe, torch.float16, True, batch=64, size=40, width=1.0)


def _features_parity(recipe, dtype, training, *, batch, size, width):
    """Whole conv stack (crops -> stage 4) against the eager fp32 VGG: output, input gradient,
    every conv / BN parameter gradient, running statistics; fp16 / bf16 (autocast) also against
    eager autocast (see ``_check``). Eval mode runs after one training forward, so the running
    statistics it uses are not the initial (0, 1)."""
    half = dtype != torch.float32  # autocast to dtype
    ref, fast = _vgg_pair(recipe, width=width)
    models = [ref, fast] + ([copy.deepcopy(ref)] if half else [])
    if not training:
        warm = _crops(batch, 4, size=size)
        with torch.no_grad():
            for model in models:
                model.features(warm)
                model.eval()
    x = _crops(batch, 5, size=size)  # e.g. 16 -> 8 -> 4 -> 2 -> 1
    out_shape = (batch, ref.conv4b.out_channels, size // 16, size // 16)
    g = torch.randn(*out_shape, generator=torch.Generator().manual_seed(6))
    outs, dxs = [], []
    for model, amp in zip(models, (False, half, half)):
        xi = x.clone().requires_grad_()
        with torch.autocast(DEVICE, dtype=dtype if half else torch.float16, enabled=amp):
            out = model.features(xi)
        out.backward(g.to(DEVICE, out.dtype))
        outs.append(out)
        dxs.append(xi.grad)
    assert outs[1].dtype == dtype
    amp = (lambda t: t[2]) if half else (lambda t: None)
    tol_f, tol_b = tolerance("block_forward", dtype), tolerance("block_backward", dtype)
    _check(outs[1], outs[0], tol_f, amp(outs), "output")
    _check(dxs[1], dxs[0], tol_b, amp(dxs), "input gradient")
    named = [dict(m.named_parameters()) for m in models]
    for name, p_ref in named[0].items():
        p = named[1][name]
        if training and recipe == "released" and name.startswith("conv") and name.endswith("bias"):
            # conv -> training-mode BN: the conv bias has gradient exactly 0; both are rounding
            # noise of sums whose terms are ~|dW|, so compare against that scale
            scale = named[0][name.replace("bias", "weight")].grad.abs().max()
            assert p.grad.abs().max() <= tol_b["rtol"] * 0.1 * scale, name
        elif name.startswith(("conv", "bn")):
            _check(p.grad, p_ref.grad, tol_b, named[2][name].grad if half else None, name)
    for (name, b_ref), b in zip(ref.named_buffers(), fast.buffers()):
        torch.testing.assert_close(b, b_ref, **tolerance("running_stats", dtype), msg=name)


class _LaunchCounter:
    """Stands in for a Triton kernel and counts ``kernel[grid](...)`` launches."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


@pytest.mark.parametrize("training", [True, False])
def test_features_forward_launches_one_kernel_per_block_plus_the_head(training, monkeypatch):
    """Crops -> features: per block ONE conv kernel (normalise / ReLU / pool of the previous
    block in its prologue; statistics, coefficients and running statistics of its own BN in its
    epilogue), then one apply launch for the last block's normalise + pool; no separate
    statistics, finalize or normalisation pass."""
    from fer_fast.kernels import bn_act
    counters = {}
    for module, name in ((K, "conv3x3_kernel"), (bn_act, "_finalize_kernel"),
                         (bn_act, "_stats_kernel"), (bn_act, "_apply_kernel")):
        counters[name] = _LaunchCounter(getattr(module, name))
        monkeypatch.setattr(module, name, counters[name])
    _, fast = _vgg_pair("released")
    fast.train(training)
    with torch.no_grad():
        fast.features(_crops(2, 8, size=16))
    launches = {name: c.launches for name, c in counters.items()}
    assert launches == {"conv3x3_kernel": 8, "_finalize_kernel": 0, "_stats_kernel": 0,
                        "_apply_kernel": 1}


def test_features_backward_launches_per_block(monkeypatch):
    """Backward: bn_act's two kernels once for the last block; then per block a weight-gradient
    kernel, and per block boundary ONE data-gradient kernel (BN / ReLU backward of the later
    block in its prologue; pool / ReLU backward, BN-gradient sums and coefficients of the
    earlier one in its epilogue); no data gradient into crops that need none."""
    from fer_fast.kernels import bn_act
    names = ((K, "conv3x3_wgrad_kernel"), (K, "conv3x3_dgrad_kernel"), (bn_act, "_bwd_reduce_kernel"),
             (bn_act, "_bwd_dy_kernel"))
    _, fast = _vgg_pair("paper")
    out = fast.features(_crops(2, 8, size=16))
    counters = {}
    for module, name in names:
        counters[name] = _LaunchCounter(getattr(module, name))
        monkeypatch.setattr(module, name, counters[name])
    out.backward(torch.randn_like(out))
    launches = {name: c.launches for name, c in counters.items()}
    assert launches == {"conv3x3_wgrad_kernel": 8, "conv3x3_dgrad_kernel": 7,
                        "_bwd_reduce_kernel": 1, "_bwd_dy_kernel": 1}


@pytest.mark.parametrize("order", ORDERS)
def test_conv_bn_relu_stack_module_matches_eager(order):
    """``fer_fast.ConvBNReLUStack`` (for users' own networks): any chain of blocks (here 3
    input channels, odd sizes 9x10 through two pools, channels 5 / 7 / 6) with the triton
    backend matches the eager blocks: output, input and parameter gradients, running stats."""
    from fer_fast import ConvBNReLUStack
    torch.manual_seed(3)
    ref = ConvBNReLUStack(3, [(5, False), (7, True), (6, True)], order=order).to(DEVICE)
    fast = copy.deepcopy(ref)
    fast.backend = "triton"
    x = torch.randn(2, 3, 9, 10, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    outs, grads = [], []
    for model in (ref, fast):
        xi = x.clone().requires_grad_()
        out = model(xi)
        out.backward(torch.cos(torch.arange(out.numel(), device=DEVICE)).view_as(out))
        outs.append(out)
        grads.append(xi.grad)
    assert outs[1].shape == (2, 6, 2, 2)
    tol_f, tol_b = tolerance("block_forward", torch.float32), tolerance("block_backward", torch.float32)
    _check(outs[1], outs[0], tol_f, msg="output")
    _check(grads[1], grads[0], tol_b, msg="input gradient")
    for (name, p_ref), p in zip(ref.named_parameters(), fast.parameters()):
        if order == "bn_relu" and name.endswith("conv.bias"):  # exactly 0 before a training BN
            assert p.grad.abs().max() <= 1e-4 * ref.blocks[0].conv.weight.grad.abs().max() + 1e-6
        else:
            _check(p.grad, p_ref.grad, tol_b, msg=name)
    for (name, b_ref), b in zip(ref.named_buffers(), fast.buffers()):
        torch.testing.assert_close(b, b_ref, **tolerance("running_stats", torch.float32), msg=name)
    with pytest.raises(ValueError, match="at least one block"):
        ConvBNReLUStack(3, [])


def _stack_step(model, x):
    """Two training steps of ``model``: (outputs, input gradients); parameter gradients add up."""
    outs, dxs = [], []
    for k in range(2):
        xi = (x + k).requires_grad_()
        out = model(xi)
        out.backward(torch.cos(torch.arange(out.numel(), device=DEVICE)).view_as(out))
        outs.append(out.detach())
        dxs.append(xi.grad)
    return outs, dxs


@in_fresh_process
def test_conv_bn_relu_stack_under_torch_compile_fullgraph():
    """``torch.compile(fullgraph=True)`` (aot_eager: fake implementations, functionalised
    running-statistics updates) over a triton stack gives exactly the uncompiled stack's
    outputs, gradients, running statistics and batch counters over two steps; a BatchNorm with
    momentum None (cumulative average, read from the counter inside the op) included, checked
    against torch's own modules (conv -> ReLU -> BatchNorm2d -> pool)."""
    from fer_fast import ConvBNReLUStack
    torch.manual_seed(5)
    ref = ConvBNReLUStack(2, [(4, True), (3, False)], order="relu_bn").to(DEVICE)
    ref.blocks[1].bn.momentum = None
    eager_fast, compiled_fast = copy.deepcopy(ref), copy.deepcopy(ref)
    eager_fast.backend = compiled_fast.backend = "triton"
    torch_modules = torch.nn.Sequential(*[
        m for b in ref.blocks
        for m in (b.conv, torch.nn.ReLU(), b.bn) + ((torch.nn.MaxPool2d(2),) if b.pool else ())])
    x = torch.randn(2, 2, 6, 5, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    compiled = torch.compile(compiled_fast, backend="aot_eager", fullgraph=True)
    got, want, ref_run = (_stack_step(m, x) for m in (compiled, eager_fast, torch_modules))
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for (name, p), q in zip(compiled_fast.named_parameters(), eager_fast.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)
    for (name, b), b_eager, b_ref in zip(compiled_fast.named_buffers(), eager_fast.buffers(),
                                         ref.buffers()):
        torch.testing.assert_close(b, b_eager, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(b, b_ref, **tolerance("running_stats", torch.float32), msg=name)
    assert int(compiled_fast.blocks[1].bn.num_batches_tracked) == 2
    _check(got[0][1], ref_run[0][1], tolerance("block_forward", torch.float32), msg="output")


def test_stack_ops_registered_with_fake_impls():
    """The stack's custom ops: schemas (no input mutated or aliased), fake implementations
    with the real outputs' shapes, strides and dtypes (train and eval, with and without the
    input and weight gradients), autograd registration."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 2, 5, 4, generator=gen).to(DEVICE)
    weights = [(torch.randn(c_out, c_in, 3, 3, generator=gen) / 3).to(DEVICE)
               for c_in, c_out in ((2, 4), (4, 3))]
    vectors = [[torch.rand(c, generator=gen).to(DEVICE) + 0.5 for c in (4, 3)] for _ in range(5)]
    biases, gammas, betas, means, variances = vectors
    counters = [torch.tensor(3, device=DEVICE) for _ in range(2)]
    for training in (True, False):
        args = (x, weights, biases, gammas, betas, means, variances, counters, [0.1, 0.0],
                [False, True], [1e-5, 1e-3], [True, False], "relu_bn", training, x.dtype)
        torch.library.opcheck(torch.ops.fer_fast.conv_stack_fwd.default, args,
                              test_utils=("test_schema", "test_faketensor",
                                          "test_autograd_registration"))
        out, ys, coefs, _, _ = torch.ops.fer_fast.conv_stack_fwd(*args)
        for grads in (([True, False], True), ([False, True], False)):
            torch.library.opcheck(
                torch.ops.fer_fast.conv_stack_bwd.default,
                (torch.randn_like(out), x, weights, ys, coefs, [True, False], "relu_bn", training,
                 x.dtype, *grads, False), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.skipif(DEVICE == "cuda", reason="bfloat16 runs on a GPU: the GPU parity tests "
                    "cover it; the refusal is for the Triton interpreter")
def test_stack_refuses_bfloat16_under_the_interpreter():
    """tl.dot on bfloat16 returns garbage in the Triton interpreter: a clear error, bf16 input
    or bf16 autocast, instead of silently wrong numbers."""
    from fer_fast import ConvBNReLUStack
    stack = ConvBNReLUStack(1, [(4, False)], backend="triton")
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(ValueError, match="triton stack backend.*bfloat16.*TRITON_INTERPRET"):
        stack.to(torch.bfloat16)(x.bfloat16())
    with pytest.raises(ValueError, match="bfloat16.*TRITON_INTERPRET"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stack.float()(x)
    assert int(stack.blocks[0].bn.num_batches_tracked) == 0  # a refused call counts no batch
    xb, wp = torch.randn(2, 4, 4, 3, dtype=torch.bfloat16), torch.randn(27, 5, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="conv3x3.*bfloat16.*TRITON_INTERPRET"):
        K.conv3x3(xb, wp)  # the kernel library's own launcher
    with pytest.raises(ValueError, match="conv3x3.*bfloat16.*TRITON_INTERPRET"):
        K.conv3x3_wgrad(xb, torch.randn(2, 4, 4, 5, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="conv3x3.*bfloat16.*TRITON_INTERPRET"):
        K.conv3x3_dgrad(torch.randn(2, 4, 4, 5, dtype=torch.bfloat16),
                        torch.randn(45, 3, dtype=torch.bfloat16))


@requires_cuda
def test_features_bfloat16_autocast_on_gpu():
    """bf16 parity where it is computed right (a GPU): the whole stack under bf16 autocast."""
    _features_parity("released", torch.bfloat16, True, batch=8, size=16, width=1 / 16)


def test_features_rejects_stacks_it_cannot_run():
    from fer_fast.stack import conv_bn_act_stack_triton
    _, fast = _vgg_pair("released")
    convs = [getattr(fast, f"conv{s}") for s in ("1a", "1b")]
    bns = [getattr(fast, f"bn{s}") for s in ("1a", "1b")]
    x = _crops(2, 9, size=8)
    bns[1].eval()
    with pytest.raises(ValueError, match="same mode"):
        conv_bn_act_stack_triton(x, convs, bns, [False, True], order="bn_relu")
    bns[1].train()
    bn = torch.nn.BatchNorm2d(bns[1].num_features, affine=False).to(DEVICE)
    with pytest.raises(ValueError, match="affine BatchNorms"):
        conv_bn_act_stack_triton(x, convs, [bns[0], bn], [False, True], order="bn_relu")


@pytest.mark.parametrize("recipe", ["released", "paper"])
def test_features_fp16_autocast_propagates_inf(recipe):
    """An inf input (or an overflow) must reach the output and the parameter gradients, so
    that GradScaler sees it and skips the step."""
    _, fast = _vgg_pair(recipe)
    x = _crops(2, 7, size=16)
    with torch.autocast(DEVICE, dtype=torch.float16):
        assert fast.features(x).dtype == torch.float16
        x[0, 0, 3, 4] = float("inf")
        out = fast.features(x)
    assert not torch.isfinite(out).all(), "an inf input must not vanish from the output"
    out.float().sum().backward()
    grads = [p.grad for p in fast.parameters() if p.grad is not None]
    assert grads and not all(torch.isfinite(g).all() for g in grads), \
        "the non-finite loss must reach the gradients"
