"""Stochastic depth (drop path) for residual branches.

Example:
    >>> import keras, numpy as np
    >>> from keras_effv2.layers import DropPath
    >>> layer = DropPath(0.2, seed=1)
    >>> x = np.ones((4, 8, 8, 16), "float32")
    >>> bool(np.array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x))
    True
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_effv2")
class DropPath(keras.layers.Layer):
    """Drops a whole residual branch per sample with probability ``rate``.

    At training time each sample's branch is zeroed with probability ``rate`` and the
    survivors are scaled by ``1 / (1 - rate)``, so the expectation is unchanged; at
    inference it is the identity. Randomness comes from a ``keras.random.SeedGenerator``,
    so it is correct under JAX's functional tracing too.

    Args:
        rate: float in ``[0, 1)``, the probability of dropping the branch.
        seed: optional int seed for reproducibility.
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1), got {rate!r}.")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        return inputs * self.sample_scale(ops.shape(inputs)[0], len(inputs.shape), inputs.dtype)

    def sample_scale(self, batch_size, ndim: int, dtype):
        """Draw the per-sample multipliers of one training call: 0 (dropped) or
        ``1 / (1 - rate)``, shaped ``(batch_size, 1, ..., 1)`` (``ndim`` axes)."""
        keep = 1.0 - self.rate
        shape = (batch_size,) + (1,) * (ndim - 1)
        noise = keras.random.uniform(shape, dtype=dtype, seed=self.seed_generator)
        mask = ops.floor(noise + ops.cast(keep, dtype))
        return mask / ops.cast(keep, dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
