"""The paper's studies: every run on tiny data, skip / resume / --run INDEX, the report."""
import json
import re
import shlex
from pathlib import Path

import pytest

from fer_fast import experiments as E, plots, train as T

from test_plots import assert_picture
from test_train import easy_data

TINY = ["--preset", "quick", "--epochs", "1", "--width", "0.0625", "--",
        "--batch-size", "14", "--eval-batch-size", "28", "--no-progress", "--device", "cpu"]
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def tiny(monkeypatch, one_thread):
    """Runs on a small easy dataset, one thread; the per-run pictures are tested in
    test_plots.py, here they are skipped (the no-matplotlib path) to save time."""
    monkeypatch.setattr(T, "load_run_data", lambda path, seed, synthetic_sizes, **_:
                        easy_data(28, 14, 14, seed=seed))

    def no_matplotlib(*args, **kwargs):
        raise ImportError("matplotlib")
    monkeypatch.setattr(plots, "draw_run", no_matplotlib)


@pytest.fixture
def trainer_calls(monkeypatch):
    """Records the argv of every training run the studies start."""
    calls = []
    real = T.main

    def spy(argv):
        calls.append(list(argv))
        return real(argv)
    monkeypatch.setattr(T, "main", spy)
    return calls


def study(name, out, *extra):
    return E.main([name, "--out", str(out), *extra, *TINY])


def results(out):
    return {r.name: json.loads((out / r.name / "result.json").read_text())
            for r in E.plan("all") if (out / r.name / "result.json").is_file()}


def test_plan_names_and_flags():
    runs = E.plan("all")
    assert len(runs) == 14 + 6 + 4 and len({r.name for r in runs}) == len(runs)
    assert [r.name for r in E.plan("finetune")] == [
        "finetune/cosine-wr-train", "finetune/cosine-train", "finetune/cosine-wr-trainval",
        "finetune/cosine-trainval"]
    for run in runs:
        config, _ = T.parse_args(list(run.flags))
        if run.study == "optimizers":
            regime = run.leaf.rsplit("-", 1)[1]
            assert (config.scheduler, config.lr) == E.OPTIMIZER_REGIMES[regime]
            assert config.optimizer == run.leaf.rsplit("-", 1)[0]
        elif run.study == "schedulers":
            assert (config.optimizer, config.lr, config.scheduler) == ("nesterov", 0.01, run.leaf)
        else:
            assert (config.lr, config.train_on) == (1e-4, "train+val" if "trainval" in run.leaf
                                                    else "train")
    assert T.parse_args(list(E.plan("schedulers")[4].flags))[0].step_size == 30


def test_readme_shows_the_schedule_table():
    text = README.read_text()
    for name, (flags, description) in E.SCHEDULE_PARAMETERS.items():
        assert f"| `{name}` |" in text and description in text, name


def test_every_study_and_the_report(tmp_path, tiny, trainer_calls, capsys):
    out = tmp_path / "study"
    assert study("all", out) == 0
    found = results(out)
    assert sorted(found) == sorted(r.name for r in E.plan("all"))
    assert all(r["epochs"] == 1 for r in found.values())
    # fine-tuning starts from the schedulers study's best run by validation accuracy
    best = max(E.plan("schedulers"), key=lambda r: found[r.name]["best_val_acc"])
    for run in E.plan("finetune"):
        config = json.loads((out / run.name / "config.json").read_text())
        assert config["init"] == str(out / best.name / "best.pt")
        assert (config["lr"], config["epochs"]) == (1e-4, 1)
    assert len(trainer_calls) == 24

    # everything done: a second invocation starts nothing
    trainer_calls.clear()
    assert study("all", out) == 0
    assert trainer_calls == [] and "finished, skipped" in capsys.readouterr().out

    assert E.main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    for title in ("## Optimizers (Figure 2)", "## Schedulers", "(Table 1)", "## Every run"):
        assert title in report
    for name, r in found.items():
        line = next(l for l in report.splitlines() if l.startswith(f"| {name} |"))
        assert f"| {100 * r['best_val_acc']:.2f} | {100 * r['test_acc']:.2f} |" in line
        assert f"| {r['wall_time_s']:.1f} |" in line
    nesterov = next(l for l in report.splitlines() if l.startswith("| nesterov |"))
    constant, plateau = found["optimizers/nesterov-constant"], found["optimizers/nesterov-plateau"]
    assert nesterov == (f"| nesterov | {100 * constant['best_val_acc']:.2f} | "
                        f"{100 * constant['test_acc']:.2f} | 73.20 | "
                        f"{100 * plateau['best_val_acc']:.2f} | {100 * plateau['test_acc']:.2f} "
                        f"| 73.50 |")
    assert re.search(r"^\| plateau \| [\d.]+ \| [\d.]+ \| 73\.59 \| 73\.06 \|$", report, re.M)
    tuned = found["finetune/cosine-trainval"]
    assert f"| cosine-trainval | train+val | {100 * tuned['test_acc_last']:.2f} |" in report
    assert f"trained VGGNet ({best.name})" in report and "| 73.28 |" in report
    assert "| missing |" not in report
    for name in ("optimizers.png", "schedulers.png", "curves_overlay.png"):
        assert_picture(out / name, min_size=(600, 400))


def test_run_index_resume_skip_and_refusals(tmp_path, tiny, trainer_calls, capsys):
    out = tmp_path / "study"
    # a finetune run before its source exists: clear refusal, nothing created
    assert study("finetune", out, "--run", "0") == 2
    assert "schedulers study" in capsys.readouterr().err and not out.exists()

    assert study("schedulers", out, "--run", "1") == 0
    assert sorted(results(out)) == ["schedulers/cosine"]
    argv = trainer_calls[-1]
    assert argv[-2:] == ["--out", str(out / "schedulers/cosine")]

    # interrupted (a checkpoint, no result.json): the trainer's exact resume
    (out / "schedulers/cosine/result.json").unlink()
    assert study("schedulers", out, "--run", "1") == 0
    assert trainer_calls[-1] == ["--resume", str(out / "schedulers/cosine")]
    assert (out / "schedulers/cosine/result.json").is_file()
    # finished: skipped
    calls = len(trainer_calls)
    assert study("schedulers", out, "--run", "1") == 0 and len(trainer_calls) == calls
    # a run asked with other settings than it was made with
    assert E.main(["schedulers", "--out", str(out), "--run", "1", *TINY[:4],
                   "--width", "0.125", *TINY[6:]]) == 2
    assert "width 0.0625 (asked 0.125)" in capsys.readouterr().err

    # died before its first checkpoint: its leftovers are removed and it starts again
    stale = out / "schedulers/plateau"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    assert study("schedulers", out, "--run", "0") == 0
    assert (stale / "result.json").is_file()
    # a directory with someone else's files is never touched
    foreign = out / "schedulers/step"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert study("schedulers", out, "--run", "4") == 2
    assert "notes.txt" in capsys.readouterr().err and (foreign / "notes.txt").read_text() == "mine"
    assert study("schedulers", out, "--run", "6") == 2  # out of range
    assert "runs 0..5" in capsys.readouterr().err

    # --list: index, name, state and a command a user can paste
    capsys.readouterr()
    assert study("all", out, "--list") == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == ["#", "run", "state", "next", "step"] and len(lines) == 24
    by_name = {l.split()[1]: l for l in lines}
    assert by_name["schedulers/cosine"].split()[:3] == ["15", "schedulers/cosine", "finished"]
    assert "waits until that study has finished" in by_name["finetune/cosine-train"]
    assert "move them away" in by_name["schedulers/step"]
    sgd = by_name["optimizers/sgd-constant"]
    cmd = shlex.split(sgd[sgd.index("python -m fer_fast.train"):])
    config, _ = T.parse_args(cmd[3:])
    assert (config.optimizer, config.scheduler, config.lr, config.epochs, config.width,
            config.out) == ("sgd", "constant", 0.001, 1, 0.0625,
                            str(out / "optimizers/sgd-constant"))
    # with --init the fine-tuning commands are known before the schedulers study ends
    assert study("finetune", out, "--list", "--init", str(out / "schedulers/cosine/best.pt")) == 0
    assert capsys.readouterr().out.count(f"--init {out / 'schedulers/cosine/best.pt'}") == 4

    # a partial study's report shows the missing runs as missing
    assert E.main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| sgd | missing | missing | n/a | missing | missing | n/a |" in report
    assert "| finetune/cosine-train | new |" in report


def test_extra_arguments_may_not_redefine_the_study(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        E.main(["schedulers", "--out", str(tmp_path), "--", "--lr", "0.1"])
    assert exit_info.value.code == 2 and "the study sets it" in capsys.readouterr().err


def test_devices_run_one_process_per_gpu(tmp_path, monkeypatch):
    """--devices: each run is one trainer process that sees only its GPU; the GPUs share
    the runs (the processes are faked here: this machine has no GPU)."""
    launched = []

    def fake_call(cmd, stdout, stderr, env):
        launched.append((cmd, env["CUDA_VISIBLE_DEVICES"]))
        stdout.write("trained\n")
        return 0
    monkeypatch.setattr(E.subprocess, "call", fake_call)
    monkeypatch.setattr(E, "_gpu_count", lambda: 2)
    out = tmp_path / "study"
    assert E.main(["schedulers", "--out", str(out), "--devices", "0,1", *TINY]) == 0
    assert sorted(cmd[cmd.index("--out") + 1] for cmd, _ in launched) == sorted(
        str(out / r.name) for r in E.plan("schedulers"))
    assert {device for _, device in launched} <= {"0", "1"} and len(launched) == 6
    assert all(cmd[1:3] == ["-m", "fer_fast.train"] for cmd, _ in launched)
    assert (out / "logs/schedulers-cosine.log").read_text() == "trained\n"


def test_a_failing_run_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    """A run that crashes (say, a diverging optimizer) is reported; the study goes on and exits
    with 1 (the trainer is faked here: the failure handling is what is tested)."""
    started = []

    def fake_main(argv):
        started.append(argv[argv.index("--out") + 1])
        if "adadelta" in argv:
            raise FloatingPointError("epoch 1: training loss is nan")
        return 0
    monkeypatch.setattr(T, "main", fake_main)
    out = tmp_path / "study"
    assert E.main(["optimizers", "--out", str(out), *TINY]) == 1
    assert len(started) == 14
    err = capsys.readouterr().err
    assert "training loss is nan" in err
    assert "failed runs: optimizers/adadelta-constant, optimizers/adadelta-plateau" in err


def test_list_without_out_shows_the_default_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert E.main(["all", "--list"]) == 0
    header, first, *_ = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["#", "run", "state"]
    assert f"--out {E.DEFAULT_OUT / 'optimizers/sgd-constant'}" in first
    assert not (tmp_path / "runs").exists()  # listing writes nothing
