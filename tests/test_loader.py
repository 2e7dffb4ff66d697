"""DeviceLoader / TenCropBatches: shapes, labels per crop, determinism per seed, exact resume."""
import pytest
import torch

from fer_fast.augmentation import augment_ref, sample_params, ten_crop
from fer_fast.data import Split
from fer_fast.loader import DeviceLoader, TenCropBatches


def _split(n: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 48, 48), dtype=torch.uint8, generator=g),
                 torch.randint(0, 7, (n,), generator=g))


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_shapes_labels_and_partial_last_batch():
    split = _split(23)
    loader = DeviceLoader(split, batch_size=8, device="cpu", seed=3)
    batches = _epoch(loader)
    assert len(loader) == len(batches) == 3
    assert [y.numel() for _, y in batches] == [80, 80, 70]  # the partial batch is kept
    for x, y in batches:
        assert x.shape == (y.numel(), 1, 40, 40) and x.dtype == torch.float32
        assert 0 <= x.min() and x.max() <= 1
        assert torch.equal(y.view(-1, 10), y.view(-1, 10)[:, :1].expand(-1, 10))
    # every image appears exactly once per epoch: its label multiset is preserved
    seen = torch.cat([y.view(-1, 10)[:, 0] for _, y in batches])
    assert torch.equal(seen.sort().values, split.labels.sort().values)


def test_batch_is_augment_of_permuted_images():
    """The loader draws randperm then the params from one generator: replay it by hand."""
    split = _split(10, seed=1)
    loader = DeviceLoader(split, batch_size=4, device="cpu", seed=11, augment_backend="eager",
                          recipe="paper")
    x, y = next(iter(loader))
    g = torch.Generator().manual_seed(11)
    order = torch.randperm(10, generator=g)
    idx = order[:4]
    expected = augment_ref(split.images[idx].contiguous(), sample_params("paper", 4, g))
    assert torch.equal(x, expected)
    assert torch.equal(y, split.labels[idx].repeat_interleave(10))


def test_deterministic_per_seed_and_generator_state_restore():
    split = _split(20, seed=2)
    a = DeviceLoader(split, batch_size=6, device="cpu", seed=5)
    b = DeviceLoader(split, batch_size=6, device="cpu", seed=5)
    c = DeviceLoader(split, batch_size=6, device="cpu", seed=6)
    first_a, first_b, first_c = _epoch(a), _epoch(b), _epoch(c)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
               for p, q in zip(first_a, first_b))
    assert not torch.equal(first_a[0][0], first_c[0][0])
    state = a.state_dict()  # epoch boundary
    second_a = _epoch(a)
    assert not torch.equal(second_a[0][0], first_a[0][0])  # a new permutation and new params
    fresh = DeviceLoader(split, batch_size=6, device="cpu", seed=0)
    fresh.load_state_dict(state)
    replay = _epoch(fresh)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
               for p, q in zip(second_a, replay))


def test_auto_backend_matches_eager():
    split = _split(12, seed=4)
    auto = _epoch(DeviceLoader(split, batch_size=5, device="cpu", seed=1))
    eager = _epoch(DeviceLoader(split, batch_size=5, device="cpu", seed=1,
                                augment_backend="eager"))
    for (xa, ya), (xe, ye) in zip(auto, eager):
        torch.testing.assert_close(xa, xe, atol=1e-5, rtol=1e-5)
        assert torch.equal(ya, ye)


def test_ten_crop_batches_in_order():
    split = _split(9, seed=5)
    batches = TenCropBatches(split, batch_size=4, device="cpu", augment_backend="eager")
    got = list(batches)
    assert len(batches) == len(got) == 3
    assert torch.equal(torch.cat([x for x, _ in got]), ten_crop(split.images, backend="eager"))
    assert torch.equal(torch.cat([y for _, y in got]), split.labels)


def test_bad_input():
    with pytest.raises(ValueError, match="empty"):
        DeviceLoader(_split(0), batch_size=4, device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(Split(torch.zeros(4, 48, 48), torch.zeros(4, dtype=torch.int64)),
                     batch_size=4, device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        TenCropBatches(_split(4), batch_size=0, device="cpu")
    with pytest.raises(ValueError, match="recipe"):
        DeviceLoader(_split(4), batch_size=2, device="cpu", recipe="other")
