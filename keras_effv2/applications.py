"""Public constructors ``EfficientNetV2B0`` ... ``EfficientNetV2XL`` (keras.applications API).

Example:
    >>> import keras_effv2
    >>> model = keras_effv2.EfficientNetV2S(weights=None, classes=10)
    >>> model.output_shape
    (None, 10)
"""

from __future__ import annotations

from keras_effv2.configs import VARIANTS
from keras_effv2.model import build_efficientnetv2
from keras_effv2.weights import list_weights

BASE_DOCSTRING = """Instantiates the EfficientNetV2-{upper} architecture (Tan & Le, ICML 2021).

Reference: https://arxiv.org/abs/2104.00298. Parameters: {params:,} ({trainable:,} trainable)
with the 1000-class top; trained at {train_size}px, evaluated at {eval_size}px.

The model is a functional graph of ``keras_effv2.layers`` blocks named
``s{{stage}}_b{{index:02d}}``.
With ``include_preprocessing=True`` it takes RGB in ``[0, 255]``.

Args:
    include_top: whether to include the pooling, dropout and classifier. Default True.
    weights: ``None`` (random initialisation), a registered tag ({tags}) or a path to
        a ``.weights.h5`` file. Tags download and convert once into the Keras cache.
    input_tensor: optional Keras tensor to use as the model's input.
    input_shape: optional shape tuple; default ``(None, None, 3)`` (any size >= 32), or
        ``(3, None, None)`` with ``channels_first``.
    pooling: with ``include_top=False``: ``None`` (4D feature map), ``"avg"`` or ``"max"``.
    classes: number of classes with ``include_top=True``. Default: the weight set's
        (21843 for ``"imagenet21k"``), else 1000; another value keeps the pretrained
        backbone with a fresh head.
    classifier_activation: activation of the top layer (``None`` returns logits). Default
        ``"softmax"``.
    include_preprocessing: ``True`` normalises inside the model as the loaded weight set
        expects (input RGB in ``[0, 255]``), ``False`` skips it, a ``PreprocessingSpec``
        chooses another. Default True.
    name: model name. Default ``"efficientnetv2_{lower}"``.
    dropout_rate: keyword-only; dropout before the classifier. Default {dropout}.
    drop_path_rate: keyword-only; stochastic depth of the last block, ramped linearly from
        0 over the blocks. Default 0.2.
    bn_momentum: keyword-only; BatchNormalization momentum (Keras convention). Default 0.9.
    bn_epsilon: keyword-only; BatchNormalization epsilon. Default 1e-3.
    features_only: keyword-only; return a backbone whose output is a dict of feature maps
        ``{{"P1": stride 2, ..., "P5": stride 32}}`` (block outputs, before the head conv;
        see ``keras_effv2.features``). ``include_top`` is ignored. Default False.
    out_indices: keyword-only; with ``features_only``, the levels to return: ints 0..4
        (0 = P1, as timm) or names ``"P1"``..``"P5"``. Default: all five.

Returns:
    A ``keras.Model``.

Example:
    >>> import keras_effv2
    >>> model = keras_effv2.EfficientNetV2{upper}(weights=None)
"""


def _make_constructor(variant: str):
    spec = VARIANTS[variant]

    def constructor(
        include_top=True,
        weights=None,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=None,
        classifier_activation="softmax",
        include_preprocessing=True,
        name=None,
        *,
        dropout_rate=None,
        drop_path_rate=None,
        bn_momentum=0.9,
        bn_epsilon=1e-3,
        features_only=False,
        out_indices=None,
    ):
        return build_efficientnetv2(
            spec,
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            include_preprocessing=include_preprocessing,
            name=name,
            dropout_rate=dropout_rate,
            drop_path_rate=drop_path_rate,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
            features_only=features_only,
            out_indices=out_indices,
        )

    upper = variant.upper()
    constructor.__name__ = constructor.__qualname__ = f"EfficientNetV2{upper}"
    constructor.__doc__ = BASE_DOCSTRING.format(
        upper=upper, lower=variant, params=spec.params_total, trainable=spec.params_trainable,
        train_size=spec.train_size, eval_size=spec.eval_size, dropout=spec.dropout_rate,
        tags=", ".join(f'``"{w["alias"]}"``' for w in list_weights(variant)),
    )
    return constructor


EfficientNetV2B0 = _make_constructor("b0")
EfficientNetV2B1 = _make_constructor("b1")
EfficientNetV2B2 = _make_constructor("b2")
EfficientNetV2B3 = _make_constructor("b3")
EfficientNetV2S = _make_constructor("s")
EfficientNetV2M = _make_constructor("m")
EfficientNetV2L = _make_constructor("l")
EfficientNetV2XL = _make_constructor("xl")
EfficientNetV2 = build_efficientnetv2
