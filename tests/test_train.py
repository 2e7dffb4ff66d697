"""Training: CLI and presets, a run whose loss falls, exact resume, checkpoints, telemetry columns."""
import csv
import json
import shutil
import sys

import pytest
import torch

from fer_fast import telemetry, train as T
from fer_fast.checkpoint import CheckpointError, load_checkpoint, save_atomic
from fer_fast.config import OPTIMIZERS, SCHEDULERS, Config
from fer_fast.data import FERData, Split
from fer_fast.model import VGG
from fer_fast.rundir import LOCK_FILE
from fer_fast.step import TrainStep, make_optimizer, make_scheduler, resolve_precision

TINY = ["--width", "0.0625", "--batch-size", "16", "--eval-batch-size", "32", "--no-progress",
        "--device", "cpu"]


def easy_data(n_train=64, n_val=24, n_test=24, seed=0) -> FERData:
    """Classes told apart by brightness (30 + 30*c, noise): learnable in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        labels = torch.arange(n) % 7
        labels = labels[torch.randperm(n, generator=g)]
        noise = torch.randint(-12, 13, (n, 48, 48), generator=g)
        images = (30 + 30 * labels[:, None, None] + noise).clamp(0, 255).to(torch.uint8)
        return Split(images, labels)

    return FERData(split(n_train), split(n_val), split(n_test), f"easy(seed={seed})")


@pytest.fixture
def easy(monkeypatch):
    """Runs on easy_data, single-threaded: on a busy 2-core machine two spinning OpenMP threads
    are several times slower than one (and a fixed thread count keeps CPU results reproducible)."""
    monkeypatch.setattr(T, "load_run_data", lambda path, seed, synthetic_sizes, **_: easy_data(seed=seed))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(argv):
    config, resume = T.parse_args(argv)
    return T.train(config, resume), config


def history(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

def test_presets():
    quick, resume = T.parse_args([])
    assert resume is None and quick.preset == "quick" and quick.data is None
    assert quick.width == 0.125 and quick.synthetic_sizes is not None and quick.epochs <= 10
    full, _ = T.parse_args(["--data", "fer2013.csv"])
    assert full.preset == "full" and full.data == "fer2013.csv"
    released = dict(recipe="released", optimizer="nesterov", scheduler="plateau", epochs=300,
                    batch_size=64, lr=0.01, momentum=0.9, weight_decay=1e-4, width=1.0,
                    dropout=0.2, plateau_factor=0.75, plateau_patience=5, train_on="train")
    assert {k: getattr(full, k) for k in released} == released
    forced, _ = T.parse_args(["--preset", "full"])
    assert forced.epochs == 300 and forced.data is None


def test_flags_override_presets():
    c, _ = T.parse_args(["--data", "x.csv", "--recipe", "paper", "--optimizer", "adagrad",
                         "--scheduler", "cosine-wr", "--epochs", "7", "--lr", "0.001",
                         "--weight-decay", "0", "--momentum", "0.5", "--batch-size", "32",
                         "--width", "0.5", "--seed", "4", "--device", "cpu", "--model-backend",
                         "eager", "--augment-backend", "eager", "--precision", "bf16",
                         "--train-on", "train+val", "--save-every", "3", "--no-progress",
                         "--synthetic-sizes", "10,5,5", "--out", "somewhere",
                         "--label-smoothing", "0.1"])
    assert (c.recipe, c.optimizer, c.scheduler, c.epochs, c.lr, c.weight_decay, c.momentum,
            c.batch_size, c.width, c.seed, c.device, c.model_backend, c.augment_backend,
            c.precision, c.train_on, c.save_every, c.progress, c.synthetic_sizes, c.out,
            c.label_smoothing) == (
        "paper", "adagrad", "cosine-wr", 7, 0.001, 0.0, 0.5, 32, 0.5, 4, "cpu", "eager", "eager",
        "bf16", "train+val", 3, False, (10, 5, 5), "somewhere", 0.1)


@pytest.mark.parametrize("argv", [["--optimizer", "rmsprop"], ["--scheduler", "poly"],
                                  ["--recipe", "other"], ["--synthetic-sizes", "1,2"],
                                  ["--epochs", "0"], ["--model-backend", "nope"]])
def test_bad_flags(argv, capsys):
    with pytest.raises(SystemExit):
        T.parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_init_takes_architecture_and_resume_rejects_changes(tmp_path, capsys):
    path = tmp_path / "best.pt"
    save_atomic({"params": VGG("paper", width=0.0625).state_dict(),
                 "config": {"recipe": "paper", "width": 0.0625}}, path)
    c, _ = T.parse_args(["--init", str(path), "--epochs", "50", "--lr", "1e-4", "--scheduler",
                         "cosine", "--train-on", "train+val"])
    assert (c.recipe, c.width, c.init, c.epochs, c.lr, c.scheduler) == (
        "paper", 0.0625, str(path), 50, 1e-4, "cosine")
    with pytest.raises(SystemExit):  # weights only: nothing to resume
        T.parse_args(["--resume", str(path)])
    assert "lacks the resume state" in capsys.readouterr().err
    resumable = tmp_path / "run"
    resumable.mkdir()
    save_atomic({"params": {}, "config": {"width": 0.0625}, "epoch": 1, "logs": {}, "best": {},
                 "optimizer": {}, "scheduler": {}, "scaler": {}, "rng": {}},
                resumable / "last.pt")
    c, resume = T.parse_args(["--resume", str(resumable), "--epochs", "9"])
    assert resume == resumable / "last.pt" and c.epochs == 9 and c.out == str(resumable)
    with pytest.raises(SystemExit):
        T.parse_args(["--resume", str(resumable), "--lr", "0.1", "--width", "1"])
    assert "cannot change: --lr, --width" in capsys.readouterr().err



def test_resume_reads_the_configuration_of_a_run_saved_before_the_renames(tmp_path):
    """A run saved when --model-backend was --block-backend resumes with its model backend."""
    run = tmp_path / "run"
    run.mkdir()
    save_atomic({"params": {}, "config": {"width": 0.0625, "block_backend": "fused"}, "epoch": 1,
                 "logs": {}, "best": {}, "optimizer": {}, "scheduler": {}, "scaler": {},
                 "rng": {}}, run / "last.pt")
    c, _ = T.parse_args(["--resume", str(run), "--epochs", "9"])
    assert c.model_backend == "fused" and c.width == 0.0625

@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_steps(name):
    config = Config(optimizer=name, lr=0.01)
    w = torch.nn.Parameter(torch.randn(5))
    opt = make_optimizer(config, [w])
    before = w.detach().clone()
    (w ** 2).sum().backward()
    opt.step()
    assert not torch.equal(before, w.detach())


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler(name):
    config = Config(scheduler=name, epochs=4, step_size=1, restart_period=2)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.randn(2))], lr=0.01)
    sched, unit = make_scheduler(config, opt, steps_per_epoch=3)
    lrs = []
    for _ in range(4):
        for _ in range(3):
            opt.step()
            if unit == "step":
                sched.step()
        if unit == "epoch":
            sched.step(0.5) if name == "plateau" else sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    changes = name not in ("plateau", "constant")  # plateau: patience 5 > 4 epochs
    assert (len(set(lrs)) > 1) == changes


# ----------------------------------------------------------------------------------------------
# runs
# ----------------------------------------------------------------------------------------------

def test_short_run_learns_and_writes_its_run_dir(tmp_path, easy, capsys):
    out = tmp_path / "run"
    summary, config = run(TINY + ["--epochs", "5", "--lr", "0.05", "--out", str(out)])
    rows = history(out)
    losses = [float(r["train_loss"]) for r in rows]
    assert len(rows) == 5 and losses[-1] < 0.8 * losses[0]
    assert float(rows[-1]["train_acc"]) > 0.3 and summary["test_acc"] > 0.3  # chance 1/7
    for name in ("config.json", "metrics.csv", "best.pt", "last.pt", "test_confusion.csv",
                 "result.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "config.json").read_text())
    assert saved["width"] == 0.0625 and saved["resolved"]["device"] == "cpu"
    assert saved["resolved"]["model_backend"] == "eager"  # auto on a CPU
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["epoch"] == ckpt["best"]["epoch"] and ckpt["config"]["width"] == 0.0625
    assert [r["epoch"] for r in ckpt["logs"]["history"]] == list(range(1, ckpt["epoch"] + 1))
    assert not list(out.glob("*.tmp")) and [p.name for p in out.glob(".*")] == [LOCK_FILE]
    printed = capsys.readouterr().out
    assert "test ten-crop accuracy" in printed and "Neutral" in printed
    with open(out / "test_confusion.csv") as f:
        cm = list(csv.reader(f))
    assert sum(int(v) for row in cm[1:] for v in row[1:]) == 24

    # fine-tuning stage: reload the weights, cosine at a small lr on train+val
    tuned = tmp_path / "tuned"
    run(["--init", str(out / "best.pt"), "--epochs", "1", "--lr", "1e-4", "--scheduler",
         "cosine", "--train-on", "train+val", "--batch-size", "16", "--no-progress",
         "--out", str(tuned)])
    assert json.loads((tuned / "config.json").read_text())["resolved"]["sizes"]["train"] == 88


TIMELESS = ("epoch", "lr", "train_loss", "train_acc", "val_acc", "test_acc")


def test_resume_is_bit_identical(tmp_path, easy):
    """An uninterrupted 3-epoch run == 1 epoch, stop, resume from that checkpoint to 3."""
    full = tmp_path / "full"
    run(TINY + ["--epochs", "3", "--save-every", "1", "--test-every", "1", "--out", str(full)])
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(full / "epoch0001.pt", part / "last.pt")  # as if killed during epoch 2
    _, config = run(["--resume", str(part)])
    assert config.out == str(part) and config.epochs == 3
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(part / "last.pt")
    assert a["params"].keys() == b["params"].keys()
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert a["scheduler"] == b["scheduler"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    ha, hb = history(full), history(part)
    assert len(hb) == 3
    assert [[r[k] for k in TIMELESS] for r in ha] == [[r[k] for k in TIMELESS] for r in hb]
    assert json.loads((full / "result.json").read_text())["test_acc_last"] == \
        json.loads((part / "result.json").read_text())["test_acc_last"]


def test_resume_on_another_kind_of_device_is_refused(tmp_path, easy):
    out = tmp_path / "run"
    run(TINY + ["--epochs", "1", "--out", str(out)])
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["resolved"] == {"device_type": "cpu", "world_size": 1,
                                "precision": resolve_precision("auto", torch.device("cpu"))}
    ckpt["resolved"] = {"device_type": "cuda", "precision": "fp16"}
    save_atomic(ckpt, out / "last.pt")
    with pytest.raises(CheckpointError, match="on cuda in fp16.*resolves to cpu;"):
        run(["--resume", str(out), "--epochs", "2"])


def test_cli_errors_are_clear(tmp_path, capsys, monkeypatch):
    assert T.main(["--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r")]) == 2
    assert "missing.csv: no such file" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    monkeypatch.setattr(T, "load_run_data", lambda path, seed, synthetic_sizes, **_: easy_data())
    save_atomic({"params": {}}, tmp_path / "last.pt")
    assert T.main(TINY + ["--out", str(tmp_path)]) == 2  # would overwrite another run
    assert "already holds a run" in capsys.readouterr().err


def test_errors_come_before_the_selfcheck_line_and_the_warnings(tmp_path, capsys, monkeypatch):
    """Validate the arguments, then warn, then work: a missing --data file on the CPU with the
    full preset is one error line, without the selfcheck line or the "weeks on a CPU" warning."""
    selfchecks = []
    monkeypatch.setattr(T, "prepare_auto", lambda *a, **k: selfchecks.append(a))
    assert T.main(["--data", str(tmp_path / "missing.csv"), "--preset", "full", "--device", "cpu",
                   "--out", str(tmp_path / "r")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and not selfchecks
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "missing.csv" in err


def test_save_atomic_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"params": {"w": torch.ones(2)}}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"params": {"w": torch.zeros(2)}, "bad": Unpicklable()}, path)
    assert torch.equal(load_checkpoint(path)["params"]["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]


def test_telemetry_columns_in_metrics(tmp_path, easy, monkeypatch):
    from test_telemetry import fake_pynvml
    # on this CPU machine: no telemetry, empty columns
    quiet = tmp_path / "quiet"
    run(TINY + ["--epochs", "1", "--out", str(quiet)])
    assert all(history(quiet)[0][c] == "" for c in telemetry.COLUMNS)
    # a fake NVML GPU: its readings land in the CSV
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    monkeypatch.setattr(telemetry, "_nvml_handle", lambda m, device: m.nvmlDeviceGetHandleByIndex(0))
    real_start = telemetry.start
    monkeypatch.setattr(telemetry, "start", lambda device: real_start("cuda", interval=0.001))
    loud = tmp_path / "loud"
    run(TINY + ["--epochs", "2", "--out", str(loud)])
    for row in history(loud):
        assert float(row["gpu_util_pct"]) == 87 and float(row["gpu_mem_peak_mib"]) == 3072
        assert float(row["gpu_power_w"]) == 412.5 and float(row["gpu_sm_clock_mhz"]) == 1755
        assert float(row["gpu_energy_j"]) == 5.0


def test_package_entry_point_dispatches(capsys):
    from fer_fast.__main__ import main
    assert main([]) == 0 and "train" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0 and "--model-backend" in capsys.readouterr().out


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_train_step_is_the_whole_step(label_smoothing):
    """TrainStep (what train() runs per batch, and what a benchmark times) = augmentation ->
    forward -> mean cross-entropy over the crops (label-smoothed when asked) -> backward ->
    optimizer step."""
    from fer_fast.loader import DeviceLoader
    from fer_fast.step import augment_batch
    torch.manual_seed(0)
    model = VGG(width=0.0625)
    twin = VGG(width=0.0625)
    twin.load_state_dict(model.state_dict())
    config = Config(lr=0.05)
    step = TrainStep(model, make_optimizer(config, model.parameters()),
                     torch.amp.GradScaler("cpu", enabled=False), device_type="cpu",
                     augment_backend="eager", label_smoothing=label_smoothing)
    opt = make_optimizer(config, twin.parameters())
    images, params, labels, _ = next(iter(DeviceLoader(easy_data().train, batch_size=4,
                                                       device="cpu")))
    torch.manual_seed(1)  # the same dropout masks in both
    loss, logits = step(images, params, labels)
    assert loss.dim() == 0 and not loss.requires_grad and logits.shape == (40, 7)
    crops, crop_labels = augment_batch(images, params, labels, backend="eager")
    torch.manual_seed(1)
    expected = torch.nn.functional.cross_entropy(twin(crops), crop_labels,
                                                 label_smoothing=label_smoothing)
    expected.backward()
    opt.step()
    torch.testing.assert_close(loss, expected.detach())
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, msg=name)
