"""Porting upstream checkpoints: key maps (timm, automl, keras.applications), readers and
strict assignment into a model.

Example:
    >>> import keras_effv2
    >>> from keras_effv2.weights.porting import TIMM_IGNORED_SUFFIXES, assign_weights, timm_mapping
    >>> model = keras_effv2.EfficientNetV2B0(weights=None)
    >>> # assign_weights(model, timm_state_dict, timm_mapping("b0"),
    >>> #                ignored_suffixes=TIMM_IGNORED_SUFFIXES)
"""

from keras_effv2.weights.porting.assign import assign_weights, model_weight_keys
from keras_effv2.weights.porting.key_maps import (
    TIMM_IGNORED_SUFFIXES,
    TensorMapping,
    automl_mapping,
    keras_applications_mapping,
    timm_mapping,
)

__all__ = [
    "TIMM_IGNORED_SUFFIXES",
    "TensorMapping",
    "assign_weights",
    "automl_mapping",
    "keras_applications_mapping",
    "model_weight_keys",
    "timm_mapping",
]
