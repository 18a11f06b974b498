"""Convert an upstream checkpoint into a keras_effv2 ``.weights.h5`` file, strictly.

One table, :data:`SOURCES`, says how each upstream format is read and mapped; one function,
:func:`convert`, reads, ports, optionally verifies and writes. Porting fills every weight of
the model, uses every source tensor exactly once and checks every shape
(:func:`~keras_effv2.weights.porting.assign.assign_weights`); the output is written to a
temporary file and moved into place, so a failed conversion leaves nothing behind. The
weight cache (first use of a tag), ``python -m weights_tools convert`` and
``keras-effv2 convert`` all call :func:`convert`.

Example:
    >>> from keras_effv2.weights import convert
    >>> # result = convert("b0", "timm", "model.safetensors", "b0.weights.h5")
    >>> # result.classes -> 1000
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable

import numpy as np

from keras_effv2.configs import get_variant
from keras_effv2.model import build_efficientnetv2
from keras_effv2.weights.errors import CheckpointError
from keras_effv2.weights.porting.assign import assign_weights
from keras_effv2.weights.porting.key_maps import (
    TIMM_IGNORED_SUFFIXES,
    automl_mapping,
    automl_scopes,
    keras_applications_mapping,
    timm_mapping,
)
from keras_effv2.weights.porting.mmpretrain import (
    MMPRETRAIN_CLASSIFIER,
    MMPRETRAIN_IGNORED_SUFFIXES,
    mmpretrain_mapping,
    read_mmpretrain_checkpoint,
)
from keras_effv2.weights.porting.readers import (
    read_automl_checkpoint,
    read_keras_applications,
    read_timm_checkpoint,
)


@dataclasses.dataclass(frozen=True)
class SourceFormat:
    """How one upstream format is read, names its classifier and maps onto our keys."""

    name: str
    read: Callable  # (path, variant, ema) -> (tensors, extra key-map arguments)
    classifier: str  # the classifier kernel's source name ({scope} is automl's model scope)
    classes_axis: int  # axis of that tensor holding the class count
    mapping: Callable[..., dict]
    ignored_suffixes: tuple[str, ...] = ()


def _read_timm(path, variant, ema):
    return read_timm_checkpoint(path), {}


def _read_automl(path, variant, ema):
    tensors, scope = read_automl_checkpoint(path, ema=ema)
    if scope not in automl_scopes(variant):
        raise CheckpointError(
            f"{os.fspath(path)!r} holds the automl model scope {scope!r}, not "
            f"EfficientNetV2-{get_variant(variant).name.upper()}'s (accepted: "
            f"{', '.join(repr(s) for s in automl_scopes(variant))})."
        )
    return tensors, {"prefix": scope}


def _read_keras_applications(path, variant, ema):
    return read_keras_applications(path, variant), {}


def _read_mmpretrain(path, variant, ema):
    return read_mmpretrain_checkpoint(path), {}


SOURCES: dict[str, SourceFormat] = {
    "timm": SourceFormat("timm", _read_timm, "classifier.weight", 0, timm_mapping,
                         TIMM_IGNORED_SUFFIXES),
    "automl": SourceFormat("automl", _read_automl, "{scope}/head/dense/kernel", 1,
                           automl_mapping),
    "keras-applications": SourceFormat("keras-applications", _read_keras_applications,
                                       "predictions/kernel", 1, keras_applications_mapping),
    "mmpretrain": SourceFormat("mmpretrain", _read_mmpretrain, MMPRETRAIN_CLASSIFIER, 0,
                               mmpretrain_mapping, MMPRETRAIN_IGNORED_SUFFIXES),
}


def _format(source: str) -> SourceFormat:
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; expected one of {', '.join(SOURCES)}.")
    return SOURCES[source]


def read_checkpoint(source: str, path, variant, ema: bool = True) -> tuple[dict, dict]:
    """Read ``path`` in ``source``'s format: ``(tensors, extra key-map arguments)``.

    timm ``.safetensors`` need NumPy only, ``.pth``/``.bin`` torch; automl checkpoints
    TensorFlow; keras.applications ``.h5`` files Keras and h5py.
    """
    return _format(source).read(os.fspath(path), variant, ema)


def checkpoint_classes(source: str, tensors, extra: dict) -> int | None:
    """The classifier width stored in the checkpoint, or ``None`` for a notop file."""
    fmt = _format(source)
    key = fmt.classifier.format(scope=extra.get("prefix", ""))
    return int(np.shape(tensors[key])[fmt.classes_axis]) if key in tensors else None


def build_for_checkpoint(variant, classes: int | None):
    """A logits model (no preprocessing, no dropout randomness) to receive the weights."""
    return build_efficientnetv2(variant, include_top=classes is not None, classes=classes or 1000,
                                classifier_activation=None, preprocessing=None)


def port(variant, source: str, tensors, extra: dict | None = None, model=None):
    """Assign ``tensors`` (read in ``source`` format) into a new or given model, strictly."""
    extra = extra or {}
    spec = get_variant(variant)
    if model is None:
        model = build_for_checkpoint(spec, checkpoint_classes(source, tensors, extra))
    include_top = any(w.path.startswith("predictions/") for w in model.weights)
    fmt = _format(source)
    assign_weights(model, tensors, fmt.mapping(spec, include_top=include_top, **extra),
                   ignored_suffixes=fmt.ignored_suffixes, source_name=f"{source} checkpoint")
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


@dataclasses.dataclass(frozen=True)
class Conversion:
    """What :func:`convert` wrote: the file, its variant, source and head width (``None``:
    no top), and what ``verify`` returned (``None`` without it)."""

    output: str
    variant: str
    source: str
    classes: int | None
    report: object = None


def convert(variant, source: str, checkpoint, output, *, ema: bool = True,
            verify: Callable | None = None) -> Conversion:
    """Read ``checkpoint`` in ``source``'s format, port it strictly, optionally verify, write
    ``output`` (``.weights.h5``, atomically).

    Args:
        variant: ``"b0"`` ... ``"xl"``.
        source: ``"timm"`` (``.safetensors``, ``.pth``, ``.bin``), ``"automl"`` (checkpoint
            folder, prefix or ``.tgz``), ``"keras-applications"`` (legacy ``.h5``) or
            ``"mmpretrain"`` (``.pth`` from mmengine's ``save_checkpoint``, training
            snapshots included, or a flat state dict; needs torch).
        ema: automl only: read the ``ExponentialMovingAverage`` shadows (automl's default).
        verify: ``verify(model, tensors) -> report``, called on the filled logits model
            before anything is written; raise to refuse the conversion.

    Raises:
        CheckpointError: the checkpoint cannot be read.
        PortingError: it does not fit the variant (every problem listed).
    """
    variant = get_variant(variant).name
    tensors, extra = read_checkpoint(source, checkpoint, variant, ema=ema)
    model = port(variant, source, tensors, extra)
    report = verify(model, tensors) if verify is not None else None
    del tensors
    save_weights_atomic(model, output)
    classes = model.output_shape[-1] if len(model.output_shape) == 2 else None
    return Conversion(os.fspath(output), variant, source, classes, report)
