"""The model a recipe fits: the fast training step (``keras_effv2.fast``) by default.

``training_view(model)`` returns ``(fit_model, path)``: on torch and JAX ``fit_model`` is
``optimize_for_training(model)`` (the same layers and variables, a faster step), compiled with
``model``'s own optimizer object, loss and metrics, so training it trains ``model`` and
``model.optimizer`` holds the state; on TensorFlow ``model`` itself is the fast path. ``path``
says which step trains (``result.json``'s ``"fast_path"``, the line the recipes print).
``fast_path=False`` fits the plain ``model``. A model ``optimize_for_training`` does not take
(a non-chain graph on torch), or one compiled with settings Keras cannot serialize (the compile
settings are copied through ``get_compile_config``: a custom metric function that is not
registered), trains plain, and ``path.reason`` says why.

``StepThroughput`` measures each ``fit``'s steady-state images per second: the first step of
every ``fit`` (which traces/compiles) is excluded, as is the time between epochs (backups,
logs); the loss is read at each step end so asynchronous (JAX) steps are counted when done.

Example:
    >>> fit_model, path = training_view(model)  # doctest: +SKIP
    >>> path.fast, path.describe()  # doctest: +SKIP
    (True, 'the fast training step (keras_effv2.fast.optimize_for_training, torch)')
"""

from __future__ import annotations

import dataclasses
import time

import keras

# Backends where optimize_for_training returns another model (TensorFlow: the model itself).
FAST_STEP_BACKENDS = ("torch", "jax")


@dataclasses.dataclass(frozen=True)
class TrainingPath:
    """Which step trains: ``fast`` (True on every backend when the fast path is in use)."""

    fast: bool
    backend: str
    reason: str = ""

    def describe(self) -> str:
        if self.fast and self.backend in FAST_STEP_BACKENDS:
            return (f"the fast training step (keras_effv2.fast.optimize_for_training, "
                    f"{self.backend})")
        if self.fast:
            return f"the model itself ({self.backend}: it is the fast path here)"
        return f"the plain Keras model ({self.reason})"


def _compile_like(fit_model: keras.Model, model: keras.Model) -> None:
    """Compile ``fit_model`` as ``model`` is, sharing ``model``'s optimizer object."""
    config = keras.saving.deserialize_keras_object(model.get_compile_config())
    config = {k: v for k, v in config.items() if k != "optimizer"}
    fit_model.compile(optimizer=model.optimizer, **config)


def training_view(model: keras.Model, fast_path: bool = True) -> tuple[keras.Model,
                                                                         TrainingPath]:
    """``(the model to fit, TrainingPath)`` for a compiled ``model`` (see the module doc)."""
    backend = keras.backend.backend()
    if not fast_path:
        return model, TrainingPath(False, backend, "fast_path=False / --no-fast-path")
    if backend not in FAST_STEP_BACKENDS:
        return model, TrainingPath(True, backend)
    from keras_effv2.fast import optimize_for_training

    try:
        fit_model = optimize_for_training(model)
    except (ValueError, TypeError) as e:  # a graph the fast step does not lower
        return model, TrainingPath(False, backend, f"optimize_for_training refused it: {e}")
    if fit_model is model:  # optimize_for_training's own fallback (it warned why)
        return model, TrainingPath(False, backend, "optimize_for_training returned the model")
    try:
        _compile_like(fit_model, model)
    except (TypeError, ValueError) as e:  # e.g. a metric Keras cannot serialize
        return model, TrainingPath(False, backend, f"its compile settings could not be "
                                   f"copied to the fast model ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0]})")
    return fit_model, TrainingPath(True, backend)


class StepThroughput(keras.callbacks.Callback):
    """Steady-state images/s of each ``fit`` (first step excluded); ``per_fit`` lists them
    (``None`` for a fit of fewer than two steps)."""

    def __init__(self, batch_size: int | None = None):
        super().__init__()
        self.batch_size = batch_size  # set before each fit when the stages' batches differ
        self.per_fit: list[float | None] = []
        self._steps = self._seconds = 0
        self._last = None
        self._first = True

    def on_train_begin(self, logs=None):
        self._steps, self._seconds, self._first = 0, 0.0, True

    def on_epoch_begin(self, epoch, logs=None):
        self._last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if logs and "loss" in logs:  # wait for the step itself (JAX dispatches asynchronously)
            float(keras.ops.convert_to_numpy(logs["loss"]))
        now = time.perf_counter()
        if self._first:  # the step that traced / compiled
            self._first = False
        else:
            self._steps += 1
            self._seconds += now - self._last
        self._last = now

    def on_train_end(self, logs=None):
        self.per_fit.append(round(self._steps * self.batch_size / self._seconds, 2)
                            if self.batch_size and self._steps and self._seconds > 0 else None)
