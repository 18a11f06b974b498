"""keras_effv2: EfficientNetV2 (B0-XL) for Keras 3 on TensorFlow, JAX and PyTorch.

Example:
    >>> import keras_effv2
    >>> model = keras_effv2.EfficientNetV2B0(weights=None)
"""

# First: an unsupported Keras fails here, naming the supported range (compat.check_keras).
from keras_effv2 import compat as _compat  # noqa: F401
from keras_effv2.applications import (
    EfficientNetV2,
    EfficientNetV2B0,
    EfficientNetV2B1,
    EfficientNetV2B2,
    EfficientNetV2B3,
    EfficientNetV2L,
    EfficientNetV2M,
    EfficientNetV2S,
    EfficientNetV2XL,
    preprocess_input,
)
from keras_effv2.configs import VARIANTS, VariantSpec, get_variant
from keras_effv2.features import feature_endpoints, feature_extractor, grad_cam_model
from keras_effv2.labels import decode_predictions
from keras_effv2.lr_schedules import WarmupCosineDecay  # registered: model.keras files load
from keras_effv2.preprocessing import PreprocessingSpec
from keras_effv2.version import __version__
from keras_effv2.weights import WEIGHTS, WeightsSpec, get_weights_spec, list_weights

__all__ = [
    "VARIANTS",
    "EfficientNetV2",
    "EfficientNetV2B0",
    "EfficientNetV2B1",
    "EfficientNetV2B2",
    "EfficientNetV2B3",
    "EfficientNetV2L",
    "EfficientNetV2M",
    "EfficientNetV2S",
    "EfficientNetV2XL",
    "PreprocessingSpec",
    "VariantSpec",
    "WEIGHTS",
    "WarmupCosineDecay",
    "WeightsSpec",
    "decode_predictions",
    "feature_endpoints",
    "feature_extractor",
    "get_weights_spec",
    "grad_cam_model",
    "list_weights",
    "__version__",
    "get_variant",
    "preprocess_input",
]
