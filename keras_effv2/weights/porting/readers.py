"""Read upstream checkpoints into ``{name: np.ndarray}``.

* :func:`read_safetensors`: timm ``model.safetensors`` (pure NumPy);
* :func:`read_torch_state_dict`: timm ``.pth`` / ``.bin`` (needs torch);
* :func:`read_automl_checkpoint`: google/automl TF checkpoints, a folder, a prefix or the
  published ``.tgz`` (needs TensorFlow);
* :func:`read_keras_applications`: keras.applications legacy ``.h5`` weights, loaded by Keras'
  own legacy HDF5 loader into keras.applications' own model (by layer order, as Keras loads
  ``weights="imagenet"``) and named by that model's layers, so the names inside the file do
  not matter.

Each raises :class:`~keras_effv2.weights.errors.CheckpointError` naming the file on
anything malformed.

Example:
    >>> from keras_effv2.weights.porting.readers import read_safetensors
    >>> # tensors = read_safetensors("model.safetensors")
    >>> # tensors["conv_stem.weight"].shape -> (32, 3, 3, 3)
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import struct
import tarfile
import tempfile

import numpy as np

from keras_effv2.configs import get_variant
from keras_effv2.weights.errors import CheckpointError

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
# Optimizer slots of model variables found in automl checkpoints.
_AUTOML_SLOT_SUFFIXES = ("/RMSProp", "/RMSProp_1", "/Momentum", "/Adam", "/Adam_1")
EMA_SUFFIX = "/ExponentialMovingAverage"
AUTOML_STEM_KERNEL = "/stem/conv2d/kernel"


def read_safetensors(path) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file as NumPy arrays (BF16 is widened to float32)."""
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CheckpointError(f"Cannot read safetensors file {path!r}: {e}") from e
    with f:
        try:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        except Exception as e:
            raise CheckpointError(f"{path!r} is not a safetensors file (bad header).") from e
        body_size = os.fstat(f.fileno()).st_size - 8 - n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            if end > body_size:
                raise CheckpointError(
                    f"{path!r} is truncated: tensor {name!r} ends at byte {end}, "
                    f"the file has {body_size} data bytes."
                )
            f.seek(8 + n + start)
            raw = f.read(end - start)
            if info["dtype"] == "BF16":
                arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif info["dtype"] in _SAFETENSORS_DTYPES:
                arr = np.frombuffer(raw, _SAFETENSORS_DTYPES[info["dtype"]]).copy()
            else:
                raise CheckpointError(f"{path!r}: unsupported dtype {info['dtype']} for {name!r}.")
            out[name] = arr.reshape(info["shape"])
    return out


def read_torch_state_dict(path) -> dict[str, np.ndarray]:
    """A torch checkpoint (``torch.load(weights_only=True)``) as NumPy arrays. Needs torch."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"Reading {os.fspath(path)!r} needs torch (pip install torch); "
                          "timm's '.safetensors' files need only NumPy.") from e
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"Cannot read torch checkpoint {os.fspath(path)!r}: {e}") from e
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise CheckpointError(f"{os.fspath(path)!r} does not hold a state dict.")
    return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


def read_timm_checkpoint(path) -> dict[str, np.ndarray]:
    """timm weights from ``.safetensors`` (NumPy) or ``.pth``/``.bin`` (torch)."""
    if os.fspath(path).endswith(".safetensors"):
        return read_safetensors(path)
    return read_torch_state_dict(path)


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
    """Model variables of a google/automl EfficientNetV2 checkpoint, and their model scope.

    ``path`` is a checkpoint prefix, a folder holding one, or a ``.tgz`` of such a folder (as
    published; extracted to a temporary folder next to it and removed). With ``ema=True``
    each variable's ``/ExponentialMovingAverage`` shadow is used where the checkpoint has one
    (automl's ``init_ema``); ``ema=False`` reads the raw variables. Optimizer slots and
    variables outside the model scope (``global_step``) are dropped. Needs TensorFlow.
    """
    path = os.fspath(path)
    if path.endswith((".tgz", ".tar.gz")):
        folder = tempfile.mkdtemp(prefix=".extract-", dir=os.path.dirname(os.path.abspath(path)))
        try:
            return read_automl_checkpoint(_extract_tgz(path, folder), ema=ema)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
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
        names = set(reader.get_variable_to_shape_map())
    except Exception as e:
        raise CheckpointError(f"Cannot read TF checkpoint {prefix_path!r}: {e}") from e
    stems = sorted(n for n in names if n.endswith(AUTOML_STEM_KERNEL))
    if len(stems) != 1:
        raise CheckpointError(
            f"{prefix_path!r} is not an automl EfficientNetV2 checkpoint "
            f"(expected one '<model>{AUTOML_STEM_KERNEL}', found {stems})."
        )
    scope = stems[0][: -len(AUTOML_STEM_KERNEL)]
    out = {}
    for name in sorted(names):
        if (not name.startswith(scope + "/") or name.endswith(_AUTOML_SLOT_SUFFIXES)
                or name.endswith(EMA_SUFFIX)):
            continue
        source = name + EMA_SUFFIX if ema and name + EMA_SUFFIX in names else name
        out[name] = reader.get_tensor(source)
    return out, scope


def _extract_tgz(path: str, into: str) -> str:
    try:
        with tarfile.open(path, "r:gz") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CheckpointError(f"{path!r} is not a readable .tgz archive: {e}") from e
    return into


def _legacy_group(f):
    """The group of a legacy Keras ``.h5`` holding ``layer_names`` (weights-only or full model)."""
    group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
    if "layer_names" not in group.attrs and "layer_names0" not in group.attrs:
        return None
    return group


def _attr_strings(group, name: str) -> list[str]:
    """A string-list attribute, joining the ``name0, name1...`` chunks of large ones."""
    values, i = list(group.attrs.get(name, ())), 0
    while f"{name}{i}" in group.attrs:
        values += list(group.attrs[f"{name}{i}"])
        i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def legacy_h5_classes(path) -> int | None:
    """The classifier width of a legacy Keras ``.h5`` file, ``None`` for a notop file.

    Read from the file's last layer that has weights (a kernel and a bias, the kernel 2-D), so
    the layer names in the file do not matter.
    """
    import h5py

    path = os.fspath(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CheckpointError(f"Cannot open {path!r} as HDF5: {e}") from e
    with f:
        group = _legacy_group(f)
        if group is None:
            raise CheckpointError(
                f"{path!r} is not a legacy Keras .h5 weights file (no 'layer_names'); a Keras 3 "
                "'.weights.h5' file loads with weights=<path> directly."
            )
        weighted = [(layer, names) for layer in _attr_strings(group, "layer_names")
                    if (names := _attr_strings(group[layer], "weight_names"))]
        if not weighted:
            raise CheckpointError(f"{path!r} holds no weights.")
        layer, names = weighted[-1]
        shapes = [group[layer][n].shape for n in names]
        return int(shapes[0][1]) if len(shapes) == 2 and len(shapes[0]) == 2 else None


def read_keras_applications(path, variant) -> dict[str, np.ndarray]:
    """A keras.applications ``EfficientNetV2*`` legacy ``.h5`` as ``{"<layer>/<var>": array}``.

    The file is loaded with Keras' legacy HDF5 loader (``Model.load_weights`` on a ``.h5``
    file: topological, by layer order) into keras.applications' own model of ``variant``, with
    or without the top as the file has it; the names are that model's layer names.
    """
    import keras

    path = os.fspath(path)
    name = get_variant(variant).name
    constructor = getattr(keras.applications, f"EfficientNetV2{name.upper()}", None)
    if constructor is None:
        raise CheckpointError(f"keras.applications has no EfficientNetV2{name.upper()}; its "
                              "files hold B0-B3, S, M and L.")
    classes = legacy_h5_classes(path)
    model = constructor(include_top=classes is not None, weights=None, classes=classes or 1000,
                        include_preprocessing=False, classifier_activation=None)
    with tempfile.TemporaryDirectory() as tmp:
        source = path
        if not path.endswith((".h5", ".hdf5")) or path.endswith(".weights.h5"):
            source = os.path.join(tmp, "weights.h5")  # Keras picks its loader by the suffix
            os.symlink(os.path.abspath(path), source)
        try:
            model.load_weights(source)
        except (ValueError, KeyError, OSError) as e:
            raise CheckpointError(f"{path!r} does not load into keras.applications "
                                  f"EfficientNetV2{name.upper()} ({e}).") from e
    return {f"{layer.name}/{w.name}": keras.ops.convert_to_numpy(w)
            for layer in model.layers for w in layer.weights}
