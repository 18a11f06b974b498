"""Input preprocessing as data: what a weight set expects, and how to apply it.

A :class:`PreprocessingSpec` belongs to a weight set (not to a variant name). Models built
with ``include_preprocessing`` take RGB in ``[0, 255]`` and normalise inside the graph;
:func:`preprocess_input` applies the same transform outside the model.

Example:
    >>> import numpy as np
    >>> from keras_effv2.preprocessing import IMAGENET, preprocess_input
    >>> x = np.full((1, 4, 4, 3), 255.0, "float32")
    >>> round(float(preprocess_input(x, IMAGENET)[0, 0, 0, 0]), 4)
    2.2489
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class PreprocessingSpec:
    """How images are normalised and resized for one weight set.

    ``mean``/``std`` are in the ``[0, 1]`` scale: ``y = (x / 255 - mean) / std``.
    ``crop_pct``/``crop_mode``/``interpolation`` describe evaluation resizing (timm
    conventions: ``"center"`` crops ``crop_pct`` of the short side, ``"squash"`` resizes the
    whole image).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    crop_mode: str = "center"

    def normalize(self, images):
        """Apply the normalisation to a channels-last NumPy array in ``[0, 255]``."""
        x = np.asarray(images, dtype="float32")
        return (x / 255.0 - np.asarray(self.mean, "float32")) / np.asarray(self.std, "float32")


# ImageNet mean/std: automl's legacy (effnetv1_autoaug) pipeline for B0-B3 ImageNet-1k.
IMAGENET = PreprocessingSpec((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# (x - 128) / 128: automl's S/M/L ImageNet-1k training pipeline (and keras.applications).
AUTOML_128 = PreprocessingSpec((128 / 255,) * 3, (128 / 255,) * 3, interpolation="bilinear")
# (x / 255 - 0.5) / 0.5: every 21k and 21k-ft1k checkpoint (timm's INCEPTION mean/std).
INCEPTION = PreprocessingSpec((0.5,) * 3, (0.5,) * 3)


def preprocess_input(images, spec: PreprocessingSpec | None = None, *, weights=None):
    """Normalise ``[0, 255]`` channels-last images for a model built with
    ``include_preprocessing=False``.

    Args:
        images: RGB in ``[0, 255]``, channels last.
        spec: a :class:`PreprocessingSpec`, or
        weights: the weight set instead: a ``WeightsSpec`` or a registry key such as
            ``"s.in21k_ft_in1k"`` or ``"b0.imagenet"``.

    Example:
        >>> import numpy as np
        >>> x = np.full((1, 2, 2, 3), 255.0, "float32")
        >>> float(preprocess_input(x, weights="b0.imagenet21k")[0, 0, 0, 0])
        1.0
    """
    if (spec is None) == (weights is None):
        raise ValueError("Pass exactly one of spec= or weights=.")
    if weights is not None:
        from keras_effv2.weights import WeightsSpec, get_weights_spec

        if not isinstance(weights, WeightsSpec):
            variant, _, tag = str(weights).partition(".")
            weights = get_weights_spec(variant, tag)
        spec = weights.preprocessing
    return spec.normalize(images)
