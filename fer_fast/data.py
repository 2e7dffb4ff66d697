"""FER2013 data held as uint8 tensors: CSV reader, image-folder reader, and the synthetic default.

Every reader returns a :class:`FERData` with the three splits of the release: train = Training,
val = PrivateTest (drives the LR schedule and the best checkpoint), test = PublicTest. Images are
uint8 ``[N, 48, 48]``, labels int64 ``[N]`` with the CSV class ids (0 Angry .. 6 Neutral). Bad
input raises :class:`DataError` naming the file (and 1-based line) or path and what is wrong;
nothing is dropped silently.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .preprocess import ImageError, to_fer_image
from .synthetic import SyntheticSpec, generate

__all__ = ["Split", "FERData", "DataError", "SPLITS", "USAGE_TO_SPLIT", "FOLDER_CLASSES",
           "read_fer_csv", "read_image_folder", "load_data"]

#: train = Training, validation = PrivateTest (drives LR schedule / best checkpoint), test = PublicTest.
SPLITS = ("train", "val", "test")
USAGE_TO_SPLIT = {"Training": "train", "PrivateTest": "val", "PublicTest": "test"}
#: Image-folder class names -> CSV class ids (alphabetical folder order is NOT the CSV order).
FOLDER_CLASSES = {"angry": 0, "disgust": 1, "fear": 2, "happy": 3, "sad": 4, "surprise": 5,
                  "neutral": 6}
NUM_CLASSES = 7
SIDE = 48
NUM_PIXELS = SIDE * SIDE
_CSV_COLUMNS = ("emotion", "pixels", "Usage")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_ROWS_PER_CHUNK = 2048  # pixel parsing works on this many rows at a time (bounded memory)


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


def _make_data(parts: dict[str, tuple[np.ndarray, np.ndarray]], source: str,
               split_origin: dict[str, str], required=SPLITS) -> FERData:
    """Build FERData from numpy (images, labels) per split; an empty ``required`` split is an
    error (the others may be empty)."""
    for name in required:
        if len(parts[name][1]) == 0:
            raise DataError(f"{source}: split {name!r} ({split_origin[name]}) is empty")
    return FERData(**{name: Split(torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
                                  torch.from_numpy(np.asarray(labels, dtype=np.int64)))
                      for name, (images, labels) in parts.items()}, source=source)


# ----------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------

def _diagnose_pixels(field: bytes) -> str:
    """Describe what is wrong with one row's pixel field (slow path, only for a bad row)."""
    tokens = [t for t in field.split(b" ") if t]
    for position, token in enumerate(tokens, start=1):
        text = token.decode("utf-8", "replace")
        try:
            value = int(text)
        except ValueError:
            return f"non-integer pixel {text!r} (pixel {position})"
        if not 0 <= value <= 255:
            return f"pixel {value} out of range 0..255 (pixel {position})"
        if not token.isdigit() or len(token) > 3:
            return f"pixel {text!r} is not written as 1 to 3 plain digits (pixel {position})"
    return f"{len(tokens)} pixels, expected {NUM_PIXELS} (48x48)"


def _parse_pixel_rows(fields: list[bytes]) -> tuple[np.ndarray, int | None]:
    """Parse pixel fields into uint8 [len(fields), 2304]; also the index of the first bad row.

    Vectorised over bytes: a field is valid when it holds only digits and spaces and exactly
    2304 tokens of at most 3 digits with values <= 255. Per-token work happens only at the
    last digit of each token (one index array), which keeps the whole file to a few seconds.
    """
    # Three leading spaces keep ends - 3 inside the buffer; the trailing one ends the last token.
    buf = np.frombuffer(b"   " + b" ".join(fields) + b" ", dtype=np.uint8)
    row_ends = 2 + np.cumsum([len(f) + 1 for f in fields])  # exclusive end of row r in buf
    digit_value = buf - np.uint8(ord("0"))  # wraps: non-digits become >= 10
    digit = digit_value < 10
    bad_rows = []
    if np.count_nonzero(digit) + np.count_nonzero(buf == ord(" ")) != buf.size:
        first_bad = int(np.argmin(digit | (buf == ord(" "))))
        bad_rows.append(int(np.searchsorted(row_ends, first_bad, side="right")))
    ends = np.flatnonzero(digit[:-1] & ~digit[1:])  # last digit of every token
    counts = np.diff(np.searchsorted(ends, row_ends), prepend=0)
    wrong_count = np.flatnonzero(counts != NUM_PIXELS)
    if wrong_count.size:
        bad_rows.append(int(wrong_count[0]))
    if bad_rows:
        return np.empty((0, NUM_PIXELS), np.uint8), min(bad_rows)
    tens, hundreds, more = digit[ends - 1], digit[ends - 2] & digit[ends - 1], digit[ends - 3]
    value = digit_value[ends].astype(np.int16)
    value += tens * digit_value[ends - 1].astype(np.int16) * 10
    value += hundreds * digit_value[ends - 2].astype(np.int16) * 100
    bad_value = np.flatnonzero((value > 255) | (more & hundreds))
    if bad_value.size:
        return np.empty((0, NUM_PIXELS), np.uint8), int(bad_value[0]) // NUM_PIXELS
    return value.astype(np.uint8).reshape(len(fields), NUM_PIXELS), None


def _split_fields(line: bytes) -> list[bytes]:
    fields = line.split(b",")
    if b'"' in line:
        fields = [f.strip().strip(b'"') for f in fields]
    return fields


#: memory the CSV reader takes per byte of the file (its bytes, their lines, the parsed rows)
CSV_READ_FACTOR = 3


def read_fer_csv(path, required=SPLITS) -> FERData:
    """Read the Kaggle ``fer2013.csv`` (``emotion,pixels,Usage``) or ``icml_face_data.csv``
    (column names with a leading space); column order is taken from the header. Only the
    ``required`` splits must have rows (a file of test rows serves an evaluation of test)."""
    from .model import physical_memory

    path = Path(path)
    try:
        size, have = path.stat().st_size, physical_memory()
        if have is not None and CSV_READ_FACTOR * size > have:
            raise DataError(f"{path}: {size / 2**30:.1f} GiB: reading it takes about "
                            f"{CSV_READ_FACTOR * size / 2**30:.0f} GiB of memory, more than this "
                            f"machine's {have / 2**30:.1f} GiB (FER2013's CSV is 0.3 GiB)")
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read CSV file ({exc.strerror or exc})") from exc
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = raw.split(b"\n")
    del raw
    if not lines[0].strip():
        raise DataError(f"{path}: empty file (expected a header line "
                        f"{','.join(_CSV_COLUMNS)!r})")
    header = [h.decode("utf-8", "replace").strip().strip('"') for h in _split_fields(lines[0])]
    missing = [c for c in _CSV_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: line 1: missing column(s) {', '.join(missing)} "
                        f"(header has {', '.join(repr(h) for h in header)})")
    i_label, i_pixels, i_usage = (header.index(c) for c in _CSV_COLUMNS)
    n_fields = len(header)

    line_numbers, labels, splits, pixel_fields = [], [], [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = _split_fields(line.rstrip(b"\r"))
        if len(fields) != n_fields:
            raise DataError(f"{path}: line {number}: {len(fields)} fields, expected {n_fields} "
                            f"({', '.join(header)})")
        label_text = fields[i_label].strip().decode("utf-8", "replace")
        try:
            label = int(label_text)
        except ValueError:
            raise DataError(f"{path}: line {number}: non-integer label {label_text!r}") from None
        if not 0 <= label < NUM_CLASSES:
            raise DataError(f"{path}: line {number}: label {label} out of range 0..{NUM_CLASSES - 1}")
        usage = fields[i_usage].strip().decode("utf-8", "replace")
        if usage not in USAGE_TO_SPLIT:
            raise DataError(f"{path}: line {number}: unknown Usage {usage!r} "
                            f"(expected one of {', '.join(USAGE_TO_SPLIT)})")
        line_numbers.append(number)
        labels.append(label)
        splits.append(usage)
        pixel_fields.append(fields[i_pixels])
    del lines
    if not pixel_fields:
        raise DataError(f"{path}: no data rows after the header")

    images = np.empty((len(pixel_fields), NUM_PIXELS), np.uint8)
    for lo in range(0, len(pixel_fields), _ROWS_PER_CHUNK):
        chunk = pixel_fields[lo:lo + _ROWS_PER_CHUNK]
        parsed, bad = _parse_pixel_rows(chunk)
        if bad is not None:
            raise DataError(f"{path}: line {line_numbers[lo + bad]}: "
                            f"{_diagnose_pixels(chunk[bad])}")
        images[lo:lo + len(chunk)] = parsed
    images = images.reshape(-1, SIDE, SIDE)
    labels_np = np.asarray(labels, np.int64)
    usage_np = np.asarray(splits)
    parts = {USAGE_TO_SPLIT[u]: (images[usage_np == u], labels_np[usage_np == u])
             for u in USAGE_TO_SPLIT}
    origin = {s: f"Usage {u}" for u, s in USAGE_TO_SPLIT.items()}
    return _make_data(parts, str(path), origin, required)


# ----------------------------------------------------------------------------------------------
# Image folder
# ----------------------------------------------------------------------------------------------

#: Bad files of an image folder listed in full before "... and N more".
MAX_LISTED_ERRORS = 20


def _report_bad_files(root: Path, errors: list[str]) -> None:
    """Raise one DataError listing the bad files (the first ``MAX_LISTED_ERRORS``) and their count."""
    if not errors:
        return
    listed = "\n  ".join(errors[:MAX_LISTED_ERRORS])
    more = len(errors) - MAX_LISTED_ERRORS
    raise DataError(f"{root}: {len(errors)} bad file(s) in the image folder:\n  {listed}"
                    + (f"\n  ... and {more} more" if more > 0 else ""))


def _list_class_files(split_dir: Path, errors: list[str]) -> list[tuple[Path, int]]:
    """Sorted (image path, class id) pairs under ``split_dir/<class>/``; problems are appended
    to ``errors``; an empty class folder gets a warning."""
    out = []
    for entry in sorted(split_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            errors.append(f"{entry}: unexpected file; {split_dir} must hold only class folders "
                          f"({', '.join(FOLDER_CLASSES)})")
            continue
        label = FOLDER_CLASSES.get(entry.name.lower())
        if label is None:
            errors.append(f"{entry}: unknown class folder {entry.name!r} "
                          f"(expected one of {', '.join(FOLDER_CLASSES)})")
            continue
        found = 0
        for file in sorted(entry.iterdir()):
            if file.name.startswith("."):
                continue
            if file.suffix.lower() not in _IMAGE_SUFFIXES or not file.is_file():
                errors.append(f"{file}: not an image file (expected "
                              f"{', '.join(_IMAGE_SUFFIXES)})")
                continue
            out.append((file, label))
            found += 1
        if found == 0:
            warnings.warn(f"{entry}: empty class folder (no {entry.name} images in "
                          f"{split_dir.name}/)", stacklevel=3)
    return out


def read_image_folder(root, *, strict: bool = False, required=SPLITS) -> FERData:
    """Read an image-folder copy of FER2013. Layout (class folder names are case-insensitive:
    angry, disgust, fear, happy, sad, surprise, neutral; files .png/.jpg/.jpeg)::

        root/train/<class>/*                  -> train
        root/val/<class>/*                    -> val   (when root/val/ exists; then every
        root/test/<class>/*                   -> test   file of test/ is a test image)
        root/test/<class>/PrivateTest_*       -> val   (without root/val/: the file-name
        root/test/<class>/PublicTest_*        -> test   prefix picks the split)

    Every image goes through :func:`fer_fast.preprocess.to_fer_image` (the predictor's
    conversion): another size is resized, colour becomes gray, 16 bits become 8;
    ``strict=True`` refuses such files instead. Every bad file is reported in one
    :class:`DataError`. Class folders are mapped by name to the CSV class ids; files are read
    in sorted path order. ``required``: the splits that must hold images (with val/, test/ may
    be absent: a copy without PublicTest)."""
    root = Path(root)
    has_val = (root / "val").is_dir()
    for sub in ("train",) + (() if has_val else ("test",)):
        if not (root / sub).is_dir():
            raise DataError(f"{root}: missing folder {sub}/ (expected train/<class>/ and "
                            f"test/<class>/, optionally val/<class>/)")
    errors: list[str] = []
    files: dict[str, list[tuple[Path, int]]] = {name: [] for name in SPLITS}
    files["train"] = _list_class_files(root / "train", errors)
    if has_val:
        files["val"] = _list_class_files(root / "val", errors)
        if (root / "test").is_dir():
            files["test"] = _list_class_files(root / "test", errors)
    else:
        for file, label in _list_class_files(root / "test", errors):
            usage = next((u for u in ("PublicTest", "PrivateTest")
                          if file.name.startswith(u + "_")), None)
            if usage is None:
                errors.append(f"{file}: test file name must start with 'PublicTest_' or "
                              f"'PrivateTest_' (it decides the split; or put the validation "
                              f"images in val/<class>/)")
                continue
            files[USAGE_TO_SPLIT[usage]].append((file, label))
    parts = {}
    for name, entries in files.items():
        images = np.empty((len(entries), SIDE, SIDE), np.uint8)
        for i, (file, _) in enumerate(entries):
            try:
                images[i] = to_fer_image(file, strict=strict)
            except ImageError as exc:
                errors.append(f"{file}: {exc}")
        parts[name] = (images, np.array([label for _, label in entries], np.int64))
    _report_bad_files(root, errors)
    origin = ({"train": "train/", "val": "val/", "test": "test/"} if has_val else
              {"train": "train/", "val": "test/PrivateTest_*", "test": "test/PublicTest_*"})
    return _make_data(parts, str(root), origin, required)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

def load_data(path=None, *, seed: int = 0, synthetic: SyntheticSpec | None = None,
              splits=SPLITS, strict_images: bool = False) -> FERData:
    """``None``: the synthetic dataset (sizes and class balance from ``synthetic``, default
    :class:`fer_fast.synthetic.SyntheticSpec`); a ``.csv`` file: FER2013 CSV; a folder: the
    image-folder copy (``strict_images``: refuse images that are not 48x48 8-bit gray instead
    of converting them). ``seed`` only affects the synthetic dataset; ``splits``: those that must
    not be empty (CSV)."""
    if path is None:
        spec = synthetic or SyntheticSpec()
        parts = {name: generate(n, seed=seed, stream=i, class_weights=spec.class_weights)
                 for i, (name, n) in enumerate(zip(SPLITS, spec.sizes))}
        return _make_data(parts, f"synthetic(seed={seed}, sizes={spec.sizes})",
                          {name: "synthetic, size 0" for name in SPLITS})
    path = Path(os.fspath(path))
    if path.is_dir():
        return read_image_folder(path, strict=strict_images, required=splits)
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_fer_csv(path, splits)
    what = "not a .csv file or a folder" if path.exists() else "no such file or folder"
    raise DataError(f"{path}: {what} (expected a FER2013 .csv file or an image folder with "
                    f"train/ and test/)")
