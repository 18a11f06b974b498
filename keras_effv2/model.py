"""The EfficientNetV2 architecture: stem -> blocks -> head, as a functional model.

Pure architecture: nothing here knows about weight sets. The public constructors
(:mod:`keras_effv2.applications`) resolve a weight set's classes and preprocessing, call
:func:`build_efficientnetv2`, then load the weights (:func:`keras_effv2.weights.load`).

Example:
    >>> from keras_effv2.configs import VARIANTS
    >>> from keras_effv2.model import build_efficientnetv2
    >>> model = build_efficientnetv2(VARIANTS["b0"])
    >>> model.count_params()
    7200312
"""

from __future__ import annotations

import keras

from keras_effv2.configs import get_variant, resolve_blocks
from keras_effv2.layers import FusedMBConv, InputNormalization, MBConv
from keras_effv2.layers.blocks import CONV_KERNEL_INITIALIZER
from keras_effv2.preprocessing import PreprocessingSpec

# U(+-1/sqrt(classes)), bias 0: automl/timm's classifier init.
DENSE_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"},
}
MIN_INPUT_SIZE = 32
BLOCK_CLASSES = {"fused": FusedMBConv, "mbconv": MBConv}


def _input_shape(input_shape, data_format: str):
    if input_shape is None:
        return (None, None, 3) if data_format == "channels_last" else (3, None, None)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            f"input_shape must have 3 entries (H, W, C or C, H, W), got {input_shape}."
        )
    spatial = input_shape[:2] if data_format == "channels_last" else input_shape[1:]
    for d in spatial:
        if d is not None and d < MIN_INPUT_SIZE:
            raise ValueError(
                f"input_shape {input_shape}: height and width must be at least {MIN_INPUT_SIZE} "
                f"(or None for any size)."
            )
    return input_shape


def _model_inputs(input_tensor, input_shape):
    if input_tensor is None:
        return keras.Input(shape=input_shape, name="input"), None
    if keras.backend.is_keras_tensor(input_tensor):
        return input_tensor, input_tensor
    tensor = keras.Input(tensor=input_tensor, shape=input_shape)
    return tensor, tensor


def build_efficientnetv2(
    variant,
    include_top: bool = True,
    input_tensor=None,
    input_shape=None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation="softmax",
    preprocessing: PreprocessingSpec | None = None,
    name: str | None = None,
    *,
    dropout_rate: float | None = None,
    drop_path_rate: float | None = None,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-3,
) -> keras.Model:
    """Build an EfficientNetV2 variant as a functional ``keras.Model`` with fresh weights.

    Args:
        variant: a ``VariantSpec`` or a name (``"b0"`` ... ``"xl"``).
        include_top: whether to add pooling, dropout and the classifier.
        input_tensor: optional Keras tensor (or backend tensor) to use as input.
        input_shape: ``(H, W, 3)`` (channels_last) or ``(3, H, W)``; ``None`` entries allow
            any size >= 32. Defaults to ``(None, None, 3)``.
        pooling: with ``include_top=False``: ``None`` (4D map), ``"avg"`` or ``"max"``.
        classes: classifier width with ``include_top=True``.
        classifier_activation: activation of the classifier, ``None`` for logits.
        preprocessing: a ``PreprocessingSpec`` whose mean/std the model applies to
            ``[0, 255]`` RGB input (layer ``preprocessing``), or ``None`` for none.
        name: model name; defaults to ``efficientnetv2_<variant>``.
        dropout_rate: dropout before the classifier; defaults to the variant's (automl).
        drop_path_rate: stochastic depth of the last block (linear ramp); default 0.2.
        bn_momentum, bn_epsilon: BatchNormalization settings (Keras convention).

    The classifier (``predictions``) always computes in float32, so under a
    ``mixed_float16``/``mixed_bfloat16`` policy the probabilities are float32.
    """
    spec = get_variant(variant)
    data_format = keras.config.image_data_format()
    channel_axis = -1 if data_format == "channels_last" else 1
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max'; got {pooling!r}.")
    if include_top and (not isinstance(classes, int) or classes < 1):
        raise ValueError(f"classes must be a positive int with include_top=True; got {classes!r}.")
    dropout_rate = spec.dropout_rate if dropout_rate is None else float(dropout_rate)
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1); got {dropout_rate}.")
    if drop_path_rate is not None and not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1); got {drop_path_rate}.")
    if preprocessing is not None and not isinstance(preprocessing, PreprocessingSpec):
        raise ValueError("preprocessing must be a keras_effv2.preprocessing.PreprocessingSpec "
                         f"or None; got {preprocessing!r}.")

    inputs, source = _model_inputs(input_tensor, _input_shape(input_shape, data_format))
    x = inputs
    if preprocessing is not None:
        x = InputNormalization(preprocessing.mean, preprocessing.std, data_format,
                               name="preprocessing")(x)

    bn = dict(axis=channel_axis, momentum=bn_momentum, epsilon=bn_epsilon)
    x = keras.layers.Conv2D(
        spec.stem_channels, 3, strides=2, padding="same", use_bias=False,
        data_format=data_format, kernel_initializer=CONV_KERNEL_INITIALIZER, name="stem_conv",
    )(x)
    x = keras.layers.BatchNormalization(name="stem_bn", **bn)(x)
    x = keras.layers.Activation("silu", name="stem_act")(x)

    for block in resolve_blocks(spec, drop_path_rate):
        x = BLOCK_CLASSES[block.block](
            block.in_channels,
            block.out_channels,
            kernel_size=block.kernel,
            strides=block.stride,
            expand_ratio=block.expand_ratio,
            se_channels=block.se_channels,
            drop_path_rate=block.drop_path_rate,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
            data_format=data_format,
            name=block.name,
        )(x)

    x = keras.layers.Conv2D(
        spec.head_channels, 1, padding="same", use_bias=False, data_format=data_format,
        kernel_initializer=CONV_KERNEL_INITIALIZER, name="head_conv",
    )(x)
    x = keras.layers.BatchNormalization(name="head_bn", **bn)(x)
    x = keras.layers.Activation("silu", name="head_act")(x)

    if include_top:
        x = keras.layers.GlobalAveragePooling2D(data_format=data_format, name="avg_pool")(x)
        if dropout_rate > 0:
            x = keras.layers.Dropout(dropout_rate, name="head_dropout")(x)
        x = keras.layers.Dense(
            classes, activation=classifier_activation, kernel_initializer=DENSE_KERNEL_INITIALIZER,
            bias_initializer="zeros", dtype="float32", name="predictions",
        )(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(data_format=data_format, name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(data_format=data_format, name="max_pool")(x)

    model_inputs = keras.utils.get_source_inputs(source) if source is not None else inputs
    return keras.Model(model_inputs, x, name=name or spec.model_name)
