"""EfficientNetV2 building blocks as serializable Keras layers.

``FusedMBConv`` and ``MBConv`` own their convolutions, batch norms, squeeze-excite and
stochastic depth as sublayers created in ``__init__``; ``build`` creates every weight
from the input shape and ``compute_output_shape`` is closed-form, so functional models
are assembled without tracing the blocks.

Example:
    >>> import numpy as np
    >>> from keras_effv2.layers import MBConv
    >>> block = MBConv(48, 96, strides=2, expand_ratio=4, se_channels=12, name="s3_b00")
    >>> tuple(block(np.zeros((1, 32, 32, 48), "float32")).shape)
    (1, 16, 16, 96)
"""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_effv2.layers.stochastic_depth import DropPath

# automl/timm: N(0, sqrt(2 / fan_out)); for depthwise kernels (k, k, C, 1) fan_out = k*k.
CONV_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
}


def _data_format(data_format: str | None) -> str:
    fmt = data_format or keras.config.image_data_format()
    if fmt not in ("channels_last", "channels_first"):
        raise ValueError(
            f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}."
        )
    return fmt


def _spatial_axes(data_format: str) -> tuple[int, int]:
    return (1, 2) if data_format == "channels_last" else (2, 3)


@keras.saving.register_keras_serializable(package="keras_effv2")
class SqueezeExcite(keras.layers.Layer):
    """Squeeze-and-excitation: channel gates from globally pooled features.

    mean over H, W -> 1x1 conv (bias) to ``se_channels`` -> SiLU -> 1x1 conv (bias) back
    to ``channels`` -> sigmoid -> multiply the input.

    Args:
        channels: int, channels of the gated tensor.
        se_channels: int, width of the bottleneck.
        data_format: ``"channels_last"``, ``"channels_first"`` or ``None`` (Keras default).
    """

    def __init__(self, channels: int, se_channels: int, data_format: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.se_channels = int(se_channels)
        self.data_format = _data_format(data_format)
        conv = dict(kernel_size=1, use_bias=True, data_format=self.data_format,
                    kernel_initializer=CONV_KERNEL_INITIALIZER)
        self.conv_reduce = keras.layers.Conv2D(self.se_channels, name="conv_reduce", **conv)
        self.conv_expand = keras.layers.Conv2D(self.channels, name="conv_expand", **conv)

    def build(self, input_shape):
        pooled = list(input_shape)
        for axis in _spatial_axes(self.data_format):
            pooled[axis] = 1
        self.conv_reduce.build(tuple(pooled))
        self.conv_expand.build(self.conv_reduce.compute_output_shape(tuple(pooled)))

    def call(self, inputs):
        s = ops.mean(inputs, axis=_spatial_axes(self.data_format), keepdims=True)
        s = ops.silu(self.conv_reduce(s))
        s = ops.sigmoid(self.conv_expand(s))
        return inputs * s

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "channels": self.channels,
                "se_channels": self.se_channels, "data_format": self.data_format}


class _InvertedBottleneck(keras.layers.Layer):
    """Shared plumbing of FusedMBConv and MBConv: arguments, factories, residual, shapes."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        strides: int = 1,
        expand_ratio: int = 1,
        se_channels: int = 0,
        drop_path_rate: float = 0.0,
        bn_momentum: float = 0.9,
        bn_epsilon: float = 1e-3,
        data_format: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.expand_ratio = int(expand_ratio)
        self.se_channels = int(se_channels)
        self.drop_path_rate = float(drop_path_rate)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)
        self.data_format = _data_format(data_format)
        self.mid_channels = self.in_channels * self.expand_ratio
        self.has_residual = self.strides == 1 and self.in_channels == self.out_channels
        # Stochastic depth only ever sits on the residual branch.
        self.drop_path = (
            DropPath(self.drop_path_rate, name="drop_path")
            if self.has_residual and self.drop_path_rate > 0
            else None
        )
        self._sublayers_in_order: list[keras.layers.Layer] = []

    def _conv(self, filters, kernel_size, strides, name):
        layer = keras.layers.Conv2D(
            filters, kernel_size, strides=strides, padding="same", use_bias=False,
            data_format=self.data_format, kernel_initializer=CONV_KERNEL_INITIALIZER, name=name,
        )
        self._sublayers_in_order.append(layer)
        return layer

    def _depthwise(self, kernel_size, strides, name):
        layer = keras.layers.DepthwiseConv2D(
            kernel_size, strides=strides, padding="same", use_bias=False,
            data_format=self.data_format, depthwise_initializer=CONV_KERNEL_INITIALIZER, name=name,
        )
        self._sublayers_in_order.append(layer)
        return layer

    def _bn(self, name):
        layer = keras.layers.BatchNormalization(
            axis=-1 if self.data_format == "channels_last" else 1,
            momentum=self.bn_momentum, epsilon=self.bn_epsilon, name=name,
        )
        self._sublayers_in_order.append(layer)
        return layer

    def _se(self):
        layer = SqueezeExcite(self.mid_channels, self.se_channels, self.data_format, name="se")
        self._sublayers_in_order.append(layer)
        return layer

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self._sublayers_in_order:
            if not layer.built:
                layer.build(shape)
            shape = layer.compute_output_shape(shape)
        if self.drop_path is not None and not self.drop_path.built:
            self.drop_path.build(shape)

    def _residual(self, inputs, x, training):
        if not self.has_residual:
            return x
        if self.drop_path is not None:
            x = self.drop_path(x, training=training)
        return x + inputs

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        for axis in _spatial_axes(self.data_format):
            if shape[axis] is not None:
                shape[axis] = math.ceil(shape[axis] / self.strides)
        shape[-1 if self.data_format == "channels_last" else 1] = self.out_channels
        return tuple(shape)

    def get_config(self):
        return {
            **super().get_config(),
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "expand_ratio": self.expand_ratio,
            "se_channels": self.se_channels,
            "drop_path_rate": self.drop_path_rate,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "data_format": self.data_format,
        }


@keras.saving.register_keras_serializable(package="keras_effv2")
class FusedMBConv(_InvertedBottleneck):
    """Fused-MBConv: a full k x k conv replaces MBConv's 1x1 expand + depthwise pair.

    With ``expand_ratio == 1`` the block is one k x k conv -> BN -> SiLU (the conv is the
    projection). Otherwise: k x k conv to ``in * e`` -> BN -> SiLU -> [SE] -> 1x1 conv ->
    BN. A residual (with stochastic depth) is added when stride is 1 and in == out.

    Args:
        in_channels, out_channels: ints.
        kernel_size, strides, expand_ratio: ints.
        se_channels: int, 0 for none (EfficientNetV2 never uses SE in fused blocks).
        drop_path_rate: float, stochastic depth on the residual branch.
        bn_momentum, bn_epsilon: BatchNormalization settings (Keras convention).
        data_format: ``"channels_last"``, ``"channels_first"`` or ``None``.
    """

    def __init__(self, in_channels, out_channels, **kwargs):
        super().__init__(in_channels, out_channels, **kwargs)
        k, s = self.kernel_size, self.strides
        if self.expand_ratio == 1:
            self.expand_conv = self.expand_bn = None
            self.se = self._se() if self.se_channels else None
            self.project_conv = self._conv(self.out_channels, k, s, "project_conv")
        else:
            self.expand_conv = self._conv(self.mid_channels, k, s, "expand_conv")
            self.expand_bn = self._bn("expand_bn")
            self.se = self._se() if self.se_channels else None
            self.project_conv = self._conv(self.out_channels, 1, 1, "project_conv")
        self.project_bn = self._bn("project_bn")

    def call(self, inputs, training=None):
        x = inputs
        if self.expand_conv is not None:
            x = ops.silu(self.expand_bn(self.expand_conv(x), training=training))
        if self.se is not None:
            x = self.se(x)
        x = self.project_bn(self.project_conv(x), training=training)
        if self.expand_conv is None:
            x = ops.silu(x)
        return self._residual(inputs, x, training)


@keras.saving.register_keras_serializable(package="keras_effv2")
class MBConv(_InvertedBottleneck):
    """MBConv: 1x1 expand -> BN -> SiLU -> k x k depthwise -> BN -> SiLU -> SE -> 1x1 -> BN.

    A residual (with stochastic depth) is added when stride is 1 and in == out. Takes the
    same arguments as :class:`FusedMBConv`; ``se_channels`` is the SE bottleneck width,
    ``int(in_channels * 0.25)`` in EfficientNetV2.
    """

    def __init__(self, in_channels, out_channels, **kwargs):
        super().__init__(in_channels, out_channels, **kwargs)
        if self.expand_ratio != 1:
            self.expand_conv = self._conv(self.mid_channels, 1, 1, "expand_conv")
            self.expand_bn = self._bn("expand_bn")
        else:
            self.expand_conv = self.expand_bn = None
        self.dw_conv = self._depthwise(self.kernel_size, self.strides, "dw_conv")
        self.dw_bn = self._bn("dw_bn")
        self.se = self._se() if self.se_channels else None
        self.project_conv = self._conv(self.out_channels, 1, 1, "project_conv")
        self.project_bn = self._bn("project_bn")

    def call(self, inputs, training=None):
        x = inputs
        if self.expand_conv is not None:
            x = ops.silu(self.expand_bn(self.expand_conv(x), training=training))
        x = ops.silu(self.dw_bn(self.dw_conv(x), training=training))
        if self.se is not None:
            x = self.se(x)
        x = self.project_bn(self.project_conv(x), training=training)
        return self._residual(inputs, x, training)
