"""The configuration of a training run: ``Config``, the presets, the command line of
``python -m fer_fast train`` and the checks that let ``--resume`` continue a saved run.

Precedence: Config's defaults (the released recipe) < preset < the ``--init`` checkpoint's
architecture < explicit flags; with ``--resume`` the run's saved configuration is used and only
``--epochs``, ``--save-every``, ``--test-every``, ``--progress``/``--no-progress``, ``--data`` (the
same data, moved) and ``--out`` may change.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from . import backends, cli
from .augmentation import RECIPES
from .checkpoint import CheckpointError, infer_architecture, load_checkpoint
from .model import check_architecture
from .stack import model_backend_choices
from .synthetic import SyntheticSpec

__all__ = ["Config", "PRESETS", "OPTIMIZERS", "SCHEDULERS", "PRECISIONS", "BN_SYNC", "TRAIN_ON",
           "RESUME_KEYS", "saved_config", "parse_args"]

OPTIMIZERS = ("sgd", "nesterov", "asgd", "adam", "amsgrad", "adadelta", "adagrad")
SCHEDULERS = ("plateau", "cosine", "cosine-wr", "onecycle", "step", "constant")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
BN_SYNC = ("global", "local")
TRAIN_ON = ("train", "train+val")


@dataclass
class Config:
    """Everything that defines a run (saved as config.json and in every checkpoint)."""

    recipe: str = "released"
    optimizer: str = "nesterov"
    scheduler: str = "plateau"
    epochs: int = 300
    batch_size: int = 64
    eval_batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    dropout: float = 0.2
    label_smoothing: float = 0.0  # of the training loss (torch's cross_entropy); 0: the paper's
    width: float = 1.0
    # plateau: factor / patience; step: step_size (epochs) / gamma; cosine-wr: restart period
    plateau_factor: float = 0.75
    plateau_patience: int = 5
    step_size: int = 30
    gamma: float = 0.5
    restart_period: int = 10
    data: str | None = None  # stored absolute once the run starts
    strict_images: bool = False  # image folders: refuse, not convert, non-48x48-gray images
    synthetic_sizes: tuple[int, int, int] | None = None  # None: SyntheticSpec's defaults
    train_on: str = "train"
    seed: int = 0
    device: str = "auto"
    model_backend: str = "auto"
    augment_backend: str = "auto"
    precision: str = "auto"
    bn_sync: str = "global"  # under torchrun: BatchNorm statistics of the global batch, or local
    init: str | None = None  # stored absolute once the run starts
    save_every: int = 0   # 0: no periodic checkpoints
    test_every: int = 0   # 0: test accuracy only at the end
    progress: bool = True
    out: str | None = None
    preset: str = "full"
    trust_checkpoint: bool = False  # --init / --resume files may need full unpickling
    allow_recipe_change: bool = False  # --init with weights of the other block order


#: preset -> overrides of Config's defaults (which are the released recipe)
PRESETS = {
    "full": dict(save_every=50),
    # ~240 steps: the synthetic faces need ~100 steps of batch 32 at lr 0.02 before accuracy
    # leaves chance; batch 64 at lr 0.01 needs about twice the time on a CPU.
    "quick": dict(width=0.125, epochs=6, batch_size=32, lr=0.02,
                  synthetic_sizes=(1280, 256, 512)),
    # the bundled model's recipe: about 2 hours of 2 CPU cores on FER2013 (docs/cpu.md)
    "cpu": dict(width=0.25, epochs=30, scheduler="cosine", lr=0.08, save_every=5),
}


#: what a checkpoint must hold to continue its run exactly
RESUME_KEYS = {"config", "epoch", "logs", "best", "optimizer", "scheduler", "scaler", "rng"}
#: fields that may change when resuming a run (--data: the same data, moved)
RESUMABLE = {"epochs", "save_every", "test_every", "progress", "out", "data", "trust_checkpoint"}
#: Config fields renamed since runs were first saved: old name -> new name
_RENAMED_FIELDS = {"block_backend": "model_backend"}


def saved_config(config: dict) -> dict:
    """A saved run configuration (config.json, a checkpoint's "config") with the fields of
    older runs under their current names."""
    return {_RENAMED_FIELDS.get(k, k): v for k, v in config.items()}


#: upper bounds of the flags (a learning rate above MAX_LR overflows fp16/fp32 updates in a few
#: steps; a StepLR gamma above 1 makes the rate grow without bound)
MAX_EPOCHS, MAX_BATCH, MAX_LR = 1_000_000, 65_536, 10.0


def _shown(value) -> str:
    """A default as --help shows it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _preset_defaults(name: str, unset: str | None = None) -> str:
    """``(default: X; quick preset Y; ...)`` of Config field ``name``: the full preset's value
    (the released recipe), then each other preset's where it differs. ``unset``: what a None
    value means."""
    def value(preset):
        v = PRESETS[preset].get(name, getattr(Config, name))
        return unset if v is None else _shown(v)

    base, others = value("full"), {}
    for preset in PRESETS:
        if preset != "full" and value(preset) != base:
            others.setdefault(value(preset), []).append(preset)
    return "(default: " + "; ".join([base] + [
        f"{' and '.join(names)} preset{cli.plural_s(len(names))} {v}"
        for v, names in others.items()]) + ")"


def _parser() -> argparse.ArgumentParser:
    S = argparse.SUPPRESS  # absent flags stay absent, so presets and resume can fill them
    num = cli.number
    p = cli.Parser(prog="python -m fer_fast train", argument_default=S,
                   description="Train the FER2013 VGG. A default is the full preset's (the "
                               "released recipe) unless a preset sets its own; without --data "
                               "the quick preset is used.")

    def default(name, text, unset=None):
        return {"help": f"{text} {_preset_defaults(name, unset)}"}

    p.add_argument("--preset", choices=tuple(PRESETS),
                   help="full: the released recipe; quick: a small model on small synthetic data "
                        "for a CPU; cpu: the bundled model's recipe (default: full with --data, "
                        "quick without)")
    p.add_argument("--recipe", choices=RECIPES, **default(
        "recipe", "released (conv-BN-ReLU, released augmentation) or paper (conv-ReLU-BN, the "
                  "paper's augmentation)"))
    p.add_argument("--optimizer", choices=OPTIMIZERS, **default(
        "optimizer", "nesterov: SGD with Nesterov momentum"))
    p.add_argument("--scheduler", choices=SCHEDULERS, **default(
        "scheduler", "learning-rate schedule (plateau: ReduceLROnPlateau on the validation "
                     "accuracy)"))
    p.add_argument("--epochs", type=num(int, low=1, high=MAX_EPOCHS), **default(
        "epochs", "epochs to train"))
    p.add_argument("--batch-size", type=num(int, low=1, high=MAX_BATCH), **default(
        "batch_size", "images per step (x10 crops)"))
    p.add_argument("--eval-batch-size", type=num(int, low=1, high=MAX_BATCH), **default(
        "eval_batch_size", "images per evaluation batch"))
    p.add_argument("--lr", type=num(low=0, low_open=True, high=MAX_LR), **default(
        "lr", "learning rate (onecycle: its peak)"))
    p.add_argument("--momentum", type=num(low=0, high=1, high_open=True), **default(
        "momentum", "SGD momentum (sgd, nesterov)"))
    p.add_argument("--weight-decay", type=num(low=0, high=1), **default(
        "weight_decay", "L2 weight decay on every parameter"))
    p.add_argument("--dropout", type=num(low=0, high=1, high_open=True), **default(
        "dropout", "dropout probability"))
    p.add_argument("--label-smoothing", type=num(low=0, high=1, high_open=True), **default(
        "label_smoothing", "share of each crop's target spread over all classes in the training "
                           "loss"))
    p.add_argument("--width", type=num(low=0, low_open=True), **default(
        "width", "channel multiplier (1 = the paper's VGG)"))
    p.add_argument("--plateau-factor", type=num(low=0, high=1, low_open=True, high_open=True),
                   **default("plateau_factor", "plateau: the factor a drop multiplies the "
                                               "learning rate by"))
    p.add_argument("--plateau-patience", type=num(int, low=0, high=MAX_EPOCHS), **default(
        "plateau_patience", "plateau: epochs without a better validation accuracy before a drop"))
    p.add_argument("--step-size", type=num(int, low=1, high=MAX_EPOCHS), **default(
        "step_size", "step: epochs between drops"))
    p.add_argument("--gamma", type=num(low=0, low_open=True, high=1), **default(
        "gamma", "step: the factor a drop multiplies the learning rate by"))
    p.add_argument("--restart-period", type=num(int, low=1, high=MAX_EPOCHS), **default(
        "restart_period", "cosine-wr: epochs between restarts"))
    p.add_argument("--data", help="fer2013.csv or image-folder root; with --resume: the run's "
                   "data at a new place (default: synthetic data)")
    spec = SyntheticSpec()
    p.add_argument("--synthetic-sizes", type=cli.sizes_arg, metavar="TRAIN,VAL,TEST", **default(
        "synthetic_sizes", "images per split of the synthetic data",
        unset=f"{spec.n_train},{spec.n_val},{spec.n_test}"))
    p.add_argument("--strict-images", action="store_true", help="image folders: refuse images "
                   "that are not 48x48 8-bit grayscale instead of converting them")
    p.add_argument("--train-on", choices=TRAIN_ON, **default(
        "train_on", "train+val: the fine-tuning stage on the combined data (validation accuracy "
                    "then no longer measures generalisation)"))
    p.add_argument("--seed", type=num(int, low=0, high=cli.MAX_SEED), **default(
        "seed", "seed of the weights, the data order, the augmentation and the synthetic data"))
    cli.add_device_arg(p, default=None)
    p.add_argument("--model-backend", choices=tuple(model_backend_choices()), **default(
        "model_backend", "auto (GPU: the fastest that passed the selfcheck there; CPU: eager), "
                         "a block backend (eager, fused) or a whole-stack one (triton)"))
    p.add_argument("--augment-backend", choices=("auto",) + tuple(backends.names("augment")),
                   **default("augment_backend", "auto: on a GPU the fastest that passed the "
                                                "selfcheck there"))
    p.add_argument("--precision", choices=PRECISIONS, **default(
        "precision", "auto: fp16 autocast + GradScaler on CUDA; on a CPU bf16 autocast where the "
                     "selfcheck verified it and found it faster, else fp32"))
    p.add_argument("--bn-sync", choices=BN_SYNC, **default(
        "bn_sync", "data-parallel runs (torchrun, srun): BatchNorm statistics over the global "
                   "batch, as one process would compute them, or over each process's share"))
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="start from these weights (fine-tuning); recipe and width follow it "
                        "(default: random weights)")
    p.add_argument("--allow-recipe-change", action="store_true",
                   help="with --init: allow a --recipe other than the checkpoint's (its weights "
                        "were trained with the other block order)")
    p.add_argument("--resume", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="continue an interrupted run exactly (RUN_DIR means RUN_DIR/last.pt) "
                        "(default: a new run)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow --init/--resume files that hold more than tensors and plain "
                        "values (unpickling them can run code: only for files you trust)")
    p.add_argument("--save-every", type=num(int, low=0, high=MAX_EPOCHS), **default(
        "save_every", "periodic checkpoint every N epochs (0: none)"))
    p.add_argument("--test-every", type=num(int, low=0, high=MAX_EPOCHS), **default(
        "test_every", "test accuracy every N epochs (0: at the end)"))
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, **default(
        "progress", "progress bar (off when stderr is not a terminal)"))
    p.add_argument("--out", help="run directory, new or empty (default: runs/<timestamp>-<recipe>;"
                   " with --resume: the resumed run's directory)")
    cli.add_debug_arg(p)
    return p


def _resume_path(target: str) -> Path:
    path = Path(target)
    return path / "last.pt" if path.is_dir() else path


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_args(argv=None) -> tuple[Config, Path | None]:
    """(config, checkpoint to resume from). Precedence: Config defaults < preset < the --init
    checkpoint's architecture < explicit flags; with --resume: the saved config < flags."""
    p = _parser()
    given = vars(p.parse_args(argv))
    given.pop("debug", None)
    resume = given.pop("resume", None)
    if resume is not None:
        return _parse_resume(p, _resume_path(resume), given)
    preset = given.get("preset", "full" if given.get("data") else "quick")
    values = dict(PRESETS[preset], preset=preset)
    if given.get("init"):
        try:
            ckpt = load_checkpoint(given["init"], trust=given.get("trust_checkpoint", False))
            recipe, width = infer_architecture(ckpt, given["init"])
        except CheckpointError as e:
            p.error(str(e))
        if given.get("recipe", recipe) != recipe and not given.get("allow_recipe_change"):
            p.error(f"--init {given['init']}: its weights were trained with recipe {recipe!r} "
                    f"(block order {'conv-BN-ReLU' if recipe == 'released' else 'conv-ReLU-BN'}"
                    f"), not --recipe {given['recipe']}; pass --allow-recipe-change to start "
                    f"the other block order from them anyway")
        values.update(recipe=recipe, width=width)
    values.update(given)
    config = Config(**values)
    problem = check_architecture(config.recipe, config.width, dropout=config.dropout,
                                 training=True)
    if problem:  # before anything is allocated
        p.error(f"--width {config.width}: {problem.removeprefix(f'width {config.width}: ')}")
    return config, None


def _check_saved(p: argparse.ArgumentParser, path: Path, ckpt: dict) -> dict:
    """The checkpoint's saved configuration, every field checked against its flag's type and
    range (a file can hold anything), and the architecture against this machine's memory,
    before anything is built from it."""
    saved = ckpt.get("config")
    if not isinstance(saved, dict):
        p.error(f"--resume {path}: its 'config' is {type(saved).__name__}, not a dict")
    saved = saved_config(saved)
    if isinstance(ckpt["epoch"], bool) or not isinstance(ckpt["epoch"], int) or ckpt["epoch"] < 0:
        p.error(f"--resume {path}: field 'epoch' is {ckpt['epoch']!r}, not an epoch number")
    for field, keys in (("resolved", ("device_type", "precision")), ("data", ("sha256",))):
        value = ckpt.get(field)
        if value is not None and not (isinstance(value, dict) and all(
                isinstance(value.get(k), str) for k in keys)):
            p.error(f"--resume {path}: field '{field}' is {value!r}, not a dict with "
                    f"{', '.join(repr(k) for k in keys)}")
    for action in p._actions:
        value, kind = saved.get(action.dest), getattr(action.type, "kind", None)
        if value is None:
            continue
        problem = None
        if action.choices is not None and value not in action.choices:
            problem = f"not one of {tuple(action.choices)}"
        elif kind is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float
                                                         else int):
                problem = f"not {'a number' if kind is float else 'an integer'}"
            else:
                problem = cli.check_range(value, **action.type.bounds)
        elif action.type is cli.sizes_arg:
            try:
                cli.sizes_arg(",".join(str(v) for v in value))
            except (argparse.ArgumentTypeError, TypeError) as e:
                problem = str(e)
        elif isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
            problem = None if isinstance(value, bool) else "not true or false"
        elif action.type is None and not isinstance(value, str):
            problem = "not a string"
        if problem:
            p.error(f"--resume {path}: config field '{action.dest}' is {value!r}: {problem}")
    problem = check_architecture(saved.get("recipe", "released"), saved.get("width", 1.0),
                                 dropout=saved.get("dropout", 0.2), training=True)
    if problem:
        p.error(f"--resume {path}: config: {problem}")
    return saved


def _parse_resume(p: argparse.ArgumentParser, path: Path, given: dict) -> tuple[Config, Path]:
    try:
        ckpt = load_checkpoint(path, trust=given.get("trust_checkpoint", False))
    except CheckpointError as e:
        p.error(str(e))
    lacking = sorted(RESUME_KEYS - set(ckpt))
    if lacking:
        p.error(f"--resume {path}: the checkpoint lacks the resume state {lacking} (not "
                f"written by fer_fast.train); use --init to start from its weights")
    fixed = sorted(set(given) - RESUMABLE)
    if fixed:
        p.error(f"--resume continues a run with its saved configuration; these flags cannot "
                f"change: {', '.join(_flag(k) for k in fixed)}")
    known = {f.name for f in dataclasses.fields(Config)}
    config = Config(**{k: v for k, v in _check_saved(p, path, ckpt).items() if k in known})
    done = ckpt["epoch"]
    if "epochs" in given and given["epochs"] <= done:
        p.error(f"--resume {path}: the run has already done {done} epoch{cli.plural_s(done)}; "
                f"--epochs {given['epochs']} must be larger to train further")
    finished = (path.parent / "result.json").is_file()  # written last by rundir.finish
    if "epochs" not in given and done >= config.epochs and finished:
        p.error(f"--resume {path}: the run is finished ({done} of {config.epochs} "
                f"epoch{cli.plural_s(config.epochs)}); to train it further pass --epochs N with N > {done}")
    config.trust_checkpoint = False  # trust is given per invocation, never inherited
    for k, v in given.items():
        setattr(config, k, v)
    config.out = given.get("out", str(path.parent))
    if config.synthetic_sizes is not None:
        config.synthetic_sizes = tuple(config.synthetic_sizes)
    return config, path
