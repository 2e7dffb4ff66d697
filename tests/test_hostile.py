"""Hostile inputs, round two (issue 19): no lost file, no silent wrong result, no traceback.
Each test names the class of the issue it covers."""
import errno
import json
import os

import numpy as np
import pytest
import torch

from fer_fast import cli, files, rundir, train as T
from fer_fast.checkpoint import save_atomic
from fer_fast.model import VGG
from fer_fast.rundir import LOCK_FILE, lock_run_dir
from fer_fast.step import TrainStep
from test_safety import easy, finished_run, no_data, status  # noqa: F401 - fixtures
from test_train import TINY

WIDTH = 0.0625


def _tiny_checkpoint(path, **config):
    save_atomic({"params": VGG(width=WIDTH).state_dict(),
                 "config": {"recipe": "released", "width": WIDTH, **config}}, path)
    return path


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


# ----------------------------------------------------------------------------------------------
# 1, 3: never replace a user's file; no half-written file, no leftover temporary
# ----------------------------------------------------------------------------------------------

def test_files_never_replace_unless_asked_and_clean_up(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    target.write_text("precious")
    with pytest.raises(FileExistsError, match="a.json: already exists"):
        files.write_text(target, "new")
    assert target.read_text() == "precious" and not _leftovers(tmp_path)
    files.write_text(target, "new", overwrite=True)
    assert target.read_text() == "new"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        files.write_bytes(tmp_path / "b.bin", b"x" * 1000)
    assert not (tmp_path / "b.bin").exists() and not _leftovers(tmp_path)


def test_selfcheck_json_never_replaces_a_file(tmp_path, monkeypatch, capsys):
    from fer_fast import selfcheck

    monkeypatch.setenv("FER_FAST_VERDICT_DIR", str(tmp_path / "cache"))
    ckpt = _tiny_checkpoint(tmp_path / "best.pt")
    before = ckpt.read_bytes()
    assert status(selfcheck.main, ["--device", "cpu", "--op", "augment", "--backend", "native",
                                   "--quick", "--json", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {ckpt}: already exists (not overwritten; remove it or choose " \
                      f"another name)"
    assert ckpt.read_bytes() == before and not _leftovers(tmp_path)


def test_export_on_a_full_disk_leaves_nothing_and_the_retry_works(tmp_path, monkeypatch,
                                                                  capsys):
    from fer_fast.export import main as export_main

    ckpt = _tiny_checkpoint(tmp_path / "best.pt")
    weights = tmp_path / "w.safetensors"
    real_fsync = files.os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    assert export_main([str(ckpt), "--weights", str(weights)]) == 2
    assert "the disk is full" in capsys.readouterr().err
    assert not weights.exists() and not _leftovers(tmp_path)
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    assert export_main([str(ckpt), "--weights", str(weights)]) == 0
    assert weights.stat().st_size > 1000


def test_saliency_refuses_to_replace_its_files_before_any_work(tmp_path, capsys):
    from fer_fast.saliency import main as saliency_main

    ckpt = _tiny_checkpoint(tmp_path / "best.pt")
    (tmp_path / "saliency.npz").write_bytes(b"mine")
    assert saliency_main([str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "saliency.npz: already exists" in err and "--overwrite" in err
    assert (tmp_path / "saliency.npz").read_bytes() == b"mine"


# ----------------------------------------------------------------------------------------------
# 2: one process per run folder
# ----------------------------------------------------------------------------------------------

def test_a_run_folder_in_use_is_refused(tmp_path, capsys, no_data):
    out = tmp_path / "run"
    lock = lock_run_dir(out)  # as another fer_fast.train would hold it
    try:
        assert status(T.main, TINY + ["--epochs", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: {out}: is in use by another fer_fast.train (pid {os.getpid()}); "
                       f"wait for it to end or choose another --out"]
    finally:
        lock.close()
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


def test_a_resumed_run_in_use_is_refused(tmp_path, finished_run, capsys, no_data):
    import shutil

    run = shutil.copytree(finished_run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    lock = lock_run_dir(run)
    try:
        assert status(T.main, ["--resume", str(run), "--epochs", "5"]) == 2
        assert "is in use by another fer_fast.train" in capsys.readouterr().err
    finally:
        lock.close()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != LOCK_FILE} == \
        {k: v for k, v in before.items() if k != LOCK_FILE}


def test_the_lock_is_released_when_a_run_ends(tmp_path, easy, capsys):
    out = tmp_path / "run"
    T.train(*T.parse_args(TINY + ["--epochs", "1", "--out", str(out)]))
    lock_run_dir(out).close()  # free again
    assert LOCK_FILE not in capsys.readouterr().out  # not listed among the run's files


# ----------------------------------------------------------------------------------------------
# 7: a full disk during training: one line, the previous checkpoints whole, the run resumable
# ----------------------------------------------------------------------------------------------

def test_torch_save_over_the_file_size_limit_is_an_oserror(tmp_path):
    import resource
    import signal

    from fer_fast.checkpoint import load_checkpoint

    path = tmp_path / "last.pt"
    save_atomic({"params": {"w": torch.ones(3)}}, path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        with pytest.raises(OSError) as info:  # torch itself says "unexpected pos"
            save_atomic({"params": {"w": torch.zeros(100_000)}}, path, tmp_path / "best.pt")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert info.value.errno == errno.EFBIG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]
    assert torch.equal(load_checkpoint(path)["params"]["w"], torch.ones(3))


def test_disk_full_while_writing_best_pt_leaves_a_resumable_run(tmp_path, easy, capsys,
                                                                monkeypatch):
    from fer_fast import checkpoint

    out = tmp_path / "run"
    real_write = checkpoint._write_temp

    def write(folder, name, fn):
        if name == "best.pt" and write.epoch == 2:  # last.pt of epoch 2 is already written
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(folder, name, fn)

    write.epoch = 0
    real_end = T.end_epoch

    def end_epoch(run, stats):
        write.epoch = stats["epoch"]
        return real_end(run, stats)

    monkeypatch.setattr(checkpoint, "_write_temp", write)
    monkeypatch.setattr(T, "end_epoch", end_epoch)
    # every epoch improves validation accuracy, so every epoch writes best.pt
    monkeypatch.setattr(T, "evaluate_split", lambda model, batches: (
        (0.1 * write.epoch, torch.zeros(7, 7, dtype=torch.long))))
    assert status(T.main, TINY + ["--epochs", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the disk is full" in err[0] and f"--resume {out}" in err[0]
    names = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
    assert names == ["best.pt", "best.pt.sha256", "config.json", "last.pt", "last.pt.sha256",
                     "metrics.csv"]
    from fer_fast.checkpoint import load_checkpoint
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert load_checkpoint(out / "best.pt")["epoch"] == 1
    monkeypatch.setattr(checkpoint, "_write_temp", real_write)
    assert status(T.main, ["--resume", str(out)]) == 0
    assert load_checkpoint(out / "last.pt")["epoch"] == 3


# ----------------------------------------------------------------------------------------------
# 6, 12: values that mean something else, obscure errors of the Python API
# ----------------------------------------------------------------------------------------------

def test_block_refuses_3d_input_and_a_string_pool():
    from fer_fast import ConvBNReLU2d

    with pytest.raises(TypeError, match="pool must be True or False, got 'no'"):
        ConvBNReLU2d(3, 4, pool="no")
    with pytest.raises(ValueError, match=r"expected a 4-D input \[N, 3, H, W\], got 3-D"):
        ConvBNReLU2d(3, 4)(torch.rand(3, 8, 8))  # [C, H, W]: first dimension = channels


def test_python_api_errors_name_the_argument():
    from fer_fast import Predictor

    for width in (float("nan"), "abc", -1.0, True, 1e6):
        with pytest.raises(ValueError, match="VGG: width"):
            VGG(width=width)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        VGG(width=WIDTH, num_classes=-3)
    model = VGG(width=WIDTH)
    for kw in ({"batch_size": "8"}, {"batch_size": 0}, {"min_face": 2.5}):
        with pytest.raises(ValueError, match=f"{next(iter(kw))} must be an integer >= 1"):
            Predictor(model, device="cpu", detector="none", **kw)
    with pytest.raises(ValueError, match="empty image"):
        Predictor(model, device="cpu", detector="none").predict(np.zeros((0, 0), np.uint8))


# ----------------------------------------------------------------------------------------------
# 8: decompression bombs are unreadable files, not crashes
# ----------------------------------------------------------------------------------------------

def _bomb(path, side=20000):
    """A 1-bit PNG of side x side pixels in about 48 KB."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + (side + 7) // 8)
    raw = zlib.compress(row * side, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side,
                     1, 0, 0, 0, 0)) + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_skipped_by_predict(tmp_path, capsys):
    from PIL import Image

    from fer_fast.predict import main as predict_main

    bomb = _bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 100_000
    Image.fromarray(np.full((48, 48), 128, np.uint8)).save(tmp_path / "good.png")
    ckpt = _tiny_checkpoint(tmp_path / "m.pt")
    assert predict_main([str(ckpt), str(tmp_path / "good.png"), str(bomb), "--detector", "none",
                         "--device", "cpu", "--no-progress", "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "good.png" in captured.out and "1 image(s)" in captured.out
    assert "bomb.png: too large to decode" in captured.err and "Traceback" not in captured.err


def test_a_decompression_bomb_is_a_bad_file_of_an_image_folder(tmp_path):
    from PIL import Image

    from fer_fast.data import DataError, read_image_folder

    for split in ("train", "val", "test"):
        (tmp_path / split / "happy").mkdir(parents=True)
        Image.fromarray(np.zeros((48, 48), np.uint8)).save(tmp_path / split / "happy" / "a.png")
    _bomb(tmp_path / "train" / "happy" / "bomb.png")
    with pytest.raises(DataError, match=r"bomb\.png: too large to decode"):
        read_image_folder(tmp_path)


# ----------------------------------------------------------------------------------------------
# 9, 11, 13: flags out of range are one line (and a traceback with --debug)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--lr", "1e39"], ["--gamma", "1e308"], ["--seed", "-1"],
                                  ["--seed", "1e23"], ["--seed", str(10**23)], ["--width", "1e6"],
                                  ["--synthetic-sizes", "100000000,1,1"],
                                  ["--batch-size", "1000000000"]])
def test_unbounded_flags_are_refused(argv, capsys, no_data):
    assert status(T.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and argv[0] in err[0]


def test_evaluate_augment_backend_lists_its_choices(tmp_path, capsys):
    from fer_fast import evaluate

    ckpt = _tiny_checkpoint(tmp_path / "m.pt")
    assert status(evaluate.main, [str(ckpt), "--augment-backend", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err and "'eager'" in err


def test_predict_camera_index_is_range_checked(tmp_path, capsys):
    from fer_fast.predict import main as predict_main

    ckpt = _tiny_checkpoint(tmp_path / "m.pt")
    for camera in ("-1", "100000"):
        assert status(predict_main, [str(ckpt), "--camera", camera]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: argument --camera")


def test_debug_shows_tracebacks_of_argument_and_load_errors(tmp_path, monkeypatch, capsys):
    with pytest.raises(cli.UserError, match="argument --lr"):
        T.main(["--lr", "x", "--debug"])
    missing = str(tmp_path / "missing.pt")
    for argv in (["--resume", missing], ["--init", missing]):
        assert status(T.main, argv) == 2
        assert "Traceback" not in capsys.readouterr().err
        monkeypatch.setenv(cli.DEBUG_ENV, "1")
        with pytest.raises(cli.UserError, match="no such checkpoint file") as info:
            T.main(argv)
        assert info.value.__context__ is not None  # the load error it came from
        monkeypatch.delenv(cli.DEBUG_ENV)


# ----------------------------------------------------------------------------------------------
# 10, 14: malformed model files and sidecars: one line naming the file and the field
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, field", [
    ({"width": -1}, "width"), ({"width": float("nan")}, "width"), ({"width": "abc"}, "width"),
    ({"width": 300}, "width"), ({"recipe": "bogus"}, "recipe")])
def test_malformed_checkpoint_config_is_one_line(tmp_path, capsys, config, field):
    from fer_fast import evaluate

    ckpt = tmp_path / "m.pt"
    save_atomic({"params": VGG(width=WIDTH).state_dict(),
                 "config": {"recipe": "released", "width": WIDTH, **config}}, ckpt)
    assert status(evaluate.main, [str(ckpt), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {ckpt}: config field '{field}'")


def test_resume_of_a_checkpoint_with_a_malformed_config(tmp_path, finished_run, capsys,
                                                        no_data):
    from fer_fast.checkpoint import load_checkpoint

    ckpt = load_checkpoint(finished_run / "last.pt")
    for field, value in (("epochs", "many"), ("lr", 1e39), ("seed", -1), ("recipe", "x"),
                         ("data", 3), ("synthetic_sizes", [1, "a", 2])):
        path = tmp_path / field / "last.pt"
        path.parent.mkdir()
        save_atomic({**ckpt, "config": {**ckpt["config"], field: value}}, path)
        assert status(T.main, ["--resume", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"config field '{field}' is {value!r}" in err[0], err


def test_safetensors_with_a_negative_class_count(tmp_path):
    from safetensors.torch import save_file

    from fer_fast import Predictor
    from fer_fast.predict import PredictError

    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in VGG(width=WIDTH).state_dict().items()}, str(path),
              metadata={"format": "fer_fast.VGG", "recipe": "released", "width": str(WIDTH),
                        "num_classes": "-3"})
    with pytest.raises(PredictError, match="num_classes must be a positive integer, got -3"):
        Predictor(path, device="cpu")


def _onnx(tmp_path, name, num_classes=7, class_names=None, channels=1):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from fer_fast.export import onnx_model

    if channels == 1:
        proto = onnx_model(VGG(width=WIDTH, num_classes=num_classes))
    else:  # a classifier of colour crops
        weight = numpy_helper.from_array(np.zeros((channels * 1600, 7), np.float32), "w")
        proto = helper.make_model(helper.make_graph(
            [helper.make_node("Flatten", ["crops"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["logits"])], "g",
            [helper.make_tensor_value_info("crops", TensorProto.FLOAT, ["b", channels, 40, 40])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 7])], [weight]),
            opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        helper.set_model_props(proto, {"format": "fer_fast.VGG"})
    props = {p.key: p.value for p in proto.metadata_props}
    if class_names is not None:
        props["class_names"] = class_names
    else:
        props.setdefault("class_names", json.dumps([str(i) for i in range(num_classes)]))
    if class_names == "":
        props.pop("class_names")
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    path = tmp_path / name
    onnx.save(proto, str(path))
    return path


def test_onnx_class_names_and_inputs_are_checked(tmp_path):
    from fer_fast import Predictor
    from fer_fast.predict import PredictError

    seven = json.dumps(["a", "b", "c", "d", "e", "f", "g"])
    for path, message in (
            (_onnx(tmp_path, "five.onnx", num_classes=5, class_names=seven), r"not \[batch, 7\]"),
            (_onnx(tmp_path, "none.onnx", class_names=""), "'class_names' must be a JSON list"),
            (_onnx(tmp_path, "bad.onnx", class_names="[1, 2"), "'class_names' must be a JSON"),
            (_onnx(tmp_path, "dup.onnx", class_names='["a", "a", "b", "c", "d", "e", "f"]'),
             "distinct"),
            (_onnx(tmp_path, "rgb.onnx", channels=3), r"not one 'crops' float \[batch, 1, 40")):
        with pytest.raises(PredictError, match=message):
            Predictor(path, device="cpu", detector="none")


def test_a_detector_that_is_no_face_detector(tmp_path):
    from fer_fast import Predictor
    from fer_fast.predict import PredictError

    with pytest.raises(PredictError, match="not an OpenCV face-detector model"):
        Predictor(VGG(width=WIDTH), device="cpu", detector=str(_onnx(tmp_path, "vgg.onnx")))


def test_sidecars_are_read_as_sha256sum_reads_them(tmp_path):
    from fer_fast.checkpoint import CheckpointError, checksum_path, load_checkpoint

    ckpt = _tiny_checkpoint(tmp_path / "best.pt")
    sidecar = checksum_path(ckpt)
    digest = sidecar.read_text().split()[0]
    sidecar.write_text(f"{digest.upper()}  best.pt\n")  # sha256sum -c accepts it
    load_checkpoint(ckpt)
    sidecar.write_text(f"{digest} *best.pt\n")  # binary mode mark
    load_checkpoint(ckpt)
    sidecar.write_text(f"{digest}  other.pt\n")  # sha256sum -c checks other.pt, not best.pt
    with pytest.raises(CheckpointError, match=r"best\.pt\.sha256: names 'other\.pt'"):
        load_checkpoint(ckpt)
    sidecar.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match=r"best\.pt\.sha256: not a sha256sum line"):
        load_checkpoint(ckpt)


# ----------------------------------------------------------------------------------------------
# 5, 15: a study's --devices are GPUs this machine has; Ctrl-C stops the study
# ----------------------------------------------------------------------------------------------

STUDY_TINY = ["--preset", "quick", "--epochs", "1", "--width", "0.0625", "--",
              "--batch-size", "14", "--eval-batch-size", "28", "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("devices, message", [("0", "this machine has no CUDA GPU"),
                                              ("abc", "expected distinct GPU indices"),
                                              ("0,0", "expected distinct GPU indices"),
                                              ("-1", "expected distinct GPU indices")])
def test_study_devices_must_exist(tmp_path, monkeypatch, capsys, devices, message):
    from fer_fast import experiments as E

    monkeypatch.setattr(E, "_gpu_count", lambda: 0)
    monkeypatch.setattr(E.subprocess, "call", lambda *a, **k: pytest.fail("a run started"))
    assert status(E.main, ["schedulers", "--out", str(tmp_path / "s"), "--devices", devices,
                           *STUDY_TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    monkeypatch.setattr(E, "_gpu_count", lambda: 2)
    assert status(E.main, ["schedulers", "--out", str(tmp_path / "s"), "--devices", "1,2",
                           *STUDY_TINY]) == 2
    assert "no GPU 2 here (GPUs: 0..1)" in capsys.readouterr().err


def test_ctrl_c_stops_the_study_and_says_how_to_continue(tmp_path, monkeypatch, capsys,
                                                         easy):
    from fer_fast import experiments as E, plots

    started = []
    real_main = T.main

    def main(argv):
        started.append(argv[argv.index("--out") + 1])
        return real_main(argv)

    def step(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "main", main)
    monkeypatch.setattr(TrainStep, "__call__", step)
    monkeypatch.setattr(plots, "draw_run", lambda *a, **k: [])
    out = tmp_path / "study"
    assert E.main(["optimizers", "--out", str(out), *STUDY_TINY]) == 130
    first = E.plan("optimizers")[0].name
    assert started == [str(out / first)]  # the next run never started
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"interrupted: the study stopped in run {first}")
    assert f"continue the study with: python -m fer_fast.experiments optimizers --out {out}" \
        in err[-1] and "failed runs" not in "".join(err)


def test_ctrl_c_stops_a_study_on_gpus(tmp_path, monkeypatch, capsys):
    from fer_fast import experiments as E

    import threading

    launched, both = [], threading.Barrier(2, timeout=30)

    def fake_call(cmd, stdout, stderr, env):
        launched.append(cmd)
        both.wait()  # Ctrl-C reaches the trainers of both GPUs
        return 130  # the trainer's exit status after Ctrl-C

    monkeypatch.setattr(E.subprocess, "call", fake_call)
    monkeypatch.setattr(E, "_gpu_count", lambda: 2)
    assert E.main(["schedulers", "--out", str(tmp_path / "s"), "--devices", "0,1",
                   *STUDY_TINY]) == 130
    assert len(launched) <= 2  # each GPU's run in progress, none after
    assert "interrupted: the study stopped in run" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# 11, 12: a CSV larger than memory; corrupt run files; obscure API errors
# ----------------------------------------------------------------------------------------------

def test_a_csv_larger_than_memory_is_refused_before_reading(tmp_path, monkeypatch):
    from fer_fast import model
    from fer_fast.data import DataError, read_fer_csv

    path = tmp_path / "fer2013.csv"
    with open(path, "wb") as f:
        f.truncate(20 * 2**30)  # sparse: 20 GiB of nothing
    monkeypatch.setattr(model, "physical_memory", lambda: 16 * 2**30)
    with pytest.raises(DataError, match=r"fer2013\.csv: 20\.0 GiB: reading it takes about 60 "
                                        r"GiB of memory, more than this machine's 16\.0 GiB"):
        read_fer_csv(path)


@pytest.mark.parametrize("result, metrics, message", [
    ("[]", None, "result.json: expected a JSON object, got list"),
    ("null", None, "result.json: expected a JSON object, got NoneType"),
    ('{"confusion": [[1]]}', None, "field 'confusion' must be a 7x7 matrix"),
    ('{"best_val_acc": "abc"}', None, "field 'best_val_acc' must be a number"),
    ("{}", "epoch,train_loss\n1,2\n", "metrics.csv: no column lr, train_acc, val_acc"),
    ("{}", "epoch,lr,train_loss,train_acc,val_acc\n1,x,1,1,1\n", "metrics.csv, line 2"),
])
def test_plot_and_report_on_corrupt_run_files(tmp_path, capsys, result, metrics, message):
    from fer_fast import experiments as E, plots

    study = tmp_path / "study"
    run = study / E.plan("optimizers")[0].name
    run.mkdir(parents=True)
    (run / "result.json").write_text(result)
    (run / "metrics.csv").write_text(metrics or "epoch,lr,train_loss,train_acc,val_acc\n"
                                               "1,0.1,1.9,0.2,0.2\n")
    assert status(plots.main, [str(run)]) == 2
    assert status(E.main, ["report", str(study)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") and message in line for line in err)
    assert not (study / "report.md").exists()


def test_sample_params_refuses_a_negative_batch():
    from fer_fast import sample_params

    with pytest.raises(ValueError, match="batch must be an integer >= 0, got -1"):
        sample_params("released", -1)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        sample_params("released", 2, generator=3)


def test_resume_of_a_checkpoint_with_a_malformed_resume_state(tmp_path, finished_run, easy,
                                                              capsys):
    from fer_fast.checkpoint import load_checkpoint

    ckpt = load_checkpoint(finished_run / "last.pt")
    for field, value, message in (("resolved", "cpu", "field 'resolved' is 'cpu'"),
                                  ("data", {"sha256": 3}, "field 'data' is"),
                                  ("best", {"val_acc": "high"}, "its resume state is unusable"),
                                  ("optimizer", {"state": 3}, "its resume state is unusable"),
                                  ("rng", {}, "its resume state is unusable")):
        run = tmp_path / field
        run.mkdir()
        save_atomic({**ckpt, field: value}, run / "last.pt")
        assert status(T.main, ["--resume", str(run), "--epochs", "3"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_training_past_the_file_size_limit_is_one_line(tmp_path):
    """A real run under RLIMIT_FSIZE (every checkpoint is larger than the limit): torch.save's
    failure is one line, exit 2, and no checkpoint, half-written file or temporary is left."""
    import resource
    import signal
    import subprocess
    import sys

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-m", "fer_fast", "train", "--width", "0.0625", "--synthetic-sizes",
         "16,8,8", "--epochs", "2", "--batch-size", "8", "--eval-batch-size", "16",
         "--no-progress", "--device", "cpu", "--out", str(out)],
        preexec_fn=limit, env=env, capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert err[-1].startswith(f"error: writing the epoch-1 files in {out} failed: the file is "
                              f"too large") and "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "config.json", "metrics.csv"]


def test_a_study_leaves_a_starting_run_of_another_process_alone(tmp_path, capsys):
    """A requeued task finds a run folder without a checkpoint yet (config.json, metrics.csv):
    if another process is training it, its files stay and the task says so."""
    from fer_fast import experiments as E

    out = tmp_path / "study"
    run = out / E.plan("schedulers")[0].name
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "metrics.csv").write_text("epoch\n")
    lock = lock_run_dir(run)
    try:
        assert status(E.main, ["schedulers", "--out", str(out), "--run", "0", *STUDY_TINY]) == 2
        assert "is in use by another fer_fast.train" in capsys.readouterr().err
        assert (run / "config.json").is_file() and (run / "metrics.csv").is_file()
    finally:
        lock.close()


def test_a_width_whose_training_does_not_fit_in_memory(capsys, no_data):
    from fer_fast.model import check_architecture, parameter_count, physical_memory

    # the largest width whose parameters fit, but not 4 copies of them (training)
    width = next(w for w in (256.0, 128.0, 64.0, 32.0, 16.0, 8.0, 4.0, 2.0) if
                 4 * parameter_count(w) < physical_memory() < 16 * parameter_count(w))
    assert check_architecture("released", width) is None
    assert status(T.main, ["--width", str(width)]) == 2
    err = capsys.readouterr().err
    assert "training it (parameters, gradients, optimizer state) takes" in err


def test_a_file_system_without_locks_warns_and_trains_on(tmp_path, monkeypatch, capsys):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(rundir.fcntl, "flock", no_locks)
    lock_run_dir(tmp_path / "run").close()
    assert "this file system cannot lock files (No locks available)" in capsys.readouterr().err
