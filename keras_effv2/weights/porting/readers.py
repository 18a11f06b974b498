"""Upstream checkpoints as :class:`TensorReader` s: names and shapes first, tensors one at a time.

A reader is a read-only ``Mapping`` ``{upstream name: np.ndarray}`` whose ``shapes`` (metadata
only) are known when it opens and whose values are read from the file on access, so
``reader.items()`` yields ``(name, array)`` one tensor at a time and conversion never holds the
whole checkpoint (:func:`keras_effv2.weights.convert.convert`). A new upstream format is one
reader (``shapes`` + ``_read``) plus a key map.

* :class:`SafetensorsReader`: timm ``model.safetensors`` (pure NumPy, ``seek`` + ``read``);
* :class:`TorchReader`: ``.pth`` / ``.bin`` state dicts, flat or nested under
  ``state_dict`` / ``model`` / ``state_dict_ema`` (``torch.load(mmap=True,
  weights_only=True)``: tensors stay in the file until read; needs torch);
* :class:`AutomlReader`: google/automl TF checkpoints, a folder, a prefix or the published
  ``.tgz`` (``tf.train.load_checkpoint``; needs TensorFlow);
* :class:`KerasApplicationsReader`: keras.applications legacy ``.h5`` weights, read with h5py
  by layer order (as Keras' legacy loader assigns ``weights="imagenet"``) and named by
  keras.applications' layers, so the names inside the file do not matter.

``read_*`` functions return the whole checkpoint as a dict (tests, small files). Each raises
:class:`~keras_effv2.weights.errors.CheckpointError` naming the file on anything malformed.

Example:
    >>> from keras_effv2.weights.porting.readers import SafetensorsReader
    >>> # with SafetensorsReader("model.safetensors") as reader:
    >>> #     reader.shapes["conv_stem.weight"] -> (32, 3, 3, 3)
    >>> #     for name, array in reader.items(): ...   # one tensor in memory at a time
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import struct
import tarfile
import tempfile
from collections.abc import Mapping

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


class TensorReader(Mapping):
    """Read-only ``{name: np.ndarray}`` over a checkpoint file; ``shapes`` is known up front,
    each value is read on access. Use as a context manager (``close`` frees file handles and
    temporary files)."""

    def __init__(self, path, shapes: dict[str, tuple[int, ...]]):
        self.path = os.fspath(path)
        self.shapes = shapes

    def _read(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.shapes:
            raise KeyError(name)
        return self._read(name)

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def close(self) -> None:
        """Release the file; the reader cannot read afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SafetensorsReader(TensorReader):
    """A ``.safetensors`` file (BF16 is widened to float32); pure NumPy."""

    def __init__(self, path):
        path = os.fspath(path)
        try:
            self._file = open(path, "rb")
        except OSError as e:
            raise CheckpointError(f"Cannot read safetensors file {path!r}: {e}") from e
        try:
            try:
                (n,) = struct.unpack("<Q", self._file.read(8))
                header = json.loads(self._file.read(n))
            except Exception as e:
                raise CheckpointError(f"{path!r} is not a safetensors file (bad header).") from e
            body_size = os.fstat(self._file.fileno()).st_size - 8 - n
            self._entries = {}
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                start, end = info["data_offsets"]
                if end > body_size:
                    raise CheckpointError(
                        f"{path!r} is truncated: tensor {name!r} ends at byte {end}, "
                        f"the file has {body_size} data bytes."
                    )
                if info["dtype"] != "BF16" and info["dtype"] not in _SAFETENSORS_DTYPES:
                    raise CheckpointError(f"{path!r}: unsupported dtype {info['dtype']} for "
                                          f"{name!r}.")
                self._entries[name] = (8 + n + start, end - start, info["dtype"])
        except BaseException:
            self._file.close()
            raise
        super().__init__(path, {k: tuple(header[k]["shape"]) for k in self._entries})

    def _read(self, name: str) -> np.ndarray:
        offset, size, dtype = self._entries[name]
        self._file.seek(offset)
        raw = self._file.read(size)
        if dtype == "BF16":
            arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, _SAFETENSORS_DTYPES[dtype]).copy()
        return arr.reshape(self.shapes[name])

    def close(self) -> None:
        self._file.close()


def read_safetensors(path) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file as NumPy arrays (BF16 is widened to float32)."""
    with SafetensorsReader(path) as reader:
        return dict(reader.items())


# Where checkpoints nest their state dict (timm training checkpoints, mmengine).
STATE_DICT_KEYS = ("state_dict", "model", "state_dict_ema")


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("Reading a '.pth'/'.bin' checkpoint needs torch (pip install torch); "
                          "timm's '.safetensors' files need only NumPy.") from e
    return torch


class TorchReader(TensorReader):
    """A torch checkpoint loaded with ``torch.load(mmap=True, weights_only=True)`` (no code
    from the pickle runs; the tensors stay in the file until read). The state dict is the
    file's top level or its first of :data:`STATE_DICT_KEYS`; non-tensor entries are
    dropped. Needs torch."""

    def __init__(self, path):
        torch = _torch()
        path = os.fspath(path)
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:  # the pre-1.6 (non-zip) format cannot be mapped
                if "mmap" not in str(e):
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"Cannot read torch checkpoint {path!r}: {e}") from e
        for key in STATE_DICT_KEYS:
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
        if not isinstance(state, dict):
            raise CheckpointError(f"{path!r} does not hold a state dict.")
        self._state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        super().__init__(path, {k: tuple(v.shape) for k, v in self._state.items()})

    def _read(self, name: str) -> np.ndarray:
        value = self._state[name].detach()
        if value.dtype == _torch().bfloat16:
            value = value.float()
        return value.numpy().copy()

    def close(self) -> None:
        self._state = {}


def read_torch_state_dict(path) -> dict[str, np.ndarray]:
    """A torch checkpoint (``torch.load(weights_only=True)``) as NumPy arrays. Needs torch."""
    with TorchReader(path) as reader:
        return dict(reader.items())


def open_timm_checkpoint(path) -> TensorReader:
    """timm weights from ``.safetensors`` (NumPy) or ``.pth``/``.bin`` (torch)."""
    if os.fspath(path).endswith(".safetensors"):
        return SafetensorsReader(path)
    return TorchReader(path)


def read_timm_checkpoint(path) -> dict[str, np.ndarray]:
    """timm weights from ``.safetensors`` (NumPy) or ``.pth``/``.bin`` (torch), as a dict."""
    with open_timm_checkpoint(path) as reader:
        return dict(reader.items())


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


class AutomlReader(TensorReader):
    """Model variables of a google/automl EfficientNetV2 checkpoint, named without the EMA
    suffix; ``scope`` is its model scope.

    ``path`` is a checkpoint prefix, a folder holding one, or a ``.tgz`` of such a folder (as
    published; extracted to a temporary folder next to it, removed on ``close``). With
    ``ema=True`` each variable's ``/ExponentialMovingAverage`` shadow is read where the
    checkpoint has one (automl's ``init_ema``); ``ema=False`` reads the raw variables.
    Optimizer slots and variables outside the model scope (``global_step``) are dropped.
    Needs TensorFlow.
    """

    def __init__(self, path, ema: bool = True):
        path = os.fspath(path)
        self._folder = None
        if path.endswith((".tgz", ".tar.gz")):
            self._folder = tempfile.mkdtemp(prefix=".extract-",
                                            dir=os.path.dirname(os.path.abspath(path)))
        try:
            self._open(_extract_tgz(path, self._folder) if self._folder else path, ema)
        except BaseException:
            self.close()
            raise
        super().__init__(path, self._shapes)

    def _open(self, path: str, ema: bool) -> None:
        try:
            import tensorflow as tf
        except ImportError as e:
            raise ImportError(
                "Reading a google/automl checkpoint needs TensorFlow (pip install "
                "tensorflow-cpu); the timm-sourced weight sets need only NumPy."
            ) from e
        prefix_path = find_automl_checkpoint(path)
        try:
            self._reader = tf.train.load_checkpoint(prefix_path)
            shapes = self._reader.get_variable_to_shape_map()
        except Exception as e:
            raise CheckpointError(f"Cannot read TF checkpoint {prefix_path!r}: {e}") from e
        stems = sorted(n for n in shapes if n.endswith(AUTOML_STEM_KERNEL))
        if len(stems) != 1:
            raise CheckpointError(
                f"{prefix_path!r} is not an automl EfficientNetV2 checkpoint "
                f"(expected one '<model>{AUTOML_STEM_KERNEL}', found {stems})."
            )
        self.scope = stems[0][: -len(AUTOML_STEM_KERNEL)]
        self._sources, self._shapes = {}, {}
        for name in sorted(shapes):
            if (not name.startswith(self.scope + "/") or name.endswith(_AUTOML_SLOT_SUFFIXES)
                    or name.endswith(EMA_SUFFIX)):
                continue
            source = name + EMA_SUFFIX if ema and name + EMA_SUFFIX in shapes else name
            self._sources[name] = source
            self._shapes[name] = tuple(shapes[source])

    def _read(self, name: str) -> np.ndarray:
        return np.asarray(self._reader.get_tensor(self._sources[name]))

    def close(self) -> None:
        self._reader = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def read_automl_checkpoint(path, ema: bool = True) -> tuple[dict[str, np.ndarray], str]:
    """:class:`AutomlReader`'s tensors as a dict, and the model scope."""
    with AutomlReader(path, ema=ema) as reader:
        return dict(reader.items()), reader.scope


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


def keras_applications_layers(variant, include_top: bool) -> list[tuple[str, list[str]]]:
    """keras.applications ``EfficientNetV2*``'s layers with weights, in ``model.layers``
    order: ``[(layer name, [variable names in layer.weights order])]`` (stem, blocks, top
    conv/BN, classifier; each layer's kernel, bias / gamma, beta, moving mean, moving variance
    as Keras orders them), read off :func:`keras_applications_mapping`'s table order."""
    from keras_effv2.weights.porting.key_maps import keras_applications_mapping

    layers: dict[str, list[str]] = {}
    for m in keras_applications_mapping(variant, include_top=include_top).values():
        layer, _, var = m.source.partition("/")
        layers.setdefault(layer, []).append(var)
    return list(layers.items())


class KerasApplicationsReader(TensorReader):
    """A keras.applications ``EfficientNetV2*`` legacy ``.h5`` (weights-only or a full model)
    as ``{"<layer>/<var>": array}``, paired by layer order as Keras' legacy loader
    (``Model.load_weights`` on a ``.h5`` file) pairs them: the file's i-th layer with weights
    is keras.applications' i-th, its j-th weight that layer's j-th. The file holds the top or
    not (:func:`legacy_h5_classes`). Needs h5py."""

    def __init__(self, path, variant):
        import h5py

        path = os.fspath(path)
        name = get_variant(variant).name
        if name == "xl":
            raise CheckpointError("keras.applications has no EfficientNetV2XL; its files hold "
                                  "B0-B3, S, M and L.")
        classes = legacy_h5_classes(path)
        expected = keras_applications_layers(name, include_top=classes is not None)
        self._file = h5py.File(path, "r")
        group = _legacy_group(self._file)
        found = [(layer, names) for layer in _attr_strings(group, "layer_names")
                 if (names := _attr_strings(group[layer], "weight_names"))]
        what = f"{path!r} does not load into keras.applications EfficientNetV2{name.upper()}"
        if len(found) != len(expected):
            self._file.close()
            raise CheckpointError(f"{what} (the file has {len(found)} layers with weights, the "
                                  f"model {len(expected)}; Keras' legacy loader pairs layers "
                                  "by order).")
        self._datasets, shapes = {}, {}
        for (layer, names), (ours, variables) in zip(found, expected, strict=True):
            if len(names) != len(variables):
                self._file.close()
                raise CheckpointError(f"{what} (layer {layer!r} of the file, {ours!r} in the "
                                      f"model: {len(names)} weights, the model's "
                                      f"{len(variables)}).")
            for dataset, var in zip(names, variables, strict=True):
                key = f"{ours}/{var}"
                self._datasets[key] = group[layer][dataset]
                shapes[key] = tuple(self._datasets[key].shape)
        super().__init__(path, shapes)

    def _read(self, name: str) -> np.ndarray:
        return self._datasets[name][()]

    def close(self) -> None:
        self._datasets = {}
        self._file.close()


def read_keras_applications(path, variant) -> dict[str, np.ndarray]:
    """:class:`KerasApplicationsReader`'s tensors as a dict."""
    with KerasApplicationsReader(path, variant) as reader:
        return dict(reader.items())
