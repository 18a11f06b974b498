"""Data-parallel training on several devices: the only backend-specific training module.

- JAX: ``keras.distribution.DataParallel`` over ``keras.distribution.list_devices()``.
- TensorFlow: ``tf.distribute.MirroredStrategy`` over the visible GPUs (or CPUs if none).
- torch: not offered; Keras 3 has no data-parallel ``fit`` for torch (use one device, or
  torch DDP around a custom loop).

Build and compile the model *inside* ``data_parallel_scope`` and call ``fit`` there too. The
global batch must be divisible by the number of replicas.

Example:
    >>> with data_parallel_scope("data-parallel") as replicas:  # doctest: +SKIP
    ...     model = build(); model.compile(...); model.fit(...)
"""

from __future__ import annotations

import contextlib

import keras

MODES = ("none", "data-parallel")


def available_devices() -> list[str]:
    backend = keras.backend.backend()
    if backend == "jax":
        try:
            devices = keras.distribution.list_devices("gpu")
        except RuntimeError:  # no GPU backend in this jax install
            devices = []
        return list(devices or keras.distribution.list_devices())
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return []


@contextlib.contextmanager
def data_parallel_scope(mode: str = "none", batch_size: int | None = None):
    """Context in which to build, compile and fit; yields the number of replicas."""
    if mode not in MODES:
        raise ValueError(f"distribution must be one of {MODES}; got {mode!r}.")
    if mode == "none":
        yield 1
        return
    backend = keras.backend.backend()
    if backend == "torch":
        raise ValueError(
            "distribution='data-parallel' is offered on the jax backend (keras.distribution."
            "DataParallel) and the tensorflow backend (tf.distribute.MirroredStrategy); Keras 3 "
            "has no multi-device fit for torch. Use KERAS_BACKEND=jax or tensorflow, or "
            "distribution='none'."
        )
    devices = available_devices()
    if batch_size is not None and batch_size % len(devices):
        raise ValueError(f"batch size {batch_size} is not divisible by the {len(devices)} "
                         f"devices {devices}.")
    if backend == "jax":
        dist = keras.distribution.DataParallel(devices=devices)
        with dist.scope():
            yield len(devices)
        return
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        yield strategy.num_replicas_in_sync
