"""Multi-scale feature maps (P1..P5) and a Grad-CAM model from an EfficientNetV2.

Level ``P{k}`` is the output of the last block at stride ``2**k``: the last block of each
stage that is followed by a downsampling stage, plus the final block (timm's
``feature_info`` and automl's ``reduction_1..5``). P5 is the last block's output, *before*
``head_conv``; the head activation (``head_act``) is a separate output of
:func:`grad_cam_model`. Level names are stable; ``out_indices`` counts from 0 as timm
does (``0`` is P1, ``4`` is P5).

Example:
    >>> import keras_effv2
    >>> from keras_effv2.features import feature_extractor
    >>> model = keras_effv2.EfficientNetV2B0(weights=None, include_top=False)
    >>> backbone = feature_extractor(model, out_indices=(2, 3, 4))
    >>> {k: v[1:] for k, v in backbone.output_shape.items()}  # doctest: +SKIP
    {'P3': (None, None, 48), 'P4': (None, None, 112), 'P5': (None, None, 192)}
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence

import keras

from keras_effv2.configs import get_variant, resolve_blocks

LEVELS = ("P1", "P2", "P3", "P4", "P5")
GRAD_CAM_LAYER = "head_act"
_BLOCK_NAME = re.compile(r"s(\d+)_b(\d+)")


@dataclasses.dataclass(frozen=True)
class FeatureEndpoint:
    """One pyramid level: its name, the block whose output it is, stride and channels."""

    level: str
    layer: str
    reduction: int
    channels: int


def _endpoints(blocks: Sequence[tuple[str, int, int]]) -> tuple[FeatureEndpoint, ...]:
    """Endpoints from ``(block name, stride, out channels)`` in model order (stem stride 2)."""
    out = []
    reduction = 2
    for i, (name, stride, channels) in enumerate(blocks):
        reduction *= stride
        last = i == len(blocks) - 1
        if last or blocks[i + 1][1] > 1:
            out.append(FeatureEndpoint(f"P{int(math.log2(reduction))}", name, reduction, channels))
    levels = tuple(e.level for e in out)
    if levels != LEVELS:
        raise ValueError(f"expected pyramid levels {LEVELS}, found {levels}.")
    return tuple(out)


def feature_endpoints(variant) -> tuple[FeatureEndpoint, ...]:
    """The five endpoints of a variant (a name such as ``"s"`` or a ``VariantSpec``)."""
    spec = get_variant(variant)
    return _endpoints([(b.name, b.stride, b.out_channels) for b in resolve_blocks(spec)])


def model_feature_endpoints(model: keras.Model) -> tuple[FeatureEndpoint, ...]:
    """The five endpoints read off a built keras_effv2 model's block layers."""
    blocks = [
        (layer.name, layer.strides, layer.out_channels)
        for layer in model.layers
        if _BLOCK_NAME.fullmatch(layer.name) and hasattr(layer, "out_channels")
    ]
    if not blocks:
        raise ValueError(
            f"model {model.name!r} has no keras_effv2 blocks (layers named s<stage>_b<index>); "
            "pass a model built by keras_effv2."
        )
    return _endpoints(blocks)


def resolve_out_indices(out_indices: Iterable[int | str] | None) -> tuple[str, ...]:
    """Normalise ``out_indices`` (ints 0..4 and/or names ``"P1"``..``"P5"``) to level names."""
    if out_indices is None:
        return LEVELS
    if isinstance(out_indices, (int, str)):
        out_indices = (out_indices,)
    levels = []
    for i in out_indices:
        if isinstance(i, str) and i.upper() in LEVELS:
            level = i.upper()
        elif isinstance(i, int) and not isinstance(i, bool) and -5 <= i < 5:
            level = LEVELS[i]
        else:
            raise ValueError(
                f"out_indices entry {i!r} is not valid: use ints 0..4 (0 = P1, stride 2; "
                f"4 = P5, stride 32) or names {', '.join(LEVELS)}."
            )
        if level in levels:
            raise ValueError(f"out_indices {tuple(out_indices)!r} repeats level {level}.")
        levels.append(level)
    if not levels:
        raise ValueError("out_indices must select at least one level.")
    return tuple(sorted(levels))


def feature_extractor(
    model: keras.Model, out_indices: Iterable[int | str] | None = None, name: str | None = None
) -> keras.Model:
    """A functional model sharing ``model``'s layers that returns ``{"P1": ..., "P5": ...}``.

    Args:
        model: a keras_effv2 model (any variant, input size, head or no head).
        out_indices: levels to return: ints ``0..4`` (timm's convention, 0 = P1) and/or
            names ``"P1"``..``"P5"``. Default: all five.
        name: name of the new model; default ``<model.name>_features``.

    Weights are shared with ``model``: load weights into either and both see them.
    """
    levels = resolve_out_indices(out_indices)
    by_level = {e.level: e for e in model_feature_endpoints(model)}
    outputs = {lv: model.get_layer(by_level[lv].layer).output for lv in levels}
    return keras.Model(model.inputs, outputs, name=name or f"{model.name}_features")


def grad_cam_model(model: keras.Model, name: str | None = None) -> keras.Model:
    """A model returning ``{"head_act": last conv activation, "predictions": model output}``.

    ``head_act`` is the SiLU after ``head_conv``/``head_bn`` (stride 32, ``head_channels``
    wide), the map Grad-CAM weights by the gradient of a class score. Weights are shared.

    Example (TensorFlow backend):
        >>> import tensorflow as tf  # doctest: +SKIP
        >>> cam = grad_cam_model(model)  # doctest: +SKIP
        >>> with tf.GradientTape() as tape:  # doctest: +SKIP
        ...     out = cam(images)
        ...     score = out["predictions"][:, class_index]
        >>> grads = tape.gradient(score, out["head_act"])  # doctest: +SKIP
        >>> weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # doctest: +SKIP
        >>> heatmap = tf.nn.relu(tf.reduce_sum(weights * out["head_act"], -1))  # doctest: +SKIP
    """
    try:
        act = model.get_layer(GRAD_CAM_LAYER).output
    except ValueError as err:
        raise ValueError(
            f"model {model.name!r} has no {GRAD_CAM_LAYER!r} layer; pass a keras_effv2 model."
        ) from err
    return keras.Model(
        model.inputs, {GRAD_CAM_LAYER: act, "predictions": model.outputs[0]},
        name=name or f"{model.name}_grad_cam",
    )
