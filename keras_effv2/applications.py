"""Public constructors ``EfficientNetV2B0`` ... ``EfficientNetV2XL`` (keras.applications API).

A constructor resolves the weight set (its classes and preprocessing), builds the
architecture (:func:`keras_effv2.model.build_efficientnetv2`), then loads the weights
(:func:`keras_effv2.weights.load`). :func:`preprocess_input` applies a weight set's
normalisation outside the model.

Example:
    >>> import keras_effv2
    >>> model = keras_effv2.EfficientNetV2S(weights=None, classes=10)
    >>> model.output_shape
    (None, 10)
"""

from __future__ import annotations

import os

from keras_effv2.configs import VARIANTS, get_variant
from keras_effv2.features import feature_extractor, resolve_out_indices
from keras_effv2.model import build_efficientnetv2
from keras_effv2.preprocessing import PreprocessingSpec
from keras_effv2.weights import (
    WeightsSpec,
    default_weights_spec,
    file_classes,
    get_weights_spec,
    is_weights_tag,
    list_weights,
    load,
    resolve_key,
)
from keras_effv2.weights.load import weights_path
from keras_effv2.weights.registry import TAG_NAMES


def _resolve_weights(variant: str, weights) -> tuple[WeightsSpec | None, str | None]:
    """``(registered weight set, None)``, ``(None, file path)`` or ``(None, None)``."""
    if weights is None:
        return None, None
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be None, a registered tag or a path to a Keras "
                         f"'.weights.h5' file; got {weights!r}. Registered tags: {TAG_NAMES}.")
    if is_weights_tag(weights):
        return get_weights_spec(variant, weights), None
    w = os.fspath(weights)
    if w.endswith(".h5") or os.sep in w or os.path.exists(w):
        return None, weights_path(w)
    return get_weights_spec(variant, w), None  # not a tag: the error lists the valid ones


def _resolve_preprocessing(include_preprocessing, variant: str, weights_spec):
    if include_preprocessing is True:
        return (weights_spec or default_weights_spec(variant)).preprocessing
    if include_preprocessing in (False, None):
        return None
    if isinstance(include_preprocessing, PreprocessingSpec):
        return include_preprocessing
    raise ValueError(
        "include_preprocessing must be True, False or a keras_effv2.preprocessing."
        f"PreprocessingSpec; got {include_preprocessing!r}."
    )


def EfficientNetV2(
    variant,
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
    """Any EfficientNetV2 variant: ``variant`` (``"b0"`` ... ``"xl"``), then the arguments of
    ``EfficientNetV2B0`` (see its docstring).

    Example:
        >>> import keras_effv2
        >>> model = keras_effv2.EfficientNetV2("b0", weights=None, include_top=False)
    """
    spec = get_variant(variant)
    weights_spec, weights_file = _resolve_weights(spec.name, weights)
    if classes is None:
        stored = weights_spec.num_classes if weights_spec else (
            file_classes(weights_file) if weights_file else None)
        classes = stored or 1000
    preprocessing = _resolve_preprocessing(include_preprocessing, spec.name, weights_spec)
    if features_only:
        if pooling is not None:
            raise ValueError(f"features_only=True returns 4D maps; pooling must be None, "
                             f"got {pooling!r}.")
        levels = resolve_out_indices(out_indices)
        include_top = False
    elif out_indices is not None:
        raise ValueError("out_indices is only used with features_only=True.")
    model = build_efficientnetv2(
        spec, include_top=include_top, input_tensor=input_tensor, input_shape=input_shape,
        pooling=pooling, classes=classes, classifier_activation=classifier_activation,
        preprocessing=preprocessing, name=name, dropout_rate=dropout_rate,
        drop_path_rate=drop_path_rate, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
    )
    if weights is not None:
        load(model, weights_spec.tag if weights_spec else weights_file, variant=spec.name)
    if features_only:
        return feature_extractor(model, levels, name=name or f"{spec.model_name}_features")
    return model


def preprocess_input(images, spec: PreprocessingSpec | None = None, *, weights=None):
    """Normalise ``[0, 255]`` channels-last images for a model built with
    ``include_preprocessing=False``.

    Args:
        images: RGB in ``[0, 255]``, channels last.
        spec: a :class:`~keras_effv2.preprocessing.PreprocessingSpec`, or
        weights: the weight set instead: a ``WeightsSpec`` or a registry key such as
            ``"s.in21k_ft_in1k"`` or ``"b0.imagenet"``.

    Example:
        >>> import numpy as np
        >>> import keras_effv2
        >>> x = np.full((1, 2, 2, 3), 255.0, "float32")
        >>> float(keras_effv2.preprocess_input(x, weights="b0.imagenet21k-ft1k")[0, 0, 0, 0])
        1.0
    """
    if (spec is None) == (weights is None):
        raise ValueError("Pass exactly one of spec= or weights=.")
    if weights is not None:
        spec = resolve_key(weights).preprocessing
    return spec.normalize(images)


BASE_DOCSTRING = """Instantiates the EfficientNetV2-{upper} architecture (Tan & Le, ICML 2021).

Reference: https://arxiv.org/abs/2104.00298. Parameters: {params:,} ({trainable:,} trainable)
with the 1000-class top; trained at {train_size}px, evaluated at {eval_size}px.

The model is a functional graph of ``keras_effv2.layers`` blocks named
``s{{stage}}_b{{index:02d}}``.
With ``include_preprocessing=True`` it takes RGB in ``[0, 255]``.

Args:
    include_top: whether to include the pooling, dropout and classifier. Default True.
    weights: ``None`` (random initialisation), a registered tag ({tags}) or a path to
        a ``.weights.h5`` file. Tags download and convert once into the Keras cache
        (``KERAS_EFFV2_WEIGHTS_MIRROR`` points at an offline mirror); loading is strict
        (every name and shape checked, nothing assigned on a mismatch).
    input_tensor: optional Keras tensor to use as the model's input.
    input_shape: optional shape tuple; default ``(None, None, 3)`` (any size >= 32), or
        ``(3, None, None)`` with ``channels_first``.
    pooling: with ``include_top=False``: ``None`` (4D feature map), ``"avg"`` or ``"max"``.
    classes: number of classes with ``include_top=True``. Default: the weight set's
        (21843 for ``"imagenet21k"``) or the file's, else 1000; another value keeps the
        pretrained backbone with a fresh head (logged).
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

Example:{example_note}
    >>> import keras_effv2
    >>> model = keras_effv2.EfficientNetV2{upper}(weights=None){skip}
    >>> model.count_params(){skip}
    {params}
"""


# Variants whose docstring example tests/test_doctests.py skips (build time; B0 and S run there,
# tests/test_param_counts.py builds every variant).
_NOT_DOCTESTED = ("b1", "b2", "b3", "m", "l", "xl")


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
        return EfficientNetV2(
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

    upper, slow = variant.upper(), variant in _NOT_DOCTESTED
    constructor.__name__ = constructor.__qualname__ = f"EfficientNetV2{upper}"
    constructor.__doc__ = BASE_DOCSTRING.format(
        upper=upper, lower=variant, params=spec.params_total,
        trainable=spec.params_trainable, skip="  # doctest: +SKIP" if slow else "",
        example_note=" (not run as a doctest, to keep the doctests fast;"
        " tests/test_param_counts.py builds this variant)" if slow else "",
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
