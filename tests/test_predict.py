"""Predictor and ``python -m fer_fast predict`` / ``export`` end to end on CPU: real Haar detection
on drawn faces, images, folders, a video written here, JSON output, ONNX and safetensors."""
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from face_assets import face_photo
from fer_fast import VGG, Predictor, ten_crop
from fer_fast.augmentation import NUM_CROPS
from fer_fast.checkpoint import save_atomic
from fer_fast.export import (ONNX_TOLERANCE, export_onnx, load_safetensors, onnx_max_difference,
                             save_safetensors)
from fer_fast.export import main as export_main
from fer_fast.model import CLASS_NAMES
from fer_fast.cli import UserError
from fer_fast.predict import PredictError
from fer_fast.predict import main as predict_main
from fer_fast.preprocess import to_fer_image
from fer_fast.synthetic import generate

WIDTH = 0.0625


def _model(recipe="released", seed=0):
    """A tiny VGG with non-trivial BatchNorm statistics and spread-out logits."""
    torch.manual_seed(seed)
    model = VGG(recipe, width=WIDTH)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
        for name, p in model.named_parameters():
            if name.startswith("bn") and name.endswith("weight"):
                p.uniform_(-1.5, 1.5)  # negative scales: pooling after BN must stay exact
        model.lin3.weight.mul_(40)
    return model.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A checkpoint in the project's format, photos with 0, 1 and 2 faces, a video."""
    root = tmp_path_factory.mktemp("predict")
    model = _model()
    save_atomic({"params": model.state_dict(), "config": {"recipe": "released", "width": WIDTH}},
                root / "model.pt")
    photos = root / "photos"
    (photos / "more").mkdir(parents=True)
    cv2.imwrite(str(photos / "one.png"), face_photo(0))
    cv2.imwrite(str(photos / "more" / "two.jpg"),
                face_photo(1, faces=((90, 120, 90), (240, 110, 100)), smile=1.0))
    cv2.imwrite(str(photos / "more" / "empty.png"), face_photo(2, faces=()))
    video = root / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    assert writer.isOpened()
    for i in range(6):
        writer.write(face_photo(i, faces=((150 + 4 * i, 120, 110),), smile=i / 5))
    writer.release()
    return dict(root=root, model=model, ckpt=root / "model.pt", photos=photos, video=video)


def _expected_probabilities(model, faces_u8):
    """Evaluation's protocol written out: mean of the ten crops' logits, softmax."""
    with torch.no_grad():
        logits = model(ten_crop(torch.from_numpy(faces_u8), backend="eager"))
    return torch.softmax(logits.view(len(faces_u8), NUM_CROPS, -1).mean(1).double(), 1).numpy()


def test_haar_detects_drawn_faces(files):
    predictor = Predictor(files["ckpt"], device="cpu")
    one = predictor.predict(files["photos"] / "one.png")
    assert len(one) == 1
    x, y, w, h = one[0].box
    assert x < 160 < x + w and y < 120 < y + h and 80 <= w <= 200  # around the drawn face
    two = predictor.predict(files["photos"] / "more" / "two.jpg")
    assert len(two) == 2 and two[0].box[0] < 90 < two[1].box[0]  # sorted left to right
    assert predictor.predict(files["photos"] / "more" / "empty.png") == []


class _Spy:
    """Records the picture size and smallest face each detection call gets."""

    def __init__(self, detector):
        self.detector, self.calls = detector, []

    def __call__(self, gray, min_face):
        self.calls.append((gray.shape, min_face))
        return self.detector(gray, min_face)


def test_large_pictures_are_searched_shrunk_and_cut_at_full_size(files):
    model = files["model"]
    photo = face_photo(4, height=1500, width=2000, faces=((1100, 700, 640),))
    rgb = np.ascontiguousarray(photo[..., ::-1])
    predictor = Predictor(model, device="cpu", detector="haar", detect_side=640)
    spy = predictor.detector.cascade = _Spy(predictor.detector.cascade)
    faces = predictor.predict(rgb)
    assert spy.calls == [((480, 640), 8)]  # 2000x1500 shrunk by 0.32; min_face 24 with it
    assert len(faces) == 1
    x, y, w, h = faces[0].box  # in the picture's own pixels
    assert x < 1100 < x + w and y < 700 < y + h and 480 <= w <= 900
    want = _expected_probabilities(model, to_fer_image(rgb, box=faces[0].box)[None])[0]
    np.testing.assert_allclose(list(faces[0].probabilities.values()), want, rtol=1e-6)
    # at full size the detector sees the picture itself and finds the same face
    full = Predictor(model, device="cpu", detector="haar", detect_side=0)
    spy = full.detector.cascade = _Spy(full.detector.cascade)
    [face] = full.predict(rgb)
    assert spy.calls == [((1500, 2000), 24)]
    assert face.box[0] < 1100 < face.box[0] + face.box[2] and 480 <= face.box[2] <= 900
    # min_face stays in the picture's pixels: scaled with it for the search
    big = Predictor(model, device="cpu", detector="haar", detect_side=640, min_face=1000)
    spy = big.detector.cascade = _Spy(big.detector.cascade)
    assert big.predict(rgb) == [] and spy.calls == [((480, 640), 320)]
    # a picture within the side is searched as it is
    small = face_photo(5)
    spy = predictor.detector.cascade = _Spy(predictor.detector.cascade.detector)
    assert len(predictor.predict(small, channel_order="BGR")) == 1
    assert spy.calls == [((240, 320), 24)]


def test_faces_are_converted_and_classified_like_evaluation(files):
    model = files["model"]
    predictor = Predictor(model, device="cpu")
    photo = face_photo(3, faces=((170, 110, 120),))
    faces = predictor.predict(photo, channel_order="BGR")
    assert len(faces) == 1
    rgb = photo[..., ::-1]
    crop = to_fer_image(rgb, box=faces[0].box, margin=predictor.margin)
    want = _expected_probabilities(model, crop[None])[0]
    np.testing.assert_allclose(list(faces[0].probabilities.values()), want, rtol=1e-6)
    assert faces[0].label == CLASS_NAMES[int(np.argmax(want))]
    # the same picture as an RGB array, a PIL image and 16-bit data gives the same answer
    for same in (predictor.predict(np.ascontiguousarray(rgb)),
                 predictor.predict(Image.fromarray(np.ascontiguousarray(rgb))),
                 predictor.predict(rgb.astype(np.uint16) * 257)):
        assert [f.box for f in same] == [faces[0].box]
        np.testing.assert_allclose(list(same[0].probabilities.values()), want, rtol=1e-6)


def test_detector_none_and_predict_batch_on_fer_images(files):
    model = files["model"]
    images, _ = generate(5, seed=3)
    predictor = Predictor(model, device="cpu", detector="none")
    batch = predictor.predict_batch(list(images))
    assert [len(faces) for faces in batch] == [1] * 5
    assert all(faces[0].box == (0, 0, 48, 48) for faces in batch)
    got = np.array([list(faces[0].probabilities.values()) for faces in batch])
    np.testing.assert_allclose(got, _expected_probabilities(model, images), rtol=1e-6)
    centre = Predictor(model, device="cpu", detector="none", tta="none").classify(images)
    with torch.no_grad():
        crops = ten_crop(torch.from_numpy(images), backend="eager").view(5, NUM_CROPS, 1, 40, 40)
        want = torch.softmax(model(crops[:, 4]).double(), 1).numpy()  # crop 4: the centre
    np.testing.assert_allclose(centre, want, rtol=1e-6)


def test_predictor_refuses_bad_arguments(files, tmp_path):
    with pytest.raises(PredictError, match="no such model file"):
        Predictor(tmp_path / "missing.pt")
    with pytest.raises(UserError, match="device gpu7: unknown device"):
        Predictor(files["model"], device="gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="device cuda: this machine has no CUDA device"):
            Predictor(files["model"], device="cuda")
    with pytest.raises(PredictError, match="tta must be one of"):
        Predictor(files["model"], tta="mirror")
    with pytest.raises(PredictError, match=r"nope\.xml: no such face-detector file"):
        Predictor(files["model"], detector=str(tmp_path / "nope.xml"))
    not_model = tmp_path / "yunet.onnx"
    not_model.write_bytes(b"not an onnx model")
    with pytest.raises(PredictError, match=r"yunet\.onnx: not an OpenCV face-detector model"):
        Predictor(files["model"], detector=str(not_model))
    not_cascade = tmp_path / "cascade.xml"
    not_cascade.write_text("<opencv_storage></opencv_storage>")
    with pytest.raises(PredictError, match="not an OpenCV cascade classifier"):
        Predictor(files["model"], detector=str(not_cascade))
    for side in (10, -1, True, 640.0):
        with pytest.raises(PredictError, match="detect_side must be 0 .full size. or an integer"):
            Predictor(files["model"], detect_side=side)
    with pytest.raises(PredictError, match=r"image 0: floating-point image"):
        Predictor(files["model"], detector="none").predict(np.zeros((48, 48), np.float32))


def test_cli_json_on_images_folder_and_video(files, tmp_path, capsys):
    out = tmp_path / "annotated"
    code = predict_main([str(files["ckpt"]), str(files["photos"]), str(files["video"]), "--json",
                         "--device", "cpu", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = [json.loads(line) for line in captured.out.splitlines()]
    for row in rows:
        assert set(row) == {"file", "frame", "box", "label", "probabilities", "no_face_found"}
        assert row["no_face_found"] is False
        assert list(row["probabilities"]) == list(CLASS_NAMES)
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-6
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
        assert len(row["box"]) == 4 and all(isinstance(v, int) for v in row["box"])
    by_file = {}
    for row in rows:
        by_file.setdefault(row["file"], []).append(row)
    assert len(by_file[str(files["photos"] / "one.png")]) == 1
    assert len(by_file[str(files["photos"] / "more" / "two.jpg")]) == 2
    assert str(files["photos"] / "more" / "empty.png") not in by_file
    assert "empty.png: no face found" in captured.err
    assert [r["frame"] for r in by_file[str(files["video"])]] == list(range(6))
    assert all(r["frame"] is None for f, rs in by_file.items() if f != str(files["video"])
               for r in rs)
    assert "3 image(s), 6 video frame(s): 9 face(s)" in captured.err
    assert "faces/s" in captured.err
    # annotated copies: same size, drawn on near the box, video with every frame
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["clip.annotated.mp4", "more/empty.annotated.png", "more/two.annotated.png",
                       "one.annotated.png"]
    original = np.asarray(Image.open(files["photos"] / "one.png").convert("RGB"))
    annotated = np.asarray(Image.open(out / "one.annotated.png"))
    assert annotated.shape == original.shape
    x, y, w, h = by_file[str(files["photos"] / "one.png")][0]["box"]
    assert (annotated[y, x:x + w] != original[y, x:x + w]).any()  # the box's top edge
    np.testing.assert_array_equal(annotated[-10:, :20], original[-10:, :20])  # far from it
    capture = cv2.VideoCapture(str(out / "clip.annotated.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    capture.release()


def test_a_portrait_phone_photo_stored_sideways_is_read_upright(files, tmp_path, capsys):
    """A phone stores a portrait photo as landscape pixels and an EXIF Orientation tag (6: turn
    90 degrees clockwise to show): the face is found upright, its box and the annotated copy
    are in the picture as shown."""
    upright = face_photo(6, height=320, width=240, faces=((120, 150, 120),))[..., ::-1]
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "IMG_0001.jpg"
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(path, exif=exif, quality=95)
    want = Predictor(files["ckpt"], device="cpu").predict(np.ascontiguousarray(upright))
    assert len(want) == 1
    out = tmp_path / "annotated"
    assert predict_main([str(files["ckpt"]), str(path), "--json", "--device", "cpu", "--out",
                         str(out), "--no-progress"]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(abs(a - b) <= 4 for a, b in zip(row["box"], want[0].box)), (row["box"], want)
    assert np.asarray(Image.open(out / "IMG_0001.annotated.png")).shape == (320, 240, 3)


def test_table_columns_fit_every_class_name(capsys):
    """The table never cuts a class name (a model's own names can be long): columns widen."""
    from types import SimpleNamespace

    from fer_fast.predict import Face, _Run
    names = ("angry", "a rather long class name", "happy")
    probabilities = dict(zip(names, (0.125, 0.625, 0.25)))
    run = _Run(SimpleNamespace(class_names=names), SimpleNamespace(json=False, out=None))
    run.report("photo.png", None, [Face(box=(1, 2, 30, 30), probabilities=probabilities,
                                        label=names[1])])
    header, row = capsys.readouterr().out.splitlines()
    assert f" {names[1]} " in row  # the label column
    for name, p in probabilities.items():  # each value right-aligned under its whole name
        assert header.index(name) + len(name) == row.rindex(f"{p:.3f}") + len(f"{p:.3f}")


def test_cli_table_and_never_overwrites(files, tmp_path, capsys):
    code = predict_main([str(files["ckpt"]), str(files["photos"] / "more"), "--device", "cpu",
                         "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "no face found" in out and "label" in out.splitlines()[0]
    assert out.splitlines()[0].split()[-len(CLASS_NAMES):] == list(CLASS_NAMES)  # whole names
    assert "2 image(s), 0 video frame(s): 2 face(s)" in out and "1 without a face" in out
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    code = predict_main([str(files["ckpt"]), str(files["photos"]), "--out", str(taken)])
    err = capsys.readouterr().err
    assert code == 2 and "exists and is not an empty folder" in err
    assert (taken / "keep.txt").read_text() == "mine"


def test_cli_bad_inputs(files, tmp_path, capsys):
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"\x00\x01" * 500)
    ckpt, one = str(files["ckpt"]), str(files["photos"] / "one.png")
    # unreadable files are skipped and counted; the rest is processed
    assert predict_main([ckpt, one, str(notes), str(corrupt), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 unreadable input(s)" in err
    assert f"{notes}: cannot read image" in err and f"{corrupt}: cannot read video" in err
    assert "Traceback" not in err
    # nothing readable at all, an empty folder, a missing checkpoint or input: exit 2, one line
    assert predict_main([ckpt, str(notes), "--device", "cpu"]) == 2
    assert "error: no input could be read" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict_main([ckpt, str(empty), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no image or video files in this folder" in err and "error:" in err
    for argv, message in (([str(tmp_path / "missing.pt"), one], "missing.pt: no such model file"),
                          ([ckpt, str(tmp_path / "nope.jpg")], "nope.jpg: no such file or folder"),
                          (["--model", str(notes), one], f"{notes}: "),  # not a checkpoint
                          ([ckpt, "--model", ckpt, one], "two models given"),
                          ([ckpt], "nothing to predict")):
        assert predict_main(argv + ["--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    for flag, value, message in (("--max-frames", "0", "--max-frames: must be >= 1"),
                                 ("--detect-side", "20", "--detect-side: 0 (full size) or at "
                                                         "least 48, got 20")):
        with pytest.raises(SystemExit) as info:  # a bad flag value: the parser's one line
            predict_main([ckpt, one, flag, value, "--device", "cpu"])
        err = capsys.readouterr().err
        assert info.value.code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("recipe", ["released", "paper"])
def test_onnx_export_matches_pytorch(tmp_path, recipe):
    model = _model(recipe, seed=1)
    path = tmp_path / "model.onnx"
    export_onnx(model, path)
    random = torch.rand(5, 1, 40, 40, generator=torch.Generator().manual_seed(2))
    faces = ten_crop(torch.from_numpy(generate(3, seed=4)[0]), backend="eager")
    for crops in (random, faces):
        diff, scale = onnx_max_difference(model, path, crops)
        assert scale > 0.1  # the comparison is not between near-zero logits
        assert diff <= ONNX_TOLERANCE * max(1.0, scale), (diff, scale)


def test_export_cli_and_same_labels_from_every_format(files, tmp_path, capsys):
    onnx_path, weights = tmp_path / "model.onnx", tmp_path / "model.safetensors"
    assert export_main([str(files["ckpt"]), "--onnx", str(onnx_path), "--weights",
                        str(weights)]) == 0
    out = capsys.readouterr().out
    assert "max |logit difference|" in out and " ok" in out and "opset 17" in out
    reloaded = load_safetensors(weights)
    assert (reloaded.recipe, reloaded.width) == ("released", WIDTH)
    for k, v in files["model"].state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v), k
    photo = files["photos"] / "more" / "two.jpg"
    answers = [Predictor(m, device="cpu").predict(photo)
               for m in (files["ckpt"], onnx_path, weights)]
    for faces in answers[1:]:
        assert [f.box for f in faces] == [f.box for f in answers[0]]
        assert [f.label for f in faces] == [f.label for f in answers[0]]
        for a, b in zip(faces, answers[0]):
            np.testing.assert_allclose(list(a.probabilities.values()),
                                       list(b.probabilities.values()), atol=1e-5)
    # never overwrites; a missing checkpoint is one line and exit 2
    assert export_main([str(files["ckpt"]), "--onnx", str(onnx_path)]) == 2
    assert "already exists (not overwritten" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        export_main([str(files["ckpt"]), "--onnx", str(tmp_path / "m9.onnx"), "--opset", "9"])
    assert info.value.code == 2 and "--opset must be in 13..18" in capsys.readouterr().err
    assert export_main([str(tmp_path / "missing.pt"), "--weights", str(tmp_path / "w.st")]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err


def test_safetensors_file_refused_without_architecture(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(PredictError, match="no fer_fast architecture in the metadata"):
        Predictor(path)
    model = _model()
    good = tmp_path / "good.safetensors"
    save_safetensors(model, good)
    x = torch.rand(2, 1, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(load_safetensors(good)(x), model(x), rtol=0, atol=0)


def test_demo_command_errors_are_one_line(tmp_path, capsys):
    from fer_fast.demo import main as demo_main

    assert demo_main([str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "missing.pt: no such model file" in err


def test_checkpoint_written_by_train(files, tmp_path, capsys):
    from fer_fast.train import main as train_main

    run = tmp_path / "run"
    assert train_main(["--preset", "quick", "--epochs", "1", "--synthetic-sizes", "64,16,16",
                       "--width", str(WIDTH), "--batch-size", "32", "--out", str(run),
                       "--no-progress", "--device", "cpu", "--model-backend", "eager",
                       "--augment-backend", "eager"]) == 0
    capsys.readouterr()
    photo = str(files["photos"] / "one.png")
    assert predict_main([str(run / "best.pt"), photo, "--json", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 and rows[0]["file"] == photo
    assert export_main([str(run / "best.pt"), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert " ok" in capsys.readouterr().out
    onnx_rows = Predictor(tmp_path / "m.onnx", device="cpu").predict(photo)
    assert [f.label for f in onnx_rows] == [rows[0]["label"]]
