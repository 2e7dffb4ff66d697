"""Ahead-of-time compilation of Triton kernels for GPUs this machine does not have.

``compile_kernel`` compiles one kernel specialisation with Triton's AOT path
(``triton.compile(ASTSource(...), target=GPUTarget(...))``) and reads the cubin with the
``cuobjdump`` / ``nvdisasm`` bundled in the triton wheel: registers, spill bytes (local memory /
stack) and the SASS; ``shared`` is the kernel's shared memory (Triton's metadata), which must not
exceed the target's per-block limit (``SHARED_LIMIT``) or the launch fails with OutOfResources. Used by the AOT tests of every kernel module.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

#: (name, capability): sm_90a (Hopper, wgmma), sm_80 (A100) and sm_89 (RTX 4090; it stands for
#: the 99 KB GPUs: sm_86 and sm_120 compile to the same mma.sync code under the same limit)
TARGETS = (("sm_90a", 90), ("sm_80", 80), ("sm_89", 89))
#: opt-in shared memory per block (bytes): 227 KiB on H100 (sm_90), 163 KiB on A100 (sm_80),
#: 99 KiB on sm_86 / sm_89 / sm_120
SHARED_LIMIT = {"sm_90a": 232448, "sm_80": 166912, "sm_89": 101376}
_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@dataclass
class Compiled:
    registers: int
    spill_bytes: int  # LOCAL + STACK from cuobjdump -res-usage
    shared: int  # bytes of shared memory per block (static + dynamic)
    sass: str | None  # None unless disassembled
    ptx: str

    def uses(self, opcode: str) -> bool:
        assert self.sass is not None, "compiled without disassemble=True"
        return re.search(rf"\b{opcode}\b", self.sass) is not None


def compile_kernel(fn, signature: dict, constexprs: dict, capability: int, *,
                   num_warps: int = 4, num_stages: int = 3, divisible: tuple = (),
                   disassemble: bool = False) -> Compiled:
    """Compile ``fn`` (a @triton.jit function, possibly wrapped by autotune/heuristics).

    Like the JIT's specialisation for torch allocations, every pointer argument is taken to be
    16-byte aligned; integer arguments named in ``divisible`` are taken to be multiples of 16.
    ``disassemble``: also read the SASS (nvdisasm: the slowest step, so only where it is looked
    at).
    """
    while not isinstance(fn, triton.runtime.jit.JITFunction) and hasattr(fn, "fn"):
        fn = fn.fn
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if name in divisible or str(signature.get(name, "")).startswith("*")}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    kernel = triton.compile(src, target=GPUTarget("cuda", capability, 32), options=options)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        with open(cubin, "wb") as f:
            f.write(kernel.asm["cubin"])
        usage = subprocess.run([str(_BIN / "cuobjdump"), "-res-usage", cubin], check=True,
                               capture_output=True, text=True).stdout
        sass = subprocess.run([str(_BIN / "nvdisasm"), "-c", cubin], check=True,
                              capture_output=True, text=True).stdout if disassemble else None
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    spills = int(re.search(r"STACK:(\d+)", usage).group(1)) + int(re.search(r"LOCAL:(\d+)",
                                                                            usage).group(1))
    return Compiled(regs, spills, kernel.metadata.shared, sass, kernel.asm["ptx"])


def _specs(module_name: str):
    import importlib
    return importlib.import_module(module_name).AOT_SPECS


def _compile_row(module_name: str, index: int, target: str, cap: int) -> dict:
    """Compile spec ``index`` of MODULE.AOT_SPECS for one target (a worker process's task)."""
    spec = _specs(module_name)[index]
    row = {"name": spec["name"], "target": target}
    expect_hgmma = bool(spec.get("hgmma")) and target == "sm_90a"
    try:
        k = compile_kernel(spec["fn"], spec["signature"], spec["constexprs"], cap,
                           num_warps=spec.get("num_warps", 4),
                           num_stages=spec.get("num_stages", 3),
                           divisible=tuple(spec.get("divisible", ())), disassemble=expect_hgmma)
        row.update(registers=k.registers, spill_bytes=k.spill_bytes, shared=k.shared,
                   hgmma=expect_hgmma and k.uses("HGMMA"), expect_hgmma=expect_hgmma)
    except Exception as exc:  # reported, the test fails on it
        row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    return row


def main(argv=None) -> int:
    """``python tests/aot.py MODULE``: compile MODULE.AOT_SPECS for every target, print JSON lines.

    Run in a subprocess without TRITON_INTERPRET (interpreted kernels cannot be compiled); the
    compilations are spread over the CPU cores. Each spec: {"name", "fn", "signature",
    "constexprs", "num_warps", "num_stages", "hgmma", "divisible" (optional: integer arguments
    that are multiples of 16), "targets" (optional: the target names the spec is offered on,
    default all)}.
    """
    import json
    import sys
    from concurrent.futures import ProcessPoolExecutor
    argv = sys.argv[1:] if argv is None else argv
    module_name = argv[0]
    tasks = [(module_name, i, target, cap) for i, spec in enumerate(_specs(module_name))
             for target, cap in TARGETS if target in spec.get("targets", SHARED_LIMIT)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for row in pool.map(_compile_row, *zip(*tasks)):
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
