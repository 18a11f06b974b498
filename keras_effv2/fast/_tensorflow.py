"""The TensorFlow half of the fast inference path (the only TF code in keras_effv2.fast).

``predictor(model)`` traces ``model(x, training=False)`` once and freezes its variables into
graph constants (``convert_variables_to_constants_v2``). With constant filters, TF's oneDNN
convolutions (``_MklNativeFusedConv2D``) reorder each filter into their blocked layout once
and cache it instead of on every call, and grappler folds the bias/residual arithmetic with
constants: S at 384, batch 8, 1.18x -> 1.24x keras.applications in the same bench (XLA stays
off: it ran these convnets several times slower on CPU). The predictor snapshots the weights:
build a new one after changing them.

``convert_variables_to_constants_v2`` is private TensorFlow (``tensorflow.python``): one
feature check, :func:`freezing_available`, and ``make_predictor`` falls back to its public
path (``freeze=False``: the model's ``predict_on_batch``) when it is missing.

Example:
    >>> from keras_effv2.fast._tensorflow import predictor  # KERAS_BACKEND=tensorflow only
"""

from __future__ import annotations

import functools
import importlib

import numpy as np
import tensorflow as tf

# Private TensorFlow: (module, function) of the graph freezer.
FREEZER = ("tensorflow.python.framework.convert_to_constants",
           "convert_variables_to_constants_v2")


@functools.cache
def _freezer():
    """TensorFlow's private graph freezer, or ``None`` when this TensorFlow lacks it."""
    module, name = FREEZER
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def freezing_available() -> bool:
    """Whether :func:`predictor` can freeze graphs here (the one feature check)."""
    return callable(_freezer())


def predictor(model):
    """``f(images) -> np.ndarray`` for a one-input, one-output functional ``model``."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("predictor expects a model with one input and one output; "
                         f"{model.name!r} has {len(model.inputs)} and {len(model.outputs)}.")
    spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), model.inputs[0].dtype)
    traced = tf.function(lambda t: model(t, training=False)).get_concrete_function(spec)
    if not freezing_available():
        raise RuntimeError(f"TensorFlow {tf.__version__} has no graph freezer "
                           "(tensorflow.python...convert_variables_to_constants_v2); use "
                           "make_predictor(model, freeze=False).")
    frozen = _freezer()(traced)

    def predict(x) -> np.ndarray:
        out = frozen(tf.convert_to_tensor(np.asarray(x), dtype=spec.dtype))
        out = out[0] if isinstance(out, (list, tuple)) else out
        return out.numpy()

    return predict
