"""Readers on small generated files (both CSV spellings, image folder) and every bad-input case."""
import numpy as np
import pytest
import torch
from PIL import Image

from fer_fast import data
from fer_fast.data import DataError, load_data, read_fer_csv, read_image_folder
from fer_fast.preprocess import to_fer_image
from fer_fast.synthetic import SyntheticSpec

USAGES = ("Training", "PrivateTest", "PublicTest")


def _rows(rng, n_per_usage=(5, 3, 4)):
    """(label, pixels uint8 [2304], usage) rows covering all usages, in shuffled order."""
    rows = [(int(rng.integers(0, 7)), rng.integers(0, 256, 2304).astype(np.uint8), usage)
            for usage, n in zip(USAGES, n_per_usage) for _ in range(n)]
    return [rows[i] for i in rng.permutation(len(rows))]


def _write_csv(path, rows, *, icml=False, newline="\n"):
    """Kaggle layout ``emotion,pixels,Usage`` or icml layout ``emotion, Usage, pixels``."""
    lines = ["emotion, Usage, pixels" if icml else "emotion,pixels,Usage"]
    for label, pixels, usage in rows:
        text = " ".join(map(str, pixels)) if isinstance(pixels, np.ndarray) else pixels
        lines.append(f"{label},{usage},{text}" if icml else f"{label},{text},{usage}")
    path.write_text(newline.join(lines) + newline)
    return path


def _expected(rows, usage):
    sel = [(label, pixels) for label, pixels, u in rows if u == usage]
    return (np.stack([p.reshape(48, 48) for _, p in sel]), np.array([lab for lab, _ in sel]))


@pytest.mark.parametrize("icml,newline", [(False, "\n"), (True, "\r\n")])
def test_read_csv_both_spellings(tmp_path, icml, newline):
    rows = _rows(np.random.default_rng(1))
    d = read_fer_csv(_write_csv(tmp_path / "f.csv", rows, icml=icml, newline=newline))
    for usage, split in data.USAGE_TO_SPLIT.items():
        s = d.split(split)
        images, labels = _expected(rows, usage)
        assert s.images.dtype == torch.uint8 and s.images.shape == (len(labels), 48, 48)
        assert s.labels.dtype == torch.int64
        np.testing.assert_array_equal(s.images.numpy(), images)
        np.testing.assert_array_equal(s.labels.numpy(), labels)
    assert d.source == str(tmp_path / "f.csv")


def test_csv_token_edges(tmp_path):
    """1-, 2- and 3-digit values at both ends of rows, extra spaces, quoted fields."""
    rng = np.random.default_rng(17)
    rows = _rows(rng, (3, 1, 1))
    for i, first in enumerate((255, 7, 10)):
        pixels = rows[i][1].copy()
        pixels[0], pixels[1], pixels[-1] = first, 0, (100, 9, 99)[i]
        rows[i] = (rows[i][0], pixels, rows[i][2])
    path = _write_csv(tmp_path / "f.csv", rows)
    text = path.read_text().splitlines()
    label, pixels, usage = text[1].split(",")
    text[1] = f'{label},"  {pixels.replace(" ", "  ")} ",{usage}'
    path.write_text("\n".join(text) + "\n")
    d = read_fer_csv(path)
    for usage, split in data.USAGE_TO_SPLIT.items():
        np.testing.assert_array_equal(d.split(split).images.numpy(), _expected(rows, usage)[0])


def test_csv_split_mapping():
    assert data.USAGE_TO_SPLIT == {"Training": "train", "PrivateTest": "val", "PublicTest": "test"}


def test_csv_bad_row_in_a_later_chunk_names_its_line(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_ROWS_PER_CHUNK", 2)
    rows = _rows(np.random.default_rng(2))
    good = read_fer_csv(_write_csv(tmp_path / "good.csv", rows))  # chunking keeps the values
    np.testing.assert_array_equal(good.train.images.numpy(), _expected(rows, "Training")[0])
    rows[6] = (rows[6][0], rows[6][1][:-1], rows[6][2])
    with pytest.raises(DataError, match=r"bad\.csv: line 8: 2303 pixels, expected 2304"):
        read_fer_csv(_write_csv(tmp_path / "bad.csv", rows))


def _pixels_text(rng, replace=None):
    tokens = [str(v) for v in rng.integers(0, 256, 2304)]
    if replace is not None:
        tokens[replace[0]] = replace[1]
    return " ".join(tokens)


@pytest.mark.parametrize("field,value,message", [
    ("pixels", (10, "1.5"), r"non-integer pixel '1\.5' \(pixel 11\)"),
    ("pixels", (0, "abc"), r"non-integer pixel 'abc' \(pixel 1\)"),
    ("pixels", (2303, "256"), r"pixel 256 out of range 0\.\.255 \(pixel 2304\)"),
    ("pixels", (5, "-1"), r"pixel -1 out of range 0\.\.255 \(pixel 6\)"),
    ("pixels", (7, "1000"), r"pixel 1000 out of range"),
    ("pixels", (7, "0012"), r"pixel '0012' is not written as 1 to 3 plain digits"),
    ("pixels", "short", r"2000 pixels, expected 2304"),
    ("pixels", "long", r"2305 pixels, expected 2304"),
    ("label", "x", r"non-integer label 'x'"),
    ("label", "7", r"label 7 out of range 0\.\.6"),
    ("label", "-1", r"label -1 out of range 0\.\.6"),
    ("usage", "Validation", r"unknown Usage 'Validation'"),
])
def test_csv_bad_row(tmp_path, field, value, message):
    rng = np.random.default_rng(3)
    rows = [(int(rng.integers(0, 7)), _pixels_text(rng), u) for u in USAGES * 2]
    label, pixels, usage = rows[3]
    if field == "pixels":
        if value == "short":
            pixels = " ".join(pixels.split()[:2000])
        elif value == "long":
            pixels = pixels + " 17"
        else:
            pixels = _pixels_text(rng, value)
    elif field == "label":
        label = value
    else:
        usage = value
    rows[3] = (label, pixels, usage)
    path = _write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError, match=rf"bad\.csv: line 5: {message}"):
        read_fer_csv(path)


def test_csv_wrong_field_count(tmp_path):
    path = tmp_path / "f.csv"
    rng = np.random.default_rng(4)
    path.write_text("emotion,pixels,Usage\n" + f"1,{_pixels_text(rng)},Training\n"
                    + f"1,{_pixels_text(rng)}\n")
    with pytest.raises(DataError, match=r"f\.csv: line 3: 2 fields, expected 3"):
        read_fer_csv(path)


def test_csv_missing_columns(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("emotion,Usage\n1,Training\n")
    with pytest.raises(DataError, match=r"f\.csv: line 1: missing column\(s\) pixels"):
        read_fer_csv(path)
    path.write_text("label,image\n1,2\n")
    with pytest.raises(DataError, match=r"missing column\(s\) emotion, pixels, Usage"):
        read_fer_csv(path)


@pytest.mark.parametrize("text,message", [("", "empty file"), ("\n\n", "empty file"),
                                          ("emotion,pixels,Usage\n", "no data rows")])
def test_csv_empty(tmp_path, text, message):
    path = tmp_path / "e.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"e\.csv: {message}"):
        read_fer_csv(path)


@pytest.mark.parametrize("missing", USAGES)
def test_csv_empty_split(tmp_path, missing):
    rows = [r for r in _rows(np.random.default_rng(5)) if r[2] != missing]
    split = data.USAGE_TO_SPLIT[missing]
    with pytest.raises(DataError, match=rf"f\.csv: split '{split}' \(Usage {missing}\) is empty"):
        read_fer_csv(_write_csv(tmp_path / "f.csv", rows))


def test_csv_blank_lines_keep_line_numbers(tmp_path):
    rng = np.random.default_rng(6)
    good = [f"{i % 7},{_pixels_text(rng)},{u}" for i, u in enumerate(USAGES)]
    path = tmp_path / "f.csv"
    path.write_text("\n".join(["emotion,pixels,Usage", good[0], "", good[1], "9,1 2,Training",
                               good[2]]) + "\n\n")
    with pytest.raises(DataError, match=r"line 5: label 9 out of range"):
        read_fer_csv(path)


# ----------------------------------------------------------------------------------------------
# Image folder
# ----------------------------------------------------------------------------------------------

def _save(path, array, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    (img.convert(mode) if mode != "L" else img).save(path)


def _make_folder(root, rng):
    """A small image-folder copy; returns the expected arrays per split in sorted-path order."""
    layout = {"train": [("neutral", "Training_3"), ("angry", "Training_10"), ("sad", "Training_1"),
                        ("surprise", "Training_7"), ("happy", "Training_2")],
              "test": [("neutral", "PrivateTest_5"), ("surprise", "PublicTest_9"),
                       ("fear", "PublicTest_1"), ("disgust", "PrivateTest_2"),
                       ("sad", "PublicTest_4")]}
    expected = {name: [] for name in data.SPLITS}
    for top, entries in layout.items():
        for cls, stem in entries:
            path = root / top / cls / f"{stem}.png"
            pixels = rng.integers(0, 256, (48, 48)).astype(np.uint8)
            _save(path, pixels)
            split = "train" if top == "train" else data.USAGE_TO_SPLIT[stem.split("_")[0]]
            expected[split].append((str(path), pixels, data.FOLDER_CLASSES[cls]))
    return {k: sorted(v, key=lambda e: e[0]) for k, v in expected.items()}


def test_read_image_folder(tmp_path):
    expected = _make_folder(tmp_path, np.random.default_rng(7))
    d = read_image_folder(tmp_path)
    for split, entries in expected.items():
        s = d.split(split)
        assert s.images.dtype == torch.uint8 and s.labels.dtype == torch.int64
        np.testing.assert_array_equal(s.images.numpy(), np.stack([e[1] for e in entries]))
        np.testing.assert_array_equal(s.labels.numpy(), [e[2] for e in entries])


def test_folder_classes_map_by_name_not_alphabetically():
    assert data.FOLDER_CLASSES == {"angry": 0, "disgust": 1, "fear": 2, "happy": 3, "sad": 4,
                                   "surprise": 5, "neutral": 6}
    assert list(data.FOLDER_CLASSES) != sorted(data.FOLDER_CLASSES)


def test_folder_rgb_and_jpeg_become_gray(tmp_path):
    rng = np.random.default_rng(8)
    _make_folder(tmp_path, rng)
    rgb = np.repeat(rng.integers(0, 256, (48, 48, 1)).astype(np.uint8), 3, axis=2)
    _save(tmp_path / "train" / "angry" / "Training_0.png", rgb, mode="RGB")
    _save(tmp_path / "train" / "angry" / "Training_99.jpg", rgb[..., 0])
    d = read_image_folder(tmp_path)
    assert d.train.images.shape == (7, 48, 48)
    np.testing.assert_array_equal(d.train.images[0].numpy(), rgb[..., 0])  # sorted: _0 first
    assert d.train.labels[:3].tolist() == [0, 0, 0]


def test_folder_unknown_class(tmp_path):
    _make_folder(tmp_path, np.random.default_rng(9))
    _save(tmp_path / "train" / "contempt" / "Training_1.png", np.zeros((48, 48), np.uint8) + 9)
    with pytest.raises(DataError, match=r"contempt: unknown class folder 'contempt'"):
        read_image_folder(tmp_path)


def test_folder_wrong_size_is_converted_like_the_predictor(tmp_path):
    _make_folder(tmp_path, np.random.default_rng(10))
    bad = tmp_path / "test" / "sad" / "PublicTest_8.png"
    pixels = np.random.default_rng(10).integers(0, 256, (40, 44, 3)).astype(np.uint8)
    _save(bad, pixels, mode="RGB")
    d = read_image_folder(tmp_path)
    index = sorted(str(p) for p in (tmp_path / "test").rglob("PublicTest_*")).index(str(bad))
    np.testing.assert_array_equal(d.test.images[index].numpy(), to_fer_image(pixels))
    with pytest.raises(DataError, match=r"PublicTest_8\.png: colour image \(refused"):
        read_image_folder(tmp_path, strict=True)
    _save(bad, pixels[..., 0])
    with pytest.raises(DataError, match=r"PublicTest_8\.png: image is 44x40, expected 48x48"):
        load_data(tmp_path, strict_images=True)


def test_folder_16_bit_png(tmp_path):
    _make_folder(tmp_path, np.random.default_rng(17))
    pixels = np.random.default_rng(17).integers(0, 256, (48, 48)).astype(np.uint8)
    path = tmp_path / "train" / "fear" / "Training_0.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(pixels.astype(np.uint16) * 257).save(path)  # a 16-bit grayscale PNG
    with Image.open(path) as img:
        assert img.mode.startswith("I")
    d = read_image_folder(tmp_path)
    fear = d.train.labels == data.FOLDER_CLASSES["fear"]
    np.testing.assert_array_equal(d.train.images[fear][0].numpy(), pixels)
    with pytest.raises(DataError, match=r"Training_0\.png: 16-bit image \(refused"):
        read_image_folder(tmp_path, strict=True)


def test_folder_reports_every_bad_file(tmp_path):
    _make_folder(tmp_path, np.random.default_rng(11))
    for i in range(23):
        (tmp_path / "train" / "happy" / f"Training_5{i:02d}.jpg").write_bytes(b"\xff\xd8 no jpeg")
    (tmp_path / "train" / "happy" / "notes.txt").write_text("x")
    with pytest.raises(DataError) as info:
        read_image_folder(tmp_path)
    message = str(info.value)
    assert "notes.txt: not an image file" in message  # listing problems come first
    assert message.count("cannot read image") == data.MAX_LISTED_ERRORS - 1
    assert "24 bad file(s)" in message and "... and 4 more" in message


def test_folder_undecodable(tmp_path):
    _make_folder(tmp_path, np.random.default_rng(11))
    bad = tmp_path / "train" / "happy" / "Training_5.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(DataError, match=r"Training_5\.jpg: cannot read image"):
        read_image_folder(tmp_path)


def test_folder_empty_class_folder_warns(tmp_path):
    _make_folder(tmp_path, np.random.default_rng(18))
    (tmp_path / "train" / "fear").mkdir()
    with pytest.warns(UserWarning, match=r"fear: empty class folder"):
        d = read_image_folder(tmp_path)
    assert len(d.train) == 5


def test_folder_val_subfolder_is_the_validation_split(tmp_path):
    rng = np.random.default_rng(19)
    expected = {}
    for split, names in {"train": ["a", "b"], "val": ["c"], "test": ["d", "e", "f"]}.items():
        expected[split] = []
        for name in names:
            pixels = rng.integers(0, 256, (48, 48)).astype(np.uint8)
            _save(tmp_path / split / "happy" / f"{name}.png", pixels)
            expected[split].append(pixels)
    d = read_image_folder(tmp_path)
    for split, images in expected.items():
        np.testing.assert_array_equal(d.split(split).images.numpy(), np.stack(images))
        assert d.split(split).labels.tolist() == [data.FOLDER_CLASSES["happy"]] * len(images)


def test_folder_test_file_without_prefix(tmp_path):
    _make_folder(tmp_path, np.random.default_rng(12))
    _save(tmp_path / "test" / "fear" / "Test_3.png", np.full((48, 48), 3, np.uint8))
    with pytest.raises(DataError, match=r"Test_3\.png: test file name must start with"):
        read_image_folder(tmp_path)


def test_folder_non_image_file(tmp_path):
    _make_folder(tmp_path, np.random.default_rng(13))
    (tmp_path / "train" / "happy" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"notes\.txt: not an image file"):
        read_image_folder(tmp_path)


@pytest.mark.parametrize("prefix,split", [("PrivateTest", "val"), ("PublicTest", "test")])
def test_folder_empty_split(tmp_path, prefix, split):
    _make_folder(tmp_path, np.random.default_rng(14))
    for f in (tmp_path / "test").rglob(f"{prefix}_*"):
        f.unlink()
    with pytest.raises(DataError, match=rf"split '{split}' \(test/{prefix}_\*\) is empty"):
        read_image_folder(tmp_path)


@pytest.mark.parametrize("missing", ["train", "test"])
def test_folder_missing_subfolder(tmp_path, missing):
    (tmp_path / ("test" if missing == "train" else "train") / "sad").mkdir(parents=True)
    with pytest.raises(DataError, match=rf"missing folder {missing}/"):
        read_image_folder(tmp_path)


# ----------------------------------------------------------------------------------------------
# load_data
# ----------------------------------------------------------------------------------------------

SMALL = SyntheticSpec(n_train=70, n_val=21, n_test=14)


def test_load_data_dispatch(tmp_path):
    rows = _rows(np.random.default_rng(15))
    csv_path = _write_csv(tmp_path / "fer.csv", rows)
    assert len(load_data(csv_path).train) == 5
    assert len(load_data(str(csv_path)).test) == 4
    folder = tmp_path / "folder"
    _make_folder(folder, np.random.default_rng(16))
    assert len(load_data(folder).val) == 2
    with pytest.raises(DataError, match="no such file or folder"):
        load_data(tmp_path / "nope.csv")
    (tmp_path / "x.txt").write_text("emotion,pixels,Usage\n")
    with pytest.raises(DataError, match=r"x\.txt: not a \.csv file or a folder"):
        load_data(tmp_path / "x.txt")


def test_load_data_synthetic():
    a = load_data(seed=3, synthetic=SMALL)
    assert [len(a.split(s)) for s in data.SPLITS] == [70, 21, 14]
    assert "seed=3" in a.source
    b = load_data(seed=3, synthetic=SMALL)
    c = load_data(seed=4, synthetic=SMALL)
    for s in data.SPLITS:
        assert a.split(s).images.dtype == torch.uint8 and a.split(s).labels.dtype == torch.int64
        assert torch.equal(a.split(s).images, b.split(s).images)
        assert torch.equal(a.split(s).labels, b.split(s).labels)
        assert not torch.equal(a.split(s).images, c.split(s).images)
    assert not torch.equal(a.val.images[:14], a.test.images)  # splits are independent streams
    with pytest.raises(DataError, match="split 'val' .* is empty"):
        load_data(synthetic=SyntheticSpec(n_train=7, n_val=0, n_test=7))


def test_train_flag_strict_images():
    from fer_fast.train import parse_args

    assert parse_args(["--strict-images"])[0].strict_images is True
    assert parse_args([])[0].strict_images is False
