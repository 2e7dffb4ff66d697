"""The VGG and its blocks: shapes, released parameter names, both orders, checkpoints."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fer_fast import VGG, ConvBNReLU2d, conv_bn_act
from fer_fast.model import stage_channels

RELEASED_KEYS = [f"{kind}{s}{ab}.{p}" for s in "1234" for ab in "ab"
                 for kind, ps in (("conv", ("weight", "bias")),
                                  ("bn", ("weight", "bias", "running_mean", "running_var",
                                          "num_batches_tracked")))
                 for p in ps] + [f"lin{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")]


def _released_like_model():
    """The authors' module layout, written out: conv*, bn*, lin*, one pool, one dropout."""
    class Released(nn.Module):
        def __init__(self):
            super().__init__()
            chans = [1, 64, 64, 128, 128, 256, 256, 512, 512]
            names = [f"{s}{ab}" for s in "1234" for ab in "ab"]
            for i, n in enumerate(names):
                setattr(self, f"conv{n}", nn.Conv2d(chans[i], chans[i + 1], 3, padding=1))
                setattr(self, f"bn{n}", nn.BatchNorm2d(chans[i + 1]))
            self.pool = nn.MaxPool2d(2, 2)
            self.lin1, self.lin2, self.lin3 = nn.Linear(2048, 4096), nn.Linear(4096, 4096), nn.Linear(4096, 7)
            self.drop = nn.Dropout(0.2)
    return Released()


def test_parameter_names_and_shapes_are_the_released_ones():
    model = VGG()
    assert sorted(model.state_dict()) == sorted(RELEASED_KEYS)
    released = _released_like_model().state_dict()
    for k, v in model.state_dict().items():
        assert v.shape == released[k].shape, k


def test_released_checkpoint_loads_and_gives_the_same_logits(tmp_path):
    ref = _released_like_model()
    for m in ref.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save({"params": ref.state_dict(), "logs": {}}, tmp_path / "released.pt")
    model = VGG().eval()
    model.load_state_dict(torch.load(tmp_path / "released.pt")["params"])
    x = torch.rand(3, 1, 40, 40)

    def released_forward(m, x):  # the authors' forward (bn -> relu), eval mode
        for s in "1234":
            for ab in "ab":
                x = F.relu(getattr(m, f"bn{s}{ab}")(getattr(m, f"conv{s}{ab}")(x)))
            x = m.pool(x)
        x = x.flatten(1)
        x = F.relu(m.drop(m.lin1(x)))
        x = F.relu(m.drop(m.lin2(x)))
        return m.lin3(x)

    torch.testing.assert_close(model(x), released_forward(ref.eval(), x))


@pytest.mark.parametrize("recipe", ["released", "paper"])
@pytest.mark.parametrize("width", [1.0, 0.125])
def test_output_shape(recipe, width):
    model = VGG(recipe, width=width)
    assert model(torch.rand(2, 1, 40, 40)).shape == (2, 7)
    c = stage_channels(width)
    assert model.conv4b.out_channels == c[3] and model.lin1.in_features == c[3] * 4


def test_orders_differ_and_follow_the_recipe():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6)
    block = ConvBNReLU2d(3, 5, order="bn_relu")
    y = block(x)
    torch.testing.assert_close(y, F.relu(block.bn(block.conv(x))))
    block.order = "relu_bn"
    y2 = block(x)
    assert (y2 < 0).any() and not (y < 0).any()  # BatchNorm last: negative outputs survive
    assert VGG("released").order == "bn_relu" and VGG("paper").order == "relu_bn"


def test_block_module_state_dict_and_running_stats_match_batchnorm():
    torch.manual_seed(0)
    block = ConvBNReLU2d(3, 5, pool=True)
    assert sorted(block.state_dict()) == sorted(
        [f"conv.{p}" for p in ("weight", "bias")]
        + [f"bn.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")])
    conv, bn = nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5)
    conv.load_state_dict(block.conv.state_dict())
    x = torch.randn(4, 3, 7, 7)
    y = block(x)
    ref = F.max_pool2d(F.relu(bn(conv(x))), 2, 2)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(block.bn.running_var, bn.running_var)
    assert block.bn.num_batches_tracked.item() == 1 == bn.num_batches_tracked.item()
    block.eval(), bn.eval()
    torch.testing.assert_close(block(x), F.max_pool2d(F.relu(bn(conv(x))), 2, 2))


@pytest.mark.parametrize("backend", ["eager", "fused", "fused-eager-math", "triton"])
def test_momentum_none_is_the_cumulative_average_of_batchnorm(backend, monkeypatch):
    """BatchNorm2d(momentum=None) averages the batch statistics over all steps so far (factor
    1 / num_batches_tracked); every backend's running statistics follow it, after 1 and 3 steps.
    The fused and triton kernels run under the Triton interpreter on a CPU."""
    from fer_fast.kernels import bn_act
    from fer_fast import ConvBNReLUStack
    if backend == "fused-eager-math":
        monkeypatch.setattr(bn_act, "runs_on", lambda device: False)
    torch.manual_seed(5)
    stack = ConvBNReLUStack(2, [(3, False), (4, True)], backend=backend.split("-")[0])
    ref = [(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3, momentum=None)),
           (nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=None))]
    for block, (conv, bn) in zip(stack.blocks, ref):
        block.bn.momentum = None
        conv.load_state_dict(block.conv.state_dict())
    g = torch.Generator().manual_seed(6)
    for step in range(1, 4):
        x = 1.5 + torch.randn(3, 2, 6, 7, generator=g)  # a mean far from the initial 0
        stack(x)
        y = F.relu(ref[0][1](ref[0][0](x)))
        F.relu(ref[1][1](ref[1][0](y)))
        if step in (1, 3):
            for block, (_, bn) in zip(stack.blocks, ref):
                assert block.bn.num_batches_tracked.item() == step
                torch.testing.assert_close(block.bn.running_mean, bn.running_mean,
                                           rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(block.bn.running_var, bn.running_var,
                                           rtol=1e-4, atol=1e-5)


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="recipe"):
        VGG("nope")
    with pytest.raises(ValueError, match="order"):
        ConvBNReLU2d(1, 2, order="relu_relu")
    with pytest.raises(ValueError, match="backend"):
        conv_bn_act(torch.rand(1, 1, 4, 4), nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2),
                    order="bn_relu", pool=False, backend="nope")


def test_auto_backend_on_cpu_runs_the_eager_blocks():
    from fer_fast import backends
    assert backends.auto_choice("block", "cpu") == "eager"  # "fused" on CPU is eager math
    assert backends.auto_choice("stack", "cpu") is None  # Triton only by name on CPU
    torch.manual_seed(0)
    auto, eager = VGG(width=0.0625, backend="auto"), VGG(width=0.0625, backend="eager")
    eager.load_state_dict(auto.state_dict())
    x = torch.rand(4, 1, 40, 40)
    torch.testing.assert_close(auto.eval()(x), eager.eval()(x), rtol=0, atol=0)
