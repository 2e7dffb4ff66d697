"""What "auto" may choose on this machine: the cached outcome ("verdict") of ``python -m fer_fast
selfcheck``, one file per machine and software.

A verdict is the selfcheck's JSON (its ``rows``: parity per op, backend and check, and the
measured time of each passing backend) plus the ``key`` it holds for: device kind and name,
compute capability, driver, torch, triton, fer_fast version and the sha256 of the sources the
fast paths run, as imported (:func:`source_files`: the loaded kernel modules' files in every
install mode, the fast-path modules, the native extension's binary and, in a checkout, its
sources).
Any change of these makes a new key, hence a new selfcheck. Files:
``$FER_FAST_VERDICT_DIR`` or ``$XDG_CACHE_HOME/fer_fast`` or ``~/.cache/fer_fast``, named
``verdict-<device type>-<first 16 hex digits of the key's sha256>.json``.

"auto" per op (``fer_fast.backends`` asks :func:`auto_order`):

- With a verdict: only backends whose every parity row passed there (``eager``, the reference,
  always), fastest measured first; the whole-stack (op ``stack``) backends only when measured
  faster than every passing block backend (both timed as the VGG's conv stack, forward and
  backward, at the training shape). A backend that failed is never chosen; naming it explicitly
  still runs it, with a warning naming the failed check.
- On CUDA without a verdict: the eager reference, with one warning saying how to get a verdict
  (``python -m fer_fast selfcheck`` or :func:`ensure_verdict`; the trainer calls the latter,
  which runs the selfcheck in a child process so that a faulting kernel cannot take the
  caller's CUDA context down).
- On the CPU without a verdict: the registry's own choices (native C++ augmentation, eager
  blocks; interpreter-only backends never, nor those registered ``verified_only``, such as the
  native C++ block).
- ``FER_FAST_SELFCHECK=0`` (or ``off``): no selfcheck is run and no verdict read; on CUDA "auto"
  takes the eager reference (and says so once), on the CPU the registry's choices.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import pkgutil
import platform
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from . import backends

__all__ = ["verdict_dir", "disabled", "source_files", "source_hash", "environment",
           "verdict_path", "load", "save", "malformed", "ensure_verdict", "selfcheck_timeout",
           "auto_order", "decisions", "cpu_precision", "prepare_auto", "passed_backends"]

_PACKAGE = Path(__file__).resolve().parent
#: modules whose code runs on the fast paths (their hash is part of the key)
_FAST_MODULES = ("augmentation", "block", "stack", "backends", "devices", "tolerances",
                 "selfcheck", "verdict")
#: seconds the trainer waits for the selfcheck child (``FER_FAST_SELFCHECK_TIMEOUT`` overrides)
DEFAULT_TIMEOUT_S = 1200
_cache: dict[str, dict | None] = {}
_warned: set = set()


def disabled() -> bool:
    """``FER_FAST_SELFCHECK`` is 0/off/false/no: no selfcheck runs, no verdict is read."""
    return os.environ.get("FER_FAST_SELFCHECK", "1").strip().lower() in ("0", "off", "false",
                                                                           "no")


def verdict_dir() -> Path:
    """``$FER_FAST_VERDICT_DIR``, else ``$XDG_CACHE_HOME/fer_fast``, else ``~/.cache/fer_fast``."""
    if os.environ.get("FER_FAST_VERDICT_DIR"):
        return Path(os.environ["FER_FAST_VERDICT_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "fer_fast"


def source_files() -> list[Path]:
    """The files whose code the fast paths run, as this process imports them: every module of
    ``fer_fast.kernels`` (wherever the install put it: ``kernels/`` of the checkout in an
    editable install), the fast-path modules, the native extension and, in a source checkout,
    its sources."""
    from . import kernels
    modules = [f"{kernels.__name__}.{m.name}" for m in pkgutil.iter_modules(kernels.__path__)]
    modules += [kernels.__name__] + [f"{__package__}.{m}" for m in _FAST_MODULES]
    files = [Path(importlib.import_module(m).__file__).resolve() for m in modules]
    native = sys.modules.get(f"{__package__}._C")
    files += [Path(native.__file__).resolve()] if native is not None else []
    csrc = _PACKAGE.parent / "csrc"
    files += [p for p in csrc.glob("*") if p.is_file()] if csrc.is_dir() else []
    return sorted(set(files))


def source_hash() -> str:
    """sha256 over :func:`source_files` (their names and contents)."""
    digest = hashlib.sha256()
    for path in source_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _driver() -> str:
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # no NVML (CPU machine, driver without it): the CUDA runtime's version
        return f"cuda {torch.version.cuda}" if torch.version.cuda else "none"


def environment(device: torch.device | str) -> dict:
    """What a verdict holds for: the device and the software (the selfcheck's ``env``)."""
    device = torch.device(device)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    from . import __version__
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name, capability = props.name, f"{props.major}.{props.minor}"
        driver = _driver()
    else:
        name, capability, driver = platform.processor() or platform.machine(), None, None
    return {"device_type": device.type, "gpu_name" if device.type == "cuda" else "cpu": name,
            "capability": capability, "driver": driver, "torch": torch.__version__,
            "triton": triton_version, "fer_fast": __version__, "python": platform.python_version(),
            "kernel_source_sha256": source_hash()}


def _key_hash(env: dict) -> str:
    key = {k: v for k, v in env.items() if k != "python"}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def verdict_path(device: torch.device | str, env: dict | None = None) -> Path:
    """Where the verdict for ``device`` with this software is (or would be) stored."""
    env = env or environment(device)
    return verdict_dir() / f"verdict-{env['device_type']}-{_key_hash(env)}.json"


def _cuda_usable() -> bool:
    return torch.cuda.is_available()


def _cache_key(device: torch.device) -> str:
    return f"{device.type}:{device.index or 0}" if device.type == "cuda" else device.type


def load(device: torch.device | str) -> dict | None:
    """The verdict for ``device`` (read once per process), or None."""
    device = torch.device(device)
    if device.type == "cuda" and not _cuda_usable():
        return None  # no such device here: nothing was verified on it
    slot = _cache_key(device)
    if slot not in _cache:
        path = verdict_path(device)
        try:
            result = json.loads(path.read_text())
        except OSError:
            result = None
        except ValueError as err:
            result = _ignored(path, f"not JSON ({err})")
        else:
            why = malformed(result)
            result = _ignored(path, why) if why else {**result, "path": str(path)}
        _cache[slot] = result
    return _cache[slot]


def malformed(result) -> str | None:
    """Why ``result`` is not a verdict "auto" can trust (None when it is): an object whose
    ``rows`` are objects with a string ``op``, ``backend`` and ``check``, a boolean ``passed``
    and a numeric or null ``time_ms``."""
    if not isinstance(result, dict) or not isinstance(result.get("rows"), list):
        return "not an object with a list of rows"
    for i, row in enumerate(result["rows"]):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str)
                                                for k in ("op", "backend", "check")):
            return f"row {i} lacks op, backend or check"
        if not isinstance(row.get("passed"), bool):
            return f"row {i}: passed is {row.get('passed')!r}, not true or false"
        time_ms = row.get("time_ms")
        if time_ms is not None and (isinstance(time_ms, bool)
                                    or not isinstance(time_ms, (int, float))):
            return f"row {i}: time_ms is {time_ms!r}, not a number"
    return None


def _ignored(path: Path, why: str) -> None:
    """A verdict file that cannot be trusted counts as absent (said once on stderr)."""
    if ("malformed", str(path)) not in _warned:
        _warned.add(("malformed", str(path)))
        print(f"fer_fast: ignoring the selfcheck verdict {path}: {why}; it counts as absent "
              f"(the selfcheck runs again where a verdict is needed)", file=sys.stderr)
    return None


def save(device: torch.device | str, result: dict) -> Path:
    """Store ``result`` (a selfcheck JSON) as the verdict for ``device``; returns the path."""
    device = torch.device(device)
    path = verdict_path(device, result.get("env"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".verdict-", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)
    _cache.pop(_cache_key(device), None)
    return path


def _failed_checks(verdict: dict, op: str) -> dict[str, list[str]]:
    failed: dict[str, list[str]] = {}
    for row in verdict.get("rows", []):
        if row["op"] == op and not row["passed"]:
            failed.setdefault(row["backend"], []).append(row["check"])
    return failed


def passed_backends(verdict: dict, op: str) -> set[str]:
    """Backends of ``op`` with at least one parity row in ``verdict`` and none failed."""
    checked = {r["backend"] for r in verdict.get("rows", []) if r["op"] == op
               and r["check"] != "time"}
    return checked - set(_failed_checks(verdict, op))


def _times(verdict: dict, op: str) -> dict[str, float]:
    return {r["backend"]: r["time_ms"] for r in verdict.get("rows", [])
            if r["op"] == op and r["check"] == "time" and r.get("time_ms") is not None}


def _warn_once(key, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def auto_order(op: str, device: torch.device, candidates: list[str]) -> list[str]:
    """The backends "auto" may take for ``op`` on ``device``, best first, out of ``candidates``
    (the registry's, best first by priority); see the module docstring."""
    if disabled():
        if device.type != "cuda":
            return [n for n in candidates if not backends.verified_only(op, n)]
        _warn_once(("disabled", op), f"FER_FAST_SELFCHECK={os.environ['FER_FAST_SELFCHECK']}: "
                   f"backend 'auto' of {op!r} takes the eager reference on {device}")
        return [n for n in candidates if n == "eager"]
    verdict = load(device)
    if verdict is None:
        if device.type != "cuda":
            return [n for n in candidates if not backends.verified_only(op, n)]
        _warn_once(("none", _cache_key(device)),
                   f"no selfcheck verdict for {device} in {verdict_dir()}: backend 'auto' takes "
                   f"the eager reference; run `python -m fer_fast selfcheck --device {device}` "
                   f"or call fer_fast.selfcheck.ensure_verdict() to verify and time the fast "
                   f"backends here")
        return [n for n in candidates if n == "eager"]
    return _order(verdict, op, candidates)


def _order(verdict: dict, op: str, candidates: list[str]) -> list[str]:
    """``candidates`` that passed in ``verdict`` (eager always), fastest measured first; a
    whole-stack backend only where it beats every passing block backend."""
    passed, times = passed_backends(verdict, op), _times(verdict, op)
    ok = [n for n in candidates if n == "eager" or n in passed]
    inf = float("inf")
    ok.sort(key=lambda n: times.get(n, inf))  # stable: unmeasured keep the registry's order
    if op == "stack":
        block = _times(verdict, "block")
        best_block = min((t for n, t in block.items()
                          if n == "eager" or n in passed_backends(verdict, "block")), default=inf)
        ok = [n for n in ok if times.get(n, inf) < best_block]
    return ok


def decisions(result: dict, device: torch.device | str) -> list[str]:
    """One line per op of ``result`` (a selfcheck result or verdict): what "auto" takes for it
    on ``device`` by that result, and why the other backends are not taken."""
    device = torch.device(device)
    lines = []
    for op in dict.fromkeys(r["op"] for r in result["rows"]):
        if op == "precision":
            lines.append(f"auto precision (CPU training): {_precision_choice(result)}: "
                         + _precision_why(result))
            continue
        eligible = backends.eligible(op, device)
        order, failed, times = _order(result, op, eligible), _failed_checks(result, op), \
            _times(result, op)
        choice = order[0] if order else None
        if choice is None:
            taken = "nothing (the VGG takes the best block backend)"
        elif choice in times and len([n for n in order if n in times]) > 1:
            taken = f"{choice}: the fastest that passed ({times[choice]:.3g} ms)"
        elif choice in times:
            taken = f"{choice}: passed, {times[choice]:.3g} ms"
        else:
            taken = f"{choice}: passed, registry priority (not timed)"
        why = []
        for name in backends.available(op, device):
            if name == choice:
                continue
            if name in failed:
                why.append(f"{name} failed {', '.join(failed[name])}")
            elif name not in eligible:
                why.append(f"{name} is never taken on {device.type}")
            elif name not in order:
                why.append(f"{name} is slower than the best block backend")
            else:
                why.append(f"{name} is slower")
        lines.append(f"auto {op}: {taken}" + (f"; {'; '.join(why)}" if why else ""))
    return lines


def _precision_choice(verdict: dict) -> str | None:
    """"bf16" where the CPU training path in bf16 passed and was faster than fp32 in
    ``verdict``, "fp32" where it failed or was slower, None where it was not checked."""
    if not any(r["op"] == "precision" for r in verdict["rows"]):
        return None
    times = _times(verdict, "precision")
    inf = float("inf")
    faster = times.get("bf16", inf) < times.get("fp32", inf)
    return "bf16" if "bf16" in passed_backends(verdict, "precision") and faster else "fp32"


def _precision_why(verdict: dict) -> str:
    times, failed = _times(verdict, "precision"), _failed_checks(verdict, "precision")
    if failed:
        return f"bf16 failed {', '.join(failed['bf16'])}"
    if not {"fp32", "bf16"} <= set(times):
        return "bf16 + channels_last passed but was not timed"
    return (f"bf16 + channels_last passed, a training step {times['fp32'] / times['bf16']:.2f}x "
            f"the speed of fp32 ({times['bf16']:.3g} vs {times['fp32']:.3g} ms)")


def cpu_precision() -> str | None:
    """The precision ``--precision auto`` trains in on this CPU by its verdict: "bf16" where
    bf16 autocast + channels_last passed the selfcheck's training parity here and was faster
    than fp32, "fp32" where not; None without a verdict (or one without that check)."""
    record = None if disabled() else load("cpu")
    return None if record is None else _precision_choice(record)


def check_explicit(op: str, name: str, device: torch.device) -> None:
    """Warn (once) when ``name`` is asked for by name although it failed the selfcheck here."""
    if disabled() or name == "eager":
        return
    verdict = load(device)
    failed = _failed_checks(verdict, op).get(name) if verdict else None
    if failed:
        _warn_once(("explicit", op, name, _cache_key(device)),
                   f"backend {name!r} of op {op!r} FAILED the selfcheck on {device} "
                   f"({', '.join(failed)}; verdict {verdict['path']}); running it as asked")


backends.set_auto_policy(auto_order, check_explicit)


def selfcheck_timeout() -> float:
    """Seconds the selfcheck child may run: ``FER_FAST_SELFCHECK_TIMEOUT``, else
    ``DEFAULT_TIMEOUT_S``; anything but a positive number is a user error."""
    from .cli import UserError
    text = os.environ.get("FER_FAST_SELFCHECK_TIMEOUT", "").strip()
    if not text:
        return float(DEFAULT_TIMEOUT_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise UserError(f"FER_FAST_SELFCHECK_TIMEOUT={text!r}: give the seconds the selfcheck "
                        f"may run, a number > 0 (default {DEFAULT_TIMEOUT_S})")
    return seconds


def _failure_verdict(device: torch.device, why: str) -> dict:
    """A verdict for a selfcheck that did not finish: every fast backend failed there."""
    rows = [{"op": op, "backend": name, "check": "selfcheck child", "passed": False,
             "max_error": None, "tolerance": None, "time_ms": None, "speedup": None,
             "detail": why}
            for op in ("augment", "block", "stack")
            for name in backends.available(op, device) if name != "eager"]
    return {"device": str(device), "env": environment(device), "rows": rows, "passed": False}


def ensure_verdict(device: torch.device | str, *, timeout: float | None = None) -> tuple[dict, str]:
    """The verdict for ``device``, running ``python -m fer_fast selfcheck --quick`` in a child
    process first when there is none; returns (verdict, what happened in one line). A child
    that crashes, faults or outlives ``timeout`` (default ``FER_FAST_SELFCHECK_TIMEOUT`` or
    1200 s) is recorded as a verdict in which every fast backend failed."""
    device = torch.device(device)
    timeout = selfcheck_timeout() if timeout is None else timeout  # a bad value: said at once
    verdict = load(device)
    if verdict is not None:
        return verdict, f"selfcheck verdict for {device}: {verdict['path']} (cached)"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "selfcheck.json"
        cmd = [sys.executable, "-m", "fer_fast", "selfcheck", "--device", str(device), "--quick",
               "--json", str(out)]
        try:
            child = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            code = child.returncode
            if code < 0:
                why = f"selfcheck child killed by {signal.Signals(-code).name}"
            elif code not in (0, 1) or not out.exists():
                why = f"selfcheck child exited with status {code}: {child.stderr.strip()[-300:]}"
            else:
                why = None
        except subprocess.TimeoutExpired:
            why = f"selfcheck child ran past the {timeout:.0f} s limit"
        result = json.loads(out.read_text()) if why is None else _failure_verdict(device, why)
    path = save(device, result)
    verdict = load(device)
    state = "passed" if result["passed"] else (why or "some backends failed parity")
    return verdict, (f"ran the selfcheck for {device} in a child process: {state}; verdict "
                     f"{path}")


def prepare_auto(device: torch.device, *, needed: bool) -> dict:
    """For a training run: make sure "auto" has a verdict to decide by on ``device`` (running
    the selfcheck child when needed), print what happened in one line, and return what
    config.json records: the verdict file, what happened, and what "auto" takes and why."""
    device = torch.device(device)
    if disabled():
        note, path = "FER_FAST_SELFCHECK disables the selfcheck: 'auto' takes eager-safe backends", None
    elif device.type != "cuda" and load(device) is None:
        note, path = f"no selfcheck verdict needed on {device}: 'auto' takes the registry's CPU choices", None
    elif needed:
        verdict, note = ensure_verdict(device)
        path = verdict["path"]
    else:
        verdict = load(device)
        note, path = "no 'auto' backend asked for", verdict["path"] if verdict else None
    if needed and (device.type == "cuda" or path is not None):
        print(f"fer_fast.train: {note}", flush=True)
    from .stack import resolve_model_backend
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = resolve_model_backend("auto", device)
        augment = backends.auto_choice("augment", device)
    verdict = load(device) if not disabled() else None
    why = ("fastest measured of those that passed the selfcheck here" if verdict
           else "eager reference (no verdict)" if device.type == "cuda"
           else "registry priority (CPU)")
    failed = {op: sorted(_failed_checks(verdict, op)) for op in ("augment", "block", "stack")
              } if verdict else {}
    return {"verdict": path, "selfcheck": note, "auto_model_backend": model,
            "auto_augment_backend": augment, "why": why, "failed": failed}
