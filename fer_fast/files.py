"""Writing the files a user sees (reports, pictures, exports, JSON), by one rule:

* a file is written to a temporary name in its own folder (``.NAME.XXXX.SUFFIX``), flushed to
  disk, and renamed into place only when complete: a reader, a crash or a full disk never
  leaves a half-written file under the real name;
* the temporary file is removed on any failure (a full disk included), so a retry is not
  blocked by a leftover;
* an existing file is never replaced unless the caller asks (``overwrite=True``); without it
  the rename is a no-clobber link, so even a file that appears meanwhile is kept, and the error
  (:class:`AlreadyExists`, a ``FileExistsError``) names the file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["AlreadyExists", "refuse_existing", "temporary_path", "open_atomic", "write_bytes",
           "write_text"]

#: errors of os.link on file systems without hard links: fall back to check-then-rename
_NO_LINK = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.EACCES,
            getattr(errno, "ENOTSUP", errno.EPERM), getattr(errno, "EOPNOTSUPP", errno.EPERM)}


class AlreadyExists(FileExistsError):
    """The target file exists and the caller did not ask to replace it."""

    def __init__(self, path: str | os.PathLike, hint: str = "remove it or choose another name"):
        super().__init__(errno.EEXIST, f"already exists (not overwritten; {hint})", str(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def refuse_existing(path: str | os.PathLike, *, overwrite: bool = False,
                    hint: str = "remove it or choose another name") -> Path:
    """Check up front (before any work) that ``path`` may be written: raises AlreadyExists
    for an existing file unless ``overwrite``, IsADirectoryError for a folder, and
    FileNotFoundError when its folder does not exist. Returns ``path`` as a Path."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise AlreadyExists(path, hint)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"folder {parent} does not exist", str(path))
    return path


def _commit(tmp: Path, path: Path, overwrite: bool, hint: str) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if path exists: never replaces a file that appeared meanwhile
    except FileExistsError:
        raise AlreadyExists(path, hint) from None
    except OSError as e:
        if e.errno not in _NO_LINK:
            raise
        if path.exists() or path.is_symlink():
            raise AlreadyExists(path, hint) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


@contextlib.contextmanager
def temporary_path(path: str | os.PathLike, *, overwrite: bool = False,
                   hint: str = "remove it or choose another name") -> Iterator[Path]:
    """A temporary path next to ``path`` (same suffix, for writers that pick the format from
    it) for a library to write to by name; renamed to ``path`` when the block ends without an
    error, removed otherwise."""
    path = refuse_existing(path, overwrite=overwrite, hint=hint)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}",
                                dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # what the library wrote reaches the disk before the rename
            os.fsync(f.fileno())
        _commit(tmp, path, overwrite, hint)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w", *, overwrite: bool = False,
                hint: str = "remove it or choose another name", **kwargs):
    """``open(path, mode)`` for writing ("w" or "wb"), by the rule of this module."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    with temporary_path(path, overwrite=overwrite, hint=hint) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()


def write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = False,
                hint: str = "remove it or choose another name") -> Path:
    with open_atomic(path, "wb", overwrite=overwrite, hint=hint) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False,
               hint: str = "remove it or choose another name", **kwargs) -> Path:
    with open_atomic(path, "w", overwrite=overwrite, hint=hint, **kwargs) as f:
        f.write(text)
    return Path(path)
