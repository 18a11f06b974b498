"""Weights out: a keras_effv2 model as a timm or mmpretrain state dict.

:func:`export` writes the model's weights, renamed and transposed by the same key maps the
converters read with (:func:`~keras_effv2.weights.porting.timm_mapping`,
:func:`~keras_effv2.weights.porting.mmpretrain.mmpretrain_mapping`), plus every BatchNorm's
``num_batches_tracked`` (0), so that the upstream model loads it with ``strict=True``:

* ``format="timm"``: ``.safetensors`` (written with NumPy alone, one tensor at a time):
  ``timm.create_model("tf_efficientnetv2_<v>", num_classes=N)`` for an ``N``-class model,
  ``num_classes=0`` for an ``include_top=False`` model (the backbone; timm's
  ``forward_features`` / pooled features);
* ``format="mmpretrain"``: ``.pth`` (``torch.save``; needs torch) holding ``state_dict`` and
  ``meta``: ``mmpretrain.get_model("efficientnetv2-<v>_3rdparty_in1k",
  head=dict(num_classes=N))`` then ``load_state_dict(ckpt["state_dict"], strict=True)``; a
  backbone-only file holds ``backbone.*`` keys: load it into ``model.backbone`` after removing
  the ``backbone.`` prefix, or with mmpretrain's ``init_cfg=dict(type="Pretrained",
  checkpoint=PATH, prefix="backbone.")``.

The file is written to a temporary name in the target folder and renamed into place.
No torchvision, timm or mmpretrain import happens here (safe after TensorFlow ran ops).

Example:
    >>> import keras_effv2
    >>> from keras_effv2.weights import export
    >>> model = keras_effv2.EfficientNetV2B0(weights=None, classes=10)
    >>> # export(model, "b0_10.safetensors", format="timm")
    >>> # export(model, "b0_10.pth", format="mmpretrain")
"""

from __future__ import annotations

import collections
import json
import os
import struct
import tempfile

import numpy as np

from keras_effv2.configs import get_variant
from keras_effv2.weights.errors import PortingError
from keras_effv2.weights.load import HEAD_LAYER, infer_variant
from keras_effv2.weights.porting.assign import listing, model_weight_keys
from keras_effv2.weights.porting.key_maps import timm_mapping as _timm_mapping
from keras_effv2.weights.porting.key_maps import (
    torch_conv_to_keras,
    torch_dense_to_keras,
    torch_depthwise_to_keras,
)
from keras_effv2.weights.porting.mmpretrain import mmpretrain_mapping

FORMATS = {"timm": ".safetensors", "mmpretrain": ".pth"}
# Keras layout -> torch layout: the inverse of each reading transform.
_TO_TORCH = {
    torch_conv_to_keras: lambda x: np.transpose(x, (3, 2, 0, 1)),  # (kh,kw,in,out)->(out,in,kh,kw)
    torch_depthwise_to_keras: lambda x: np.transpose(x, (2, 3, 0, 1)),  # (kh,kw,c,1)->(c,1,kh,kw)
    torch_dense_to_keras: np.transpose,
}
_SAFETENSORS_DTYPES = {np.dtype("float32"): "F32", np.dtype("int64"): "I64"}


def _mapping(fmt: str, variant: str, include_top: bool):
    if fmt == "timm":
        return _timm_mapping(variant, include_top=include_top)
    return mmpretrain_mapping(variant, include_top=include_top)


def state_dict_arrays(model, format: str = "timm", variant=None):
    """``(name, array)`` pairs of the exported state dict, in the upstream model's order
    (float32 in torch layout; ``num_batches_tracked`` as int64 0 after each BatchNorm).

    Raises:
        ValueError: unknown ``format``.
        PortingError: the model's weights do not match the variant's key map (listed).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}.")
    variant = get_variant(variant or infer_variant(model)).name
    variables = model_weight_keys(model)
    include_top = any(k.startswith(HEAD_LAYER + "/") for k in variables)
    mapping = _mapping(format, variant, include_top)
    problems = (listing("model weights with no place in the state dict",
                        [k for k in variables if k not in mapping])
                + listing("state-dict entries the model does not have",
                          [k for k in mapping if k not in variables]))
    if problems:
        raise PortingError(f"Model {model.name!r} is not an EfficientNetV2-{variant.upper()} "
                           f"that a {format} state dict can hold; nothing was written:{problems}")

    def pairs():
        import keras

        for key, m in mapping.items():
            value = np.asarray(keras.ops.convert_to_numpy(variables[key])).astype(np.float32)
            yield m.source, np.ascontiguousarray(_TO_TORCH.get(m.transform, _identity)(value))
            if m.source.endswith(".running_var"):
                yield m.source[:-11] + "num_batches_tracked", np.zeros((), np.int64)

    return pairs()


def _identity(x):
    return x


def export(model, path, format: str = "timm", *, variant=None, meta: dict | None = None) -> str:
    """Write ``model``'s weights as a ``format`` state dict at ``path`` (atomically).

    Args:
        model: a keras_effv2 EfficientNetV2 (any class count, or ``include_top=False``).
        path: ``.safetensors`` for ``"timm"``, ``.pth`` for ``"mmpretrain"``.
        format: ``"timm"`` or ``"mmpretrain"``.
        variant: ``"b0"`` ... ``"xl"`` (default: read from the model's blocks).
        meta: extra plain values for the mmpretrain file's ``meta``.

    Returns:
        ``path``.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}.")
    path = os.fspath(path)
    if not path.endswith(FORMATS[format]):
        raise ValueError(f"A {format} export is a '{FORMATS[format]}' file; got {path!r}.")
    variant = get_variant(variant or infer_variant(model)).name
    arrays = state_dict_arrays(model, format, variant)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=FORMATS[format], dir=folder)
    os.close(fd)
    try:
        if format == "timm":
            _write_safetensors(arrays, tmp, {"format": "pt", "keras_effv2_variant": variant})
        else:
            _write_mmpretrain(arrays, tmp, variant, model, meta or {})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _write_safetensors(arrays, path: str, metadata: dict) -> None:
    """A ``.safetensors`` file from ``(name, array)`` pairs (the format's layout: an 8-byte
    little-endian header size, a JSON header with dtype/shape/offsets, the raw bytes)."""
    items = list(arrays)
    header, offset = {"__metadata__": {k: str(v) for k, v in metadata.items()}}, 0
    for name, a in items:
        header[name] = {"dtype": _SAFETENSORS_DTYPES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, a in items:
            f.write(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())


def _write_mmpretrain(arrays, path: str, variant: str, model, meta: dict) -> None:
    try:
        import torch
    except ImportError as e:
        raise ImportError("Exporting mmpretrain '.pth' files needs torch (pip install torch); "
                          "format='timm' writes safetensors with NumPy alone.") from e
    from keras_effv2.version import __version__

    state = collections.OrderedDict((name, torch.from_numpy(a)) for name, a in arrays)
    classes = int(state["head.fc.weight"].shape[0]) if "head.fc.weight" in state else None
    info = {"keras_effv2_version": __version__, "arch": variant,
            "mmpretrain_model": f"efficientnetv2-{variant}_3rdparty_in1k",
            "num_classes": classes, "source": f"keras_effv2 model {model.name!r}", **meta}
    torch.save({"meta": info, "state_dict": state}, path)
