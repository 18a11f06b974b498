"""The torch-backend fast training path (the only torch training code in keras_effv2.fast).

``training_model(model)`` returns a :class:`FastTrainingModel`: ``model``'s own functional
graph (the same inputs, outputs, layer objects and variables) whose ``call`` runs the layers
as direct ``torch.nn.functional`` calls on the variables' torch tensors instead of through
Keras' op layer, which on torch transposes NHWC <-> NCHW around every convolution and runs
BatchNorm as a dozen separate ops. Autograd flows into the variables, so Keras' torch
trainer (``fit``, ``train_on_batch``) and its optimizer train them as usual.

Lowered: convolutions (Keras' "same" padding, shared with the inference path,
:func:`keras_effv2.fast._torch.conv2d`; each kernel variable is stored once in the memory
order of torch's channels_last OIHW weight, :func:`_kernel_in_torch_layout`, so the weight is
a view and its gradient needs no copy), ``batch_norm``, SiLU, squeeze-excite (``F.linear`` on
the pooled vector; pooling as a sum whose gradient is a broadcast view), residual adds with
stochastic depth (in place; the draws are each ``DropPath`` layer's own,
:meth:`~keras_effv2.layers.DropPath.sample_scale`, so they equal the plain model's), global
pooling. Activations are NCHW in channels_last memory (contiguous NCHW measured 0.6x, 1x1
convolutions as matmuls 0.8x). Input normalisation, head dropout and the classifier run
through the model's own Keras layers. A Keras ``Adam``/``AdamW`` updates through torch's fused
kernel during the fast model's steps (:mod:`keras_effv2.fast._torch_optim`). ``torch.compile``
of the lowered graph was measured and dropped: B0 at 224, batch 16, a 436 s first step, then
0.92x timm where eager ran 0.89x in the same process.

BatchNorm follows Keras exactly: when ``training`` and ``layer.trainable``, it normalises
with the batch mean and *biased* variance and updates
``moving = moving * momentum + batch_stat * (1 - momentum)`` (the mean inside
``batch_norm`` with torch's momentum ``1 - momentum``, the variance rescaled from torch's
unbiased one); otherwise (``evaluate``, ``predict``, a frozen layer) it uses the moving
statistics. Under a mixed precision policy BN computes in float32, as Keras' layer does. In a
multi-process run, training-mode BN uses the global batch's statistics
(:mod:`keras_effv2.fast._torch_sync_bn`).

Example:
    >>> from keras_effv2.fast._torch_train import training_model  # KERAS_BACKEND=torch only
    >>> fast = training_model(model)  # doctest: +SKIP
    >>> fast.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    >>> fast.fit(images, labels)       # trains ``model``'s variables
"""

from __future__ import annotations

import keras
import torch
import torch.nn.functional as F

from keras_effv2.fast import _torch_sync_bn
from keras_effv2.fast._torch import conv2d, torch_kernel
from keras_effv2.fast._torch_optim import fused_adam
from keras_effv2.fast.fuse import _chain, _source_format
from keras_effv2.layers import FusedMBConv, MBConv


def _conv(layer, x):
    kernel = layer.kernel.value
    weight, groups = torch_kernel(layer, kernel if kernel.dtype == x.dtype else kernel.to(x.dtype))
    # A view when the variable is laid out by _kernel_in_torch_layout (a copy otherwise).
    weight = weight.contiguous(memory_format=torch.channels_last)
    bias = layer.bias.value.to(x.dtype) if layer.use_bias else None
    return conv2d(x, weight, bias, tuple(layer.strides), groups, layer.padding == "same")


def _kernel_in_torch_layout(layer) -> None:
    """Store ``layer.kernel`` (Keras HWIO, depthwise ``(kh, kw, in, mult)``) in the memory
    order of torch's channels_last OIHW weight. Shape and values stay; only the strides
    change, so :func:`_conv`'s weight is a view of the variable instead of a per-step copy,
    and the kernel gradient lands in the variable's own layout without a second copy (B0 at
    one CPU thread: the forward's per-step kernel copies alone took 20 ms)."""
    param = layer.kernel.value
    weight, _ = torch_kernel(layer, param.detach())
    if weight.is_contiguous(memory_format=torch.channels_last):
        return
    target = weight.contiguous(memory_format=torch.channels_last)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        view = target.permute(2, 3, 0, 1).view(param.shape)
    else:
        view = target.permute(2, 3, 1, 0)
    assert torch.equal(view, param.detach()), layer.name
    param.grad = None
    param.data = view


def _batch_norm(bn, x, training):
    """Keras' ``BatchNormalization`` over axis 1 of ``x``, moving statistics included."""
    dtype = x.dtype
    if dtype not in (torch.float32, torch.float64):
        x = x.float()  # Keras upcasts BN's input to float32
    gamma = bn.gamma.value if bn.scale else None
    beta = bn.beta.value if bn.center else None
    if not (training and bn.trainable):
        y = F.batch_norm(x, bn.moving_mean.value, bn.moving_variance.value, gamma, beta,
                         False, 0.0, bn.epsilon)
        return y if y.dtype == dtype else y.to(dtype)
    if _torch_sync_bn.active():  # a multi-process run: the global batch's statistics
        y = _torch_sync_bn.batch_norm_train(bn, x, 1)
        return y if y.dtype == dtype else y.to(dtype)
    # The moving mean updates inside batch_norm (torch's momentum is 1 - Keras'); the variance
    # it would update is the *unbiased* one, so it goes to a buffer and Keras' rule (biased
    # variance) is applied below.
    m = bn.momentum
    var = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    # (torch.batch_norm, not F.batch_norm: Keras allows one value per channel, F refuses it.)
    y = torch.batch_norm(x, gamma, beta, bn.moving_mean.value, var, True, 1.0 - m, bn.epsilon,
                         True)
    n = x.numel() // x.shape[1]
    with torch.no_grad():  # var = (1 - m) * unbiased batch variance (NaN for n = 1)
        moving_variance = bn.moving_variance.value.mul_(m)
        if n > 1:
            moving_variance.add_(var, alpha=(n - 1) / n)
    return y if y.dtype == dtype else y.to(dtype)


def _silu(x):
    # Out of place under autograd: in place, autograd would save a copy of the input anyway.
    return F.silu(x, inplace=not torch.is_grad_enabled())


def _spatial_mean(x, keepdim=False):
    """``x.mean((2, 3))`` whose gradient is a broadcast view: ``mean``'s backward writes a
    full-size ``grad / (h * w)`` tensor, ``sum``'s expands the (small) scaled gradient
    (B0 SE block at 14 x 14 x 672, batch 16, forward + backward: 6.4 -> 3.7 ms)."""
    return x.sum((2, 3), keepdim=keepdim) * (1.0 / (x.shape[2] * x.shape[3]))


def _squeeze_excite(se, x):
    s = _spatial_mean(x)
    for conv, act in ((se.conv_reduce, _silu), (se.conv_expand, torch.sigmoid)):
        kernel = conv.kernel.value[0, 0]  # (in, out): F.linear takes (out, in)
        s = act(F.linear(s, kernel.to(x.dtype).t(), conv.bias.value.to(x.dtype)))
    return x * s[:, :, None, None]


def _block(block, x, training, scale):
    """``FusedMBConv``/``MBConv.call`` on NCHW ``x``; ``scale``: its drop-path draw or None."""
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
    # x is this block's own fresh tensor, which no backward formula saved: scale and add in
    # place.
    if scale is not None:
        x = x.mul_(scale)
    return x.add_(inputs)


def _lowering(layer, channel_axis):
    """``f(x, training, scales)`` computing ``layer`` on NCHW tensors, or None (run it through
    Keras). ``scales``: the drop-path draws of this call by block name."""
    if isinstance(layer, (FusedMBConv, MBConv)):
        return lambda x, training, scales: _block(layer, x, training, scales.get(layer.name))
    if isinstance(layer, keras.layers.BatchNormalization):
        if layer.renorm or layer.synchronized or layer.axis % 4 != channel_axis:
            return None
        return lambda x, training, scales: _batch_norm(layer, x, training)
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
        if (tuple(layer.dilation_rate) != (1, 1) or len(layer.kernel.shape) != 4
                or layer.activation is not keras.activations.linear):
            return None
        return lambda x, training, scales: _conv(layer, x)
    if isinstance(layer, keras.layers.Activation) and \
            getattr(layer.activation, "__name__", "") in ("silu", "swish"):
        return lambda x, training, scales: _silu(x)
    if isinstance(layer, keras.layers.GlobalAveragePooling2D):
        return lambda x, training, scales: _spatial_mean(x, layer.keepdims)
    if isinstance(layer, keras.layers.GlobalMaxPooling2D):
        return lambda x, training, scales: x.amax((2, 3), keepdim=layer.keepdims)
    return None


def _convs(layer) -> list:
    """The convolutions :func:`_conv` runs for a lowered ``layer``."""
    if isinstance(layer, (FusedMBConv, MBConv)):
        return [c for c in (layer.expand_conv, getattr(layer, "dw_conv", None),
                            layer.project_conv) if c is not None]
    return [layer] if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) \
        else []


class FastTrainingModel(keras.Model):
    """``model``'s functional graph (the same inputs, outputs, layers and variables) whose
    ``call`` runs the lowerable layers as direct torch calls on NCHW tensors and the others
    (input normalisation, dropout, the classifier) through Keras in the model's layout."""

    def __init__(self, model: keras.Model):
        if keras.backend.backend() != "torch":
            raise ValueError(f"FastTrainingModel runs on the torch backend only; this is "
                             f"{keras.backend.backend()!r}. Use "
                             f"keras_effv2.fast.optimize_for_training(model).")
        layers = _chain(model, "optimize_for_training")
        super().__init__(model.inputs, model.outputs, name=f"{model.name}_fast_train")
        self._nhwc = _source_format(layers) == "channels_last"
        channel_axis = 3 if self._nhwc else 1
        # Maximal runs of lowered layers, and the other layers one by one. Tuples: Keras does
        # not track them (the layers are tracked through the graph).
        segments, run = [], []
        for layer in layers[1:]:
            fn = _lowering(layer, channel_axis)
            if fn is not None:
                run.append(fn)
                for conv in _convs(layer):
                    _kernel_in_torch_layout(conv)
                continue
            if run:
                segments.append(tuple(run))
                run = []
            segments.append(layer)
        self._segments = tuple(segments + ([tuple(run)] if run else []))
        self._blocks = tuple(layer for layer in layers if getattr(layer, "drop_path", None))

    def train_step(self, data):
        with fused_adam(self.optimizer):  # Keras' Adam update in one pass (CPU)
            return super().train_step(data)

    def call(self, inputs, training=None, mask=None):
        x = keras.ops.convert_to_tensor(keras.tree.flatten(inputs)[0], self.inputs[0].dtype)
        training = bool(training)
        scales = self._drop_path_scales(x.shape[0]) if training else {}
        for segment in self._segments:
            if isinstance(segment, tuple):
                x = self._run(segment, x, training, scales)
            else:
                x = segment(x, training=training)
        return x

    def _run(self, steps, x, training, scales):
        """Lowered layers on ``x`` in the model's layout (NCHW in channels_last inside)."""
        x = self._to_nchw(x)
        for fn in steps:
            x = fn(x, training, scales)
        return self._from_nchw(x) if x.ndim == 4 else x

    def _drop_path_scales(self, batch_size):
        """Each block's DropPath draw for this call (its own seed generator, as Keras')."""
        return {layer.name: layer.drop_path.sample_scale(batch_size, 4, layer.compute_dtype)
                for layer in self._blocks if layer.drop_path.rate > 0}

    def _to_nchw(self, x):
        if self._nhwc:
            x = x.permute(0, 3, 1, 2)  # a contiguous NHWC tensor is NCHW in channels_last memory
        return x.contiguous(memory_format=torch.channels_last)

    def _from_nchw(self, x):
        return x.permute(0, 2, 3, 1) if self._nhwc else x

    def get_config(self):
        raise NotImplementedError(
            f"{self.name!r} is a fast training view of another model and is not serialisable: "
            "save the model passed to optimize_for_training (it holds the same weights), or "
            "use save_weights/load_weights (the same file layout as that model's).")


def training_model(model: keras.Model) -> keras.Model:
    """A :class:`FastTrainingModel` of ``model``: training it trains ``model``."""
    return FastTrainingModel(model)
