"""Device-resident data: a whole split lives on the training device as one uint8 tensor.

Per training step the loader gathers a batch of images by index, samples the augmentation
parameters with a seeded generator on that device, and hands both to the training step, which
augments them; nothing is copied between host and device and nothing waits for the device (no
``.item()``/``.cpu()``).

Randomness: one ``torch.Generator`` on the device drives both the epoch permutation
(``torch.randperm``) and the augmentation parameters, in that order, so its state at an epoch
boundary (``state_dict``) fixes everything the following epochs draw: restoring it restarts
the next epoch exactly as an uninterrupted run would have.

The last, partial batch of an epoch is kept (as torch's DataLoader does by default, and as
the released code trains): every image is seen once per epoch.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .augmentation import RECIPES, AugmentParams, sample_params, ten_crop
from .data import SPLITS, FERData, Split, load_data
from .synthetic import SyntheticSpec

__all__ = ["DeviceLoader", "TenCropBatches", "load_run_data"]


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
    """Training batches ``(images uint8 [b, 48, 48], params, labels [b])`` of a device-resident
    split in a seeded random order, ``params`` the batch's ``AugmentParams`` of ``recipe``: the
    training step augments them (``fer_fast.step.TrainStep``), so the augmentation's backend and
    precision have one owner.
    """

    def __init__(self, split: Split, *, batch_size: int, device: torch.device | str,
                 recipe: str = "released", seed: int = 0):
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {RECIPES}")
        super().__init__(split, batch_size, device)
        self.recipe = recipe
        self.generator = torch.Generator(self.device)
        self.generator.manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, AugmentParams, torch.Tensor]]:
        n, g = self.images.shape[0], self.generator
        order = torch.randperm(n, generator=g, device=self.device)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            images = self.images.index_select(0, idx)
            params = sample_params(self.recipe, idx.shape[0], g)
            yield images, params, self.labels.index_select(0, idx)

    def state_dict(self) -> dict:
        """Generator state; valid for exact resume when taken at an epoch boundary."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())


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
