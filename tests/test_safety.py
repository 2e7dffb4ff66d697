"""Safety of runs, checkpoints and the command line: no code runs from a checkpoint, corruption is
detected, no run overwrites another, resume works from anywhere, user mistakes end in one line
(exit 2) and never in a traceback."""
import errno
import fractions
import json
import os
import shutil

import numpy as np
import pytest
import torch

from fer_fast import cli, evaluate, rundir, saliency, train as T
from fer_fast.checkpoint import CheckpointError, checksum_path, load_checkpoint, save_atomic
from fer_fast.config import RESUME_KEYS
from fer_fast.model import VGG
from fer_fast.step import TrainStep
from test_train import TINY, easy_data

MARKER_NAME = "code-ran"


class _Payload:
    """A pickle that creates a marker file when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture
def easy(monkeypatch, one_thread):
    """Runs on the easy data whatever --data says (--data paths pick a seed: 'other' -> 1)."""
    monkeypatch.setattr(T, "load_run_data", lambda path, seed, synthetic_sizes, **_:
                        easy_data(seed=1 if path and "other" in str(path) else 0))


@pytest.fixture
def no_data(monkeypatch):
    """Fails the test if a run gets as far as loading its data."""
    def refuse(*args, **kwargs):
        raise AssertionError("data loaded before the run directory was checked")
    monkeypatch.setattr(T, "load_run_data", refuse)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-epoch run (checkpoint every epoch) to resume, evaluate and corrupt."""
    out = tmp_path_factory.mktemp("finished") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(T, "load_run_data", lambda path, seed, synthetic_sizes, **_: easy_data(seed=0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        T.train(*T.parse_args(TINY + ["--epochs", "2", "--save-every", "1", "--out", str(out)]))
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    return out


def status(main, argv):
    """Exit status of a command's main, whether it returns it or the parser exits."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------------------------
# loading never runs code; corruption is detected
# ----------------------------------------------------------------------------------------------

def test_project_checkpoints_load_with_weights_only(finished_run):
    for name in ("last.pt", "best.pt", "epoch0001.pt"):
        ckpt = torch.load(finished_run / name, weights_only=True)
        assert set(RESUME_KEYS) <= set(ckpt) and "params" in ckpt


def test_malicious_checkpoint_never_runs_code(tmp_path, capsys, monkeypatch):
    marker = tmp_path / MARKER_NAME
    bad = tmp_path / "bad.pt"
    torch.save({"params": VGG(width=0.0625).state_dict(), "logs": _Payload(marker)}, bad)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"params": {}, "config": {}, "epoch": 1, "logs": _Payload(marker), "best": {},
                "optimizer": {}, "scheduler": {}, "scaler": {}, "rng": {}}, run / "last.pt")
    monkeypatch.setattr(T, "load_run_data", lambda *a, **k: easy_data())
    assert status(evaluate.main, [str(bad), "--device", "cpu"]) == 2
    assert status(saliency.main, [str(bad), "--device", "cpu", "--out", str(tmp_path / "s")]) == 2
    assert status(T.main, ["--init", str(bad), "--out", str(tmp_path / "r1")]) == 2
    assert status(T.main, ["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("unpickling them can run code") == 4 and "--trust-checkpoint" in err
    assert "Traceback" not in err
    assert not marker.exists()


def test_trust_checkpoint_allows_python_objects(tmp_path, capsys):
    path = tmp_path / "old.pt"
    torch.save({"params": VGG(width=0.0625).state_dict(), "logs": fractions.Fraction(1, 3)}, path)
    with pytest.raises(CheckpointError, match="old.pt: holds objects other than tensors"):
        load_checkpoint(path)
    assert load_checkpoint(path, trust=True)["logs"] == fractions.Fraction(1, 3)
    assert evaluate.main([str(path), "--trust-checkpoint", "--splits", "test",
                          "--synthetic-sizes", "8,8,8", "--device", "cpu"]) == 0


def test_checksum_sidecar_detects_corruption(tmp_path, capsys):
    path = tmp_path / "best.pt"
    save_atomic({"params": VGG(width=0.0625).state_dict()}, path)
    digest, name = checksum_path(path).read_text().split()
    assert name == "best.pt" and len(digest) == 64
    load_checkpoint(path)
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 100] = bytes(b ^ 0xFF for b in raw[middle:middle + 100])
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"best\.pt: corrupted or modified"):
        load_checkpoint(path)
    assert status(evaluate.main, [str(path), "--device", "cpu"]) == 2
    assert "best.pt: corrupted" in capsys.readouterr().err


def test_authors_file_without_checksum_loads_with_a_note(tmp_path, capsys):
    """The authors' release: ``{'logs': (loss_train, loss_val, acc_train, acc_val), 'params'}``
    in a file named epoch_N, no checksum."""
    path = tmp_path / "epoch_300"
    logs = ([1.9, 1.1], [1.8, 1.2], [25.0, 60.5], [27.0, 58.0])
    torch.save({"logs": logs, "params": VGG(width=0.0625).state_dict()}, path)
    assert load_checkpoint(path)["logs"] == logs
    assert "no checksum file epoch_300.sha256; loaded unverified" in capsys.readouterr().err
    assert status(evaluate.main, [str(path), "--splits", "test", "--synthetic-sizes", "8,8,8",
                                  "--device", "cpu"]) == 0


# ----------------------------------------------------------------------------------------------
# run directories
# ----------------------------------------------------------------------------------------------

def test_new_run_refuses_a_folder_with_only_best_pt(tmp_path, capsys, no_data):
    out = tmp_path / "run"
    out.mkdir()
    save_atomic({"params": {"w": torch.ones(1)}}, out / "best.pt")
    before = (out / "best.pt").read_bytes()
    assert status(T.main, TINY + ["--out", str(out)]) == 2
    assert "not empty (holds best.pt, best.pt.sha256)" in capsys.readouterr().err
    assert (out / "best.pt").read_bytes() == before


def test_new_run_into_a_users_folder_is_refused(tmp_path, capsys, no_data, monkeypatch):
    (tmp_path / "config.json").write_text('{"mine": true}')
    (tmp_path / "metrics.csv").write_text("my numbers\n")
    monkeypatch.chdir(tmp_path)
    assert status(T.main, TINY + ["--out", "."]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "config.json").read_text() == '{"mine": true}'
    assert (tmp_path / "metrics.csv").read_text() == "my numbers\n"


def test_resume_into_another_finished_run_is_refused(tmp_path, finished_run, capsys, no_data):
    a = _copy_run(finished_run, tmp_path / "A")
    b = _copy_run(finished_run, tmp_path / "B")
    before = {p.name: p.read_bytes() for p in b.iterdir()}
    assert status(T.main, ["--resume", str(a), "--epochs", "3", "--out", str(b)]) == 2
    assert "resuming" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in b.iterdir()} == before


def test_resume_from_an_older_checkpoint_in_place_is_refused(tmp_path, finished_run, capsys,
                                                             no_data):
    a = _copy_run(finished_run, tmp_path / "A")
    assert status(T.main, ["--resume", str(a / "epoch0001.pt"), "--out", str(a)]) == 2
    assert status(T.main, ["--resume", str(a / "epoch0001.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("not the run's last checkpoint") == 2 and "--out NEW_FOLDER" in err


def test_resume_as_a_copy_into_an_empty_folder(tmp_path, finished_run, easy, capsys):
    a = _copy_run(finished_run, tmp_path / "A")
    before = {p.name: p.read_bytes() for p in a.iterdir()}
    copy = tmp_path / "copy"
    summary = T.train(*T.parse_args(["--resume", str(a), "--epochs", "3", "--out", str(copy)]))
    assert summary["epochs"] == 3 and load_checkpoint(copy / "last.pt")["epoch"] == 3
    load_checkpoint(copy / "best.pt")  # the run's best.pt came along, with its checksum
    older = tmp_path / "from-epoch-1"
    summary = T.train(*T.parse_args(["--resume", str(a / "epoch0001.pt"), "--out", str(older)]))
    assert summary["epochs"] == 2 and load_checkpoint(older / "last.pt")["epoch"] == 2
    assert {p.name: p.read_bytes() for p in a.iterdir()} == before


def test_unwritable_out_is_refused_before_data(tmp_path, capsys, no_data, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    # a read-only folder, as the permission check sees it (root could write into a chmod 500 one)
    monkeypatch.setattr(os, "access", lambda path, mode: os.path.realpath(path) !=
                        os.path.realpath(locked))
    assert status(T.main, TINY + ["--out", str(locked / "run")]) == 2
    assert f"cannot write in {locked} (permission denied)" in capsys.readouterr().err
    assert not (locked / "run").exists()


def test_file_as_out_is_refused_before_data(tmp_path, capsys, no_data):
    (tmp_path / "notes.txt").write_text("x")
    assert status(T.main, TINY + ["--out", str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt: is a file, not a folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# resume from anywhere
# ----------------------------------------------------------------------------------------------

def test_finished_run_and_too_few_epochs_are_explained(finished_run, capsys, no_data):
    for extra, expected in (([], "the run is finished (2 of 2 epochs); to train it further pass "
                                 "--epochs N with N > 2"),
                            (["--epochs", "2"], "already done 2 epochs; --epochs 2 must be larger")):
        with pytest.raises(SystemExit) as exit_info:
            T.parse_args(["--resume", str(finished_run)] + extra)
        assert exit_info.value.code == 2 and expected in capsys.readouterr().err


def test_saved_paths_are_absolute_and_data_may_move(tmp_path, easy, monkeypatch, capsys):
    data = tmp_path / "fer.csv"
    data.write_text("stands for the data\n")
    monkeypatch.chdir(tmp_path)
    T.train(*T.parse_args(TINY + ["--data", "fer.csv", "--epochs", "1", "--out", "run"]))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"] == str(data.resolve()) and len(config["resolved"]["data_sha256"]) == 64
    moved = tmp_path / "moved" / "fer.csv"
    moved.parent.mkdir()
    data.rename(moved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = tmp_path / "run"
    assert status(T.main, ["--resume", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert f"no longer at {data.resolve()}" in err and "pass --data" in err
    other = tmp_path / "other.csv"
    other.write_text("different data\n")
    assert status(T.main, ["--resume", str(run), "--epochs", "2", "--data", str(other)]) == 2
    assert "not the data run" in capsys.readouterr().err
    summary = T.train(*T.parse_args(["--resume", str(run), "--epochs", "2", "--data", str(moved)]))
    assert summary["epochs"] == 2
    assert json.loads((run / "config.json").read_text())["data"] == str(moved)


# ----------------------------------------------------------------------------------------------
# one line for every user mistake
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--width", "nan"], ["--dropout", "2"], ["--momentum", "-1"],
                                  ["--weight-decay", "-1"], ["--plateau-factor", "2"],
                                  ["--restart-period", "0"], ["--step-size", "0"],
                                  ["--save-every", "-1"], ["--lr", "inf"], ["--epochs", "x"],
                                  ["--label-smoothing", "1"]])
def test_out_of_range_flags_fail_at_start(argv, capsys, no_data):
    with pytest.raises(SystemExit) as exit_info:
        T.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: argument " + argv[0])
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("tool", ["train", "evaluate", "saliency"])
@pytest.mark.parametrize("device", ["cuda:7", "gpu", "tpu"])
def test_devices_the_machine_lacks(tool, device, tmp_path, capsys, no_data):
    ckpt = tmp_path / "best.pt"
    save_atomic({"params": VGG(width=0.0625).state_dict()}, ckpt)
    main = {"train": T.main, "evaluate": evaluate.main, "saliency": saliency.main}[tool]
    argv = (["--out", str(tmp_path / "r")] if tool == "train" else [str(ckpt)]) + \
        ["--device", device]
    assert status(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: --device {device}: ") and "devices here: cpu" in err[-1]
    with pytest.raises(cli.UserError):  # --debug: the traceback is back
        main(argv + ["--debug"])


def test_disk_full_keeps_the_last_good_checkpoint(tmp_path, easy, capsys, monkeypatch):
    out = tmp_path / "run"
    real_save = rundir.save_atomic

    def save(obj, *paths):
        if obj["epoch"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(paths[0]))
        real_save(obj, *paths)

    monkeypatch.setattr(rundir, "save_atomic", save)
    assert status(T.main, TINY + ["--epochs", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and f"{out / 'last.pt'} (epoch 1)" in err
    assert f"--resume {out}" in err and "Traceback" not in err
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_ctrl_c_says_where_to_resume(tmp_path, easy, capsys, monkeypatch):
    out = tmp_path / "run"
    real_step = TrainStep.__call__
    calls = []

    def step(self, *args):
        calls.append(1)
        if len(calls) == 6:  # in epoch 2 (4 steps per epoch)
            raise KeyboardInterrupt
        return real_step(self, *args)

    monkeypatch.setattr(TrainStep, "__call__", step)
    assert status(T.main, TINY + ["--epochs", "3", "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stopped in epoch 2" in err[0]
    assert f"{out / 'last.pt'} (epoch 1)" in err[0] and f"--resume {out}" in err[0]


def test_diverged_run_is_one_line(tmp_path, easy, capsys, monkeypatch):
    real_step = TrainStep.__call__

    def step(self, *args):
        loss, logits = real_step(self, *args)
        return loss * float("nan"), logits

    monkeypatch.setattr(TrainStep, "__call__", step)
    assert status(T.main, TINY + ["--epochs", "2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "epoch 1: the training loss is nan: the run diverged" in err
    assert "no checkpoint was written yet" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------
# runs a user would regret; what a run prints
# ----------------------------------------------------------------------------------------------

def test_warnings_estimate_and_messages(tmp_path, easy, capsys):
    T.train(*T.parse_args(TINY + ["--preset", "full", "--epochs", "1", "--batch-size", "2",
                                  "--precision", "fp16", "--save-every", "0",
                                  "--out", str(tmp_path / "run")]))
    captured = capsys.readouterr()
    assert "full preset" in captured.err and "--preset quick" in captured.err
    assert "fp16 on a CPU is slower" in captured.err
    out = captured.out
    assert "estimated training time:" in out and "for the 1 epoch left" in out
    assert "1 epoch of 64 images" in out and "augment auto" not in out
    assert f"run dir {tmp_path / 'run'}: best.pt" in out.splitlines()[-1]


def test_init_from_the_other_block_order_needs_a_flag(tmp_path, capsys):
    path = tmp_path / "released.pt"
    save_atomic({"params": VGG(width=0.0625).state_dict(),
                 "config": {"recipe": "released", "width": 0.0625}}, path)
    with pytest.raises(SystemExit):
        T.parse_args(["--init", str(path), "--recipe", "paper"])
    assert "--allow-recipe-change" in capsys.readouterr().err
    config, _ = T.parse_args(["--init", str(path), "--recipe", "paper", "--allow-recipe-change"])
    assert config.recipe == "paper"


def test_evaluate_uses_the_runs_data_and_a_test_only_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    csv = tmp_path / "test_only.csv"
    rows = [f"{i % 5},{' '.join(map(str, rng.integers(0, 256, 2304)))},PublicTest"
            for i in range(6)]
    csv.write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    ckpt = tmp_path / "best.pt"
    save_atomic({"params": VGG(width=0.0625).state_dict(),
                 "config": {"recipe": "released", "width": 0.0625, "data": str(csv)}}, ckpt)
    assert status(evaluate.main, [str(ckpt), "--splits", "test", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"using the data of the checkpoint's run, {csv}" in out
    assert "test: ten-crop accuracy" in out and "/6)" in out
    assert "nan" not in out and "n/a" in out  # Disgust..: no test image
    assert status(evaluate.main, [str(ckpt), "--device", "cpu"]) == 0  # the splits it has
    out = capsys.readouterr().out
    assert "splits in the data: test" in out and "train: not available" in out
    assert status(evaluate.main, [str(ckpt), "--splits", "train", "--device", "cpu"]) == 2
    assert "split 'train'" in capsys.readouterr().err


def test_help_shows_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per flag
    for main, expected in ((T.main, ["--lr LR", "(default: 0.01; quick preset 0.02; cpu preset 0.08)",
                                      "(default: 300; quick preset 6; cpu preset 30)"]),
                           (evaluate.main, ["(default: 256)", "(default: every split the data has)"]),
                           (saliency.main, ["(default: test)", "(default: ten)"])):
        assert status(main, ["--help"]) == 0
        out = capsys.readouterr().out
        assert all(text in out for text in expected) and "(default: None)" not in out
