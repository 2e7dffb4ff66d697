"""Checkpoints: atomic writing, loading, and rebuilding the VGG a checkpoint was trained with.

Format (a superset of the authors' ``{'params': state_dict, 'logs': ...}``, so their released
files load): ``params`` (model state_dict), ``logs`` (metrics history), ``config`` (the run's
configuration, including ``recipe`` and ``width``), and, for exact resume, ``epoch``,
``optimizer``, ``scheduler``, ``scaler``, ``rng`` and ``best``.

Everything in a checkpoint is tensors and plain values, so it loads with
``torch.load(weights_only=True)``: loading never runs code from the file. A file that needs
full unpickling is refused unless the caller trusts it (``trust=True``, the commands'
``--trust-checkpoint``).

Integrity: next to each checkpoint ``X.pt`` the writer puts ``X.pt.sha256``, one line in the
format of ``sha256sum`` (``<64 hex digits>  X.pt``), so ``sha256sum -c X.pt.sha256`` checks it
too. Loading verifies it and refuses a mismatch; a file without one (the authors' release) loads
with a note. Both files are written to temporary names and renamed into place, the sidecar
last; a crash between the two renames leaves a new checkpoint with the old sidecar, which is
then reported as a mismatch rather than loaded unchecked.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from .block import RECIPE_ORDER
from .model import VGG, check_architecture

__all__ = ["CheckpointError", "save_atomic", "load_checkpoint", "infer_architecture",
           "load_params", "model_from_checkpoint", "checksum_path", "file_sha256"]

CHECKSUM_SUFFIX = ".sha256"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def checksum_path(path: str | os.PathLike) -> Path:
    """The sidecar holding the sha256 of checkpoint ``path``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_temp(folder: Path, name: str, write) -> str:
    """Write through ``write(file)`` into a temporary file of ``folder``, flushed to disk."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


class _WriteErrors:
    """A file for torch.save that keeps the OSError of a failed write: torch reports one only
    as "RuntimeError: [enforce fail at inline_container.cc] unexpected pos"."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        self.f.flush()


def _torch_save(obj, f) -> None:
    """torch.save into ``f``; a failed write (full disk, file size limit) is its OSError."""
    writer = _WriteErrors(f)
    try:
        torch.save(obj, writer)
    except RuntimeError as e:
        if writer.error is not None:
            raise writer.error from e
        raise


def save_atomic(obj, path: str | os.PathLike, *more: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``, and the
    same for its sha256 sidecar: a reader (or a crash, or a full disk) never sees a
    half-written checkpoint, and the previous one stays until the new one is complete.

    ``more`` paths get the same checkpoint; every file is written to its temporary name before
    any is renamed, so a full disk (an OSError, the temporary files removed) leaves all the
    previous ones as they were."""
    paths = [Path(p) for p in (path, *more)]
    temps: list[tuple[str, Path]] = []
    try:
        first = _write_temp(paths[0].parent, paths[0].name, lambda f: _torch_save(obj, f))
        temps.append((first, paths[0]))
        digest = file_sha256(first)
        for other in paths[1:]:
            with open(first, "rb") as src:
                temps.append((_write_temp(other.parent, other.name,
                                          lambda f: shutil.copyfileobj(src, f, 1 << 20)), other))
        for p in paths:
            line = f"{digest}  {p.name}\n".encode()
            temps.append((_write_temp(p.parent, checksum_path(p).name, lambda f: f.write(line)),
                          checksum_path(p)))
        for tmp, target in temps[:len(paths)]:  # each checkpoint, then each sidecar
            os.replace(tmp, target)
        for tmp, target in temps[len(paths):]:
            os.replace(tmp, target)
    finally:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)


def _read_sidecar(path: Path, sidecar: Path) -> list[str]:
    """The hash a ``sha256sum`` line of ``sidecar`` gives for ``path`` ([] if none), read as
    ``sha256sum -c`` reads it: ``HASH  NAME`` or ``HASH *NAME``, the hash in either case; a line
    naming another file is refused."""
    try:
        text = sidecar.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{sidecar}: not a sha256sum line (not UTF-8 text); remove it or "
                              f"write it with: sha256sum {path.name} > {sidecar.name}") from None
    fields = text.strip().split(None, 1)
    if not fields:
        return []
    if len(fields) == 2:
        named = fields[1].strip().removeprefix("*")
        if named != path.name and Path(named).resolve() != path.resolve():
            raise CheckpointError(f"{sidecar}: names {named!r}, not {path.name!r} (a checksum "
                                  f"of another file); remove it or write it with: sha256sum "
                                  f"{path.name} > {sidecar.name}")
    return [fields[0].lower()]


def _verify_checksum(path: Path) -> bool:
    """Raise if ``path``'s sidecar does not match it; False when it has none."""
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return False
    expected = _read_sidecar(path, sidecar)
    actual = file_sha256(path)
    if expected != [actual]:
        raise CheckpointError(f"{path}: corrupted or modified: its sha256 {actual[:16]}... does "
                              f"not match {sidecar.name} "
                              f"({expected[0][:16] + '...' if expected else 'empty'})")
    return True


def load_checkpoint(path: str | os.PathLike, map_location="cpu", *, trust: bool = False) -> dict:
    """Load a checkpoint dict that has at least ``params``, after checking its sha256 sidecar.
    Only tensors and plain values are unpickled unless ``trust`` (the file then may run code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    verified = _verify_checksum(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=not trust)
    except pickle.UnpicklingError as e:
        reason, needs_code = _unpickler_reason(str(e))
        if not trust and needs_code:
            raise CheckpointError(f"{path}: holds objects other than tensors and plain values "
                                  f"({reason}); unpickling them can run code, so it is refused. "
                                  f"Pass --trust-checkpoint only if you trust where the file "
                                  f"comes from") from e
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({reason})") from e
    except Exception as e:  # noqa: BLE001 - any other reading failure is a bad file
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("params"), dict):
        raise CheckpointError(f"{path}: expected a dict with a 'params' state_dict, got "
                              f"{type(ckpt).__name__}"
                              + (f" with keys {sorted(ckpt)}" if isinstance(ckpt, dict) else ""))
    if not verified:  # said only of a file that is a checkpoint
        print(f"note: {path}: no checksum file {checksum_path(path).name}; loaded unverified",
              file=sys.stderr)
    return ckpt


def _unpickler_reason(message: str) -> tuple[str, bool]:
    """(the informative line of torch's long weights-only error, whether the file refers to a
    Python global, i.e. needs full unpickling)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line:
            return line.split(" Please use")[0][:200], True
    marker = "WeightsUnpickler error:"
    if marker in message:
        lines = [line.strip() for line in message.split(marker, 1)[1].splitlines() if line.strip()]
    return (lines[0] if lines else "unpickling failed")[:200], False


def infer_architecture(ckpt: dict, path: str | os.PathLike = "<checkpoint>") -> tuple[str, float]:
    """(recipe, width) of a checkpoint: from its config when present, else the width from the
    parameter shapes and the released recipe (both recipes have the same parameters)."""
    config = ckpt.get("config") or {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its 'config' is a {type(config).__name__}, not a dict")
    if "width" in config:
        recipe, width = config.get("recipe", "released"), config["width"]
        if not isinstance(recipe, str) or recipe not in RECIPE_ORDER:
            raise CheckpointError(f"{path}: config field 'recipe' is {recipe!r}, not one of "
                                  f"{tuple(RECIPE_ORDER)}")
        try:  # checked before anything is allocated from it
            width = float(width) if not isinstance(width, (bool, str)) else float("nan")
        except (TypeError, ValueError):
            width = float("nan")
        problem = check_architecture(recipe, width)
        if problem:
            raise CheckpointError(f"{path}: config field 'width' is {config['width']!r}: "
                                  f"{problem.removeprefix(f'width {width}: ')}")
        return recipe, width
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


def model_from_checkpoint(path: str | os.PathLike, *, device="cpu", backend: str = "eager",
                          trust: bool = False) -> tuple[VGG, dict]:
    """Rebuild the VGG of a checkpoint, load its parameters; returns (model, checkpoint)."""
    ckpt = load_checkpoint(path, trust=trust)
    recipe, width = infer_architecture(ckpt, path)
    try:
        model = VGG(recipe, width=width, backend=backend)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    load_params(model, ckpt["params"], path)
    return model.to(device), ckpt

