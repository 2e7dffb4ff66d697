"""fer_fast: a custom-kernel training engine for the FER2013 VGG of Khaireddin & Chen (2021)."""
import os

# Passive OpenMP waiting, set before torch loads its OpenMP runtime: on a busy CPU, spinning
# threads slow CPU training several-fold (docs/notes.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import backends  # noqa: E402
from .augment import AugmentParams, augment, sample_params, ten_crop  # noqa: E402
from .model import VGG  # noqa: E402
from .nn import ConvBNReLU2d, ConvBNReLUStack, conv_bn_act, conv_bn_act_stack  # noqa: E402
from .predict import Face, Predictor  # noqa: E402

# fast backends register themselves in fer_fast.backends on import
from . import _ext  # noqa: E402,F401  "native" augment (fer_fast._C: C++ / CUDA)
from . import fused  # noqa: E402,F401  "fused" block (Triton BN/ReLU/pool around the library conv)
from . import triton_backend  # noqa: E402,F401  "triton" features (implicit-GEMM conv kernels)
from . import verdict  # noqa: E402,F401  "auto" decided by the selfcheck's cached verdict

__version__ = "0.1.0"
__all__ = ["backends", "AugmentParams", "augment", "sample_params", "ten_crop", "VGG",
           "ConvBNReLU2d", "ConvBNReLUStack", "conv_bn_act", "conv_bn_act_stack", "Face", "Predictor",
           "__version__"]
