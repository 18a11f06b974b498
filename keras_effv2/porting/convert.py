"""Convert an upstream checkpoint into a keras_effv2 ``.weights.h5`` file, strictly.

One table, :data:`SOURCES`, says how each upstream format is read and mapped. Conversion
fills every weight of the model, uses every source tensor exactly once and checks every
shape (:func:`~keras_effv2.porting.assign.assign_weights`); the output is written to a
temporary file and moved into place, so a failed conversion leaves nothing behind.

Example:
    >>> from keras_effv2.porting.convert import convert_checkpoint
    >>> # model = convert_checkpoint("b0", "timm", "model.safetensors", "b0.weights.h5")
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable

import numpy as np

from keras_effv2.configs import get_variant
from keras_effv2.porting.assign import assign_weights
from keras_effv2.porting.key_map import (
    TIMM_IGNORED_SUFFIXES,
    automl_mapping,
    keras_applications_mapping,
    timm_mapping,
)
from keras_effv2.porting.readers import (
    CheckpointError,
    read_automl_checkpoint,
    read_legacy_h5,
    read_safetensors,
)


@dataclasses.dataclass(frozen=True)
class SourceFormat:
    """How one upstream format names its classifier and maps onto our keys."""

    name: str
    classifier: str  # the classifier kernel's source name ({scope} is automl's model scope)
    classes_axis: int  # axis of that tensor holding the class count
    mapping: Callable[..., dict]
    ignored_suffixes: tuple[str, ...] = ()


SOURCES: dict[str, SourceFormat] = {
    "timm": SourceFormat("timm", "classifier.weight", 0, timm_mapping, TIMM_IGNORED_SUFFIXES),
    "automl": SourceFormat("automl", "{scope}/head/dense/kernel", 1, automl_mapping),
    "keras-applications": SourceFormat(
        "keras-applications", "predictions/kernel", 1, keras_applications_mapping
    ),
}


def read_checkpoint(source: str, path, ema: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """Read ``path`` in ``source``'s format: ``(tensors, extra key-map arguments)``.

    timm files are read with NumPy (``.safetensors``); ``.pth``/``.bin`` need
    ``weights_tools`` (torch). automl checkpoints need TensorFlow.
    """
    path = os.fspath(path)
    if source == "timm":
        if not path.endswith(".safetensors"):
            raise CheckpointError(
                f"{path!r}: keras_effv2 reads timm '.safetensors' files; convert '.pth'/'.bin' "
                "with `python -m weights_tools convert` (needs torch)."
            )
        return read_safetensors(path), {}
    if source == "automl":
        tensors, scope = read_automl_checkpoint(path, ema=ema)
        return tensors, {"prefix": scope}
    if source == "keras-applications":
        return read_legacy_h5(path), {}
    raise ValueError(f"Unknown source {source!r}; expected one of {', '.join(SOURCES)}.")


def checkpoint_classes(source: str, tensors, extra: dict) -> int | None:
    """The classifier width stored in the checkpoint, or ``None`` for a notop file."""
    fmt = SOURCES[source]
    key = fmt.classifier.format(scope=extra.get("prefix", ""))
    return int(np.shape(tensors[key])[fmt.classes_axis]) if key in tensors else None


def build_for_checkpoint(variant, classes: int | None):
    """A logits model (no preprocessing, no dropout randomness) to receive the weights."""
    from keras_effv2.model import build_efficientnetv2

    return build_efficientnetv2(
        variant, weights=None, include_top=classes is not None, classes=classes or 1000,
        classifier_activation=None, include_preprocessing=False,
    )


def port_tensors(variant, source: str, tensors, extra: dict | None = None, model=None):
    """Assign ``tensors`` (read in ``source`` format) into a new or given model, strictly."""
    extra = extra or {}
    spec = get_variant(variant)
    classes = checkpoint_classes(source, tensors, extra)
    if model is None:
        model = build_for_checkpoint(spec, classes)
    include_top = any(w.path.startswith("predictions/") for w in model.weights)
    mapping = SOURCES[source].mapping(spec, include_top=include_top, **extra)
    assign_weights(model, tensors, mapping, ignored_suffixes=SOURCES[source].ignored_suffixes,
                   source_name=f"{source} checkpoint")
    return model


def save_weights_atomic(model, output) -> str:
    """``model.save_weights`` to a temp file in the same folder, then ``os.replace``."""
    output = os.fspath(output)
    if not output.endswith(".weights.h5"):
        raise ValueError(f"output {output!r} must end with '.weights.h5'.")
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".weights.h5", dir=folder)
    os.close(fd)
    try:
        os.remove(tmp)  # Keras refuses to overwrite without asking in some versions
        model.save_weights(tmp)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return output


def convert_checkpoint(variant, source: str, path, output, ema: bool = True):
    """Read, port strictly and save; returns the filled model (logits, no preprocessing)."""
    tensors, extra = read_checkpoint(source, path, ema=ema)
    model = port_tensors(variant, source, tensors, extra)
    save_weights_atomic(model, output)
    return model
