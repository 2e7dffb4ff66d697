"""Every Triton kernel of the project, with every autotune config, compiles ahead of time for
sm_90a and sm_80 (each spec on the targets it is offered on) with no register spills and within
the target's shared memory per block; GEMM kernels use HGMMA on sm_90a.

Kernel modules list their specialisations in ``AOT_SPECS`` (see tests/aot.py). Compilation runs
in a subprocess without TRITON_INTERPRET, since interpreted kernels cannot be compiled.
"""
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import fer_fast.kernels
from aot import SHARED_LIMIT

MODULES = sorted(f"fer_fast.kernels.{m.name}" for m in pkgutil.iter_modules(fer_fast.kernels.__path__))


def _compile(module: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("aot.py")), module],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_every_kernel_module_lists_aot_specs():
    assert MODULES, "no kernel modules found"
    for module in MODULES:
        src = Path(fer_fast.kernels.__path__[0], module.rsplit(".", 1)[1] + ".py").read_text()
        assert "AOT_SPECS" in src, f"{module} defines no AOT_SPECS"


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
