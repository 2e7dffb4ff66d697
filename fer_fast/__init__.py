"""fer_fast: a custom-kernel training engine for the FER2013 VGG of Khaireddin & Chen (2021)."""
import os

# Passive OpenMP waiting, set before torch loads its OpenMP runtime: on a busy CPU, spinning
# threads slow CPU training several-fold (docs/notes.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import backends  # noqa: E402
# each op's module registers its backends in fer_fast.backends on import
from .augmentation import AugmentParams, augment, sample_params, ten_crop  # noqa: E402
from .block import ConvBNReLU2d, conv_bn_act  # noqa: E402
from .stack import ConvBNReLUStack, conv_bn_act_stack  # noqa: E402
from .model import VGG  # noqa: E402
from . import verdict  # noqa: E402,F401  "auto" decided by the selfcheck's cached verdict

#: public names of modules that only commands and inference need, imported on first use
_LAZY = {"Face": "predict", "Predictor": "predict"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'fer_fast' has no attribute {name!r}")

__version__ = "0.1.0"
__all__ = ["backends", "AugmentParams", "augment", "sample_params", "ten_crop", "VGG",
           "ConvBNReLU2d", "ConvBNReLUStack", "conv_bn_act", "conv_bn_act_stack", "Face", "Predictor",
           "__version__"]
