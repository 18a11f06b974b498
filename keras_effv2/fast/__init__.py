"""Fast paths: the same function as the model, computed with fewer, cheaper ops.

``optimize_for_inference(model)`` folds every BatchNorm into its convolution
(:func:`fuse_batchnorm`) and lays the graph out in the data format measured fastest on the
current backend (``FAST_DATA_FORMAT``); inputs and outputs keep the original layout.
``make_predictor(model)`` returns ``f(images) -> np.ndarray`` running the model the
fastest measured way on this backend: on TensorFlow a graph with the weights frozen into
constants and XLA off (``_tensorflow.py``), on JAX ``predict_on_batch`` jitted, on torch the
graph lowered to direct ``torch.nn.functional`` calls under ``torch.inference_mode``
(``_torch.py``). The TF and torch predictors snapshot the weights.

``optimize_for_training(model)`` returns a model sharing ``model``'s layers and variables
whose ``fit``/``train_on_batch`` step is faster on this backend (torch: ``_torch_train.py``,
the graph as direct ``torch.nn.functional`` calls on the Keras variables; JAX:
``_jax_train.py``); training it trains ``model``.

Example:
    >>> import numpy as np, keras_effv2
    >>> from keras_effv2.fast import make_predictor, optimize_for_inference
    >>> model = keras_effv2.EfficientNetV2B0(weights=None, input_shape=(64, 64, 3))
    >>> predict = make_predictor(optimize_for_inference(model))
    >>> predict(np.zeros((2, 64, 64, 3), "float32")).shape
    (2, 1000)
"""

from __future__ import annotations

import keras

from keras_effv2.fast.fuse import fold_conv_bn, fuse_batchnorm
from keras_effv2.keras_graph import graph_internals

# Inner layout per backend, chosen by measurement (bench/suite.py; docs/fast-paths.md):
# Keras-on-torch transposes NHWC<->NCHW around every convolution, channels_first avoids it.
FAST_DATA_FORMAT = {"tensorflow": "channels_last", "jax": "channels_last",
                    "torch": "channels_first"}
# Depthwise conv implementation per backend on CPU: XLA's grouped conv is a slow generic loop
# on CPU (JAX B0 forward 13 -> 36 img/s with "shift"); accelerators keep the library conv.
FAST_DEPTHWISE = {"tensorflow": "conv", "jax": "shift", "torch": "conv"}
# XLA on CPU measured slower than TF's graph mode for these convnets: keep it off.
FAST_JIT_COMPILE = {"tensorflow": False, "jax": True, "torch": False}
# TF: weights frozen into graph constants, so oneDNN caches each reordered filter (S 384 batch 8:
# 1.18x -> 1.24x keras.applications) at the price of ~7 graph copies of the weights in memory
# (S first-call peak RSS 1219 -> 2571 MB). ``make_predictor(model, freeze=False)`` opts out.
FAST_FREEZE_WEIGHTS = {"tensorflow": True}


def _warn_no_graph_internals(consequence: str) -> None:
    import warnings

    warnings.warn(f"keras_effv2.fast: Keras {keras.__version__} lacks the private graph "
                  f"attributes keras_graph.py reads; {consequence} (the public path).",
                  RuntimeWarning, stacklevel=3)


def _on_accelerator() -> bool:
    try:
        devices = keras.distribution.list_devices()
    except Exception:  # a backend without device listing: assume CPU
        return False
    return bool(devices) and not str(devices[0]).lower().startswith("cpu")


def optimize_for_inference(model: keras.Model, data_format: str | None = "auto",
                           depthwise: str = "auto") -> keras.Model:
    """BN-folded copy of ``model`` in the backend's fastest measured form.

    Args:
        model: a keras_effv2 model.
        data_format: inner layout; ``"auto"`` = ``FAST_DATA_FORMAT[backend]``, ``None`` keeps
            the model's.
        depthwise: ``"conv"``, ``"shift"`` or ``"auto"`` (``FAST_DEPTHWISE[backend]`` on CPU,
            ``"conv"`` on an accelerator). ``"shift"`` needs a model with a fixed input size.
    """
    backend = keras.backend.backend()
    if data_format == "auto":
        data_format = FAST_DATA_FORMAT.get(backend)
    if depthwise == "auto":
        static = all(d is not None for d in model.inputs[0].shape[1:])
        depthwise = ("conv" if _on_accelerator() or not static
                     else FAST_DEPTHWISE.get(backend, "conv"))
    return fuse_batchnorm(model, data_format=data_format, depthwise=depthwise)


def optimize_for_training(model: keras.Model) -> keras.Model:
    """A model sharing ``model``'s layers and variables whose training step is faster here.

    Training the returned model trains ``model`` (``model.save``/``save_weights`` afterwards
    hold the trained weights); it has the same inputs, outputs and layer names
    (``head_dropout``, ``predictions``...). Compile and ``fit`` it as usual. Per backend:
    torch runs the graph as direct ``torch.nn.functional`` calls on the Keras variables
    (``_torch_train.py``; ``model``'s kernel variables are re-laid out in memory once, same
    shapes and values, and a Keras ``Adam``/``AdamW`` updates in one fused pass,
    ``_torch_optim.py``), JAX uses ``_jax_train.py``; on TensorFlow ``model`` itself is
    returned (nothing faster measured there).

    Example (the ``fit`` and ``save_weights`` lines are not run as doctests: compiling a B0
    train step takes about a minute on a CPU; tests/test_fast_training*.py train it):
        >>> import numpy as np, keras_effv2
        >>> model = keras_effv2.EfficientNetV2B0(weights=None, input_shape=(64, 64, 3), classes=10)
        >>> fast = optimize_for_training(model)
        >>> fast.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        >>> x, y = np.zeros((2, 64, 64, 3), "float32"), np.array([1, 2])
        >>> history = fast.fit(x, y, verbose=0)  # doctest: +SKIP
        >>> model.save_weights("b0.weights.h5")  # doctest: +SKIP
    """
    backend = keras.backend.backend()
    if backend == "jax" and not graph_internals():
        _warn_no_graph_internals("optimize_for_training returns the model itself")
        return model
    if backend == "torch":
        from keras_effv2.fast import _torch_train

        return _torch_train.training_model(model)
    if backend == "jax":
        from keras_effv2.fast import _jax_train

        return _jax_train.training_model(model)
    return model


def make_predictor(model: keras.Model, compile: bool = False, freeze: bool | None = None):
    """Return ``f(images) -> np.ndarray``: the backend's fastest measured inference call.

    ``compile=True`` on torch wraps the call in ``torch.compile`` (long first call).
    ``freeze`` (TensorFlow): bake the weights into the graph as constants (faster, more
    memory; default ``FAST_FREEZE_WEIGHTS``, falling back to ``False`` with a warning where
    this TensorFlow has no graph freezer, a private API); ``False`` runs ``predict_on_batch``.
    """
    backend = keras.backend.backend()
    if freeze is None:
        freeze = FAST_FREEZE_WEIGHTS.get(backend, False)
        if freeze:
            from keras_effv2.fast import _tensorflow

            if not _tensorflow.freezing_available():
                import warnings

                warnings.warn("keras_effv2.fast.make_predictor: this TensorFlow has no graph "
                              "freezer (private tensorflow.python API); predicting with "
                              "freeze=False (same numbers, slower).", RuntimeWarning,
                              stacklevel=2)
                freeze = False
    if freeze and backend != "tensorflow":
        raise ValueError(f"freeze=True is implemented on the TensorFlow backend only; this is "
                         f"{backend!r}. Leave freeze=None.")
    if backend == "torch" and graph_internals():
        from keras_effv2.fast import _torch

        return _torch.predictor(model, compile=compile)
    if backend == "torch":
        _warn_no_graph_internals("make_predictor runs predict_on_batch")
    if freeze:  # XLA stays off (FAST_JIT_COMPILE)
        from keras_effv2.fast import _tensorflow

        return _tensorflow.predictor(model)
    model.jit_compile = FAST_JIT_COMPILE.get(backend, False)
    return model.predict_on_batch


__all__ = ["FAST_DATA_FORMAT", "FAST_DEPTHWISE", "FAST_FREEZE_WEIGHTS", "FAST_JIT_COMPILE",
           "fold_conv_bn", "fuse_batchnorm", "make_predictor", "optimize_for_inference",
           "optimize_for_training"]
