"""The paper's studies as commands: ``python -m fer_fast.experiments STUDY --out DIR``.

STUDY is ``optimizers`` (Figure 2: seven optimizers, each at a constant lr 0.001 and with
ReduceLROnPlateau from 0.01), ``schedulers`` (Figure 3: six schedules with SGD-Nesterov from 0.01),
``finetune`` (Table 1: the best schedulers run by validation accuracy, or ``--init CKPT``,
trained 50 more epochs at lr 1e-4 with cosine and cosine-WR, on train and on train+val) or
``all``. ``python -m fer_fast.experiments report DIR`` collects whatever runs exist into
``DIR/report.md`` and the figures ``optimizers.png``, ``schedulers.png`` and
``curves_overlay.png``.

Every run is one ``fer_fast.train`` command with a stable name and its own run directory
``DIR/<study>/<name>``: a finished run (``result.json`` present) is skipped, an interrupted one
(``last.pt`` without ``result.json``) continues with the trainer's exact resume, a new one starts.
So a study can be stopped and restarted at will, ``--run INDEX`` runs exactly one run (one task of
a cluster's job array), and ``--devices 0,1,...`` keeps one training process per local GPU busy.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path

from . import cli, files, rundir, train
from .config import OPTIMIZERS, PRESETS, SCHEDULERS, Config, parse_args, saved_config
from .plots import RESULT_FILE, check_result, new_figure, read_metrics

__all__ = ["STUDIES", "SCHEDULE_PARAMETERS", "OPTIMIZER_REGIMES", "STUDY_LR", "FINETUNE_LR",
           "FINETUNE_EPOCHS", "PAPER", "Run", "StudyError", "plan", "run_state", "trainer_argv",
           "finetune_source", "collect", "write_report", "main"]

STUDIES = ("optimizers", "schedulers", "finetune")
#: where a study's runs go without --out
DEFAULT_OUT = Path("runs") / "study"

#: The schedules' parameters, those the paper leaves open fixed here once. Each entry: the
#: trainer flags passed explicitly (so the runs do not depend on the trainer's defaults) and
#: what the schedule then is.
SCHEDULE_PARAMETERS = {
    "plateau": ({"--plateau-factor": 0.75, "--plateau-patience": 5},
                "ReduceLROnPlateau(mode max on validation accuracy, factor 0.75, patience 5 "
                "epochs): the paper's values"),
    "cosine": ({}, "CosineAnnealingLR(T_max = the run's epochs, eta_min 0), stepped per epoch"),
    "cosine-wr": ({"--restart-period": 10},
                  "CosineAnnealingWarmRestarts(T_0 10 epochs, T_mult 1, eta_min 0), per epoch"),
    "onecycle": ({}, "OneCycleLR(max_lr = the run's lr, total steps = epochs x steps per epoch, "
                     "pct_start 0.3, cosine, div_factor 25, final_div_factor 1e4), per step"),
    "step": ({"--step-size": 30, "--gamma": 0.5}, "StepLR(step_size 30 epochs, gamma 0.5)"),
    "constant": ({}, "the lr stays at its initial value"),
}
#: the optimizers study's two regimes: (scheduler, lr)
OPTIMIZER_REGIMES = {"constant": ("constant", 0.001), "plateau": ("plateau", 0.01)}
#: initial lr of every run of the schedulers study (the constant baseline included)
STUDY_LR = 0.01
FINETUNE_LR, FINETUNE_EPOCHS = 1e-4, 50
FINETUNE_SCHEDULERS = ("cosine-wr", "cosine")  # Table 1's order
FINETUNE_DATA = {"train": "train", "trainval": "train+val"}  # run-name suffix -> --train-on

#: The paper's numbers (accuracy in %), as its text states them. Figures 2 and 3 show the other
#: runs only as bars, without numbers: those stay absent here and "n/a" in the report.
PAPER = {
    # "SGD with Nesterov momentum performs the best in both experiments attaining a validation
    # accuracy of 73.2 % and 73.5 %" (constant lr, decaying lr)
    "optimizers": {"nesterov-constant": {"val": 73.2}, "nesterov-plateau": {"val": 73.5}},
    # "RLRP ... achieves a validation accuracy of 73.59 % and a testing accuracy of 73.06 %"
    "schedulers": {"plateau": {"val": 73.59, "test": 73.06}},
    # Table 1, testing accuracy; "source" = the trained VGGNet being tuned
    "finetune": {"source": {"test": 73.06}, "cosine-wr-train": {"test": 72.64},
                 "cosine-train": {"test": 73.11}, "cosine-wr-trainval": {"test": 73.14},
                 "cosine-trainval": {"test": 73.28}},
}
#: what the paper's text says of the runs it gives no numbers for
PAPER_NOTES = {
    "optimizers": "Paper: \"Excluding Adadelta, all optimizers show a high validation accuracy, "
                  "above 70 %\"; SGD-Nesterov is best in both regimes; \"all variants of SGD are "
                  "outperforming all other optimizers\".",
    "schedulers": "Paper: RLRP is best; \"The constant learning rate outperforms some of the "
                  "other schedulers (OneCycleRL and StepLR)\"; cosine and cosine-WR \"perform "
                  "comparably\".",
}

#: trainer flags a study sets itself (the extra trainer arguments may not)
STUDY_FLAGS = ("--optimizer", "--scheduler", "--lr", "--train-on", "--init", "--resume", "--out",
               "--epochs", "--width", "--preset", "--data", "--plateau-factor",
               "--plateau-patience", "--restart-period", "--step-size", "--gamma")
#: what the trainer writes into a run directory before its first checkpoint
PRE_CHECKPOINT_FILES = {"config.json", "metrics.csv", rundir.LOCK_FILE}


#: exit codes of a trainer stopped by Ctrl-C (its own 130, or killed by SIGINT)
INTERRUPTED = (130, -2)


class StudyError(cli.UserError):
    """A study that cannot go on as asked; the message says what to do (exit code 2)."""


@dataclass(frozen=True)
class Run:
    """One training run of a study: its stable name (``<study>/<leaf>``) and its flags."""

    study: str
    leaf: str
    flags: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.study}/{self.leaf}"


def _schedule_flags(scheduler: str) -> tuple[str, ...]:
    flags, _ = SCHEDULE_PARAMETERS[scheduler]
    return ("--scheduler", scheduler) + tuple(x for k, v in flags.items() for x in (k, str(v)))


def plan(study: str) -> list[Run]:
    """The runs of a study (``all``: the three in order); ``--run INDEX`` indexes this list."""
    if study == "all":
        return [run for s in STUDIES for run in plan(s)]
    if study == "optimizers":
        return [Run(study, f"{opt}-{regime}",
                    ("--optimizer", opt, "--lr", str(lr)) + _schedule_flags(scheduler))
                for opt in OPTIMIZERS
                for regime, (scheduler, lr) in OPTIMIZER_REGIMES.items()]
    if study == "schedulers":
        return [Run(study, s, ("--optimizer", "nesterov", "--lr", str(STUDY_LR))
                    + _schedule_flags(s)) for s in SCHEDULERS]
    if study == "finetune":
        return [Run(study, f"{s}-{suffix}", ("--optimizer", "nesterov", "--lr", str(FINETUNE_LR),
                                             "--train-on", train_on) + _schedule_flags(s))
                for suffix, train_on in FINETUNE_DATA.items() for s in FINETUNE_SCHEDULERS]
    raise ValueError(f"unknown study {study!r}; choose one of {STUDIES + ('all',)}")


@dataclass
class Settings:
    """What every run of an invocation shares."""

    out: Path
    data: str | None
    preset: str
    epochs: int
    finetune_epochs: int
    width: float | None
    init: str | None
    extra: tuple[str, ...]
    command: str = "python -m fer_fast.experiments ..."  # this invocation, to continue it


def run_state(run_dir: Path) -> str:
    """finished | interrupted (resumable) | stale (died before its first checkpoint) | new |
    foreign (holds files the trainer did not write)."""
    if (run_dir / RESULT_FILE).is_file():
        return "finished"
    if (run_dir / "last.pt").is_file():
        return "interrupted"
    if not run_dir.exists():
        return "new"
    names = {p.name for p in run_dir.iterdir()}
    if not names:
        return "new"
    return "stale" if names <= PRE_CHECKPOINT_FILES else "foreign"


def trainer_argv(run: Run, settings: Settings, init: str | None = None) -> list[str]:
    """The fer_fast.train arguments of a run started from scratch. Fine-tuning runs take the
    architecture of their --init checkpoint, so --width is not passed to them."""
    argv = ["--preset", settings.preset]
    if settings.data is not None:
        argv += ["--data", settings.data]
    finetune = run.study == "finetune"
    argv += ["--epochs", str(settings.finetune_epochs if finetune else settings.epochs)]
    if settings.width is not None and not finetune:
        argv += ["--width", str(settings.width)]
    argv += list(run.flags) + list(settings.extra)
    if init is not None:
        argv += ["--init", init]
    return argv + ["--out", str(settings.out / run.name)]


def _read_json(path: Path) -> dict:
    """A run's JSON file (result.json checked field by field); StudyError naming the file."""
    try:
        data = json.loads(path.read_text())
        if path.name == RESULT_FILE:
            check_result(data, path)
        elif not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return data
    except (OSError, ValueError) as e:
        raise StudyError(str(e) if str(e).startswith(str(path)) else
                         f"{path}: unreadable ({e})") from e


def finetune_source(out: Path, init: str | None = None) -> str:
    """--init of the fine-tuning runs: ``init`` if given, else best.pt of the schedulers
    study's run under ``out`` with the highest validation accuracy (all six must have
    finished)."""
    if init is not None:
        return init
    runs = plan("schedulers")
    unfinished = [r.name for r in runs if run_state(out / r.name) != "finished"]
    if unfinished:
        raise StudyError(f"the finetune study starts from the best run of the schedulers study, "
                         f"but {', '.join(unfinished)} under {out} "
                         f"{'has' if len(unfinished) == 1 else 'have'} not finished: run the "
                         f"schedulers study first, or give --init CHECKPOINT")
    scores = [(_read_json(out / r.name / RESULT_FILE)["best_val_acc"], -i, r)
              for i, r in enumerate(runs)]
    best = max(scores, key=lambda s: s[:2])[2]
    return str(out / best.name / "best.pt")


#: Config fields a resumed or skipped run may differ in from what the study asks
_UNCOMPARED = {"out", "progress", "device", "init", "save_every", "test_every"}


def _check_matches(run: Run, settings: Settings) -> None:
    """A run directory already there must hold the run this study asks for (the same settings),
    or the study would silently mix runs of different settings."""
    saved = saved_config(_read_json(settings.out / run.name / "config.json"))
    planned = vars(parse_args(trainer_argv(run, settings))[0])
    skip = _UNCOMPARED | ({"recipe", "width"} if run.study == "finetune" else set())
    diff = [f"{k} {saved.get(k)!r} (asked {v!r})" for k, v in planned.items()
            if k not in skip and _norm(saved.get(k)) != _norm(v)]
    if diff:
        raise StudyError(f"{settings.out / run.name}: holds a run made with other settings: "
                         f"{'; '.join(diff)}; use another --out, or the settings it was made with")


def _norm(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def next_step(run: Run, settings: Settings) -> list[str] | None:
    """The trainer arguments that move a run on (None: finished, skip). Removes what a run that
    died before its first checkpoint left (config.json, metrics.csv) so that it starts again."""
    run_dir = settings.out / run.name
    state = run_state(run_dir)
    if state == "foreign":
        raise StudyError(f"{run_dir}: holds files fer_fast.train did not write before a "
                         f"checkpoint ({', '.join(sorted(p.name for p in run_dir.iterdir()))}); "
                         f"move them away or use another --out")
    if state in ("finished", "interrupted"):
        _check_matches(run, settings)
        return None if state == "finished" else ["--resume", str(run_dir)]
    if state == "stale":  # under the run's lock: never the files of a run starting elsewhere
        lock = rundir.lock_run_dir(run_dir)
        try:
            for name in PRE_CHECKPOINT_FILES - {rundir.LOCK_FILE}:
                (run_dir / name).unlink(missing_ok=True)
        finally:
            lock.close()
    init = finetune_source(settings.out, settings.init) if run.study == "finetune" else None
    return trainer_argv(run, settings, init)


def command(argv: list[str]) -> str:
    return shlex.join(["python", "-m", "fer_fast.train", *argv])


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------

def _train_in_process(argv: list[str]) -> int:
    """One run in this process (no new interpreter, no torch re-import); a crash of the run is
    reported and counted as a failure so the study goes on with its other runs."""
    try:
        return train.main(argv)
    except SystemExit as e:  # the trainer's argument errors
        return e.code if isinstance(e.code, int) else 2
    except Exception:  # noqa: BLE001 - e.g. a diverging optimizer: report, go on
        traceback.print_exc()
        return 1


def _train_on_devices(jobs: list[tuple[Run, list[str]]], devices: list[str],
                      out: Path) -> dict[str, int]:
    """One trainer process per GPU, each taking the next job when its run ends. Every process
    sees only its GPU (CUDA_VISIBLE_DEVICES), so a run resumed later on another GPU keeps its
    configuration; its output goes to DIR/logs/<study>-<leaf>.log."""
    pending: queue.Queue = queue.Queue()
    for job in jobs:
        pending.put(job)
    codes: dict[str, int] = {}
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()  # Ctrl-C: no new run starts

    def worker(device: str) -> None:
        while not stop.is_set():
            try:
                run, argv = pending.get_nowait()
            except queue.Empty:
                return
            log = logs / f"{run.study}-{run.leaf}.log"
            print(f"[gpu {device}] {run.name}: {command(argv)} (log {log})", flush=True)
            with open(log, "a") as f:
                code = subprocess.call([sys.executable, "-m", "fer_fast.train", *argv],
                                       stdout=f, stderr=subprocess.STDOUT,
                                       env={**os.environ, "CUDA_VISIBLE_DEVICES": device})
            codes[run.name] = code
            if code in INTERRUPTED:
                stop.set()
            what = "done" if code == 0 else "interrupted" if code in INTERRUPTED else \
                f"failed ({code})"
            print(f"[gpu {device}] {run.name}: {what}", flush=True)

    threads = [threading.Thread(target=worker, args=(d,)) for d in devices]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except KeyboardInterrupt:  # the trainers got the Ctrl-C too: let them stop, start no more
        stop.set()
        for t in threads:
            t.join()
        codes.update({name: 130 for name, code in codes.items() if code in INTERRUPTED})
        if not any(code in INTERRUPTED for code in codes.values()):
            raise
    return codes


def run_study(runs: list[Run], settings: Settings, devices: list[str] | None) -> int:
    """Moves every run on; fine-tuning runs after the others (they start from the schedulers
    study's best run). Returns 0 when every run finished, 1 when some failed, 2 when a run's
    input was refused."""
    failed = []
    for phase in ([r for r in runs if r.study != "finetune"],
                  [r for r in runs if r.study == "finetune"]):
        jobs = []
        for run in phase:
            try:
                argv = next_step(run, settings)
            except StudyError:
                _report_failed(failed)  # e.g. the fine-tuning source is one of them
                raise
            if argv is None:
                print(f"{run.name}: finished, skipped", flush=True)
            else:
                jobs.append((run, argv))
        if devices:
            codes = _train_on_devices(jobs, devices, settings.out)
        else:
            codes = {}
            for i, (run, argv) in enumerate(jobs):
                print(f"[{i + 1}/{len(jobs)}] {run.name}: {command(argv)}", flush=True)
                codes[run.name] = _train_in_process(argv)
                if codes[run.name] in (2,) + INTERRUPTED:
                    break
        stopped = [name for name, code in codes.items() if code in INTERRUPTED]
        if stopped:  # Ctrl-C stops the study, not only the run in progress
            raise cli.Interrupted(
                f"the study stopped in run{'s' if len(stopped) > 1 else ''} "
                f"{', '.join(stopped)} (the same command resumes "
                f"{'them' if len(stopped) > 1 else 'it'}); continue the study with: "
                f"{settings.command}")
        failed += [name for name, code in codes.items() if code != 0]
        if 2 in codes.values():
            print("stopped: a run's arguments or data were refused (exit 2); the other runs "
                  "would be refused alike", file=sys.stderr)
            return 2
    _report_failed(failed)
    return 1 if failed else 0


def _report_failed(failed: list[str]) -> None:
    if failed:
        print(f"failed runs: {', '.join(failed)} (rerun the same command to retry them)",
              file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------

@dataclass
class RunRecord:
    """What a run directory holds (nothing invented: absent stays None)."""

    run: Run
    state: str
    result: dict | None
    metrics: list[dict]
    config: dict | None


def collect(out: Path) -> list[RunRecord]:
    records = []
    for run in plan("all"):
        run_dir = out / run.name
        state = run_state(run_dir)
        result = _read_json(run_dir / RESULT_FILE) if state == "finished" else None
        config = _read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() \
            else None
        try:
            metrics = read_metrics(run_dir / "metrics.csv") \
                if (run_dir / "metrics.csv").is_file() else []
        except (OSError, ValueError) as e:
            raise StudyError(f"{e} (fix or remove the run)") from None
        records.append(RunRecord(run, state, result, metrics, config))
    return records


def _pct(value) -> str:
    return "missing" if value is None else f"{100 * value:.2f}"


def _paper(study: str, key: str, field: str) -> str:
    value = PAPER[study].get(key, {}).get(field)
    return "n/a" if value is None else f"{value:.2f}"


def _result(rec: RunRecord | None, field: str):
    return None if rec is None or rec.result is None else rec.result.get(field)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def _report_text(records: list[RunRecord], out: Path) -> str:
    by = {r.run.name: r for r in records}
    lines = [f"# The paper's studies: {out}", "",
             "Accuracies in %, ten-crop. val = best validation accuracy of the run; test = test "
             "accuracy of its best-validation checkpoint (test last = of its last model). "
             "Paper: the numbers its text states (Figures 2 and 3 show the others only as bars: "
             "n/a). missing = the run has not finished (see the last table).", ""]
    sources = sorted({json.dumps([r.config.get("resolved", {}).get("data_source"),
                                  r.config.get("width"), r.config.get("epochs")])
                      for r in records if r.config})
    for s in sources:
        data, width, epochs = json.loads(s)
        lines.append(f"- runs on {data}, width {width}, epochs {epochs}")
    lines += ["", "## Optimizers (Figure 2)", ""]
    rows = []
    for opt in OPTIMIZERS:
        row = [opt]
        for regime in OPTIMIZER_REGIMES:
            rec = by[f"optimizers/{opt}-{regime}"]
            row += [_pct(_result(rec, "best_val_acc")), _pct(_result(rec, "test_acc")),
                    _paper("optimizers", f"{opt}-{regime}", "val")]
        rows.append(row)
    lines += _table(["optimizer", "constant lr 0.001: val", "test", "paper val",
                     "plateau from 0.01: val", "test", "paper val"], rows)
    lines += ["", PAPER_NOTES["optimizers"]]
    lines += ["", "## Schedulers, SGD-Nesterov from lr 0.01 (Figure 3)", ""]
    rows = []
    for s in SCHEDULERS:
        rec = by[f"schedulers/{s}"]
        rows.append([s, _pct(_result(rec, "best_val_acc")), _pct(_result(rec, "test_acc")),
                     _paper("schedulers", s, "val"), _paper("schedulers", s, "test")])
    lines += _table(["scheduler", "val", "test", "paper val", "paper test"], rows)
    lines += ["", PAPER_NOTES["schedulers"]]
    lines += ["", f"## Fine-tuning, {FINETUNE_EPOCHS} epochs at lr {FINETUNE_LR} in the paper "
              f"(Table 1)", ""]
    init = next((r.config.get("init") for r in records
                 if r.run.study == "finetune" and r.config and r.config.get("init")), None)
    if init is None:  # no fine-tuning run yet: the one they will start from, once known
        try:
            init = finetune_source(out)
        except StudyError:
            pass
    source = next((r for r in records
                   if init and Path(init).resolve().parent == (out / r.run.name).resolve()), None)
    rows = [["trained VGGNet (" + (source.run.name if source else (init or "not chosen yet"))
             + ")", "", _pct(_result(source, "test_acc")) if init else "missing", "",
             _paper("finetune", "source", "test")]]
    for suffix, train_on in FINETUNE_DATA.items():
        for s in FINETUNE_SCHEDULERS:
            rec = by[f"finetune/{s}-{suffix}"]
            rows.append([f"{s}-{suffix}", train_on, _pct(_result(rec, "test_acc_last")),
                         _pct(_result(rec, "test_acc")), _paper("finetune", f"{s}-{suffix}",
                                                                "test")])
    lines += _table(["run", "trained on", "test (last model; trained VGGNet: its best.pt)",
                     "test (best val)", "paper test"], rows)
    lines += ["", "On train+val the validation split is part of the training data, so its "
              "\"best validation\" checkpoint is not a fair pick: compare the last models.", "",
              "## Every run", ""]
    rows = []
    for rec in records:
        r = rec.result or {}
        ips = r.get("images_per_s")
        state = rec.state if rec.state != "interrupted" else \
            f"interrupted after epoch {len(rec.metrics)}"
        device = (rec.config or {}).get("resolved", {}).get("device", "")
        rows.append([rec.run.name, state, str(r.get("epochs", "")), str(r.get("best_epoch", "")),
                     _pct(r.get("best_val_acc")) if r else "", _pct(r.get("test_acc")) if r else "",
                     f"{r['wall_time_s']:.1f}" if r else "", f"{ips:.0f}" if ips else "", device])
    lines += _table(["run", "state", "epochs", "best epoch", "val", "test", "wall time (s)",
                     "images/s", "device"], rows)
    return "\n".join(lines) + "\n"


def _grouped_bars(path: Path, names, groups, *, title: str, ylabel: str, width: float) -> None:
    """Two bars per name (``groups``: two (label, color, values, paper) with ``values`` the
    fractions per name, None = missing, and ``paper`` {name index: the paper's percentage}),
    each labelled with its value or "missing", the paper's numbers as black ticks."""
    fig = new_figure(figsize=(width, 4.5))
    ax = fig.subplots()
    xs = range(len(names))
    for offset, (label, color, values, paper) in zip((-0.2, 0.2), groups):
        values = [None if v is None else 100 * v for v in values]
        ax.bar([x + offset for x in xs], [v or 0 for v in values], 0.4, color=color, label=label)
        for x, v in zip(xs, values):
            ax.text(x + offset, 1, "missing" if v is None else f"{v:.1f}", rotation=90,
                    ha="center", va="bottom", fontsize=7)
        if paper:
            ax.scatter([x + offset for x in paper], list(paper.values()), marker="_", s=400,
                       color="black", zorder=3, label="paper" if offset < 0 else None)
    ax.set_xticks(list(xs), names)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(0, 100)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with files.temporary_path(path, overwrite=True) as tmp:  # the study's own figure
        fig.savefig(tmp, dpi=100)


def _plot_optimizers(records: dict, path: Path) -> None:
    groups = []
    for regime, color, label in (("constant", "gold", "constant lr 0.001"),
                                 ("plateau", "darkorange", "decaying lr (plateau from 0.01)")):
        values = [_result(records[f"optimizers/{o}-{regime}"], "best_val_acc")
                  for o in OPTIMIZERS]
        paper = {i: PAPER["optimizers"][f"{o}-{regime}"]["val"]
                 for i, o in enumerate(OPTIMIZERS) if f"{o}-{regime}" in PAPER["optimizers"]}
        groups.append((label, color, values, paper))
    _grouped_bars(path, OPTIMIZERS, groups, title="Optimizers",
                  ylabel="validation accuracy (%)", width=9)


def _plot_schedulers(records: dict, path: Path) -> None:
    groups = []
    for field, key, color, label in (("best_val_acc", "val", "seagreen", "validation"),
                                     ("test_acc", "test", "steelblue", "test")):
        values = [_result(records[f"schedulers/{s}"], field) for s in SCHEDULERS]
        paper = {i: PAPER["schedulers"][s][key] for i, s in enumerate(SCHEDULERS)
                 if key in PAPER["schedulers"].get(s, {})}
        groups.append((label, color, values, paper))
    _grouped_bars(path, SCHEDULERS, groups, title="Schedulers (SGD-Nesterov, lr 0.01)",
                  ylabel="accuracy (%)", width=8)


def _plot_overlay(records: list[RunRecord], path: Path) -> None:
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    colors = colormaps["tab20"].colors
    fig = new_figure(figsize=(7, 3.2 * len(STUDIES)))
    for ax, study in zip(fig.subplots(len(STUDIES), 1, squeeze=False)[:, 0], STUDIES):
        shown = 0
        for rec in records:
            if rec.run.study != study or not rec.metrics:
                continue
            ax.plot([m["epoch"] for m in rec.metrics], [100 * m["val_acc"] for m in rec.metrics],
                    marker=".", linestyle="-" if rec.state == "finished" else "--",
                    color=colors[shown % len(colors)],
                    label=rec.run.leaf + ("" if rec.state == "finished" else " (unfinished)"))
            shown += 1
        if shown:
            ax.legend(fontsize=7, ncol=2, loc="lower right")
        else:
            ax.text(0.5, 0.5, "no runs yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(study)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with files.temporary_path(path, overwrite=True) as tmp:  # the study's own figure
        fig.savefig(tmp, dpi=100)


def write_report(out: Path) -> list[Path]:
    """report.md (always) and the three figures (with matplotlib); returns the files written."""
    records = collect(out)
    report = out / "report.md"
    files.write_text(report, _report_text(records, out), overwrite=True)  # regenerated
    written = [report]
    try:
        by = {r.run.name: r for r in records}
        for name, draw in (("optimizers.png", lambda p: _plot_optimizers(by, p)),
                           ("schedulers.png", lambda p: _plot_schedulers(by, p)),
                           ("curves_overlay.png", lambda p: _plot_overlay(records, p))):
            draw(out / name)
            written.append(out / name)
    except ImportError:
        print('figures not drawn: matplotlib is not installed (pip install "fer_fast[plot]")')
    return written


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = cli.Parser(
        prog="python -m fer_fast experiments",
        description="The paper's studies (optimizers, schedulers, finetune, all) as resumable "
                    "sets of fer_fast.train runs; 'report DIR' tabulates and plots them.",
        epilog="Arguments after -- go to every fer_fast.train command unchanged (e.g. -- "
               "--synthetic-sizes 64,32,32 --batch-size 16).")
    p.add_argument("study", choices=STUDIES + ("all", "report"),
                   help="a study, all of them, or report: tabulate and plot a study's runs")
    p.add_argument("report_dir", nargs="?", metavar="DIR",
                   help="with report: the study's --out (default: --out's)")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help="directory of the study's runs (one subdirectory per run)")
    p.add_argument("--data", help="fer2013.csv or image-folder root (default: synthetic data)")
    p.add_argument("--preset", choices=("full", "quick"), help="the trainer's preset (default: "
                   "full with --data, quick without)")
    p.add_argument("--epochs", type=cli.number(int, low=1), help="epochs of every run, fine-tuning included "
                   f"(default: the preset's; fine-tuning {FINETUNE_EPOCHS} with the full preset)")
    p.add_argument("--width", type=cli.number(float, low=0, low_open=True), help="channel multiplier of the VGG (fine-tuning "
                   "runs take their --init checkpoint's) (default: the preset's)")
    p.add_argument("--init", metavar="CHECKPOINT", help="finetune: start from these weights "
                   "(default: the schedulers study's best run)")
    p.add_argument("--list", action="store_true", help="print the runs (index, name, state, "
                   "command) and exit")
    p.add_argument("--run", type=int, metavar="INDEX", help="move exactly this run on (e.g. "
                   "--run $SLURM_ARRAY_TASK_ID) (default: every run)")
    p.add_argument("--devices", help="comma-separated local GPU indices (distinct, of this "
                   "machine's GPUs): one training process per GPU (default: the runs one after another "
                   "in this process)")
    cli.add_debug_arg(p)
    return p


def _settings(args, extra: list[str], p: argparse.ArgumentParser) -> Settings:
    for token in extra:
        if token.split("=")[0] in STUDY_FLAGS:
            p.error(f"{token.split('=')[0]} after -- : the study sets it (use the study's own "
                    f"flag where it has one: --data, --preset, --epochs, --width, --init)")
    preset = args.preset or ("full" if args.data else "quick")
    epochs = args.epochs or PRESETS[preset].get("epochs", Config.epochs)
    finetune_epochs = args.epochs or (FINETUNE_EPOCHS if preset == "full" else epochs)
    return Settings(Path(args.out), args.data, preset, epochs, finetune_epochs, args.width,
                    args.init, tuple(extra))


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _devices(text: str, p: argparse.ArgumentParser) -> list[str]:
    """--devices: distinct indices of GPUs this machine has (else an error, never the CPU)."""
    items = [d.strip() for d in text.split(",")]
    if not all(d.isdigit() for d in items) or len(set(map(int, filter(str.isdigit, items)))) \
            != len(items):
        p.error(f"--devices {text!r}: expected distinct GPU indices such as 0,1,2")
    count = _gpu_count()
    if count == 0:
        raise StudyError(f"--devices {text}: this machine has no CUDA GPU (without --devices "
                         f"the runs train one after the other in this process)")
    missing = [d for d in items if int(d) >= count]
    if missing:
        raise StudyError(f"--devices {text}: no GPU {', '.join(missing)} here (GPUs: "
                         f"0..{count - 1})")
    return [str(int(d)) for d in items]


def _list(runs: list[Run], settings: Settings) -> None:
    """Index, name, state and the command that moves each run on (a stale run's leftovers are
    removed first when the study runs it)."""
    print(f"{'#':>3s}  {'run':28s} {'state':12s} next step")
    for i, run in enumerate(runs):
        state = run_state(settings.out / run.name)
        if state == "finished":
            line = "finished"
        elif state == "foreign":
            line = "(holds files fer_fast.train did not write: move them away)"
        elif state == "interrupted":
            line = command(["--resume", str(settings.out / run.name)])
        else:
            try:
                init = (finetune_source(settings.out, settings.init)
                        if run.study == "finetune" else None)
                line = command(trainer_argv(run, settings, init))
            except StudyError:
                line = ("(starts from the best run of the schedulers study: waits until that "
                        "study has finished)")
        print(f"{i:3d}  {run.name:28s} {state:12s} {line}")


@cli.command
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    p = _parser()
    args = p.parse_args(argv)
    if args.study == "report":
        out = Path(args.report_dir or args.out)
        if not out.is_dir():
            raise StudyError(f"{out}: no such study directory")
        for path in write_report(out):
            print(f"wrote {path}")
        return 0
    if args.report_dir is not None:
        p.error(f"unexpected argument {args.report_dir!r} (the runs go to --out DIR)")
    settings = _settings(args, extra, p)
    runs = plan(args.study)
    parse_args(trainer_argv(runs[0], settings))  # bad extra arguments: exit 2 now
    if args.list:
        _list(runs, settings)
        return 0
    devices = _devices(args.devices, p) if args.devices is not None else None
    settings.command = shlex.join(["python", "-m", "fer_fast.experiments", *argv]
                                  + (["--", *extra] if extra else []))
    if args.run is not None:
        if not 0 <= args.run < len(runs):
            raise StudyError(f"--run {args.run}: the {args.study} study has runs "
                             f"0..{len(runs) - 1}")
        runs = runs[args.run:args.run + 1]
    return run_study(runs, settings, devices)


if __name__ == "__main__":
    sys.exit(main())
