"""Two-phase fine-tuning helpers: freeze the backbone, freeze BatchNorm.

Keras 3 semantics: a layer with ``trainable=False`` is frozen, and a ``BatchNormalization``
with ``trainable=False`` also runs in inference mode (its moving statistics stay fixed). So
``freeze_backbone`` is safe with small batches; after unfreezing, BN statistics update again.
Recompile after changing ``trainable`` (Keras reads it when building the train step).

Example:
    >>> import keras_effv2
    >>> from keras_effv2.training import freeze_backbone, set_bn_trainable, unfreeze
    >>> model = keras_effv2.EfficientNetV2B0(weights=None, classes=5, input_shape=(64, 64, 3))
    >>> freeze_backbone(model)            # phase 1: only the head trains; compile, fit
    ['predictions']
    >>> unfreeze(model); set_bn_trainable(model, False)   # phase 2: all but BN; compile, fit
    59
"""

from __future__ import annotations

import re

import keras

from keras_effv2.keras_graph import nested_layers

HEAD_LAYERS = ("head_dropout", "predictions")
_BLOCK_RE = re.compile(r"^s(\d+)_b\d+$")


def _stage_of(name: str) -> int | None:
    if name.startswith("stem_") or name in ("input", "preprocessing"):
        return -1
    m = _BLOCK_RE.match(name)
    return int(m.group(1)) if m else None


def freeze_backbone(model: keras.Model, until: str | None = None,
                    head_layers=HEAD_LAYERS) -> list[str]:
    """Freeze the backbone; returns the names of the layers left trainable.

    Args:
        until: ``None`` freezes everything but ``head_layers``; ``"stage4"`` (or ``"s4"``)
            freezes the stem and stages 1..4 only, leaving later stages and the head trainable.
        head_layers: layer names that stay trainable when ``until`` is None.
    """
    limit = None
    if until is not None:
        m = re.fullmatch(r"(?:stage|s)(\d+)", str(until))
        if not m:
            raise ValueError(f"until must be None or 'stageN' / 'sN'; got {until!r}.")
        limit = int(m.group(1))
    trainable = []
    for layer in model.layers:
        if limit is None:
            freeze = layer.name not in head_layers
        else:
            stage = _stage_of(layer.name)
            freeze = stage is not None and stage <= limit
        layer.trainable = not freeze
        if not freeze and layer.weights:
            trainable.append(layer.name)
    return trainable


def unfreeze(model: keras.Model) -> None:
    """Make every layer trainable again (BN included)."""
    for layer in model.layers:
        layer.trainable = True
    model.trainable = True


def set_bn_trainable(model: keras.Model, trainable: bool) -> int:
    """Set ``trainable`` on every BatchNormalization (nested in blocks too); returns the count."""
    count = 0
    for layer in nested_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = trainable
            count += 1
    return count
