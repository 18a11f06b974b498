"""ImageNet class names shipped with the package, and ``decode_predictions``.

``data/imagenet1k_classes.tsv`` (1000 classes, standard index order) and
``data/imagenet21k_classes.tsv.gz`` (21843 classes, Google's ImageNet-21k order as used
by the automl/timm 21k heads) hold ``wnid<TAB>WordNet lemmas`` lines, copied out of timm's
``data/_info`` synset lists and WordNet lemmas.

Example:
    >>> import numpy as np, keras_effv2
    >>> p = np.zeros((1, 1000)); p[0, 1] = 1.0
    >>> keras_effv2.decode_predictions(p, top=1)[0][0][:2]
    ('n01443537', 'goldfish, Carassius auratus')
"""

from __future__ import annotations

import functools
import gzip
import os

import numpy as np

_DATA = os.path.join(os.path.dirname(__file__), "data")
CLASS_FILES = {1000: "imagenet1k_classes.tsv", 21843: "imagenet21k_classes.tsv.gz"}


@functools.cache
def class_names(num_classes: int) -> tuple[tuple[str, str], ...]:
    """``((wnid, name), ...)`` for a 1000- or 21843-class head."""
    if num_classes not in CLASS_FILES:
        raise ValueError(
            f"No class names for a {num_classes}-class head; keras_effv2 ships names for "
            "ImageNet-1k (1000) and ImageNet-21k (21843) only."
        )
    path = os.path.join(_DATA, CLASS_FILES[num_classes])
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"The class-name file {path!r} for the {num_classes}-class head is not installed, "
            "and no names are available offline; keras_effv2 will not invent them."
        )
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf8") as f:
        rows = tuple(tuple(line.rstrip("\n").split("\t", 1)) for line in f if line.strip())
    if len(rows) != num_classes:
        raise ValueError(f"{path!r} has {len(rows)} classes, expected {num_classes}.")
    return rows


def decode_predictions(preds, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Top-``top`` ``(wnid, name, score)`` per row of 1000- or 21843-class predictions."""
    preds = np.asarray(preds)
    if preds.ndim != 2:
        raise ValueError(f"preds must be 2D (batch, classes); got shape {preds.shape}.")
    names = class_names(preds.shape[-1])
    out = []
    for row in preds:
        idx = np.argsort(-row, kind="stable")[:top]
        out.append([(names[i][0], names[i][1], float(row[i])) for i in idx])
    return out
