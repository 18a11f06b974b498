"""The generic EfficientNetV2 builder: stem -> blocks -> head, as a functional model.

Example:
    >>> from keras_effv2.configs import VARIANTS
    >>> from keras_effv2.model import build_efficientnetv2
    >>> model = build_efficientnetv2(VARIANTS["b0"], weights=None)
    >>> model.count_params()
    7200312
"""

from __future__ import annotations

import logging
import os

import keras

from keras_effv2.configs import VariantSpec, get_variant, resolve_blocks
from keras_effv2.features import feature_extractor, resolve_out_indices
from keras_effv2.layers import FusedMBConv, InputNormalization, MBConv
from keras_effv2.layers.blocks import CONV_KERNEL_INITIALIZER
from keras_effv2.preprocessing import PreprocessingSpec
from keras_effv2.pretrained import load_pretrained
from keras_effv2.weights import default_weights_spec, get_weights_spec, is_weights_tag

logger = logging.getLogger("keras_effv2")

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


def _is_path(weights) -> bool:
    if is_weights_tag(weights):
        return False
    w = os.fspath(weights)
    return w.endswith(".h5") or os.sep in w or os.path.exists(w)


def _resolve_preprocessing(include_preprocessing, variant: VariantSpec, weights_spec=None):
    if include_preprocessing is True:
        if weights_spec is not None:
            return weights_spec.preprocessing
        return default_weights_spec(variant).preprocessing
    if include_preprocessing in (False, None):
        return None
    if isinstance(include_preprocessing, PreprocessingSpec):
        return include_preprocessing
    raise ValueError(
        "include_preprocessing must be True, False or a keras_effv2.preprocessing."
        f"PreprocessingSpec; got {include_preprocessing!r}."
    )


def build_efficientnetv2(
    variant,
    include_top: bool = True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling: str | None = None,
    classes: int | None = None,
    classifier_activation="softmax",
    include_preprocessing=True,
    name: str | None = None,
    *,
    dropout_rate: float | None = None,
    drop_path_rate: float | None = None,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-3,
    features_only: bool = False,
    out_indices=None,
) -> keras.Model:
    """Build an EfficientNetV2 variant as a functional ``keras.Model``.

    Args:
        variant: a ``VariantSpec`` or a name (``"b0"`` ... ``"xl"``).
        include_top: whether to add pooling, dropout and the classifier.
        weights: ``None`` (random init), a registered tag (``"imagenet"``,
            ``"imagenet21k"``, ``"imagenet21k-ft1k"`` or timm's ``"in1k"``...; see
            ``keras_effv2.list_weights()``) or a path to a ``.weights.h5`` file. Tags are
            downloaded and converted once into the Keras cache (``KERAS_HOME``);
            ``KERAS_EFFV2_WEIGHTS_MIRROR`` points at an offline mirror.
        input_tensor: optional Keras tensor (or backend tensor) to use as input.
        input_shape: ``(H, W, 3)`` (channels_last) or ``(3, H, W)``; ``None`` entries allow
            any size >= 32. Defaults to ``(None, None, 3)``.
        pooling: with ``include_top=False``: ``None`` (4D map), ``"avg"`` or ``"max"``.
        classes: classifier width with ``include_top=True``. Defaults to the weight set's
            (21843 for ``"imagenet21k"``), else 1000. A different value keeps the pretrained
            backbone and starts a fresh head.
        classifier_activation: activation of the classifier, ``None`` for logits.
        include_preprocessing: ``True`` to normalise ``[0, 255]`` RGB in the model as the
            loaded weight set expects (the variant's ImageNet set without a tag), ``False``
            for none, or a ``PreprocessingSpec``.
        name: model name; defaults to ``efficientnetv2_<variant>``.
        dropout_rate: dropout before the classifier; defaults to the variant's (automl).
        drop_path_rate: stochastic depth of the last block (linear ramp); default 0.2.
        bn_momentum, bn_epsilon: BatchNormalization settings (Keras convention).
        features_only: return a backbone whose output is a dict of multi-scale maps
            ``{"P1": stride 2, ..., "P5": stride 32}`` (see ``keras_effv2.features``);
            ``include_top`` is then ignored and ``pooling`` must be None.
        out_indices: with ``features_only``, the levels to return: ints ``0..4`` (timm's
            convention, 0 = P1) or names ``"P1"``..``"P5"``. Default: all five.

    The classifier (``predictions``) always computes in float32, so under a
    ``mixed_float16``/``mixed_bfloat16`` policy the probabilities are float32.
    """
    spec = get_variant(variant)
    data_format = keras.config.image_data_format()
    channel_axis = -1 if data_format == "channels_last" else 1
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max'; got {pooling!r}.")
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"weights must be None, a registered tag or a path to a .weights.h5 file; "
            f"got {weights!r}."
        )
    weights_spec = None
    if weights is not None and not _is_path(weights):
        weights_spec = get_weights_spec(spec, os.fspath(weights))
    if classes is None:
        classes = weights_spec.num_classes if weights_spec is not None else 1000
    if include_top and (not isinstance(classes, int) or classes < 1):
        raise ValueError(f"classes must be a positive int with include_top=True; got {classes!r}.")
    dropout_rate = spec.dropout_rate if dropout_rate is None else float(dropout_rate)
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1); got {dropout_rate}.")
    if drop_path_rate is not None and not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1); got {drop_path_rate}.")
    preprocessing = _resolve_preprocessing(include_preprocessing, spec, weights_spec)
    if features_only:
        if pooling is not None:
            raise ValueError(f"features_only=True returns 4D maps; pooling must be None, "
                             f"got {pooling!r}.")
        levels = resolve_out_indices(out_indices)
        include_top = False
    elif out_indices is not None:
        raise ValueError("out_indices is only used with features_only=True.")

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
    model = keras.Model(model_inputs, x, name=name or spec.model_name)
    if weights_spec is not None:
        load_head = include_top and classes == weights_spec.num_classes
        if include_top and not load_head:
            logger.warning(
                "keras_effv2: weights %r have %d classes but classes=%d: the backbone is "
                "pretrained, the %d-class head is freshly initialised.",
                weights_spec.key, weights_spec.num_classes, classes, classes,
            )
        load_pretrained(model, weights_spec, load_head=load_head)
    elif weights is not None:
        load_weights_file(model, weights)
    if features_only:
        return feature_extractor(model, levels, name=name or f"{spec.model_name}_features")
    return model


def load_weights_file(model: keras.Model, path) -> None:
    """Load a ``.weights.h5`` file strictly: every variable must match by name and shape."""
    path = os.fspath(path)
    if not path.endswith(".weights.h5"):
        raise ValueError(
            f"weights={path!r}: expected None or a path to a Keras '.weights.h5' file."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist.")
    model.load_weights(path)
