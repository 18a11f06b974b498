"""Fold every BatchNormalization into the convolution before it: a flat inference graph.

``fuse_batchnorm`` rebuilds a keras_effv2 model as a functional graph of plain Keras layers
(Conv2D/DepthwiseConv2D with bias, Activation, Multiply, Add, pooling, Dense): each
``conv -> BN`` pair becomes one conv whose kernel is scaled by ``gamma / sqrt(var + eps)``
and whose bias is ``beta - mean * gamma / sqrt(var + eps)`` (computed in float64). Dropout
and stochastic depth, identities at inference, are dropped. The result computes the same
function as ``model(x, training=False)`` (max |delta logit| <= 1e-4 in float32) and keeps
the original's input and output layout; ``data_format`` picks the layout used *inside*
(one transpose at the input, and one at the output for a 4D feature map).

Example:
    >>> import keras_effv2
    >>> from keras_effv2.fast import fuse_batchnorm
    >>> model = keras_effv2.EfficientNetV2B0(weights=None, input_shape=(64, 64, 3))
    >>> fused = fuse_batchnorm(model)
    >>> any(isinstance(l, keras.layers.BatchNormalization) for l in fused.layers)
    False
"""

from __future__ import annotations

import keras
import numpy as np

from keras_effv2.fast.layers import ShiftDepthwiseConv2D, plain_silu
from keras_effv2.keras_graph import inbound_tensors
from keras_effv2.layers import FusedMBConv, InputNormalization, MBConv

_FORMATS = ("channels_last", "channels_first")
_DEPTHWISE = ("conv", "shift")
_PASSTHROUGH = (keras.layers.Dropout,)


def _bn_scale_shift(bn: keras.layers.BatchNormalization):
    """Per-channel (scale, shift) of an inference-mode BN, in float64."""
    mean = np.asarray(keras.ops.convert_to_numpy(bn.moving_mean), np.float64)
    var = np.asarray(keras.ops.convert_to_numpy(bn.moving_variance), np.float64)
    gamma = (np.asarray(keras.ops.convert_to_numpy(bn.gamma), np.float64) if bn.scale
             else np.ones_like(mean))
    beta = (np.asarray(keras.ops.convert_to_numpy(bn.beta), np.float64) if bn.center
            else np.zeros_like(mean))
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale, beta - mean * scale


def fold_conv_bn(conv, bn):
    """Return ``(kernel, bias)`` float32 arrays of ``conv`` with ``bn`` folded in.

    Works for ``Conv2D`` kernels ``(kh, kw, in, out)`` and ``DepthwiseConv2D`` kernels
    ``(kh, kw, in, multiplier)`` (output channel ``i * multiplier + m``).
    """
    scale, shift = _bn_scale_shift(bn)
    if isinstance(conv, keras.layers.DepthwiseConv2D):
        kernel = np.asarray(keras.ops.convert_to_numpy(conv.kernel), np.float64)
        kh, kw, cin, mult = kernel.shape
        kernel = kernel * scale.reshape(cin, mult)
    else:
        kernel = np.asarray(keras.ops.convert_to_numpy(conv.kernel), np.float64) * scale
    bias = shift
    if conv.use_bias:
        bias = bias + scale * np.asarray(keras.ops.convert_to_numpy(conv.bias), np.float64)
    return kernel.astype(np.float32), bias.astype(np.float32)


class _Builder:
    """Emits flat layers into a new functional graph, remembering their weights."""

    def __init__(self, data_format: str, depthwise: str = "conv"):
        self.data_format = data_format
        self.depthwise = depthwise
        self.axis = -1 if data_format == "channels_last" else 1
        self.weights: list[tuple[keras.layers.Layer, list[np.ndarray]]] = []

    def _kw(self, src):
        return {"dtype": src.dtype_policy}

    # Weights are overwritten right after; zeros avoid a per-shape random-init kernel (slow
    # to compile on JAX).
    _INIT = {"kernel_initializer": "zeros", "bias_initializer": "zeros"}

    def conv_bn(self, x, conv, bn, name):
        kernel, bias = fold_conv_bn(conv, bn)
        common = dict(strides=conv.strides, padding=conv.padding, data_format=self.data_format,
                      dilation_rate=conv.dilation_rate, use_bias=True, name=name,
                      **self._kw(conv))
        shift = (isinstance(conv, keras.layers.DepthwiseConv2D)
                 and self.depthwise == "shift" and conv.padding == "same"
                 and tuple(conv.dilation_rate) == (1, 1) and conv.depth_multiplier == 1
                 and conv.strides[0] == conv.strides[1]
                 and conv.kernel_size[0] == conv.kernel_size[1])
        if shift:
            layer = ShiftDepthwiseConv2D(conv.kernel_size[0], conv.strides[0], self.data_format,
                                         name=name, **self._kw(conv))  # zero-initialised
        elif isinstance(conv, keras.layers.DepthwiseConv2D):
            layer = keras.layers.DepthwiseConv2D(
                conv.kernel_size, depth_multiplier=conv.depth_multiplier,
                depthwise_initializer="zeros", bias_initializer="zeros", **common)
        else:
            layer = keras.layers.Conv2D(conv.filters, conv.kernel_size, groups=conv.groups,
                                        **self._INIT, **common)
        y = layer(x)
        self.weights.append((layer, [kernel, bias]))
        return y

    def conv(self, x, conv, name):
        layer = keras.layers.Conv2D(
            conv.filters, conv.kernel_size, strides=conv.strides, padding=conv.padding,
            data_format=self.data_format, use_bias=conv.use_bias, name=name, **self._INIT,
            **self._kw(conv))
        y = layer(x)
        self.weights.append((layer, [keras.ops.convert_to_numpy(w) for w in conv.weights]))
        return y

    def act(self, x, fn, name, src):
        return keras.layers.Activation(_plain(fn), name=name, **self._kw(src))(x)

    def squeeze_excite(self, x, se, name):
        s = keras.layers.GlobalAveragePooling2D(data_format=self.data_format, keepdims=True,
                                                name=f"{name}_pool", **self._kw(se))(x)
        s = self.act(self.conv(s, se.conv_reduce, f"{name}_reduce"), "silu", f"{name}_silu", se)
        s = self.act(self.conv(s, se.conv_expand, f"{name}_expand"), "sigmoid",
                     f"{name}_gate", se)
        return keras.layers.Multiply(name=f"{name}_scale", **self._kw(se))([x, s])

    def block(self, x, block):
        n, inputs = block.name, x
        if block.expand_conv is not None:
            x = self.conv_bn(x, block.expand_conv, block.expand_bn, f"{n}_expand_conv")
            x = self.act(x, "silu", f"{n}_expand_act", block)
        if isinstance(block, MBConv):
            x = self.conv_bn(x, block.dw_conv, block.dw_bn, f"{n}_dw_conv")
            x = self.act(x, "silu", f"{n}_dw_act", block)
        if block.se is not None:
            x = self.squeeze_excite(x, block.se, f"{n}_se")
        x = self.conv_bn(x, block.project_conv, block.project_bn, f"{n}_project_conv")
        if isinstance(block, FusedMBConv) and block.expand_conv is None:
            x = self.act(x, "silu", f"{n}_project_act", block)
        if block.has_residual:
            x = keras.layers.Add(name=f"{n}_add", **self._kw(block))([x, inputs])
        return x


def _chain(model: keras.Model, caller: str = "fuse_batchnorm") -> list[keras.layers.Layer]:
    """The model's layers in order, checking the graph is a single chain."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"{caller} expects a keras_effv2 model with one input and output.")
    layers = model.layers
    for prev, layer in zip(layers, layers[1:], strict=False):
        node_inputs = inbound_tensors(layer)
        if len(node_inputs) != 1 or node_inputs[0] is not prev.output:
            raise ValueError(
                f"{caller} expects a chain of layers as built by keras_effv2 "
                f"(build_efficientnetv2); layer {layer.name!r} does not take {prev.name!r}'s "
                f"output alone.")
    return layers


def _plain(activation):
    """``plain_silu`` for SiLU (fusable into the conv on TF), any other activation as is."""
    name = activation if isinstance(activation, str) else getattr(activation, "__name__", "")
    return plain_silu if name in ("silu", "swish") else activation


def _to_format(x, src: str, dst: str, name: str):
    if src == dst:
        return x
    perm = (3, 1, 2) if dst == "channels_first" else (2, 3, 1)
    return keras.layers.Permute(perm, name=name)(x)


def fuse_batchnorm(model: keras.Model, data_format: str | None = None,
                   name: str | None = None, depthwise: str = "conv") -> keras.Model:
    """Return an inference-only copy of ``model`` with every BatchNorm folded into its conv.

    Args:
        model: a keras_effv2 model (``build_efficientnetv2`` / ``EfficientNetV2*``), any
            ``include_top``/``pooling``/preprocessing setting, weights as loaded.
        data_format: layout used inside the new model (``"channels_last"``,
            ``"channels_first"``); ``None`` keeps the original's. Inputs and outputs keep
            the original's layout either way.
        name: name of the new model; defaults to ``<model.name>_fused``.
        depthwise: ``"conv"`` (``DepthwiseConv2D``) or ``"shift"``
            (:class:`~keras_effv2.fast.layers.ShiftDepthwiseConv2D`, needs static H, W).
    """
    layers = _chain(model)
    src_format = _source_format(layers)
    dst_format = src_format if data_format is None else data_format
    if dst_format not in _FORMATS:
        raise ValueError(f"data_format must be one of {_FORMATS} or None; got {data_format!r}.")
    if depthwise not in _DEPTHWISE:
        raise ValueError(f"depthwise must be one of {_DEPTHWISE}; got {depthwise!r}.")
    b = _Builder(dst_format, depthwise)
    in_shape = tuple(model.inputs[0].shape[1:])
    inputs = keras.Input(shape=in_shape, name="input", dtype=model.inputs[0].dtype)
    x = inputs
    converted = src_format == dst_format
    i = 1
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if not converted and not isinstance(layer, InputNormalization):
            x, converted = _to_format(x, src_format, dst_format, "to_" + dst_format), True
        if isinstance(layer, InputNormalization):
            x = InputNormalization(layer.mean, layer.std, src_format, name=layer.name,
                                   dtype=layer.dtype_policy)(x)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            if not isinstance(nxt, keras.layers.BatchNormalization):
                raise ValueError(f"layer {layer.name!r}: expected a BatchNormalization after it.")
            x = b.conv_bn(x, layer, nxt, layer.name)
            i += 1
        elif isinstance(layer, keras.layers.Activation):
            x = keras.layers.Activation(_plain(layer.activation), name=layer.name,
                                        dtype=layer.dtype_policy)(x)
        elif isinstance(layer, (FusedMBConv, MBConv)):
            x = b.block(x, layer)
        elif isinstance(layer, (keras.layers.GlobalAveragePooling2D,
                                keras.layers.GlobalMaxPooling2D)):
            x = type(layer)(data_format=dst_format, keepdims=layer.keepdims, name=layer.name,
                            dtype=layer.dtype_policy)(x)
        elif isinstance(layer, keras.layers.Dense):
            dense = keras.layers.Dense.from_config({**layer.get_config(), **_Builder._INIT})
            x = dense(x)
            b.weights.append((dense, [keras.ops.convert_to_numpy(w) for w in layer.weights]))
        elif not isinstance(layer, _PASSTHROUGH):
            raise ValueError(f"fuse_batchnorm: unsupported layer {layer.name!r} "
                             f"({type(layer).__name__}); expected a keras_effv2 model.")
        i += 1
    if len(x.shape) == 4:
        x = _to_format(x, dst_format, src_format, "to_" + src_format)
    fused = keras.Model(inputs, x, name=name or f"{model.name}_fused")
    for layer, weights in b.weights:
        layer.set_weights(weights)
    return fused


def _source_format(layers) -> str:
    for layer in layers:
        fmt = getattr(layer, "data_format", None)
        if fmt in _FORMATS:
            return fmt
    return keras.config.image_data_format()
