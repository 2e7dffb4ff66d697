"""Launch configs of the implicit-GEMM conv kernels (``conv``): the tables per GPU class, the
per-shape tuner, and the ahead-of-time compile specs that check every config (tests/aot.py).

GPU classes are the AOT targets, told apart by shared memory per block (``TARGET_SHARED``):
``sm_90a`` (Hopper: H100/H200, wgmma), ``sm_80`` (A100-class, 163 KB) and ``sm_89`` (99 KB:
RTX 3090 / 4090 / 5090, sm_86 / sm_89 / sm_120). A config lists the targets it is offered on;
the AOT test compiles it for each of them and asserts no spills and shared memory within the
target's limit. A device gets the configs of the largest class that fits it (``device_target``).

The tuner (``tuned``) times each candidate once per (GPU model, shape key) and keeps the
fastest.
"""
from __future__ import annotations

import torch
import triton
from triton.runtime.errors import OutOfResources

from . import is_interpreter

__all__ = ["TARGET_SHARED", "FWD_CONFIGS", "FWD_POOL_CONFIGS", "DGRAD_CONFIGS",
           "DGRAD_POOL_CONFIGS", "WGRAD_CONFIGS", "SMALL_K_CONFIGS", "FWD_CONFIGS_FP32",
           "FWD_POOL_CONFIGS_FP32", "DGRAD_CONFIGS_FP32", "DGRAD_POOL_CONFIGS_FP32",
           "WGRAD_CONFIGS_FP32", "SMALL_K_CONFIGS_FP32", "INTERPRETER_CONFIG", "device_target",
           "candidates", "aligned", "tuned", "cfg_name", "aot_spec", "ALIGNED_ARGS"]

#: shared memory per block (bytes, opt-in maximum) of each AOT target's GPUs
TARGET_SHARED = {"sm_90a": 232448, "sm_80": 166912, "sm_89": 101376}

_ALL = ("sm_90a", "sm_80", "sm_89")
_BIG = ("sm_90a", "sm_80")  # too much shared memory (or spills) on 99 KB GPUs
_HOPPER = ("sm_90a",)
_SMALL_SHARED = ("sm_89",)  # smaller tiles where the others do not fit 99 KB
_TRITON = tuple(int(part) for part in triton.__version__.split(".")[:2])


def _before(version, older, targets):
    """``older`` on Triton releases before ``version`` (where the config spills), else
    ``targets``: the tables follow the compiler, each checked by the AOT test of its release."""
    return older if _TRITON < version else targets


def _cfg(bm, bn, bk, warps, stages, targets=_ALL):
    """A launch config; ``targets``: where it fits and does not spill (checked by the AOT test)."""
    return dict(BM=bm, BN=bn, BK=bk, num_warps=warps, num_stages=stages, targets=targets)


#: GPU candidates per kernel, all in the AOT specs. The K-aligned ones (every table but the
#: SMALL_K ones) are offered only when ``aligned`` holds, which is what the AOT specs assume
#: through their divisibility hints; BK is the K step of the forward and data gradient and the
#: K rows of the weight-gradient tile (whose reduction step over N*H*W is BM).
#: Tables for fp16 / bf16 (2-byte operands, HGMMA on sm_90a).
FWD_CONFIGS = (_cfg(128, 128, 64, 8, 3), _cfg(128, 128, 64, 8, 4, _BIG),
               _cfg(128, 256, 64, 8, 3, _HOPPER),
               _cfg(256, 128, 32, 8, 3, _before((3, 9), _HOPPER, _BIG)),
               _cfg(128, 64, 64, 8, 3), _cfg(256, 64, 32, 8, 4))
FWD_POOL_CONFIGS = (_cfg(128, 128, 64, 8, 3, _HOPPER), _cfg(128, 256, 32, 8, 3, _HOPPER),
                    _cfg(128, 64, 32, 4, 3))
DGRAD_CONFIGS = (_cfg(128, 128, 64, 8, 3, _HOPPER), _cfg(128, 128, 64, 8, 4, _HOPPER),
                 _cfg(256, 64, 32, 8, 4, _BIG), _cfg(128, 64, 64, 8, 3))
DGRAD_POOL_CONFIGS = (_cfg(64, 64, 64, 8, 3), _cfg(64, 64, 64, 8, 4))
WGRAD_CONFIGS = (_cfg(64, 128, 128, 8, 3, _HOPPER), _cfg(64, 128, 64, 8, 3, _BIG),
                 _cfg(64, 64, 128, 8, 3, _HOPPER), _cfg(64, 64, 64, 4, 3, _BIG),
                 _cfg(64, 64, 32, 4, 3, _SMALL_SHARED))
#: first layer / odd channel counts: K decoded per element, padded to the tl.dot minimum
SMALL_K_CONFIGS = (_cfg(64, 64, 16, 8, 3, _before((3, 9), (), ("sm_90a", "sm_89"))),
                   _cfg(32, 32, 16, 4, 3, _before((3, 9), _ALL, ("sm_80",))))
#: fp32 (exact "ieee" FMA dot, 4-byte tiles): smaller tiles than fp16's.
FWD_CONFIGS_FP32 = (_cfg(64, 64, 32, 4, 3, _HOPPER), _cfg(128, 64, 32, 8, 3, _HOPPER),
                    _cfg(64, 128, 32, 8, 3, _before((3, 9), ("sm_80", "sm_89"), _ALL)),
                    _cfg(128, 128, 32, 8, 2, _BIG))
FWD_POOL_CONFIGS_FP32 = (_cfg(64, 128, 32, 8, 3, _BIG), _cfg(128, 128, 32, 8, 2, _BIG),
                         _cfg(64, 64, 32, 4, 3, _SMALL_SHARED))
DGRAD_CONFIGS_FP32 = (_cfg(64, 128, 32, 8, 3, _before((3, 9), _HOPPER, _BIG)),
                      _cfg(32, 64, 32, 4, 3))
DGRAD_POOL_CONFIGS_FP32 = (_cfg(64, 32, 32, 4, 3, _BIG),
                           _cfg(32, 32, 32, 4, 3, _before((3, 9), ("sm_80",), _ALL)),
                           _cfg(32, 32, 32, 4, 2, _before((3, 9), ("sm_90a", "sm_89"), ())))
WGRAD_CONFIGS_FP32 = (_cfg(16, 64, 64, 4, 3), _cfg(32, 64, 32, 4, 3))
SMALL_K_CONFIGS_FP32 = (_cfg(32, 32, 16, 4, 3),)
#: under the interpreter: one small config (BN narrowed to 16 for C_out <= 16, ``candidates``)
INTERPRETER_CONFIG = _cfg(64, 32, 16, 4, 1)


def _max_shared(device: torch.device) -> int:
    """Shared memory per block the device allows (opt-in maximum), as Triton checks it."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]


def device_target(device: torch.device) -> str:
    """The AOT target whose configs this GPU runs: the largest class whose shared memory per
    block it has (sm_90a only from compute capability 9 on). A GPU smaller than every class
    (64 KB) still gets sm_89's; the tuner skips those it rejects."""
    shared = _max_shared(device)
    if torch.cuda.get_device_capability(device)[0] >= 9 and shared >= TARGET_SHARED["sm_90a"]:
        return "sm_90a"
    return "sm_80" if shared >= TARGET_SHARED["sm_80"] else "sm_89"


def aligned(x: torch.Tensor, c_out: int, bk: int) -> bool:
    """What the K-aligned AOT specs assume (``ALIGNED_ARGS``): every K step is one tap of BK
    contiguous channels, and C_in, C_out and the NHWC strides are multiples of 16."""
    c_in = x.shape[3]
    return x.is_contiguous() and c_in % bk == 0 and c_in % 16 == 0 and c_out % 16 == 0


def candidates(table, x: torch.Tensor, c_out: int) -> list[dict]:
    """Configs for this shape and GPU: the table's K-aligned ones offered on the device's
    target when ``aligned`` holds for their BK, else the generic small-K one of x's dtype."""
    if is_interpreter():
        return [dict(INTERPRETER_CONFIG, BN=16 if c_out <= 16 else 32)]
    target = device_target(x.device)
    ok = [c for c in table if target in c["targets"] and aligned(x, c_out, c["BK"])]
    small_k = SMALL_K_CONFIGS_FP32 if x.dtype == torch.float32 else SMALL_K_CONFIGS
    return ok or [c for c in small_k if target in c["targets"]] or list(small_k)


def _device_signature(device: torch.device) -> tuple:
    """What a tuned config depends on besides the shape: the GPU model and capability."""
    if device.type != "cuda":
        return (device.type,)
    return (torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device))


_TUNED: dict = {}


def tuned(key: tuple, device: torch.device, configs: list[dict], launch):
    """Run ``launch(cfg, final=True)`` with the fastest of ``configs`` for (``device``'s model
    and capability, ``key``), timing each once per key with ``final=False``.

    ``launch`` must be idempotent (every output overwritten, nothing accumulated) and, when not
    ``final``, leave no other trace (no running-statistics update), so that the timing runs are
    invisible. A config the GPU rejects (OutOfResources: shared memory, registers) is skipped,
    also a cached one (the shape is then tuned again without it); only when none fits is it an
    error. During CUDA graph capture nothing is timed (timing synchronises, which capture
    forbids): an untuned key launches the first config that fits, and is not cached. To capture
    tuned kernels, run the captured calls once eagerly first (the warm-up torch.cuda.graph asks
    for anyway): that compiles and tunes every shape.

    Not ``triton.autotune``: its timing runs would update the running statistics (restoring
    them with ``restore_value`` costs a copy per run, and it neither keys its cache by GPU model,
    falls back from a cached config that no longer fits, nor avoids timing under capture).
    """
    key = (_device_signature(device), *key)
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    rejected = []
    cached = _TUNED.get(key)
    if cached is not None:
        try:
            return launch(cached, final=True)
        except OutOfResources as exc:
            rejected.append(f"{cfg_name(cached)} (cached): {exc}")
            del _TUNED[key]
            configs = [c for c in configs if c != cached]
    ranked = list(configs)
    if not capturing and len(configs) > 1:
        times = {}
        for i, c in enumerate(configs):
            try:
                times[i] = triton.testing.do_bench(lambda c=c: launch(c, final=False), warmup=5,
                                                   rep=20)
            except OutOfResources as exc:
                rejected.append(f"{cfg_name(c)}: {exc}")
        ranked = [configs[i] for i in sorted(times, key=times.__getitem__)]
    for cfg in ranked:
        try:
            out = launch(cfg, final=True)
        except OutOfResources as exc:
            rejected.append(f"{cfg_name(cfg)}: {exc}")
            continue
        if not capturing:
            _TUNED[key] = cfg
        return out
    raise RuntimeError(f"conv3x3 ({key[1]}, shape key {key[2:]}): no config fits this GPU "
                       f"({key[0]}): " + "; ".join(rejected))


def cfg_name(cfg: dict) -> str:
    return f"BM{cfg['BM']}_BN{cfg['BN']}_BK{cfg['BK']}_w{cfg['num_warps']}_s{cfg['num_stages']}"


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (tests/aot.py)

#: integer arguments that are multiples of 16 whenever a K-aligned config is launched
#: (``aligned``: C_in % BK == 0, C_out % 16 == 0, contiguous NHWC, so every stride too)
ALIGNED_ARGS = ("C_in", "C_out", "sxn", "sxh", "sxw", "C_dy", "C_dx")
_POINTERS = {"x_ptr", "w_ptr", "b_ptr", "y_ptr", "dy_ptr", "dz_ptr", "gy_ptr", "ey_ptr", "out_ptr"}
_FP32_POINTERS = {"scale_ptr", "shift_ptr", "part_ptr", "dw_ptr", "db_ptr", "gcoef_ptr",
                  "ecoef_ptr", "gamma_ptr", "beta_ptr", "rmean_ptr", "rvar_ptr", "coef_ptr",
                  "gpart_ptr", "sums_ptr", "pcoef_ptr"}
_FP32_SCALARS = {"eps", "momentum", "inv_count"}


def aot_spec(name: str, fn, constexprs: dict, cfg: dict, group: int, dtype: str = "fp16"):
    """The AOT spec of kernel ``fn`` at ``cfg`` with ``constexprs`` and operands of ``dtype``;
    fp32 specs get the launcher's exact dot (no HGMMA), and so do tiles of fewer than 64 rows
    (a wgmma tile is 64 rows per warpgroup); each spec is checked on the targets its config is
    offered on."""
    constexprs = dict(constexprs, BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"])
    if "GROUP" in fn.arg_names:
        constexprs["GROUP"] = group
    if "sxc" in fn.arg_names:  # as the JIT specialises a contiguous NHWC input
        constexprs["sxc"] = 1
    if dtype == "fp32":
        constexprs["DOT_PREC"] = "ieee"
    signature = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in _POINTERS:
            signature[arg] = f"*{dtype}"
        elif arg in _FP32_POINTERS:
            signature[arg] = "*fp32"
        elif arg == "count_ptr":
            signature[arg] = "*i32"
        elif arg in _FP32_SCALARS:
            signature[arg] = "fp32"
        else:
            signature[arg] = "i32"
    return {"name": name, "fn": fn, "signature": signature, "constexprs": constexprs,
            "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
            "hgmma": dtype != "fp32" and cfg["BM"] >= 64,
            "divisible": ALIGNED_ARGS if constexprs["K_ALIGNED"] else (),
            "targets": cfg["targets"]}
