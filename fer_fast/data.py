"""FER2013 data held as uint8 tensors: CSV reader, image-folder reader, and the synthetic default.

(Interface fixed; bodies are being written — see issue 2.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Split", "FERData", "DataError", "SPLITS", "USAGE_TO_SPLIT", "read_fer_csv",
           "read_image_folder", "load_data"]

#: train = Training, validation = PrivateTest (drives LR schedule / best checkpoint), test = PublicTest.
SPLITS = ("train", "val", "test")
USAGE_TO_SPLIT = {"Training": "train", "PrivateTest": "val", "PublicTest": "test"}


class DataError(ValueError):
    """Bad input data; the message names the file (and line) and what is wrong."""


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, 48, 48]
    labels: torch.Tensor  # int64 [N], 0..6

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class FERData:
    train: Split
    val: Split
    test: Split
    source: str  # human-readable origin ("synthetic(seed=0)", a path, ...)

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; choose one of {SPLITS}")
        return getattr(self, name)


def read_fer_csv(path) -> FERData:
    raise NotImplementedError


def read_image_folder(root) -> FERData:
    raise NotImplementedError


def load_data(path=None, *, seed: int = 0) -> FERData:
    """``None``: the synthetic dataset; a ``.csv`` file: FER2013 CSV; a folder: image-folder copy."""
    raise NotImplementedError
