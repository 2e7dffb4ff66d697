"""The eager PyTorch oracle of the whole computation of docs/spec.md, in one import.

Every fast path of fer_fast is tested against these functions on fresh random inputs:
``augment_ref`` (ten-crop augmentation), ``sample_params`` (the random choices),
``conv_bn_act_ref`` (one block) and ``VGG(backend="eager")`` (the model).
"""
from .augmentation import augment_ref, identity_params, sample_params
from .model import VGG
from .block import conv_bn_act_ref

__all__ = ["augment_ref", "identity_params", "sample_params", "conv_bn_act_ref", "VGG"]
