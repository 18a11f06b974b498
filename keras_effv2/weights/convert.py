"""Convert an upstream checkpoint into a keras_effv2 ``.weights.h5`` file, strictly, streaming.

One table, :data:`SOURCES`, says how each upstream format is opened (a
:class:`~keras_effv2.weights.porting.readers.TensorReader`) and mapped (a key map); one
function, :func:`convert`, plans, writes, optionally verifies and renames. The plan is made
from the checkpoint's names and shapes alone and is strict: every weight of the model filled,
every source tensor used exactly once, every shape checked, all problems listed
(:class:`PortingError`) before anything is written. Then the tensors are read, transformed and
written one at a time into the datasets ``Model.save_weights`` would write
(:mod:`~keras_effv2.weights.keras_h5`), so conversion holds one tensor, never the whole
checkpoint nor a second model; the file is written to a temporary name and moved into place,
so a failed conversion leaves nothing behind. The weight cache (first use of a tag; the
user's model gives the layout), ``python -m weights_tools convert`` and ``keras-effv2
convert`` (one logits model for the layout, also the one ``verify`` checks) all call
:func:`convert`. :func:`read_checkpoint` and :func:`port` keep the whole-checkpoint path for
tests and notebooks.

A new upstream format plugs in as a :class:`SourceFormat`: an ``open`` returning a reader (and
any extra key-map arguments) and a key map ``our key -> TensorMapping(source name, transform)``.

Example:
    >>> from keras_effv2.weights import convert
    >>> # result = convert("b0", "timm", "model.safetensors", "b0.weights.h5")
    >>> # result.classes -> 1000
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections.abc import Callable

import numpy as np

from keras_effv2.configs import get_variant
from keras_effv2.model import build_efficientnetv2
from keras_effv2.weights import keras_h5
from keras_effv2.weights.errors import CheckpointError, PortingError
from keras_effv2.weights.memory import release_freed_memory, release_interval
from keras_effv2.weights.porting.assign import (
    assign_weights,
    infer_variant,
    mapping_problems,
    model_weight_keys,
)
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
    MmpretrainReader,
    mmpretrain_mapping,
)
from keras_effv2.weights.porting.readers import (
    AutomlReader,
    KerasApplicationsReader,
    TensorReader,
    open_timm_checkpoint,
)


@dataclasses.dataclass(frozen=True)
class SourceFormat:
    """How one upstream format is opened, names its classifier and maps onto our keys."""

    name: str
    open: Callable  # (path, variant, ema) -> (TensorReader, extra key-map arguments)
    classifier: str  # the classifier kernel's source name ({prefix} is automl's model scope)
    classes_axis: int  # axis of that tensor holding the class count
    mapping: Callable[..., dict]  # (variant, include_top=..., **extra) -> key map
    ignored_suffixes: tuple[str, ...] = ()


def _open_timm(path, variant, ema):
    return open_timm_checkpoint(path), {}


def _open_automl(path, variant, ema):
    reader = AutomlReader(path, ema=ema)
    if reader.scope not in automl_scopes(variant):
        reader.close()
        raise CheckpointError(
            f"{os.fspath(path)!r} holds the automl model scope {reader.scope!r}, not "
            f"EfficientNetV2-{get_variant(variant).name.upper()}'s (accepted: "
            f"{', '.join(repr(s) for s in automl_scopes(variant))})."
        )
    return reader, {"prefix": reader.scope}


def _open_keras_applications(path, variant, ema):
    return KerasApplicationsReader(path, variant), {}


def _open_mmpretrain(path, variant, ema):
    return MmpretrainReader(path), {}


SOURCES: dict[str, SourceFormat] = {
    "timm": SourceFormat("timm", _open_timm, "classifier.weight", 0, timm_mapping,
                         TIMM_IGNORED_SUFFIXES),
    "automl": SourceFormat("automl", _open_automl, "{prefix}/head/dense/kernel", 1,
                           automl_mapping),
    "keras-applications": SourceFormat("keras-applications", _open_keras_applications,
                                       "predictions/kernel", 1, keras_applications_mapping),
    "mmpretrain": SourceFormat("mmpretrain", _open_mmpretrain, MMPRETRAIN_CLASSIFIER, 0,
                               mmpretrain_mapping, MMPRETRAIN_IGNORED_SUFFIXES),
}


def _format(source: str) -> SourceFormat:
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; expected one of {', '.join(SOURCES)}.")
    return SOURCES[source]


def open_checkpoint(source: str, path, variant, ema: bool = True) -> tuple[TensorReader, dict]:
    """Open ``path`` in ``source``'s format: ``(reader, extra key-map arguments)``.

    timm ``.safetensors`` need NumPy only, ``.pth``/``.bin`` torch; automl checkpoints
    TensorFlow; keras.applications ``.h5`` files h5py.
    """
    return _format(source).open(os.fspath(path), get_variant(variant).name, ema)


def read_checkpoint(source: str, path, variant, ema: bool = True) -> tuple[dict, dict]:
    """The whole checkpoint as ``({name: array}, extra key-map arguments)``."""
    reader, extra = open_checkpoint(source, path, variant, ema)
    with reader:
        return dict(reader.items()), extra


def _shape(tensors, name: str) -> tuple[int, ...]:
    shapes = getattr(tensors, "shapes", None)
    return tuple(shapes[name]) if shapes is not None else tuple(np.shape(tensors[name]))


def checkpoint_classes(source: str, tensors, extra: dict) -> int | None:
    """The classifier width stored in the checkpoint (a reader or a dict), ``None`` for a
    notop file."""
    fmt = _format(source)
    key = fmt.classifier.format(**extra)
    return _shape(tensors, key)[fmt.classes_axis] if key in tensors else None


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


def _transformed_shape(mapping, shape: tuple) -> tuple[int, ...]:
    """The shape ``mapping.transform`` gives a tensor of ``shape`` (transposes: no data)."""
    return tuple(mapping.transform(np.broadcast_to(np.zeros((), "float32"), shape)).shape)


@dataclasses.dataclass(frozen=True)
class PlannedWeight:
    """One dataset of the output file: our key, its path in the file, the source tensor and
    its mapping, the shape and dtype ``save_weights`` would write."""

    key: str
    path: str
    mapping: object
    shape: tuple[int, ...]
    dtype: str


def plan_weights_file(layout, reader, source: str, extra: dict | None = None,
                      source_name: str | None = None) -> list[PlannedWeight]:
    """Where every tensor of ``reader`` goes in the ``.weights.h5`` of a logits model of
    ``layout``'s variant with the checkpoint's head (or none), checked strictly from names and
    shapes alone.

    ``layout`` is any built keras_effv2 model of the variant: its head may differ from the
    checkpoint's (another width, none), the file gets the checkpoint's. Raises
    :class:`PortingError` listing every missing, unknown, reused or mis-shaped tensor.
    """
    extra = extra or {}
    fmt = _format(source)
    source_name = source_name or f"{source} checkpoint"
    classes = checkpoint_classes(source, reader, extra)
    variables = model_weight_keys(layout)
    paths = keras_h5.dataset_paths(layout)
    head = keras_h5.HEAD_LAYER + "/"
    targets = {k: (paths[k], tuple(v.shape)) for k, v in variables.items()
               if not k.startswith(head)}
    mapping = fmt.mapping(get_variant(infer_variant(layout)), include_top=classes is not None,
                          **extra)
    if classes is not None:  # the checkpoint's classifier, whatever the layout model's head
        channels = variables["head_bn/gamma"].shape[0]
        targets[f"{head}kernel"] = (keras_h5.CLASSIFIER_PATHS[0], (channels, classes))
        targets[f"{head}bias"] = (keras_h5.CLASSIFIER_PATHS[1], (classes,))
    sources = {k for k in reader if not k.endswith(fmt.ignored_suffixes)}
    missing_target = [k for k in targets if k not in mapping]
    missing_source = [f"{k} <- {mapping[k].source}" for k in targets
                      if k in mapping and mapping[k].source not in reader]
    used = [mapping[k].source for k in targets if k in mapping]
    duplicated = {s for s in used if used.count(s) > 1}
    unused = sources - set(used)
    bad_shapes = []
    for key, (_, shape) in targets.items():
        m = mapping.get(key)
        if m is None or m.source not in reader:
            continue
        got = _transformed_shape(m, _shape(reader, m.source))
        if got != shape:
            bad_shapes.append(f"{key} {shape} <- {m.source} {got}")
    problems = mapping_problems(source_name, missing_target, missing_source, duplicated, unused,
                                bad_shapes)
    if problems:
        raise PortingError(f"The {source_name} does not fit EfficientNetV2-"
                           f"{infer_variant(layout).upper()}; nothing was written:{problems}")
    # The cache file is float32 whatever the layout model's dtype policy (as Keras writes a
    # default model's weights); a bfloat16 model still loads full-precision values.
    return [PlannedWeight(k, path, mapping[k], shape, "float32")
            for k, (path, shape) in targets.items()]


def write_weights_file(plan: list[PlannedWeight], reader, output) -> None:
    """Write ``plan``'s datasets to ``output`` (a new file), reading, transforming and writing
    one tensor at a time. Each variable group carries the ``name`` attribute Keras gives it."""
    import h5py

    interval = release_interval(sum(math.prod(p.shape) * np.dtype(p.dtype).itemsize
                                    for p in plan))
    written = 0
    with h5py.File(os.fspath(output), "w") as f:
        for p in plan:
            value = np.ascontiguousarray(p.mapping.transform(reader[p.mapping.source]),
                                         dtype=p.dtype)
            group = f.require_group(p.path.rpartition("/")[0])
            group.attrs["name"] = p.key.split("/")[-2]
            group.create_dataset(p.path.rpartition("/")[2], data=value)
            written += value.nbytes
            del value
            if written >= interval:  # the freed source buffers go back to the OS
                release_freed_memory()
                written = 0


def _temp_path(output: str) -> str:
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".weights.h5", dir=folder)
    os.close(fd)
    return tmp


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
            verify: Callable | None = None, layout=None) -> Conversion:
    """Stream ``checkpoint`` (``source``'s format) into ``output`` (``.weights.h5``) one
    tensor at a time, strictly; optionally verify; move into place atomically.

    Args:
        variant: ``"b0"`` ... ``"xl"``.
        source: ``"timm"`` (``.safetensors``, ``.pth``, ``.bin``), ``"automl"`` (checkpoint
            folder, prefix or ``.tgz``), ``"keras-applications"`` (legacy ``.h5``) or
            ``"mmpretrain"`` (``.pth`` from mmengine's ``save_checkpoint``, training
            snapshots included, or a flat state dict; needs torch).
        ema: automl only: read the ``ExponentialMovingAverage`` shadows (automl's default).
        verify: ``verify(model, tensors) -> report``, called on a logits model filled from
            the written file (``tensors``: the reader, a lazy mapping) before the file is
            moved into place; raise to refuse the conversion.
        layout: a built keras_effv2 model of ``variant`` (any head) that tells where each
            weight goes; without it (or with ``verify``) one logits model is built.

    Raises:
        CheckpointError: the checkpoint cannot be read.
        PortingError: it does not fit the variant (every problem listed; nothing written).
    """
    variant = get_variant(variant).name
    output = os.fspath(output)
    if not output.endswith(".weights.h5"):
        raise ValueError(f"output {output!r} must end with '.weights.h5'.")
    reader, extra = open_checkpoint(source, checkpoint, variant, ema=ema)
    with reader:
        classes = checkpoint_classes(source, reader, extra)
        if layout is not None and infer_variant(layout) != variant:
            raise ValueError(f"layout is an EfficientNetV2-{infer_variant(layout).upper()}, "
                             f"not {variant.upper()}.")
        model = build_for_checkpoint(variant, classes) if layout is None or verify else None
        plan = plan_weights_file(model if model is not None else layout, reader, source, extra)
        tmp = _temp_path(output)
        try:
            write_weights_file(plan, reader, tmp)
            report = None
            if verify is not None:
                model.load_weights(tmp)  # Keras' own reader of what it would have written
                report = verify(model, reader)
            os.replace(tmp, output)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return Conversion(output, variant, source, classes, report)
