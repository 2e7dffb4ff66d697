"""What the command-line tools share: the parser, argument types and validators, device
resolution, the checkpoint/data arguments, and the one error wrapper every command's ``main``
goes through.

A user's mistake (bad flag, missing file, unusable checkpoint, unwritable folder, full disk, a
device this machine lacks) prints one line ``error: ...`` and exits with status 2; Ctrl-C prints
one line and exits with 130. Tracebacks are for bugs: with ``--debug`` or ``FER_FAST_DEBUG=1``
the user errors raise as well.
"""
from __future__ import annotations

import argparse
import errno
import functools
import math
import os
import sys
from typing import Callable

import torch

from .checkpoint import CheckpointError
from .data import DataError
from .distributed import reports

__all__ = ["UserError", "Interrupted", "USER_ERRORS", "Parser", "command", "debug_enabled",
           "sizes_arg", "number", "check_range", "resolve_device", "default_device",
           "add_debug_arg", "add_device_arg", "add_checkpoint_args", "load_model_and_data"]

#: environment variable that turns user errors back into tracebacks
DEBUG_ENV = "FER_FAST_DEBUG"
#: the largest seed (torch.manual_seed takes 0 .. 2**63 - 1 as a signed 64-bit integer)
MAX_SEED = 2**63 - 1


class UserError(ValueError):
    """A mistake of the user or of their environment; the message says what and where."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a message telling where the work stands (e.g. how to resume)."""


#: exceptions that are the user's to fix: one line, exit status 2
USER_ERRORS = (UserError, DataError, CheckpointError)


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to a flag's help unless the help already states its default or
    there is none to show (None, False, suppressed); an on/off flag's default reads on or off."""

    def _get_help_string(self, action):
        text = action.help or ""
        if isinstance(action, argparse.BooleanOptionalAction) and isinstance(action.default, bool):
            text = text.replace(" (default: %(default)s)", "")  # argparse's own, True/False
            return f"{text} (default: {'on' if action.default else 'off'})"
        if "(default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """ArgumentParser that shows every default in ``--help`` and reports a bad command line in
    one line (``error: ...``, exit status 2) instead of the usage block."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        for text in ("description", "epilog"):  # module docstrings' lines, shown as plain text
            if kwargs.get(text):
                kwargs[text] = kwargs[text].replace("``", "")
        super().__init__(*args, **kwargs)
        self._argv: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self._argv = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        """One line and exit status 2; with --debug / FER_FAST_DEBUG=1 a UserError whose
        traceback shows where the error came from (chained to the exception being handled)."""
        if debug_enabled(self._argv):
            raise UserError(f"{message} (see {self.prog} --help)")
        if reports():
            print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def debug_enabled(argv) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def command(main: Callable[[list[str]], int]) -> Callable[..., int]:
    """Wrap a command's ``main(argv) -> exit status``: user errors become one line and status
    2, Ctrl-C one line and status 130; other exceptions (bugs) keep their traceback. In a
    data-parallel job (torchrun, srun) only rank 0 prints those lines: every process meets the
    same mistake (``distributed.reports``)."""

    @functools.wraps(main)
    def wrapper(argv=None) -> int:
        argv = sys.argv[1:] if argv is None else list(argv)
        debug = debug_enabled(argv)
        try:
            return main(argv)
        except KeyboardInterrupt as e:
            if debug:
                raise
            if reports():
                print(f"interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
            return 130
        except USER_ERRORS as e:
            if debug:
                raise
            if reports():
                print(f"error: {e}", file=sys.stderr)
            return 2
        except OSError as e:  # the file system said no: a path, a permission, a full disk
            if debug:
                raise
            if reports():
                print(f"error: {describe_os_error(e)}", file=sys.stderr)
            return 2

    return wrapper


def describe_os_error(e: OSError) -> str:
    """One line for an OSError, naming the disk when it is full."""
    where = f"{e.filename}: " if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}the disk is full ({e.strerror or e})"
    return f"{where}{e.strerror or e}"


# ----------------------------------------------------------------------------------------------
# argument types
# ----------------------------------------------------------------------------------------------

#: bytes a synthetic image takes while a run holds it (the uint8 array, its tensor, the loader's)
SYNTHETIC_IMAGE_BYTES = 3 * 48 * 48


def plural_s(n: int) -> str:
    """The plural ending of a count's noun: "epoch" + plural_s(n)."""
    return "" if n == 1 else "s"


def sizes_arg(text: str) -> tuple[int, int, int]:
    """argparse type of TRAIN,VAL,TEST synthetic sizes (that fit in this machine's memory)."""
    from .model import physical_memory

    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers TRAIN,VAL,TEST, "
                                         f"got {text!r}")
    need, have = sum(sizes) * SYNTHETIC_IMAGE_BYTES, physical_memory()
    if have is not None and need > have:
        raise argparse.ArgumentTypeError(f"{text}: {sum(sizes)} images take about "
                                         f"{need / 2**30:.0f} GiB, more than this machine's "
                                         f"{have / 2**30:.1f} GiB of memory")
    return sizes


def check_range(value: float, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> str | None:
    """None when ``value`` is a finite number inside the range, else what is wrong."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        return f"must be {' and '.join(s for s in (lo, hi) if s)}, got {value}"
    return None


def number(kind: type = float, **bounds) -> Callable[[str], float]:
    """argparse type: an int or float inside ``bounds`` (see ``check_range``), never NaN/inf."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        problem = check_range(value, **bounds)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    parse.kind, parse.bounds = kind, bounds  # for checking a saved value against the same bounds
    return parse


# ----------------------------------------------------------------------------------------------
# devices
# ----------------------------------------------------------------------------------------------

def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _devices_here() -> str:
    names = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else ["cpu"]
    return ", ".join(names)


def resolve_device(name: str, flag: str = "--device") -> torch.device:
    """``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:N``, checked to exist on this
    machine (a UserError names the devices that do); a CUDA device always carries its index."""
    if name == "auto":
        name = default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{flag} {name}: unknown device (use auto, cpu, cuda or cuda:N; "
                        f"devices here: {_devices_here()})") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"{flag} {name}: unsupported device type {device.type!r} (use auto, "
                        f"cpu, cuda or cuda:N; devices here: {_devices_here()})")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{flag} {name}: this machine has no CUDA device (devices here: "
                            f"{_devices_here()})")
        if device.index is None:  # the run's device carries its index ("cuda": the current one)
            device = torch.device("cuda", torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise UserError(f"{flag} {name}: no such GPU (devices here: {_devices_here()})")
    return device


# ----------------------------------------------------------------------------------------------
# arguments shared by several commands
# ----------------------------------------------------------------------------------------------

def add_debug_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help=f"show a traceback for errors that are the user's to fix (also "
                        f"{DEBUG_ENV}=1)")


def add_device_arg(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """``--device`` (for ``resolve_device``); ``default`` None: the parser's ``argument_default``
    decides (train: absent flags stay absent, its Config holds "auto")."""
    kwargs = {} if default is None else {"default": default}
    p.add_argument("--device", help="auto (cuda when available), cpu, cuda, cuda:1, ... "
                   f"(default: {default or 'auto'})", **kwargs)


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """The arguments of the commands that load a trained model and its data."""
    from . import backends
    from .stack import model_backend_choices

    p.add_argument("checkpoint", help="a .pt file written by fer_fast.train, or the authors' "
                   "{'params': state_dict} file")
    p.add_argument("--data", default=None, help="fer2013.csv or image-folder root (default: "
                   "the data of the checkpoint's run, else the synthetic dataset)")
    p.add_argument("--seed", type=number(int, low=0, high=MAX_SEED), default=None,
                   help="seed of the synthetic dataset (default: the checkpoint's, else 0)")
    p.add_argument("--synthetic-sizes", type=sizes_arg, default=None, metavar="TRAIN,VAL,TEST",
                   help="synthetic dataset sizes (default: the checkpoint's run, else the "
                        "SyntheticSpec defaults)")
    add_device_arg(p)
    p.add_argument("--batch-size", type=number(int, low=1), default=256,
                   help="images per batch")
    p.add_argument("--model-backend", default="eager", choices=tuple(model_backend_choices()),
                   help="model backend (eager: the fp32 reference of the evaluation protocol)")
    p.add_argument("--augment-backend", default="auto",
                   choices=("auto",) + tuple(backends.names("augment")), help="ten-crop backend")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a checkpoint that holds more than tensors and plain values "
                        "(unpickling it can run code: only for files you trust)")
    add_debug_arg(p)


def load_model_and_data(args: argparse.Namespace, splits=("train", "val", "test")):
    """(model, FERData, device) for parsed ``add_checkpoint_args`` arguments. Without --data
    the data of the checkpoint's run (its saved config) is used, and the synthetic dataset is
    rebuilt with the run's seed and sizes unless the arguments say otherwise; ``splits`` are
    those that must hold images."""
    from .checkpoint import model_from_checkpoint
    from .loader import load_run_data
    from .stack import resolve_model_backend

    device = resolve_device(args.device)
    try:
        resolve_model_backend(args.model_backend, device)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"--model-backend {args.model_backend}: {e}") from None
    model, ckpt = model_from_checkpoint(args.checkpoint, device=device, backend=args.model_backend,
                                        trust=args.trust_checkpoint)
    config = ckpt.get("config") or {}
    path = args.data
    if path is None and config.get("data"):
        path = config["data"]
        if not os.path.exists(path):
            raise UserError(f"{args.checkpoint}: its run was trained on {path}, which is not "
                            f"there any more; pass --data with the data to evaluate on")
        print(f"note: no --data given: using the data of the checkpoint's run, {path}")
    seed = args.seed if args.seed is not None else config.get("seed", 0)
    sizes = args.synthetic_sizes or config.get("synthetic_sizes")
    return model, load_run_data(path, seed=seed, synthetic_sizes=sizes, splits=splits), device
