"""Weight porting: source-checkpoint key maps and strict assignment (pure NumPy, no torch)."""

from keras_effv2.porting.assign import (
    PortingError,
    assign_weights,
    model_weight_keys,
)
from keras_effv2.porting.key_map import (
    TensorMapping,
    automl_mapping,
    keras_applications_mapping,
    timm_mapping,
)

__all__ = [
    "PortingError",
    "TensorMapping",
    "assign_weights",
    "automl_mapping",
    "keras_applications_mapping",
    "model_weight_keys",
    "timm_mapping",
]
