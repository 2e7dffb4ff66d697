"""The one place that chooses an implementation ("backend") per op.

Every op family (``"augment"``, ``"block"``, ...) registers its implementations here with a
predicate telling on which devices each runs and a priority; callers ask ``resolve(op, backend,
device)`` with an explicit backend name or ``"auto"`` (the highest-priority backend available
for the device whose optional ``auto`` predicate allows it: a backend that runs somewhere only
for testing, such as a Triton kernel under the CPU interpreter, is never chosen by "auto").
The eager PyTorch reference of each op is registered as ``"eager"`` and is always available:
it is the oracle that every fast backend is tested against. Where a policy is set
(``fer_fast.verdict``: the selfcheck's cached verdict), it filters and orders "auto"'s
candidates and is told when a backend is asked for by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["register", "choose", "resolve", "available", "auto_choice", "names", "eligible",
           "set_auto_policy", "verified_only"]


@dataclass(frozen=True)
class _Backend:
    fn: Callable
    supports: Callable[[torch.device], bool]
    priority: int
    auto: Callable[[torch.device], bool]
    verified_only: bool = False  # "auto" takes it only where a selfcheck verdict passed it


_REGISTRY: dict[str, dict[str, _Backend]] = {}
#: (order(op, device, candidates) -> candidates, on_explicit(op, name, device)) or None
_POLICY: tuple[Callable, Callable] | None = None


def set_auto_policy(order: Callable, on_explicit: Callable) -> None:
    """Let ``order`` filter and reorder "auto"'s candidates (best first), and ``on_explicit``
    see every backend asked for by name."""
    global _POLICY
    _POLICY = (order, on_explicit)


def register(op: str, name: str, fn: Callable, *, supports: Callable[[torch.device], bool],
             priority: int = 0, auto: Callable[[torch.device], bool] | None = None,
             verified_only: bool = False) -> None:
    """Register ``fn`` as backend ``name`` of ``op``; ``supports(device)`` says where it runs,
    ``auto(device)`` (default: ``supports``) where "auto" may choose it; ``verified_only``:
    only where the selfcheck's verdict has it passing (the policy enforces it)."""
    _REGISTRY.setdefault(op, {})[name] = _Backend(fn, supports, priority, auto or supports,
                                                  verified_only)


def verified_only(op: str, name: str) -> bool:
    """Whether "auto" may take backend ``name`` of ``op`` only with a verdict passing it."""
    return _REGISTRY[op][name].verified_only


def names(op: str) -> list[str]:
    """All registered backend names of ``op`` (available or not)."""
    if op not in _REGISTRY:
        raise KeyError(f"unknown op {op!r}; known ops: {sorted(_REGISTRY)}")
    return sorted(_REGISTRY[op])


def available(op: str, device: torch.device | str) -> list[str]:
    """Backends of ``op`` that run on ``device``, best first."""
    device = torch.device(device)
    impls = _REGISTRY.get(op, {})
    ok = [(b.priority, n) for n, b in impls.items() if b.supports(device)]
    return [n for _, n in sorted(ok, reverse=True)]


def eligible(op: str, device: torch.device | str) -> list[str]:
    """Backends of ``op`` that "auto" may consider on ``device`` (before any policy), best first."""
    device = torch.device(device)
    impls = _REGISTRY.get(op, {})
    return [n for n in available(op, device) if impls[n].auto(device)]


def auto_choice(op: str, device: torch.device | str) -> str | None:
    """The backend "auto" takes for ``op`` on ``device`` (None when none may be chosen)."""
    device = torch.device(device)
    best = eligible(op, device)
    if _POLICY is not None:
        best = _POLICY[0](op, device, best)
    return best[0] if best else None


def constant_result(fn: Callable) -> Callable:
    """``torch.compiler.assume_constant_result``: torch.compile takes ``fn``'s result while tracing
    as a constant. The same mark on ``fn`` as torch's decorator (a test compares them), without
    the import of torch._dynamo that it makes: over a second of the start of every fer_fast
    process, most of which never compile."""
    fn._dynamo_marked_constant = True
    return fn


@constant_result
def choose(op: str, backend: str, device: torch.device) -> str:
    """The name of the backend :func:`resolve` returns. torch.compile calls it once while
    tracing and takes its result as a constant: the policy reads the verdict file, which a
    traced forward cannot (``torch.compile(fullgraph=True)`` works from a process's first call)."""
    impls = _REGISTRY.get(op)
    if impls is None:
        raise KeyError(f"unknown op {op!r}; known ops: {sorted(_REGISTRY)}")
    if backend == "auto":
        best = auto_choice(op, device)
        if best is None:
            raise RuntimeError(f"no backend of op {op!r} runs on device {device}")
        return best
    if backend not in impls:
        raise ValueError(f"unknown backend {backend!r} for op {op!r}; choose one of "
                         f"{['auto'] + sorted(impls)}")
    if not impls[backend].supports(device):
        raise RuntimeError(f"backend {backend!r} of op {op!r} is not available on device {device}; "
                           f"available there: {available(op, device)}")
    if _POLICY is not None:
        _POLICY[1](op, backend, device)
    return backend


def resolve(op: str, backend: str, device: torch.device | str) -> Callable:
    """The implementation of ``op`` named ``backend`` ("auto": the best one) for ``device``."""
    return _REGISTRY[op][choose(op, backend, torch.device(device))].fn
