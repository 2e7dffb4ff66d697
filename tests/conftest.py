"""Test set-up: without a GPU, Triton kernels run under the interpreter on CPU tensors.

TRITON_INTERPRET must be set before any kernel module is imported, hence here.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see fer_fast/__init__)

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

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


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (tiny training runs are faster so on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
