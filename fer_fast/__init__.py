"""fer_fast: a custom-kernel training engine for the FER2013 VGG of Khaireddin & Chen (2021)."""
from . import backends
from . import _ext  # registers the "native" augment backend (fer_fast._C)
from .augment import AugmentParams, augment, sample_params, ten_crop
from .model import VGG
from .nn import ConvBNReLU2d, conv_bn_act
from . import triton_backend  # registers the "triton" features backend
from . import fused  # registers the "fused" block backend

__version__ = "0.1.0"
__all__ = ["backends", "AugmentParams", "augment", "sample_params", "ten_crop", "VGG",
           "ConvBNReLU2d", "conv_bn_act", "__version__"]
