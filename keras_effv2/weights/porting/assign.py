"""Strict assignment of source tensors into a model through a key map.

Every weight of the model must be filled, every source tensor used exactly once, and every
shape must match; otherwise :class:`PortingError` lists what did not match on both sides.
Nothing is assigned unless everything matches.

Example:
    >>> import keras_effv2
    >>> from keras_effv2.weights.porting import assign_weights, timm_mapping
    >>> model = keras_effv2.EfficientNetV2B0(weights=None)
    >>> # state = {name: np.ndarray} from a timm checkpoint
    >>> # assign_weights(model, state, timm_mapping("b0"))
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np

from keras_effv2.configs import VARIANTS
from keras_effv2.weights.errors import PortingError
from keras_effv2.weights.porting.key_maps import TensorMapping

_MAX_LISTED = 20
_BLOCK_NAME = re.compile(r"s\d+_b\d+")


def infer_variant(model) -> str:
    """The variant of a keras_effv2 model, from its number of blocks (unique per variant)."""
    blocks = sum(1 for layer in model.layers if _BLOCK_NAME.fullmatch(layer.name))
    found = [v for v, s in VARIANTS.items() if s.num_blocks == blocks]
    if len(found) != 1:
        raise ValueError(f"Cannot tell the EfficientNetV2 variant of model {model.name!r} "
                         f"({blocks} blocks named s<stage>_b<index>); pass variant=.")
    return found[0]


def iter_weight_keys(model):
    """``(layer, key, variable)`` for every weight, in ``model.layers`` / ``layer.weights``
    order; ``key`` is ``<layer>/<sublayer...>/<var>`` relative to the model."""
    for layer in model.layers:
        for variable in layer.weights:
            path = variable.path
            start = path.rfind(layer.name + "/")
            yield layer, (path[start:] if start >= 0 else f"{layer.name}/{variable.name}"), variable


def model_weight_keys(model) -> dict:
    """Our weight key (``<layer>/<sublayer>/<var>``, relative to the model) -> variable."""
    keys = {}
    for _, key, variable in iter_weight_keys(model):
        if key in keys:
            raise PortingError(f"Two weights of model {model.name!r} share the key {key!r}.")
        keys[key] = variable
    return keys


def listing(title: str, names: Iterable[str]) -> str:
    """One indented line ``title (n): a, b, ...`` (sorted, 20 shown), or ``""`` if empty."""
    names = sorted(names)
    if not names:
        return ""
    shown = ", ".join(names[:_MAX_LISTED])
    more = f" ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return f"\n  {title} ({len(names)}): {shown}{more}"


def mapping_problems(source_name, missing_target, missing_source, duplicated, unused,
                     bad_shapes) -> str:
    """Every way a checkpoint fails to fit a model, as one listing ('' when it fits)."""
    return (
        listing("model weights with no mapping", missing_target)
        + listing(f"model weights whose tensor is missing from the {source_name}", missing_source)
        + listing(f"{source_name} tensors used more than once", duplicated)
        + listing(f"{source_name} tensors left unused", unused)
        + listing("shape mismatches (model <- source)", bad_shapes)
    )


def assign_weights(
    model,
    tensors: Mapping[str, np.ndarray],
    mapping: Mapping[str, TensorMapping],
    ignored_suffixes: tuple[str, ...] = (),
    unused_ok: Iterable[str] = (),
    source_name: str = "checkpoint",
) -> None:
    """Fill every weight of ``model`` from ``tensors`` through ``mapping``, strictly.

    Args:
        model: a keras_effv2 model.
        tensors: source name -> array (e.g. a timm state_dict as NumPy).
        mapping: our key -> :class:`TensorMapping` (e.g. :func:`timm_mapping`).
        ignored_suffixes: source entries that never carry weights (``num_batches_tracked``).
        unused_ok: source names the caller deliberately leaves out (a dropped classifier).
        source_name: how errors refer to the source.
    """
    variables = model_weight_keys(model)
    unused_ok = set(unused_ok)
    sources = {k for k in tensors if not k.endswith(ignored_suffixes)}
    missing_target = [k for k in variables if k not in mapping]
    missing_source = [f"{k} <- {mapping[k].source}" for k in variables
                      if k in mapping and mapping[k].source not in tensors]
    used = [mapping[k].source for k in variables if k in mapping]
    duplicated = {s for s in used if used.count(s) > 1}
    unused = sources - set(used) - unused_ok
    values, bad_shapes = {}, []
    for key, variable in variables.items():
        if key not in mapping or mapping[key].source not in tensors:
            continue
        value = mapping[key].transform(np.asarray(tensors[mapping[key].source]))
        if tuple(value.shape) != tuple(variable.shape):
            bad_shapes.append(
                f"{key} {tuple(variable.shape)} <- {mapping[key].source} {tuple(value.shape)}"
            )
        values[key] = value
    problems = mapping_problems(source_name, missing_target, missing_source, duplicated, unused,
                                bad_shapes)
    if problems:
        raise PortingError(
            f"The {source_name} does not fit model {model.name!r}; nothing was loaded:{problems}"
        )
    for key, variable in variables.items():
        variable.assign(values[key].astype(variable.dtype))
