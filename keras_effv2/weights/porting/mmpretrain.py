"""mmpretrain EfficientNetV2 checkpoints: a pickle-safe streaming reader and the key map.

mmpretrain (the seed model card's library) names its ``EfficientNetV2`` backbone
``backbone.layers.<i>...`` and its classifier ``head.fc``; mmengine's ``save_checkpoint`` nests
them in ``state_dict`` next to ``meta`` (training snapshots add ``message_hub``, ``optimizer``
and ``param_schedulers``: mmengine objects in the pickle). The tensors align one to one, in
order and shape, with timm's ``tf_efficientnetv2_<v>`` state dict (checked against both
libraries' models by ``tests/test_weights_mmpretrain.py``), so the key map is timm's
(:func:`~keras_effv2.weights.porting.key_maps.timm_mapping`) with each timm module renamed by
the tables below.

Reading never imports or runs code named in the pickle: ``torch.load(weights_only=True,
mmap=True)`` first; a training snapshot that torch's weights-only loader refuses is read by a
restricted unpickler that materialises tensors and plain containers and turns every other
object into an inert placeholder (outside ``state_dict`` only: a placeholder among the weights
is an error naming its class). Tensors stay memory-mapped and are yielded one at a time.

Example:
    >>> from keras_effv2.weights.porting.mmpretrain import mmpretrain_mapping
    >>> mmpretrain_mapping("b0")["s3_b00/dw_conv/kernel"].source
    'backbone.layers.4.0.depthwise_conv.conv.weight'
    >>> # for name, array in iter_mmpretrain_tensors("efficientnetv2-b0.pth"): ...
"""

from __future__ import annotations

import collections
import os
import pickle
import types
from collections.abc import Iterator

import numpy as np

from keras_effv2.configs import get_variant, resolve_blocks
from keras_effv2.weights.errors import CheckpointError
from keras_effv2.weights.porting.key_maps import TensorMapping, timm_mapping
from keras_effv2.weights.porting.readers import TensorReader

# timm module -> mmpretrain module, per timm block type (ConvBnAct / EdgeResidual /
# InvertedResidual) and for the stem, head and classifier. ``{last}`` is the backbone's last
# layer index (number of stages + 1).
_MM_BLOCK_MODULES = {
    ("fused", False): {"conv": "conv", "bn1": "bn"},
    ("fused", True): {"conv_exp": "conv1.conv", "bn1": "conv1.bn",
                      "conv_pwl": "conv2.conv", "bn2": "conv2.bn"},
    ("mbconv", True): {"conv_pw": "expand_conv.conv", "bn1": "expand_conv.bn",
                       "conv_dw": "depthwise_conv.conv", "bn2": "depthwise_conv.bn",
                       "se.conv_reduce": "se.conv1.conv", "se.conv_expand": "se.conv2.conv",
                       "conv_pwl": "linear_conv.conv", "bn3": "linear_conv.bn"},
}
_MM_TOP_LEVEL = {"conv_stem": "backbone.layers.0.conv", "bn1": "backbone.layers.0.bn",
                 "conv_head": "backbone.layers.{last}.conv", "bn2": "backbone.layers.{last}.bn",
                 "classifier": "head.fc"}
MMPRETRAIN_CLASSIFIER = "head.fc.weight"
MMPRETRAIN_IGNORED_SUFFIXES = (".num_batches_tracked",)
BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


def timm_to_mmpretrain_names(variant) -> dict[str, str]:
    """timm ``tf_efficientnetv2_<v>`` state-dict name -> mmpretrain name, every weight of the
    full model (``num_batches_tracked`` buffers included).

    Example:
        >>> timm_to_mmpretrain_names("b0")["blocks.1.0.conv_exp.weight"]
        'backbone.layers.2.0.conv1.conv.weight'
    """
    spec = get_variant(variant)
    blocks = resolve_blocks(spec)
    last = max(b.stage for b in blocks) + 2
    out = {}
    for timm_name in timm_mapping(spec, include_top=True).values():
        out.update(_rename(timm_name.source, blocks, last))
    for timm_name, mm_name in list(out.items()):  # BN buffers that carry no weight of ours
        if timm_name.endswith(".running_mean"):
            out[timm_name[:-12] + "num_batches_tracked"] = mm_name[:-12] + "num_batches_tracked"
    return out


def _rename(timm_name: str, blocks, last: int) -> dict[str, str]:
    module, _, param = timm_name.rpartition(".")
    if module.startswith("blocks."):
        _, stage, index, inner = module.split(".", 3)
        block = next(b for b in blocks if (b.stage, b.index) == (int(stage), int(index)))
        table = _MM_BLOCK_MODULES[(block.block, block.expand_ratio != 1)]
        return {timm_name: f"backbone.layers.{int(stage) + 1}.{index}.{table[inner]}.{param}"}
    return {timm_name: f"{_MM_TOP_LEVEL[module].format(last=last)}.{param}"}


def mmpretrain_mapping(variant, include_top: bool = True) -> dict[str, TensorMapping]:
    """Our weight key -> mmpretrain ``EfficientNetV2`` checkpoint entry (timm's map, renamed)."""
    names = timm_to_mmpretrain_names(variant)
    return {key: TensorMapping(names[m.source], m.transform)
            for key, m in timm_mapping(variant, include_top=include_top).items()}


# ------------------------------------------------------------------------------- reading

class Opaque:
    """An object of a class the restricted unpickler does not materialise (never imported).

    It absorbs whatever the pickle builds it with, so the rest of the file still loads;
    ``pickle_global`` names the class."""

    pickle_global = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value):
        self.__dict__.setdefault("values", []).append(value)

    def extend(self, values):
        self.__dict__.setdefault("values", []).extend(values)


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}
_TORCH_REBUILDERS = ("_rebuild_tensor_v2", "_rebuild_tensor", "_rebuild_parameter")


def _torch_utils():
    """The module holding torch's tensor rebuild functions (private: the feature check is the
    ``getattr`` in :meth:`RestrictedUnpickler.find_class`)."""
    import torch._utils

    return torch._utils


class RestrictedUnpickler(pickle.Unpickler):
    """Materialises tensors (torch's own rebuild functions) and plain containers; every other
    global becomes an :class:`Opaque` subclass named after it, without importing it."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch._utils" and name in _TORCH_REBUILDERS:
            # torch's own rebuild functions; a torch without one leaves the tensor Opaque,
            # which _state_dict then refuses, naming it
            rebuild = getattr(_torch_utils(), name, None)
            if rebuild is not None:
                return rebuild
        return type(name, (Opaque,), {"pickle_global": f"{module}.{name}"})


def _restricted_pickle_module():
    module = types.ModuleType("keras_effv2_restricted_pickle")
    module.Unpickler = RestrictedUnpickler
    module.UnpicklingError = pickle.UnpicklingError

    def load(*args, **kwargs):
        raise CheckpointError("legacy (non-zip) torch files are read by the weights-only "
                              "loader only")

    module.load = load
    return module


def _torch_load(path: str):
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"Reading the mmpretrain checkpoint {path!r} needs torch "
                          "(pip install torch).") from e
    if not os.path.isfile(path):
        raise CheckpointError(f"mmpretrain checkpoint {path!r} does not exist.")
    mmap = _is_zip(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as weights_only_error:
        if not mmap:
            raise CheckpointError(f"Cannot read {path!r} with torch's weights-only loader "
                                  f"({weights_only_error}).") from weights_only_error
        try:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=True,
                              pickle_module=_restricted_pickle_module())
        except Exception as e:
            raise CheckpointError(f"Cannot read torch checkpoint {path!r} ({type(e).__name__}:"
                                  f" {e}).") from e
    except Exception as e:  # truncated or not a torch file: torch raises RuntimeError etc.
        raise CheckpointError(f"Cannot read torch checkpoint {path!r} ({type(e).__name__}: "
                              f"{e}).") from e


def _is_zip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _state_dict(obj, path: str) -> dict:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path!r} holds no state dict (expected a dict of tensors, or "
                              f"one under 'state_dict' as mmengine's save_checkpoint writes).")
    bad = {k: v.pickle_global if isinstance(v, Opaque) else type(v).__name__
           for k, v in obj.items() if not hasattr(v, "detach")}
    if bad:
        shown = ", ".join(f"{k} ({c})" for k, c in list(bad.items())[:10])
        raise CheckpointError(f"{path!r}: state-dict entries that are not tensors, which this "
                              f"reader does not materialise: {shown}.")
    if not any(k.startswith("backbone.") for k in obj) and any(
            k.startswith("layers.") for k in obj):  # saved from model.backbone
        obj = {f"backbone.{k}": v for k, v in obj.items()}
    return obj


def iter_mmpretrain_tensors(path) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, array)`` for every tensor of an mmpretrain checkpoint, one at a time.

    Arrays are views of the memory-mapped file where torch allows (float32, float16);
    bfloat16 is widened to float32. Needs torch; never imports mmpretrain or mmengine.

    Raises:
        CheckpointError: the file cannot be read safely (naming what was met).
    """
    path = os.fspath(path)
    state = _state_dict(_torch_load(path), path)
    for name, tensor in state.items():
        tensor = tensor.detach()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        yield name, tensor.numpy()


class MmpretrainReader(TensorReader):
    """An mmpretrain checkpoint as a :class:`TensorReader`: names and shapes up front, one
    tensor read (and widened from bfloat16) at a time, as the streaming conversion needs.
    Opened like :func:`iter_mmpretrain_tensors` (weights-only or restricted unpickling)."""

    def __init__(self, path):
        path = os.fspath(path)
        self._state = _state_dict(_torch_load(path), path)
        super().__init__(path, {k: tuple(v.shape) for k, v in self._state.items()})

    def _read(self, name: str) -> np.ndarray:
        tensor = self._state[name].detach()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        return tensor.numpy().copy()

    def close(self) -> None:
        self._state = {}


def read_mmpretrain_checkpoint(path) -> dict[str, np.ndarray]:
    """All tensors of an mmpretrain checkpoint (see :func:`iter_mmpretrain_tensors`)."""
    return dict(iter_mmpretrain_tensors(path))
