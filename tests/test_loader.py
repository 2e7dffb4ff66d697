"""DeviceLoader / TenCropBatches: shapes, labels, determinism per (seed, epoch), the same
batches whatever the number of processes."""
import pytest
import torch

from fer_fast.augmentation import sample_params, ten_crop
from fer_fast.data import Split
from fer_fast.loader import DeviceLoader, TenCropBatches, random_key


def _split(n: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 48, 48), dtype=torch.uint8, generator=g),
                 torch.randint(0, 7, (n,), generator=g))


def _epoch(loader):
    return [(x.clone(), p, y.clone()) for x, p, y, _ in loader]


def _same(a, b) -> bool:
    """Two epochs of the loader drew the same images, parameters and labels."""
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb)
        and torch.equal(pa.geom, pb.geom) and torch.equal(pa.erase, pb.erase)
        for (xa, pa, ya), (xb, pb, yb) in zip(a, b))


def test_shapes_labels_and_partial_last_batch():
    split = _split(23)
    loader = DeviceLoader(split, batch_size=8, device="cpu", seed=3)
    batches = _epoch(loader)
    assert len(loader) == len(batches) == 3
    assert [y.numel() for _, _, y in batches] == [8, 8, 7]  # the partial batch is kept
    for x, p, y in batches:
        assert x.shape == (y.numel(), 48, 48) and x.dtype == torch.uint8
        assert len(p) == y.numel()
    # every image appears exactly once per epoch: its label multiset is preserved
    seen = torch.cat([y for _, _, y in batches])
    assert torch.equal(seen.sort().values, split.labels.sort().values)


def test_batch_is_permuted_images_and_their_params():
    """The epoch's order from the key of (seed, epoch), each batch's params from the key of
    (seed, epoch, batch): replay it by hand."""
    split = _split(10, seed=1)
    loader = DeviceLoader(split, batch_size=4, device="cpu", seed=11, recipe="paper")
    x, params, y, shard = list(loader.batches(3))[1]
    idx = torch.randperm(10, generator=torch.Generator().manual_seed(random_key(11, 3)))[4:8]
    expected = sample_params("paper", 4, torch.Generator().manual_seed(random_key(11, 3, 1)))
    assert torch.equal(x, split.images[idx]) and torch.equal(y, split.labels[idx])
    assert torch.equal(params.geom, expected.geom) and torch.equal(params.erase, expected.erase)
    assert shard == (random_key(11, 3, 1), 0, 4, 4, 1)


def test_deterministic_per_seed_and_epoch():
    split = _split(20, seed=2)
    a = DeviceLoader(split, batch_size=6, device="cpu", seed=5)
    b = DeviceLoader(split, batch_size=6, device="cpu", seed=5)
    c = DeviceLoader(split, batch_size=6, device="cpu", seed=6)
    first_a, first_b, first_c = _epoch(a), _epoch(b), _epoch(c)
    assert _same(first_a, first_b) and not _same(first_a, first_c)
    second_a = _epoch(a)
    assert not _same(second_a, first_a)  # a new permutation and new params
    fresh = DeviceLoader(split, batch_size=6, device="cpu", seed=5)
    assert _same(second_a, _epoch(fresh.batches(2)))  # epoch 2 without epoch 1 before it


@pytest.mark.parametrize("world", [2, 3])
def test_processes_share_the_same_global_batches(world):
    """N processes' batches, concatenated in rank order, are the one process's batches: the
    same images, labels and augmentation parameters, whatever N (sizes differ by at most 1)."""
    split = _split(23, seed=4)
    one = _epoch(DeviceLoader(split, batch_size=8, device="cpu", seed=7).batches(2))
    ranks = [list(DeviceLoader(split, batch_size=8, device="cpu", seed=7, rank=r,
                               world=world).batches(2)) for r in range(world)]
    for b, whole in enumerate(one):
        parts = [r[b] for r in ranks]
        assert all(p.shard.total == whole[2].numel() and p.shard.world == world for p in parts)
        merged = (torch.cat([p.images for p in parts]),
                  type(whole[1])(torch.cat([p.params.geom for p in parts]),
                                 torch.cat([p.params.erase for p in parts])),
                  torch.cat([p.labels for p in parts]))
        assert _same([whole], [merged])


def test_a_batch_too_small_for_the_processes_is_refused():
    with pytest.raises(ValueError, match="batch of 1 images .* cannot be split over 2"):
        DeviceLoader(_split(9), batch_size=4, device="cpu", rank=0, world=2)


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
