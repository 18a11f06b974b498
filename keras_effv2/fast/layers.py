"""Inference-only layers and activations of the fast path, in keras.ops (no backend code).

``plain_silu`` is ``x * sigmoid(x)`` as two plain ops. TensorFlow's ``tf.nn.silu`` (Keras'
``"silu"``) wraps them in a custom-gradient ``IdentityN`` that stops grappler from fusing
the activation into the convolution before it; written plainly, oneDNN runs
conv + bias + swish as one op (B0 forward: 55 separate swish ops -> 34).

``ShiftDepthwiseConv2D`` computes a depthwise ``k x k`` convolution (``"same"`` padding,
``depth_multiplier=1``) plus bias as ``k*k`` shifted, per-channel scaled copies of the
padded input, summed. XLA on CPU lowers a grouped convolution to a slow generic loop;
this form fuses into one elementwise kernel (measured 24x faster for a 56x56x96 3x3
depthwise conv on JAX/CPU), with the same result up to float rounding.

Example:
    >>> import numpy as np
    >>> layer = ShiftDepthwiseConv2D(3, strides=2, name="dw")
    >>> tuple(layer(np.zeros((1, 8, 8, 4), "float32")).shape)
    (1, 4, 4, 4)
"""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_effv2")
def plain_silu(x):
    """``x * sigmoid(x)``, the same values as ``keras.activations.silu``, fusable on TF.

    Example:
        >>> float(plain_silu(keras.ops.convert_to_tensor(0.0)))
        0.0
    """
    return ops.multiply(x, ops.sigmoid(x))


def _same_pads(size: int, kernel_size: int, strides: int):
    """Output size and (before, after) padding of a ``"same"`` convolution along one axis."""
    out = math.ceil(size / strides)
    total = max((out - 1) * strides + kernel_size - size, 0)
    return out, (total // 2, total - total // 2)


def shifted_taps(x, kernel_size: int, strides: int, data_format: str) -> list:
    """The ``k*k`` strided windows of ``x`` ("same"-padded) a ``k x k`` conv multiplies.

    Tap ``i * k + j`` holds, at each output position, the input pixel under kernel entry
    ``(i, j)``; every tap has the output's shape. H and W must be static.
    """
    k, s = kernel_size, strides
    last = data_format == "channels_last"
    h, w = (x.shape[1], x.shape[2]) if last else (x.shape[2], x.shape[3])
    if h is None or w is None:
        raise ValueError(f"shifted depthwise convolution needs a static height and width; "
                         f"got input shape {tuple(x.shape)}.")
    (oh, ph), (ow, pw) = _same_pads(h, k, s), _same_pads(w, k, s)
    x = ops.pad(x, ((0, 0), ph, pw, (0, 0)) if last else ((0, 0), (0, 0), ph, pw))
    taps = []
    for i in range(k):
        for j in range(k):
            rows, cols = slice(i, i + (oh - 1) * s + 1, s), slice(j, j + (ow - 1) * s + 1, s)
            taps.append(x[:, rows, cols, :] if last else x[:, :, rows, cols])
    return taps


def shift_depthwise(x, kernel, strides: int = 1, data_format: str = "channels_last"):
    """Depthwise ``"same"`` convolution (no bias) of ``x`` with a ``(k, k, C, 1)`` kernel.

    Example:
        >>> import numpy as np
        >>> y = shift_depthwise(np.ones((1, 8, 8, 4), "float32"), np.ones((3, 3, 4, 1), "float32"))
        >>> float(y[0, 4, 4, 0]), float(y[0, 0, 0, 0])
        (9.0, 4.0)
    """
    k = kernel.shape[0]
    per_channel = (k * k, -1) if data_format == "channels_last" else (k * k, -1, 1, 1)
    kernel = ops.reshape(kernel, per_channel)
    out = None
    for t, tap in enumerate(shifted_taps(x, k, strides, data_format)):
        term = tap * kernel[t]
        out = term if out is None else out + term
    return out


@keras.saving.register_keras_serializable(package="keras_effv2")
class ShiftDepthwiseConv2D(keras.layers.Layer):
    """Depthwise conv as a sum of shifted slices; weights as ``DepthwiseConv2D``'s (zeros).

    Args:
        kernel_size: int, square kernel.
        strides: int.
        data_format: ``"channels_last"`` or ``"channels_first"``.
    """

    def __init__(self, kernel_size: int, strides: int = 1, data_format: str | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.data_format = data_format or keras.config.image_data_format()

    def build(self, input_shape):
        c = input_shape[-1 if self.data_format == "channels_last" else 1]
        k = self.kernel_size
        self.kernel = self.add_weight(shape=(k, k, c, 1), name="kernel", initializer="zeros")
        self.bias = self.add_weight(shape=(c,), name="bias", initializer="zeros")

    def call(self, x):
        bias = (self.bias if self.data_format == "channels_last"
                else ops.reshape(self.bias, (-1, 1, 1)))
        return shift_depthwise(x, self.kernel, self.strides, self.data_format) + bias

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        for axis in ((1, 2) if self.data_format == "channels_last" else (2, 3)):
            if shape[axis] is not None:
                shape[axis] = math.ceil(shape[axis] / self.strides)
        return tuple(shape)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size,
                "strides": self.strides, "data_format": self.data_format}
