"""Data-parallel training on CPU with gloo (2 processes under torchrun): synchronized
BatchNorm in every block backend equals one process on the whole batch; ``--bn-sync local``
differs as it should; a 2-process training run equals a 1-process run, resumes, and fails
cleanly when a process fails."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import distributed_worker as worker
from fer_fast import distributed
from tolerances import tolerance

ROOT = Path(__file__).resolve().parent.parent
#: what a result of a step is held to: the tolerances of a fast block against the reference
#: (summation order differs between one process and several, as between backends)
TOL = {"out": tolerance("block_forward", torch.float32),
       "grad": tolerance("block_backward", torch.float32),
       "buffer": tolerance("running_stats", torch.float32)}


def _tol(name: str) -> dict:
    return TOL[name.split("/")[0]]


def torchrun(*args, log_dir: Path, nproc: int = 2, timeout: float = 300,
             env=None) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc-per-node N ARGS`` from the
    repository root; torchrun's own logs go to ``log_dir`` (else it leaves a directory in /tmp)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={nproc}", f"--log-dir={log_dir}",
                           *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(ROOT), str(ROOT / "tests")]), **(env or {})})


def test_shard_splits_every_row_once():
    for total in (0, 1, 5, 7, 64):
        for size in (1, 2, 3, 8):
            parts = [distributed.shard(total, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


def test_single_process_is_not_a_job(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.from_environment() is None and distributed.reports()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert distributed.from_environment() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.from_environment() == distributed.World(rank=2, size=4, local_rank=0)
    assert not distributed.reports()
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="rank 4 of 4"):
        distributed.from_environment()
    assert distributed.reports()  # an inconsistent launcher environment is reported


@pytest.fixture(scope="module")
def step_results(tmp_path_factory):
    """Each process's results of ``distributed_worker``, one 2-process launch for all cases."""
    out = tmp_path_factory.mktemp("data_parallel")
    run = torchrun("tests/distributed_worker.py", out, log_dir=out / "torchrun")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _single(backend, order, first=0, stop=worker.IMAGES):
    stack, x, weights = worker.case(backend, order)
    out = worker.step(stack, x[first:stop], weights[first:stop])
    got = worker.results(stack, out)
    if (first, stop) != (0, worker.IMAGES):  # the loss of a shard is scaled by its share
        got = {k: v * (worker.IMAGES / (stop - first)) if k.startswith("grad/") else v
               for k, v in got.items()}
    return got


@pytest.mark.parametrize("order", worker.ORDERS)
@pytest.mark.parametrize("backend", worker.BACKENDS)
def test_synchronized_batch_norm_equals_one_process(step_results, backend, order):
    """2 processes x (3, 4) images with global BatchNorm statistics = 1 process x 7 images:
    outputs (concatenated), gradients (averaged by DDP), running statistics on every rank."""
    want = _single(backend, order)
    ranks = [r[(backend, order, "global")] for r in step_results]
    torch.testing.assert_close(torch.cat([r["out"] for r in ranks]), want["out"], **TOL["out"])
    for name, value in want.items():
        if name != "out":
            for rank, got in enumerate(ranks):
                torch.testing.assert_close(got[name], value, **_tol(name),
                                           msg=f"rank {rank} {name}")


def test_training_steps_equal_one_process_in_float64(step_results):
    """An epoch of the trainer's steps (loader shards, augmentation, dropout masks of the global
    batch, the loss share, DDP's averaging, synchronized BatchNorm, SGD-Nesterov; a full and a
    partial batch) on 2 processes = on one, in float64 where rounding cannot hide a mistake:
    weights and running statistics to 1e-9 (in fp32 the two drift apart within epochs as one
    process with 1 thread and with 2 threads do: docs/distributed.md)."""
    want = worker.train_steps()
    for rank, results in enumerate(step_results):
        for name, value in want.items():
            torch.testing.assert_close(results["train_steps"][name], value, atol=1e-9,
                                       rtol=1e-9, msg=f"rank {rank} {name}")


@pytest.mark.parametrize("backend", worker.BACKENDS)
def test_local_batch_norm_is_each_process_alone(step_results, backend):
    """--bn-sync local: each process normalises its own shard (its outputs and running
    statistics are those of one process on that shard), so the result differs from one
    process on the whole batch; the gradients are still averaged."""
    order = "bn_relu"
    whole = _single(backend, order)
    for rank, results in enumerate(step_results):
        got = results[(backend, order, "local")]
        alone = _single(backend, order, *distributed.shard(worker.IMAGES, rank, 2))
        torch.testing.assert_close(got["out"], alone["out"], **TOL["out"])
        for name in alone:
            if name.startswith("buffer/"):
                torch.testing.assert_close(got[name], alone[name], **TOL["buffer"], msg=name)
        with pytest.raises(AssertionError):
            torch.testing.assert_close(got["buffer/blocks.0.bn.running_mean"],
                                       whole["buffer/blocks.0.bn.running_mean"],
                                       **TOL["buffer"])


#: a small training run on the synthetic data (CPU, eager blocks, fp32)
TRAIN = ["--preset", "quick", "--synthetic-sizes", "192,48,48", "--batch-size", "32",
         "--device", "cpu", "--no-progress", "--model-backend", "eager", "--precision", "fp32"]


def _metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_failing_process_ends_the_job_and_the_run_resumes_like_one_process(tmp_path):
    """torchrun --nproc-per-node 2 where rank 1 raises in epoch 2: the whole job ends (torchrun
    stops rank 0) with a non-zero status within a bounded time, leaving the epoch-1 checkpoint;
    --resume (another launch) trains epoch 2. The run equals one process training 2 epochs with
    the same seed (the same data order, augmentation and dropout, global BatchNorm statistics)
    up to the rounding that summation order causes, amplified by training: losses within
    0.2 %, validation accuracy within one image. Rank 0 alone prints."""
    from fer_fast.train import main

    one = tmp_path / "one"
    assert main(TRAIN + ["--epochs", "2", "--out", str(one)]) == 0
    two = tmp_path / "two"
    start = time.monotonic()
    failed = torchrun("tests/distributed_worker.py", "fail", 2, 2, *TRAIN, "--epochs", "2",
                      "--out", two, log_dir=tmp_path / "torchrun", timeout=240)
    assert failed.returncode != 0
    assert time.monotonic() - start < 180
    assert "rank 1 fails at step 2 of epoch 2" in failed.stdout + failed.stderr
    assert failed.stdout.count("epoch   1/2") == 1  # printed by rank 0 only
    assert "2 processes (data-parallel, BatchNorm statistics global)" in failed.stdout
    assert [r["epoch"] for r in _metrics(two)] == ["1"]
    resumed = torchrun("-m", "fer_fast", "train", "--resume", two, "--epochs", "2",
                       log_dir=tmp_path / "torchrun")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    a, b = _metrics(one), _metrics(two)
    assert [r["epoch"] for r in b] == ["1", "2"]
    for ra, rb in zip(a, b):
        assert abs(float(ra["train_loss"]) - float(rb["train_loss"])) <= 2e-3 * float(
            ra["train_loss"]), (ra, rb)
        assert abs(float(ra["val_acc"]) - float(rb["val_acc"])) <= 1 / 48 + 1e-9, (ra, rb)


def test_user_error_is_reported_once(tmp_path):
    """A mistake every process meets (an unknown data path) is one line from rank 0."""
    bad = torchrun("-m", "fer_fast", "train", *TRAIN, "--data", tmp_path / "missing.csv",
                   "--out", tmp_path / "run", log_dir=tmp_path / "torchrun")
    assert bad.returncode != 0
    assert bad.stderr.count("error: ") == 1, bad.stderr[-3000:]
