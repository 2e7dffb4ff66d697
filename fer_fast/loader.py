"""Device-resident data: a whole split lives on the training device as one uint8 tensor.

Per training step the loader gathers a batch of images by index, samples the augmentation
parameters with a seeded generator on that device, and hands both to the training step, which
augments them; nothing is copied between host and device and nothing waits for the device (no
``.item()``/``.cpu()``).

Randomness is a function of (seed, epoch, batch index, row), not of a generator's history: the
epoch's order comes from a device generator seeded with the key of (seed, epoch), each global
batch's augmentation parameters (and the dropout masks the training step draws) from one seeded
with the key of (seed, epoch, batch). So epoch k of a run is the same whenever it is trained
(a resumed run continues exactly), and the same whatever the number of processes: in a
data-parallel run (``rank`` of ``world``) every process draws the whole global batch's
parameters and keeps its own rows (``distributed.shard``), so one process and N processes see
the same images with the same augmentation.

The last, partial batch of an epoch is kept (as torch's DataLoader does by default, and as
the released code trains): every image is seen once per epoch.
"""
from __future__ import annotations

import hashlib
from typing import Iterator, NamedTuple

import torch

from .augmentation import RECIPES, AugmentParams, sample_params, ten_crop
from .data import SPLITS, FERData, Split, load_data
from .distributed import shard
from .synthetic import SyntheticSpec

__all__ = ["DeviceLoader", "TenCropBatches", "TrainBatch", "Shard", "load_run_data",
           "random_key"]


def random_key(*parts) -> int:
    """A 63-bit seed for a torch.Generator from ``parts`` (seed, epoch, batch, ...)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class Shard(NamedTuple):
    """Where a process's batch sits in the global batch: rows [first, stop) of ``total``
    images, ``world`` processes, ``key`` the global batch's random key (its dropout masks)."""

    key: int
    first: int
    stop: int
    total: int
    world: int


class TrainBatch(NamedTuple):
    """One training batch of a process: uint8 ``images`` [b, 48, 48], their ``params``,
    int64 ``labels`` [b], and its ``shard`` of the global batch."""

    images: torch.Tensor
    params: AugmentParams
    labels: torch.Tensor
    shard: Shard


def load_run_data(path=None, *, seed: int = 0, synthetic_sizes=None, splits=SPLITS,
                  strict_images: bool = False) -> FERData:
    """The data of a run: ``path`` (FER2013 CSV or image folder), or the synthetic dataset of
    ``seed`` with ``synthetic_sizes`` = (train, val, test) (None: SyntheticSpec's defaults).
    ``splits``: those that must hold images; ``strict_images``: an image folder's images must
    already be 48x48 8-bit gray."""
    spec = None if synthetic_sizes is None else SyntheticSpec(*synthetic_sizes)
    return load_data(path, seed=seed, synthetic=spec, splits=splits, strict_images=strict_images)


class _DeviceSplit:
    """A split held on ``device`` as one uint8 image tensor and one int64 label tensor, served
    in batches of ``batch_size`` images (the partial last batch counts)."""

    def __init__(self, split: Split, batch_size: int, device: torch.device | str):
        what = type(self).__name__
        if batch_size < 1:
            raise ValueError(f"{what}: batch_size must be >= 1, got {batch_size}")
        images, labels = split.images, split.labels
        if images.dtype != torch.uint8 or images.dim() != 3:
            raise ValueError(f"{what}: images must be uint8 [N, 48, 48], got {images.dtype} "
                             f"{list(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{what}: labels must have shape [{images.shape[0]}], got "
                             f"{list(labels.shape)}")
        if images.shape[0] == 0:
            raise ValueError(f"{what}: the split is empty")
        self.images = images.to(torch.device(device)).contiguous()
        self.device = self.images.device  # with its index ("cuda" -> the current CUDA device)
        self.labels = labels.to(self.device, torch.int64).contiguous()
        self.batch_size = batch_size

    def __len__(self) -> int:
        """Batches per pass."""
        return -(-self.images.shape[0] // self.batch_size)

    @property
    def num_images(self) -> int:
        return self.images.shape[0]


class DeviceLoader(_DeviceSplit):
    """Training batches (``TrainBatch``: images uint8 [b, 48, 48], params, labels [b], shard) of
    a device-resident split in a seeded random order, ``params`` the batch's ``AugmentParams``
    of ``recipe``: the training step augments them (``fer_fast.step.TrainStep``), so the
    augmentation's backend and precision have one owner. ``batch_size`` is the global batch;
    process ``rank`` of ``world`` takes its rows of each (see the module docstring).

    ``batches(epoch)`` are the batches of epoch ``epoch`` (any int: the run's epochs count from
    1); iterating the loader gives epochs 1, 2, ... in turn.
    """

    def __init__(self, split: Split, *, batch_size: int, device: torch.device | str,
                 recipe: str = "released", seed: int = 0, rank: int = 0, world: int = 1):
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {RECIPES}")
        super().__init__(split, batch_size, device)
        n = self.images.shape[0]
        smallest = min(batch_size, n % batch_size or batch_size, n)
        if smallest < world:
            raise ValueError(f"{type(self).__name__}: a batch of {smallest} images (of "
                             f"{n} images in batches of {batch_size}) cannot be split over "
                             f"{world} processes; use fewer processes or another batch size")
        self.recipe, self.seed, self.rank, self.world = recipe, seed, rank, world
        self.generator = torch.Generator(self.device)
        self.next_epoch = 1

    def __iter__(self) -> Iterator[TrainBatch]:
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        return self.batches(epoch)

    def batches(self, epoch: int) -> Iterator[TrainBatch]:
        n, g = self.images.shape[0], self.generator
        g.manual_seed(random_key(self.seed, epoch))
        order = torch.randperm(n, generator=g, device=self.device)
        for b, start in enumerate(range(0, n, self.batch_size)):
            total = min(self.batch_size, n - start)
            first, stop = shard(total, self.rank, self.world)
            key = random_key(self.seed, epoch, b)
            g.manual_seed(key)
            params = sample_params(self.recipe, total, g)[first:stop]
            idx = order[start + first:start + stop]
            yield TrainBatch(self.images.index_select(0, idx), params,
                             self.labels.index_select(0, idx),
                             Shard(key, first, stop, total, self.world))


class TenCropBatches(_DeviceSplit):
    """Evaluation batches ``(crops [b*10, 1, 40, 40], labels [b])`` in split order: TenCrop(40)
    of the unmodified images, /255, no erasing. Average the logits of each image's 10 crops."""

    def __init__(self, split: Split, *, batch_size: int, device: torch.device | str,
                 augment_backend: str = "auto"):
        super().__init__(split, batch_size, device)
        self.augment_backend = augment_backend

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.images.shape[0], self.batch_size):
            images = self.images[start:start + self.batch_size]
            yield ten_crop(images, backend=self.augment_backend), \
                self.labels[start:start + self.batch_size]
