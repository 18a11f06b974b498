"""In-model input normalisation built from a weight set's preprocessing.

Example:
    >>> import numpy as np
    >>> from keras_effv2.layers import InputNormalization
    >>> layer = InputNormalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    >>> float(layer(np.full((1, 2, 2, 3), 255.0, "float32"))[0, 0, 0, 0])
    1.0
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="keras_effv2")
class InputNormalization(keras.layers.Layer):
    """Maps RGB in ``[0, 255]`` to ``(x / 255 - mean) / std`` per channel; no weights.

    Args:
        mean, std: per-channel statistics in the ``[0, 1]`` scale (3 floats each).
        data_format: ``"channels_last"``, ``"channels_first"`` or ``None``.
    """

    def __init__(self, mean, std, data_format: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError(f"mean and std must have equal length and std > 0; got {mean}, {std}.")
        self.data_format = data_format or keras.config.image_data_format()
        n = len(self.mean)
        shape = (1, 1, n) if self.data_format == "channels_last" else (n, 1, 1)
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        self._scale = (1.0 / (255.0 * std)).reshape(shape).astype("float32")
        self._offset = (-mean / std).reshape(shape).astype("float32")

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        return x * ops.cast(self._scale, x.dtype) + ops.cast(self._offset, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std,
                "data_format": self.data_format}
