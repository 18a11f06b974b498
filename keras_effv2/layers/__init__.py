"""Layer subclasses that make up EfficientNetV2."""

from keras_effv2.layers.blocks import FusedMBConv, MBConv, SqueezeExcite
from keras_effv2.layers.preprocessing import InputNormalization
from keras_effv2.layers.stochastic_depth import DropPath

__all__ = ["DropPath", "FusedMBConv", "InputNormalization", "MBConv", "SqueezeExcite"]
