"""Every Triton kernel of the project, with every autotune config, compiles ahead of time for
sm_90a, sm_80 and sm_89 (each spec on the targets it is offered on) with no register spills and
within the target's shared memory per block; GEMM kernels use HGMMA on sm_90a.

Kernel modules list their specialisations in ``AOT_SPECS`` (see tests/aot.py); modules of jit
helpers only (``bn_stats``) are compiled inside the kernels that call them. Compilation runs
in a subprocess without TRITON_INTERPRET, since interpreted kernels cannot be compiled.
"""
import json
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fer_fast.kernels
from aot import SHARED_LIMIT

KERNELS_DIR = Path(fer_fast.kernels.__path__[0])
SOURCES = {f"fer_fast.kernels.{m.name}": (KERNELS_DIR / f"{m.name}.py").read_text()
           for m in pkgutil.iter_modules(fer_fast.kernels.__path__)}
#: modules that define launchable kernels (``def name_kernel(``) and so must list AOT specs
MODULES = sorted(m for m, src in SOURCES.items() if re.search(r"^def \w+_kernel\(", src, re.M))


def _compile(module: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("aot.py")), module],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_every_kernel_module_lists_aot_specs():
    assert MODULES, "no kernel modules found"
    for module in MODULES:
        assert "AOT_SPECS" in SOURCES[module], f"{module} defines no AOT_SPECS"


def test_conv_config_targets_are_the_aot_targets():
    """The GPU classes the conv launchers pick configs for are the ones compiled here, with the
    same shared-memory limits, and every config names only those."""
    from fer_fast.kernels import conv, conv_configs
    assert conv_configs.TARGET_SHARED == SHARED_LIMIT
    for spec in conv.AOT_SPECS:
        assert spec["targets"] and set(spec["targets"]) <= set(SHARED_LIMIT), spec["name"]


@pytest.mark.parametrize("module", MODULES)
def test_aot_compiles_without_spills(module):
    rows = _compile(module)
    assert rows, f"{module}: AOT_SPECS is empty"
    for row in rows:
        where = f"{module}:{row['name']} on {row['target']}"
        assert "error" not in row, f"{where} failed to compile: {row.get('error')}"
        assert row["spill_bytes"] == 0, f"{where} spills {row['spill_bytes']} bytes"
        limit = SHARED_LIMIT[row["target"]]
        assert row["shared"] <= limit, (f"{where} needs {row['shared']} bytes of shared memory, "
                                        f"more than the {limit} a block may use")
        if row["expect_hgmma"] and row["target"] == "sm_90a":
            assert row["hgmma"], f"{where} does not use HGMMA (wgmma) on sm_90a"
