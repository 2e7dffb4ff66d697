"""Hostile inputs, round two (issue 19): no lost file, no silent wrong result, no traceback.
Each test names the class of the issue it covers."""
import errno
import json
import os

import numpy as np
import pytest
import torch

from fer_fast import cli, files, train as T
from fer_fast.checkpoint import save_atomic
from fer_fast.model import VGG
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

def test_a_run_folder_in_use_is_refused(tmp_path, capsys, no_data):  # noqa: F811
    out = tmp_path / "run"
    lock = T.lock_run_dir(out)  # as another fer_fast.train would hold it
    try:
        assert status(T.main, TINY + ["--epochs", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: {out}: is in use by another fer_fast.train (pid {os.getpid()}); "
                       f"wait for it to end or choose another --out"]
    finally:
        lock.close()
    assert sorted(p.name for p in out.iterdir()) == [T.LOCK_FILE]


def test_a_resumed_run_in_use_is_refused(tmp_path, finished_run, capsys, no_data):  # noqa: F811
    import shutil

    run = shutil.copytree(finished_run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    lock = T.lock_run_dir(run)
    try:
        assert status(T.main, ["--resume", str(run), "--epochs", "5"]) == 2
        assert "is in use by another fer_fast.train" in capsys.readouterr().err
    finally:
        lock.close()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != T.LOCK_FILE} == \
        {k: v for k, v in before.items() if k != T.LOCK_FILE}


def test_the_lock_is_released_when_a_run_ends(tmp_path, easy, capsys):  # noqa: F811
    out = tmp_path / "run"
    T.train(*T.parse_args(TINY + ["--epochs", "1", "--out", str(out)]))
    T.lock_run_dir(out).close()  # free again
    assert T.LOCK_FILE not in capsys.readouterr().out  # not listed among the run's files


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
                                                                monkeypatch):  # noqa: F811
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
    names = sorted(p.name for p in out.iterdir() if p.name != T.LOCK_FILE)
    assert names == ["best.pt", "best.pt.sha256", "config.json", "last.pt", "last.pt.sha256",
                     "metrics.csv"]
    from fer_fast.checkpoint import load_checkpoint
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert load_checkpoint(out / "best.pt")["epoch"] == 1
    monkeypatch.setattr(checkpoint, "_write_temp", real_write)
    assert status(T.main, ["--resume", str(out)]) == 0
    assert load_checkpoint(out / "last.pt")["epoch"] == 3
