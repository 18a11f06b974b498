"""Load a registered weight set or a ``.weights.h5`` file into a built model, strictly.

:func:`load` checks every name and shape from the file's metadata first and assigns nothing
unless all fit; then it reads one dataset at a time straight into its variable, so loading
needs little more memory than the model's own weights (no second model, no copy of the
file). The backbone must match exactly; the classifier loads when the model has one of the
file's width, and is left freshly initialised (with a warning) when the model's has another
width; a model without the top takes the backbone of a file with one.

Example:
    >>> import keras_effv2
    >>> from keras_effv2.weights import load
    >>> model = keras_effv2.EfficientNetV2B0(weights=None, classes=10)
    >>> # load(model, "imagenet")        # backbone from b0.in1k, fresh 10-class head
    >>> # load(model, "b0.weights.h5")   # a file written by save_weights / keras-effv2 convert
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from keras_effv2.weights import cache, keras_h5
from keras_effv2.weights.errors import PortingError
from keras_effv2.weights.memory import release_freed_memory, release_interval
from keras_effv2.weights.porting.assign import infer_variant, listing, model_weight_keys
from keras_effv2.weights.registry import TAG_NAMES, get_weights_spec, is_weights_tag

logger = logging.getLogger("keras_effv2")
HEAD_LAYER = keras_h5.HEAD_LAYER


def weights_path(weights) -> str:
    """``weights`` as the path of an existing ``.weights.h5`` file, or a clear error."""
    path = os.fspath(weights)
    if not path.endswith(".weights.h5"):
        raise ValueError(f"weights={path!r}: expected None or a path to a Keras '.weights.h5' "
                         f"file, or a registered tag ({TAG_NAMES}).")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist.")
    return path


def load(model, weights, *, variant=None) -> None:
    """Fill ``model`` from a registered tag (fetched and converted once into the cache) or a
    ``.weights.h5`` path; see the module docstring for the rules.

    Raises:
        PortingError: listing the missing, unknown and mis-shaped weights; nothing assigned.
        WeightsDownloadError: a tag could not be fetched or converted.
    """
    if is_weights_tag(weights):
        spec = get_weights_spec(variant or infer_variant(model), weights)
        path, _ = cache.ensure_cached(spec, layout=model)
        load_file(model, path, what=f"weights {spec.key!r}")
    else:
        load_file(model, weights_path(weights))


def _plan(model, index: dict, what: str) -> list:
    """``[(variable, dataset path)]`` to assign; raises :class:`PortingError` on any
    mismatch."""
    variables = model_weight_keys(model)
    paths = keras_h5.dataset_paths(model)
    model_head = [k for k in variables if k.startswith(HEAD_LAYER + "/")]
    file_head = list(keras_h5.CLASSIFIER_PATHS)
    if not all(p in index for p in file_head):
        file_head = []
    skip = set()
    if not model_head or not file_head:
        skip = set(model_head)
        if model_head:
            raise PortingError(f"{what} holds no classifier but model {model.name!r} has one; "
                               "nothing was loaded. Build it with include_top=False, or load "
                               "a file with its top.")
    elif any(tuple(variables[k].shape) != index[paths[k]] for k in model_head):
        skip = set(model_head)
        units = variables[f"{HEAD_LAYER}/bias"].shape[0]
        classes = index[keras_h5.CLASSIFIER_PATHS[1]][0]
        logger.warning("keras_effv2: %s have %d classes but classes=%d: the backbone is "
                       "pretrained, the %d-class head is freshly initialised.",
                       what, classes, units, units)
    wanted = {k: p for k, p in paths.items() if k not in skip}
    missing = [f"{k} ({p})" for k, p in wanted.items() if p not in index]
    unknown = set(index) - set(wanted.values()) - set(file_head)
    shapes = [f"{k} {tuple(variables[k].shape)} <- {index[p]}" for k, p in wanted.items()
              if p in index and tuple(variables[k].shape) != index[p]]
    problems = (listing("model weights missing from the file", missing)
                + listing("file weights the model does not have", unknown)
                + listing("shape mismatches (model <- file)", shapes))
    if problems:
        raise PortingError(f"{what} does not fit model {model.name!r}; nothing was loaded:"
                           f"{problems}")
    return [(variables[k], p) for k, p in wanted.items()]


def load_file(model, path, what: str | None = None) -> None:
    """Load a Keras ``.weights.h5`` file into ``model``: validate, then one tensor at a time."""
    what = what or f"weights file {os.fspath(path)!r}"
    with keras_h5.open_weights_file(path) as f:
        plan = _plan(model, keras_h5.read_index(f), what)
        interval = release_interval(sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize
                                        for v, _ in plan))
        loaded = 0
        for variable, dataset in plan:
            value = f[dataset][()]
            variable.assign(value)
            loaded += value.nbytes
            del value
            if loaded >= interval:  # the replaced buffers go back to the OS
                release_freed_memory()
                loaded = 0


def file_classes(path) -> int | None:
    """The classifier width stored in a ``.weights.h5`` file (``None``: saved without top)."""
    return keras_h5.summarize(weights_path(path)).classes
