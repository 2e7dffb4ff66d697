"""Checkpoints: atomic writing, loading, and rebuilding the VGG a checkpoint was trained with.

Format (a superset of the authors' ``{'params': state_dict, 'logs': ...}``, so their released
files load): ``params`` (model state_dict), ``logs`` (metrics history), ``config`` (the run's
configuration, including ``recipe`` and ``width``), and, for exact resume, ``epoch``,
``optimizer``, ``scheduler``, ``scaler``, ``rng`` and ``best``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .model import VGG

__all__ = ["CheckpointError", "save_atomic", "load_checkpoint", "infer_architecture",
           "load_params", "model_from_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def save_atomic(obj, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``: a reader
    (or a crash) never sees a half-written checkpoint."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint dict that has at least ``params``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("params"), dict):
        raise CheckpointError(f"{path}: expected a dict with a 'params' state_dict, got "
                              f"{type(ckpt).__name__}"
                              + (f" with keys {sorted(ckpt)}" if isinstance(ckpt, dict) else ""))
    return ckpt


def infer_architecture(ckpt: dict, path: str | os.PathLike = "<checkpoint>") -> tuple[str, float]:
    """(recipe, width) of a checkpoint: from its config when present, else the width from the
    parameter shapes and the released recipe (both recipes have the same parameters)."""
    config = ckpt.get("config") or {}
    if "width" in config:
        return config.get("recipe", "released"), float(config["width"])
    # the hidden size (4096 * width, rounded) is the largest dimension: the finest estimate
    lin1 = ckpt["params"].get("lin1.weight")
    if not isinstance(lin1, torch.Tensor) or lin1.dim() != 2:
        raise CheckpointError(f"{path}: cannot infer the width: no 2-d 'lin1.weight' among "
                              f"the parameters (keys: {sorted(ckpt['params'])[:8]} ...)")
    return "released", lin1.shape[0] / 4096


def load_params(model: VGG, params: dict, path: str | os.PathLike = "<checkpoint>") -> None:
    """``model.load_state_dict(params)`` with an error naming the file and every mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    shapes = [f"{k}: checkpoint {list(params[k].shape)} vs model {list(v.shape)}"
              for k, v in expected.items()
              if k in params and tuple(params[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"missing keys {missing}" if missing else "",
                 f"unexpected keys {unexpected}" if unexpected else "",
                 f"shape mismatches [{'; '.join(shapes)}]" if shapes else ""]
        raise CheckpointError(
            f"{path}: checkpoint does not match VGG(recipe={model.recipe!r}, width={model.width}): "
            + ", ".join(p for p in parts if p))
    model.load_state_dict(params)


def model_from_checkpoint(path: str | os.PathLike, *, device="cpu",
                          backend: str = "eager") -> tuple[VGG, dict]:
    """Rebuild the VGG of a checkpoint, load its parameters; returns (model, checkpoint)."""
    ckpt = load_checkpoint(path)
    recipe, width = infer_architecture(ckpt, path)
    model = VGG(recipe, width=width, backend=backend)
    load_params(model, ckpt["params"], path)
    return model.to(device), ckpt

