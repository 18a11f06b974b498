"""The JAX half of the fast training path (the only JAX code in keras_effv2.fast).

``training_model(model)`` returns a functional model over ``model``'s own layers and
variables whose training step XLA compiles to cheaper CPU code. Where the plain model's step
goes (B0 224, batch 16, per-op XLA profile): XLA:CPU runs a depthwise convolution as a slow
generic grouped-convolution loop, and its filter gradient as a *dense* ``C x C`` convolution
of which only the diagonal is kept (``f32[672,3,3,672]`` for a 672-channel block): together
60 % of the step. Here:

- depthwise convolutions are sums of shifted slices (:func:`shift_depthwise`) with a custom
  gradient (:func:`depthwise`): the input gradient is the shifted-slice form's own, the
  filter gradient ``k*k`` per-channel products summed one image at a time (``lax.scan``),
  which keeps an image's shifted copies in cache;
- the k x k convolutions of the fused blocks keep XLA's forward and input gradient, with the
  filter gradient as ``k*k`` per-image tap matmuls (:func:`dense_conv`);
- 1x1 convolutions are matrix products over the channel axis, so their filter gradient is a
  ``dot`` instead of a convolution with an H x W window.

Under ``keras.distribution.DataParallel`` the per-image scan runs over the images of each
device's part of the batch, so the filter gradients need one all-reduce and no all-gather of
the activations (B0 224, batch 16, 2 virtual CPU devices: 1.16x the scan over the sharded
batch axis; one device: 1.00x, the same weights bit for bit; docs/distribution.md).

Measured in one process (B0 224, batch 16, Adam, jitted ``train_on_batch``; medians of 3
interleaved steps on 2 loaded cores): plain 1.16 img/s; 1x1 matmuls + shifted depthwise by
plain autodiff 3.39 (2.9x); + the custom depthwise gradient 3.74 (3.2x); + the tap-matmul
filter gradient of the fused convs 4.08 (3.5x). Against that last one: 1x1 convs left as
convolutions 0.63x; filter gradients 4 images per scan step 1.01x (kept at 1); taps transposed
to (C, B, H, W) for plain matrix products 0.94x.

Every other layer (BatchNormalization in training mode, SiLU, squeeze-excite, stochastic
depth, dropout, the classifier) is the original layer object, called as in the model, so
``training=True`` behaves (and draws random numbers) exactly as the plain model's.

Example:
    >>> import keras_effv2  # KERAS_BACKEND=jax
    >>> from keras_effv2.fast._jax_train import training_model
    >>> model = keras_effv2.EfficientNetV2B0(weights=None, input_shape=(64, 64, 3))
    >>> training_model(model).get_layer("predictions") is model.get_layer("predictions")
    True
"""

from __future__ import annotations

import functools

import jax
import keras
from keras import ops

from keras_effv2.fast.layers import shift_depthwise, shifted_taps
from keras_effv2.keras_graph import execution_order, is_functional, node_operation
from keras_effv2.layers import FusedMBConv, MBConv


def _batch_shards(batch: int) -> int:
    """How many parts the active Keras distribution splits a batch of ``batch`` into (1: none).

    ``keras.distribution.DataParallel`` shards the batch axis in contiguous blocks, one a
    device; ``_sum_over_images`` keeps that axis, so each device sums its own images.
    """
    dist = keras.distribution.distribution()
    name = getattr(dist, "batch_dim_name", None)
    if name is None or name not in dist.device_mesh.axis_names:
        return 1
    shards = dist.device_mesh.shape[list(dist.device_mesh.axis_names).index(name)]
    return shards if batch % shards == 0 else 1


def _sum_over_images(x, g, kernel_size, strides, data_format, contract, out_shape):
    """``sum_n stack_t contract(tap_t(x[n:n+1]), g[n:n+1])[0]`` in float32, one image at a time.

    One image's ``k*k`` shifted copies stay in cache, where the whole batch's would not.
    ``contract`` keeps the leading (image) axis. Under data parallelism (``_batch_shards``
    parts) each scan step takes one image of every part, so the scan runs over an unsharded
    axis: every device sums its own images (a scan over the sharded batch axis itself made
    XLA all-gather ``x`` and ``g`` and every device sum the whole batch), and the parts' sums
    are added once at the end.
    """
    parts = _batch_shards(x.shape[0])

    def one_step(acc, xg):
        gi = ops.cast(xg[1], "float32")
        taps = shifted_taps(xg[0], kernel_size, strides, data_format)
        return acc + ops.stack([contract(ops.cast(t, "float32"), gi) for t in taps]), None

    def per_step(t):  # (B, ...) -> (B / parts, parts, ...): part p holds images p*B/parts...
        return ops.swapaxes(ops.reshape(t, (parts, -1, *t.shape[1:])), 0, 1)

    init = ops.zeros((kernel_size * kernel_size, parts, *out_shape))
    acc, _ = jax.lax.scan(one_step, init, (per_step(x), per_step(g)))
    return ops.sum(acc, axis=1)


def _depthwise_filter_grad(x, g, kernel_size, strides, data_format):
    """d(sum(shift_depthwise(x, w) * g)) / dw, shape (k, k, C, 1)."""
    last = data_format == "channels_last"
    axes, channels = ((1, 2), x.shape[-1]) if last else ((2, 3), x.shape[1])
    acc = _sum_over_images(x, g, kernel_size, strides, data_format,
                           lambda t, gi: ops.sum(t * gi, axis=axes), (channels,))
    return ops.reshape(acc, (kernel_size, kernel_size, channels, 1))


def _conv_filter_grad(x, g, kernel_size, strides, data_format):
    """d(sum(conv(x, w) * g)) / dw for a "same" Conv2D, shape (k, k, C_in, C_out)."""
    last = data_format == "channels_last"
    spec = "bhwc,bhwd->bcd" if last else "bchw,bdhw->bcd"
    cin, cout = (x.shape[-1], g.shape[-1]) if last else (x.shape[1], g.shape[1])
    acc = _sum_over_images(x, g, kernel_size, strides, data_format,
                           lambda t, gi: ops.einsum(spec, t, gi), (cin, cout))
    return ops.reshape(acc, (kernel_size, kernel_size, cin, cout))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise(x, kernel, strides, data_format):
    """Depthwise "same" conv (no bias) as shifted slices, with the per-image filter gradient.

    Example:
        >>> import numpy as np
        >>> depthwise(np.ones((1, 8, 8, 4), "float32"), np.ones((3, 3, 4, 1), "float32"),
        ...           1, "channels_last").shape
        (1, 8, 8, 4)
    """
    return shift_depthwise(x, kernel, strides, data_format)


def _depthwise_fwd(x, kernel, strides, data_format):
    return depthwise(x, kernel, strides, data_format), (x, kernel)


def _depthwise_bwd(strides, data_format, residuals, g):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda t: shift_depthwise(t, kernel, strides, data_format), x)
    dkernel = _depthwise_filter_grad(x, g, kernel.shape[0], strides, data_format)
    return input_vjp(g)[0], ops.cast(dkernel, kernel.dtype)


depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def dense_conv(x, kernel, strides, data_format):
    """A "same" Conv2D (no bias) whose filter gradient is per-image tap matmuls."""
    return ops.conv(x, kernel, strides, "same", data_format)


def _dense_conv_fwd(x, kernel, strides, data_format):
    return dense_conv(x, kernel, strides, data_format), (x, kernel)


def _dense_conv_bwd(strides, data_format, residuals, g):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda t: ops.conv(t, kernel, strides, "same", data_format), x)
    dkernel = _conv_filter_grad(x, g, kernel.shape[0], strides, data_format)
    return input_vjp(g)[0], ops.cast(dkernel, kernel.dtype)


dense_conv.defvjp(_dense_conv_fwd, _dense_conv_bwd)


def _pointwise(conv, x):
    """A 1x1, stride-1 ``Conv2D`` as a matrix product over the channel axis."""
    kernel = ops.reshape(conv.kernel, conv.kernel.shape[2:])
    if conv.data_format == "channels_last":
        y = ops.matmul(x, kernel)
        return y + conv.bias if conv.use_bias else y
    y = ops.einsum("bchw,cd->bdhw", x, kernel)
    return y + ops.reshape(conv.bias, (-1, 1, 1)) if conv.use_bias else y


def _plain_conv(conv) -> bool:
    return (type(conv) is keras.layers.Conv2D and conv.groups == 1
            and conv.activation is keras.activations.linear
            and tuple(conv.dilation_rate) == (1, 1))


def _is_pointwise(conv) -> bool:
    return (_plain_conv(conv) and tuple(conv.kernel_size) == (1, 1)
            and tuple(conv.strides) == (1, 1))


def _is_square_same(conv) -> bool:
    return (conv.padding == "same" and not conv.use_bias
            and tuple(conv.dilation_rate) == (1, 1)
            and conv.kernel_size[0] == conv.kernel_size[1] and conv.strides[0] == conv.strides[1])


def _fast_conv(conv):
    """``conv`` as a callable computing the same function the fast way (or ``conv`` itself)."""
    if conv is None:
        return None
    if _is_pointwise(conv):
        return functools.partial(_pointwise, conv)
    if (type(conv) is keras.layers.DepthwiseConv2D and conv.depth_multiplier == 1
            and conv.activation is keras.activations.linear and _is_square_same(conv)):
        return lambda x: depthwise(x, conv.kernel.value, conv.strides[0], conv.data_format)
    if _plain_conv(conv) and _is_square_same(conv):
        return lambda x: dense_conv(x, conv.kernel.value, conv.strides[0], conv.data_format)
    return conv


class _Shared(keras.layers.Layer):
    """Runs ``source``'s function the fast way on ``source``'s own (tracked) variables."""

    def __init__(self, source: keras.layers.Layer, **kwargs):
        super().__init__(name=source.name, dtype=source.dtype_policy, **kwargs)
        self.source = source
        self.built = True

    def compute_output_shape(self, input_shape):
        return self.source.compute_output_shape(input_shape)


class PointwiseConv(_Shared):
    """A 1x1 ``Conv2D`` as a matrix product (same kernel variable)."""

    def call(self, x):
        return _pointwise(self.source, x)


class FastBlock(_Shared):
    """A ``FusedMBConv`` or ``MBConv`` with fast convolutions; all sublayers shared."""

    def __init__(self, block, **kwargs):
        super().__init__(block, **kwargs)
        # A tuple: Keras does not track it (the layers are tracked through ``source``).
        self._convs = tuple(_fast_conv(getattr(block, name, None))
                            for name in ("expand_conv", "dw_conv", "project_conv"))

    def call(self, inputs, training=None):
        b, (expand_conv, dw_conv, project_conv) = self.source, self._convs
        x = inputs
        if expand_conv is not None:
            x = ops.silu(b.expand_bn(expand_conv(x), training=training))
        if dw_conv is not None:
            x = ops.silu(b.dw_bn(dw_conv(x), training=training))
        if b.se is not None:
            x = b.se(x)
        x = b.project_bn(project_conv(x), training=training)
        if isinstance(b, FusedMBConv) and expand_conv is None:
            x = ops.silu(x)
        return b._residual(inputs, x, training)


def _fast_layer(layer):
    if type(layer) in (FusedMBConv, MBConv):
        return FastBlock(layer)
    if _is_pointwise(layer):
        return PointwiseConv(layer)
    return layer


def training_model(model: keras.Model) -> keras.Model:
    """A model over ``model``'s layers and variables whose JAX training step is faster on CPU.

    Same inputs, outputs and top-level layer names; blocks and 1x1 convolutions are
    wrappers (:class:`FastBlock`, :class:`PointwiseConv`) around the original layers, every
    other layer is the original object. Training it trains ``model``.
    """
    if not is_functional(model):
        raise TypeError(f"optimize_for_training expects a functional keras.Model "
                        f"(keras.Model(inputs, outputs)); got {type(model).__name__}.")
    tensors = {id(t): keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name)
               for t in model.inputs}
    for node in execution_order(model):
        layer = _fast_layer(node_operation(model, node))
        args, kwargs = node.arguments.fill_in(tensors)
        outputs = layer(*args, **kwargs)
        for src, out in zip(node.outputs, keras.tree.flatten(outputs), strict=True):
            tensors[id(src)] = out

    def new(structure):
        return keras.tree.map_structure(lambda t: tensors[id(t)], structure)

    return keras.Model(new(model.input), new(model.output), name=model.name)
