"""The torch-backend fast training path (the only torch training code in keras_effv2.fast).

``training_model(model)`` returns a functional model built on ``model``'s own inputs, outputs
and layers (so it shares every variable and every layer name) whose ``call`` runs the graph
as direct ``torch.nn.functional`` calls on the Keras variables' torch tensors instead of
through Keras' op layer: convolutions with the kernel viewed in OIHW and Keras' "same"
padding (``fast._torch.conv2d``), ``F.batch_norm`` (batch statistics in training, the moving
ones otherwise), in-place SiLU, SE with ``F.linear``, stochastic depth through the model's own
``DropPath`` layers (same seeds), activations in channels_last memory. Autograd flows into the
variables, so Keras' torch trainer (``fit``, ``train_on_batch``) and its optimizer update them.

BatchNorm follows Keras exactly: in training (``training=True`` and ``layer.trainable``) it
normalises with the batch mean and biased variance and assigns
``moving = moving * momentum + batch_stat * (1 - momentum)``; otherwise it uses the moving
statistics. Under a mixed precision policy BN computes in float32, as Keras' does.

Example:
    >>> from keras_effv2.fast._torch_train import training_model  # KERAS_BACKEND=torch only
"""

from __future__ import annotations

import keras
import torch
import torch.nn.functional as F

from keras_effv2.fast._torch import conv2d, torch_kernel
from keras_effv2.fast.fuse import _chain, _source_format
from keras_effv2.layers import FusedMBConv, InputNormalization, MBConv


def _conv(layer, x):
    kernel = layer.kernel.value
    if kernel.dtype != x.dtype:
        kernel = kernel.to(x.dtype)
    weight, groups = torch_kernel(layer, kernel)
    bias = layer.bias.value.to(x.dtype) if layer.use_bias else None
    return conv2d(x, weight, bias, tuple(layer.strides), groups, layer.padding == "same")


def _batch_norm(bn, x, training):
    """Keras' BatchNormalization on NCHW ``x`` (``bn.axis`` is the channel axis)."""
    dtype = x.dtype
    if dtype != torch.float32 and dtype != torch.float64:
        x = x.float()  # Keras upcasts BN's input to float32
    gamma = bn.gamma.value if bn.scale else None
    beta = bn.beta.value if bn.center else None
    if not (training and bn.trainable):
        y = F.batch_norm(x, bn.moving_mean.value, bn.moving_variance.value, gamma, beta,
                         False, 0.0, bn.epsilon)
        return y if y.dtype == dtype else y.to(dtype)
    channels = x.shape[1]
    # momentum=1 makes F.batch_norm write the batch mean and *unbiased* variance into these.
    mean = torch.zeros(channels, dtype=x.dtype, device=x.device)
    var = torch.zeros(channels, dtype=x.dtype, device=x.device)
    y = F.batch_norm(x, mean, var, gamma, beta, True, 1.0, bn.epsilon)
    n = x.numel() // channels
    with torch.no_grad():
        var = var * ((n - 1) / n) if n > 1 else torch.zeros_like(var)  # biased, as Keras
        m = bn.momentum
        bn.moving_mean.assign(bn.moving_mean.value * m + mean * (1.0 - m))
        bn.moving_variance.assign(bn.moving_variance.value * m + var * (1.0 - m))
    return y if y.dtype == dtype else y.to(dtype)


def _silu(x, inplace=True):
    return F.silu(x, inplace=inplace)


def _squeeze_excite(se, x):
    s = x.mean((2, 3))
    reduce, expand = se.conv_reduce, se.conv_expand
    w = reduce.kernel.value[0, 0].to(x.dtype)  # (C, se): F.linear takes (out, in) = w.T
    s = F.silu(F.linear(s, w.t(), reduce.bias.value.to(x.dtype)), inplace=True)
    w = expand.kernel.value[0, 0].to(x.dtype)
    s = torch.sigmoid_(F.linear(s, w.t(), expand.bias.value.to(x.dtype)))
    return x * s[:, :, None, None]


def _block(block, x, training):
    inputs = x
    if block.expand_conv is not None:
        x = _silu(_batch_norm(block.expand_bn, _conv(block.expand_conv, x), training))
    if isinstance(block, MBConv):
        x = _silu(_batch_norm(block.dw_bn, _conv(block.dw_conv, x), training))
    if block.se is not None:
        x = _squeeze_excite(block.se, x)
    x = _batch_norm(block.project_bn, _conv(block.project_conv, x), training)
    if isinstance(block, FusedMBConv) and block.expand_conv is None:
        x = _silu(x)
    if not block.has_residual:
        return x
    if block.drop_path is not None and training:
        x = block.drop_path(x, training=True)
    return x + inputs


def _activation(layer, inplace):
    name = getattr(layer.activation, "__name__", "")
    if name in ("silu", "swish"):
        return lambda x, training: F.silu(x, inplace=inplace)
    return None


def _input_normalization(layer):
    scale = torch.as_tensor(layer._scale).reshape(-1, 1, 1)
    offset = torch.as_tensor(layer._offset).reshape(-1, 1, 1)

    def normalize(x, training):
        dtype = getattr(torch, layer.compute_dtype)
        return x.to(dtype) * scale.to(x.device, dtype) + offset.to(x.device, dtype)
    return normalize


def _step(layer, fresh):
    """``f(x, training)`` computing ``layer`` on NCHW tensors, or None (run it through Keras).

    ``fresh``: the input is made by the step before, so it may be overwritten in place.
    """
    if isinstance(layer, (FusedMBConv, MBConv)):
        return lambda x, training: _block(layer, x, training)
    if isinstance(layer, keras.layers.BatchNormalization):
        if layer.renorm or layer.synchronized:
            return None
        return lambda x, training: _batch_norm(layer, x, training)
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
        if tuple(layer.dilation_rate) != (1, 1) or layer.activation is not keras.activations.linear:
            return None
        return lambda x, training: _conv(layer, x)
    if isinstance(layer, keras.layers.Activation):
        return _activation(layer, fresh)
    if isinstance(layer, InputNormalization):
        return _input_normalization(layer)
    if isinstance(layer, keras.layers.GlobalAveragePooling2D):
        return lambda x, training: x.mean((2, 3), keepdim=layer.keepdims)
    if isinstance(layer, keras.layers.GlobalMaxPooling2D):
        return lambda x, training: x.amax((2, 3), keepdim=layer.keepdims)
    return None


class FastTrainingModel(keras.Model):
    """``model``'s functional graph (same inputs, outputs, layers and variables) whose ``call``
    runs the layers as direct torch calls; layers without a lowering run through Keras."""

    def __init__(self, model):
        layers = _chain(model, "optimize_for_training")
        super().__init__(model.inputs, model.outputs, name=f"{model.name}_fast_train")
        self._channels_last = _source_format(layers) == "channels_last"
        self._steps, fresh = [], False
        for layer in layers[1:]:
            fn = _step(layer, fresh)
            self._steps.append((fn, layer))
            fresh = fn is not None

    def call(self, inputs, training=None, mask=None):
        x = keras.ops.convert_to_tensor(keras.tree.flatten(inputs)[0], self.inputs[0].dtype)
        training, nchw = bool(training), False
        for fn, layer in self._steps:
            if fn is not None and not nchw:
                x, nchw = self._to_nchw(x), True
            elif fn is None and nchw and x.ndim == 4:
                x, nchw = self._from_nchw(x), False
            x = fn(x, training) if fn is not None else layer(x, training=training)
        return self._from_nchw(x) if nchw and x.ndim == 4 else x

    def _to_nchw(self, x):
        if self._channels_last:
            x = x.permute(0, 3, 1, 2)  # an NHWC tensor is NCHW in channels_last memory
        return x.contiguous(memory_format=torch.channels_last)

    def _from_nchw(self, x):
        return x.permute(0, 2, 3, 1) if self._channels_last else x

    def get_config(self):
        raise NotImplementedError(
            f"{self.name!r} is a fast training view of another model and is not serialisable: "
            "save the model you passed to optimize_for_training (it holds the same weights), "
            "or use save_weights.")


def training_model(model: keras.Model) -> keras.Model:
    """A :class:`FastTrainingModel` sharing ``model``'s layers and variables."""
    return FastTrainingModel(model)
