"""Pretrained weights: the registry, the download cache, porting, ``convert`` and ``load``.

* :mod:`~keras_effv2.weights.registry`: the official weight sets as data (``WEIGHTS``);
* :mod:`~keras_effv2.weights.download`: fetch one file (mirror, Hugging Face Hub,
  ``get_file``), checked against its sha256 or the hash prefix in its name;
* :mod:`~keras_effv2.weights.cache`: fetch (hosts in order), convert once, lock, sha256 sidecar;
* :mod:`~keras_effv2.weights.porting`: key maps, readers and strict assignment;
* :func:`convert`: one upstream checkpoint to a ``.weights.h5`` file, one tensor at a time;
* :func:`load`: a tag or ``.weights.h5`` into a built model, one tensor at a time;
* :func:`export`: a model's weights out as a timm (``.safetensors``) or mmpretrain (``.pth``)
  state dict (:mod:`~keras_effv2.weights.state_dict_export`).

The model builder (:mod:`keras_effv2.model`) knows nothing of weights: the constructors
build, then call :func:`load`.

Example:
    >>> import keras_effv2
    >>> from keras_effv2.weights import get_weights_spec, load
    >>> get_weights_spec("b0", "imagenet").key
    'b0.in1k'
    >>> model = keras_effv2.EfficientNetV2B0(weights=None)
    >>> # load(model, "imagenet")
"""

from keras_effv2.weights.cache import (
    MIRROR_ENV,
    cache_dir,
    discard_download,
    ensure_cached,
    fetch_source,
    fetch_upstream,
)
from keras_effv2.weights.convert import SOURCES, Conversion, convert
from keras_effv2.weights.download import HashMismatchError
from keras_effv2.weights.errors import CheckpointError, PortingError, WeightsDownloadError
from keras_effv2.weights.load import file_classes, infer_variant, load, load_file
from keras_effv2.weights.porting import (
    TIMM_IGNORED_SUFFIXES,
    TensorMapping,
    assign_weights,
    automl_mapping,
    keras_applications_mapping,
    model_weight_keys,
    timm_mapping,
)
from keras_effv2.weights.registry import (
    UPSTREAM_ENV,
    WEIGHTS,
    Upstream,
    WeightsSpec,
    default_weights_spec,
    get_weights_spec,
    is_weights_tag,
    list_weights,
    normalize_tag,
    resolve_key,
    upstreams,
)
from keras_effv2.weights.state_dict_export import export

__all__ = [
    "MIRROR_ENV",
    "UPSTREAM_ENV",
    "SOURCES",
    "TIMM_IGNORED_SUFFIXES",
    "WEIGHTS",
    "CheckpointError",
    "HashMismatchError",
    "Conversion",
    "PortingError",
    "TensorMapping",
    "Upstream",
    "WeightsDownloadError",
    "WeightsSpec",
    "assign_weights",
    "automl_mapping",
    "cache_dir",
    "convert",
    "default_weights_spec",
    "discard_download",
    "ensure_cached",
    "export",
    "fetch_source",
    "fetch_upstream",
    "file_classes",
    "get_weights_spec",
    "infer_variant",
    "is_weights_tag",
    "keras_applications_mapping",
    "list_weights",
    "load",
    "load_file",
    "model_weight_keys",
    "normalize_tag",
    "resolve_key",
    "timm_mapping",
    "upstreams",
]
