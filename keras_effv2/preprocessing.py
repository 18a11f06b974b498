"""Input preprocessing as data: what a weight set expects.

A :class:`PreprocessingSpec` belongs to a weight set (not to a variant name; the registry in
:mod:`keras_effv2.weights.registry` gives each set its own, with its source). Models built
with ``include_preprocessing`` take RGB in ``[0, 255]`` and normalise inside the graph;
``keras_effv2.preprocess_input`` applies the same transform outside the model.

Example:
    >>> import numpy as np
    >>> from keras_effv2.preprocessing import IMAGENET
    >>> x = np.full((1, 4, 4, 3), 255.0, "float32")
    >>> round(float(IMAGENET.normalize(x)[0, 0, 0, 0]), 4)
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
    whole image). ``source`` says where the values come from (upstream file and setting).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    crop_mode: str = "center"
    source: str = ""

    def normalize(self, images):
        """Apply the normalisation to a channels-last NumPy array in ``[0, 255]``."""
        x = np.asarray(images, dtype="float32")
        return (x / 255.0 - np.asarray(self.mean, "float32")) / np.asarray(self.std, "float32")


# ImageNet mean/std: automl's legacy (effnetv1_autoaug) pipeline for B0-B3 ImageNet-1k.
IMAGENET = PreprocessingSpec((0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                             source="automl preprocess_legacy.py: ImageNet mean/std")
# (x - 128) / 128: automl's S/M/L ImageNet-1k training pipeline (and keras.applications).
AUTOML_128 = PreprocessingSpec((128 / 255,) * 3, (128 / 255,) * 3, interpolation="bilinear",
                               source="automl preprocessing.py (S/M/L ImageNet-1k, randaug): "
                                      "(x - 128) / 128")
# (x / 255 - 0.5) / 0.5: automl's fine-tuning path ('ft'), every 21k-ft1k checkpoint (timm's
# INCEPTION mean/std).
INCEPTION = PreprocessingSpec((0.5,) * 3, (0.5,) * 3,
                              source="automl preprocess_for_finetune: (x / 255 - 0.5) / 0.5")
