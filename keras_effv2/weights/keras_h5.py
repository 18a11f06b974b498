"""Where Keras 3 stores each weight of a keras_effv2 model in a ``.weights.h5`` file.

Keras has no public API for this layout, so this is the one module that knows it (what
``Model.save_weights`` writes, Keras 3.8-3.15): a functional model's layers go under
``layers/<snake_case(class name)>[_k]`` (``_k`` counts the earlier layers of the same class
in ``model.layers``), a block's sublayers under their attribute names (in keras_effv2 equal
to their layer names: ``se/conv_reduce``), and each layer's own variables under
``vars/<i>``, in the order of that layer's ``weights``. ``tests/test_weights_load.py``
checks this against files Keras writes and reads.

Example:
    >>> import keras_effv2
    >>> from keras_effv2.weights.keras_h5 import dataset_paths
    >>> paths = dataset_paths(keras_effv2.EfficientNetV2B0(weights=None))
    >>> paths["stem_conv/kernel"], paths["s3_b00/se/conv_reduce/bias"]
    ('layers/conv2d/vars/0', 'layers/mb_conv/se/conv_reduce/vars/1')
"""

from __future__ import annotations

import dataclasses
import os
import re

from keras_effv2.weights.errors import CheckpointError
from keras_effv2.weights.porting.assign import iter_weight_keys

HEAD_LAYER = "predictions"  # our classifier's layer name
# The classifier is our models' only Dense layer, so Keras files it under ``layers/dense``.
CLASSIFIER_PATHS = ("layers/dense/vars/0", "layers/dense/vars/1")
STEM_KERNEL = "layers/conv2d/vars/0"
HEAD_KERNEL = "layers/conv2d_1/vars/0"
_BLOCK_GROUP = re.compile(r"layers/(?:fused_)?mb_conv(?:_\d+)?")


def snake_case(name: str) -> str:
    """``"FusedMBConv"`` -> ``"fused_mb_conv"`` (Keras' rule for file group names)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def dataset_paths(model) -> dict[str, str]:
    """Our weight key -> the dataset path ``model.save_weights`` writes it to."""
    groups, counts, seen = {}, {}, {}
    for layer in model.layers:
        base = snake_case(type(layer).__name__)
        counts[base] = counts.get(base, -1) + 1
        groups[id(layer)] = f"layers/{base}" + (f"_{counts[base]}" if counts[base] else "")
    paths = {}
    for layer, key, _ in iter_weight_keys(model):
        owner = key.rpartition("/")[0]  # the sublayer holding the variable
        index = seen[owner] = seen.get(owner, -1) + 1
        sub = owner[len(layer.name):]  # "" or "/se/conv_reduce"
        paths[key] = f"{groups[id(layer)]}{sub}/vars/{index}"
    return paths


def read_index(h5file) -> dict[str, tuple[int, ...]]:
    """The shape of every dataset of an open ``h5py.File``, ``{path: shape}`` (metadata only;
    keeping the ``h5py.Dataset`` objects open would cost ~20 KiB each)."""
    import h5py

    index = {}
    h5file.visititems(lambda name, obj: index.__setitem__(name, tuple(obj.shape))
                      if isinstance(obj, h5py.Dataset) else None)
    return index


def open_weights_file(path):
    """``h5py.File`` of a Keras 3 ``.weights.h5``; :class:`CheckpointError` for anything else."""
    import h5py

    path = os.fspath(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CheckpointError(f"cannot read {path!r} as a Keras .weights.h5 file ({e}).") from e
    if "layers" not in f:
        f.close()
        raise CheckpointError(f"{path!r} is not a Keras 3 .weights.h5 file of a model (no "
                              "'layers' group).")
    return f


@dataclasses.dataclass(frozen=True)
class FileSummary:
    """What a ``.weights.h5`` of a keras_effv2 model holds: stem and head channels, blocks,
    classifier width (``None`` without the top)."""

    stem: int
    blocks: int
    head: int
    classes: int | None

    def variants(self) -> list[str]:
        """The variants with this stem, block count and head."""
        from keras_effv2.configs import VARIANTS

        return [v for v, s in VARIANTS.items()
                if (s.stem_channels, s.num_blocks, s.head_channels)
                == (self.stem, self.blocks, self.head)]


def summarize(path) -> FileSummary:
    """:class:`FileSummary` of ``path``; :class:`CheckpointError` if it is not such a file."""
    with open_weights_file(path) as f:
        index = read_index(f)
        if STEM_KERNEL not in index or HEAD_KERNEL not in index:
            raise CheckpointError(f"{os.fspath(path)!r} is not a .weights.h5 file of an "
                                  "EfficientNetV2 model (no stem and head convolutions).")
        blocks = {m.group(0) for p in index if (m := _BLOCK_GROUP.match(p))}
        classes = index.get(CLASSIFIER_PATHS[1])
        return FileSummary(int(index[STEM_KERNEL][-1]), len(blocks), int(index[HEAD_KERNEL][-1]),
                           None if classes is None else int(classes[0]))
