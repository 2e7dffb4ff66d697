"""Test set-up: without a GPU, Triton kernels run under the interpreter on CPU tensors.

TRITON_INTERPRET must be set before any kernel module is imported, hence here.
"""
import functools
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see fer_fast/__init__)

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # CPU "auto" stays on the registry's choices (eager blocks, fp32): a training test does not
    # run the selfcheck child first, and does not depend on what it measured on this machine;
    # the tests of the selfcheck and the verdict set up their own environment
    os.environ.setdefault("FER_FAST_SELFCHECK", "0")

import pytest  # noqa: E402

from fer_fast.kernels import is_interpreter  # noqa: E402

if is_interpreter():
    from fer_fast.selfcheck import interpreter_conflict  # noqa: E402
    if interpreter_conflict():
        pytest.exit(f"cannot run the Triton kernels under the interpreter: "
                    f"{interpreter_conflict()}", returncode=2)

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU; the CPU counterpart "
                                   "of this test runs the same kernel under TRITON_INTERPRET=1")


@pytest.fixture(autouse=True)
def drawn_faces_need_the_other_detectors(request, monkeypatch):
    """The tests' photos hold drawn faces, which CenterFace, a detector learned on real faces,
    does not see; so where its weights are installed, ``auto`` picks among the other detectors,
    as it does where they are not. CenterFace itself is tested on real faces (tests marked
    ``centerface``: tests/test_centerface.py)."""
    if request.node.get_closest_marker("centerface") is None:
        import fer_fast.centerface

        monkeypatch.setattr(fer_fast.centerface, "weights_path", lambda: None)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (tiny training runs are faster so on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def verdict_cache(tmp_path, monkeypatch):
    """An empty selfcheck-verdict directory, the selfcheck enabled, the verdict module's
    per-process caches empty."""
    from fer_fast import verdict
    monkeypatch.setenv("FER_FAST_VERDICT_DIR", str(tmp_path))
    monkeypatch.delenv("FER_FAST_SELFCHECK", raising=False)
    monkeypatch.setattr(verdict, "_cache", {})
    monkeypatch.setattr(verdict, "_warned", set())
    return tmp_path


#: set in the child process of ``in_fresh_process``
FRESH_PROCESS_ENV = "FER_FAST_TEST_FRESH_PROCESS"


def in_fresh_process(test):
    """Run ``test`` alone in a new Python process (pytest on its node id): a torch.compile test
    then makes the process's first call, so it cannot pass thanks to caches warmed by earlier
    tests (backend resolution, the verdict read once per process)."""
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        if os.environ.get(FRESH_PROCESS_ENV) == "1":
            return test(*args, **kwargs)
        nodeid = os.environ["PYTEST_CURRENT_TEST"].rsplit(" ", 1)[0]
        child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                nodeid], cwd=Path(__file__).resolve().parent.parent,
                               env=dict(os.environ, **{FRESH_PROCESS_ENV: "1"}),
                               capture_output=True, text=True, timeout=600)
        assert child.returncode == 0, f"{nodeid} in a fresh process:\n{child.stdout[-4000:]}"
    return wrapper
