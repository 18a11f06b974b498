"""Read upstream checkpoints into ``{name: np.ndarray}`` without torch.

* :func:`read_safetensors`: timm ``model.safetensors`` (pure NumPy).
* :func:`read_automl_checkpoint`: google/automl TF checkpoints (needs TensorFlow).
* :func:`read_legacy_h5`: keras.applications legacy ``.h5`` weights (h5py).

Each raises :class:`CheckpointError` with the file name on anything malformed.

Example:
    >>> from keras_effv2.porting.readers import read_safetensors
    >>> # tensors = read_safetensors("model.safetensors")
    >>> # tensors["conv_stem.weight"].shape -> (32, 3, 3, 3)
"""

from __future__ import annotations

import glob
import json
import os
import struct

import numpy as np

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
# Non-model variables found in automl checkpoints, and optimizer slots of model variables.
_AUTOML_SLOT_SUFFIXES = ("/RMSProp", "/RMSProp_1", "/Momentum", "/Adam", "/Adam_1")
EMA_SUFFIX = "/ExponentialMovingAverage"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or not in the expected format."""


def read_safetensors(path) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file as NumPy arrays (BF16 is widened to float32)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"Cannot read safetensors file {path!r}: {e}") from e
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
    except Exception as e:
        raise CheckpointError(f"{path!r} is not a safetensors file (bad header).") from e
    body = memoryview(data)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if end > len(body):
            raise CheckpointError(
                f"{path!r} is truncated: tensor {name!r} ends at byte {end}, "
                f"the file has {len(body)} data bytes."
            )
        raw = body[start:end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
            arr = bits.view(np.float32)
        elif info["dtype"] in _SAFETENSORS_DTYPES:
            arr = np.frombuffer(raw, _SAFETENSORS_DTYPES[info["dtype"]])
        else:
            raise CheckpointError(f"{path!r}: unsupported dtype {info['dtype']} for {name!r}.")
        out[name] = arr.reshape(info["shape"]).copy()
    return out


def find_automl_checkpoint(path) -> str:
    """The checkpoint prefix inside ``path`` (a prefix, or a folder holding one ``.index``)."""
    path = os.fspath(path)
    if os.path.isfile(path + ".index"):
        return path
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "**", "*.index"), recursive=True))
        if len(found) == 1:
            return found[0][: -len(".index")]
        if found:
            raise CheckpointError(f"{path!r} holds several checkpoints: {found}.")
    raise CheckpointError(f"No TensorFlow checkpoint (*.index) found at {path!r}.")


def read_automl_checkpoint(path, ema: bool = True) -> tuple[dict[str, np.ndarray], str]:
    """Model variables of a google/automl EfficientNetV2 checkpoint, and their scope prefix.

    With ``ema=True`` each variable's ``/ExponentialMovingAverage`` shadow is used where the
    checkpoint has one (automl's ``init_ema``); ``ema=False`` reads the raw variables.
    Optimizer slots and variables outside the model scope (``global_step``) are dropped.
    Needs TensorFlow.
    """
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(
            "Reading a google/automl checkpoint needs TensorFlow (pip install tensorflow-cpu); "
            "the timm-sourced weight sets need only NumPy."
        ) from e
    prefix_path = find_automl_checkpoint(path)
    try:
        reader = tf.train.load_checkpoint(prefix_path)
        names = list(reader.get_variable_to_shape_map())
    except Exception as e:
        raise CheckpointError(f"Cannot read TF checkpoint {prefix_path!r}: {e}") from e
    stems = [n for n in names if n.endswith("/stem/conv2d/kernel")]
    if len(stems) != 1:
        raise CheckpointError(
            f"{prefix_path!r} is not an automl EfficientNetV2 checkpoint "
            f"(expected one '<model>/stem/conv2d/kernel', found {stems})."
        )
    scope = stems[0][: -len("/stem/conv2d/kernel")]
    out = {}
    for name in names:
        if not name.startswith(scope + "/") or name.endswith(_AUTOML_SLOT_SUFFIXES):
            continue
        if name.endswith(EMA_SUFFIX):
            continue
        source = name + EMA_SUFFIX if ema and name + EMA_SUFFIX in names else name
        out[name] = reader.get_tensor(source)
    return out, scope


def read_legacy_h5(path) -> dict[str, np.ndarray]:
    """Weights of a legacy Keras ``.h5`` file as ``{"<layer>/<variable>": array}``.

    Handles tf.keras and Keras 3 legacy files, weights-only or full-model
    (``model_weights`` group). ``:0`` suffixes are dropped and tf.keras's DepthwiseConv2D
    ``depthwise_kernel`` is renamed ``kernel`` (Keras 3's name).
    """
    import h5py

    path = os.fspath(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CheckpointError(f"Cannot open {path!r} as HDF5: {e}") from e
    with f:
        full_model = not _has_attr(f, "layer_names") and "model_weights" in f
        group = f["model_weights"] if full_model else f
        if not _has_attr(group, "layer_names"):
            raise CheckpointError(
                f"{path!r} is not a legacy Keras .h5 weights file (no 'layer_names'); "
                "a Keras 3 '.weights.h5' file loads with weights=<path> directly."
            )
        out = {}
        for layer in _attr_strings(group, "layer_names"):
            lg = group[layer]
            for wname in _attr_strings(lg, "weight_names"):
                var = wname.split("/")[-1].split(":")[0]
                var = "kernel" if var == "depthwise_kernel" else var
                try:
                    out[f"{layer}/{var}"] = np.asarray(lg[wname])
                except Exception as e:
                    raise CheckpointError(f"{path!r}: cannot read {layer}/{wname}: {e}") from e
    return out


def _has_attr(group, name: str) -> bool:
    return name in group.attrs or f"{name}0" in group.attrs


def _attr_strings(group, name: str) -> list[str]:
    """A string-list attribute, joining the ``name0, name1...`` chunks of large ones."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values += list(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]
