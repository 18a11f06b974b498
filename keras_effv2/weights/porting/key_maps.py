"""Where each of our weights comes from in a source checkpoint, and how it is transformed.

Our weight keys are ``<layer>/<sublayer...>/<variable>`` relative to the model, e.g.
``s3_b00/dw_conv/kernel``. A source's key map lists, per key, the source tensor name and
the transform that brings it to Keras layout. The tables below are the whole mapping;
nothing is matched by position.

Example:
    >>> from keras_effv2.weights import porting
    >>> m = porting.timm_mapping("b0")
    >>> m["s3_b00/dw_conv/kernel"].source
    'blocks.3.0.conv_dw.weight'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from keras_effv2.configs import BlockSpec, get_variant, resolve_blocks

Transform = Callable[[np.ndarray], np.ndarray]


def identity(x: np.ndarray) -> np.ndarray:
    return x


def torch_conv_to_keras(x: np.ndarray) -> np.ndarray:
    """(out, in, kh, kw) -> (kh, kw, in, out)."""
    return np.transpose(x, (2, 3, 1, 0))


def torch_depthwise_to_keras(x: np.ndarray) -> np.ndarray:
    """(channels, 1, kh, kw) -> (kh, kw, channels, 1)."""
    return np.transpose(x, (2, 3, 0, 1))


def torch_dense_to_keras(x: np.ndarray) -> np.ndarray:
    """(out, in) -> (in, out)."""
    return np.transpose(x)


@dataclasses.dataclass(frozen=True)
class TensorMapping:
    """One of our weights: its source tensor name and the transform into Keras layout."""

    source: str
    transform: Transform = identity


# Per sublayer kind: (our variable name, torch suffix, transform).
_TORCH_VARIABLES: dict[str, tuple[tuple[str, str, Transform], ...]] = {
    "conv": (("kernel", "weight", torch_conv_to_keras),),
    "conv_bias": (("kernel", "weight", torch_conv_to_keras), ("bias", "bias", identity)),
    "depthwise": (("kernel", "weight", torch_depthwise_to_keras),),
    "bn": (
        ("gamma", "weight", identity),
        ("beta", "bias", identity),
        ("moving_mean", "running_mean", identity),
        ("moving_variance", "running_var", identity),
    ),
    "dense": (("kernel", "weight", torch_dense_to_keras), ("bias", "bias", identity)),
}

# Per block type: (our sublayer, timm module, kind). timm: ConvBnAct (fused e=1),
# EdgeResidual (fused e>1), InvertedResidual (MBConv).
_TIMM_BLOCK_LAYERS = {
    ("fused", False): (("project_conv", "conv", "conv"), ("project_bn", "bn1", "bn")),
    ("fused", True): (
        ("expand_conv", "conv_exp", "conv"),
        ("expand_bn", "bn1", "bn"),
        ("project_conv", "conv_pwl", "conv"),
        ("project_bn", "bn2", "bn"),
    ),
    ("mbconv", True): (
        ("expand_conv", "conv_pw", "conv"),
        ("expand_bn", "bn1", "bn"),
        ("dw_conv", "conv_dw", "depthwise"),
        ("dw_bn", "bn2", "bn"),
        ("se/conv_reduce", "se.conv_reduce", "conv_bias"),
        ("se/conv_expand", "se.conv_expand", "conv_bias"),
        ("project_conv", "conv_pwl", "conv"),
        ("project_bn", "bn3", "bn"),
    ),
}
_TIMM_STEM = (("stem_conv", "conv_stem", "conv"), ("stem_bn", "bn1", "bn"))
_TIMM_HEAD = (("head_conv", "conv_head", "conv"), ("head_bn", "bn2", "bn"))
_TIMM_TOP = (("predictions", "classifier", "dense"),)

# timm state_dict entries that carry no weights of ours.
TIMM_IGNORED_SUFFIXES = (".num_batches_tracked",)


def _torch_layers(layers, our_prefix: str, source_prefix: str) -> dict[str, TensorMapping]:
    out = {}
    for ours, theirs, kind in layers:
        for var, suffix, transform in _TORCH_VARIABLES[kind]:
            out[f"{our_prefix}{ours}/{var}"] = TensorMapping(
                f"{source_prefix}{theirs}.{suffix}", transform
            )
    return out


def _timm_block_layers(block: BlockSpec):
    return _TIMM_BLOCK_LAYERS[(block.block, block.expand_ratio != 1)]


def timm_mapping(variant, include_top: bool = True) -> dict[str, TensorMapping]:
    """Our weight key -> timm ``tf_efficientnetv2_<variant>`` state_dict entry."""
    spec = get_variant(variant)
    mapping = _torch_layers(_TIMM_STEM, "", "")
    for block in resolve_blocks(spec):
        mapping.update(
            _torch_layers(
                _timm_block_layers(block), f"{block.name}/", f"blocks.{block.stage}.{block.index}."
            )
        )
    mapping.update(_torch_layers(_TIMM_HEAD, "", ""))
    if include_top:
        mapping.update(_torch_layers(_TIMM_TOP, "", ""))
    return mapping


# --- google/automl TF checkpoints (docs/architecture.md §3.3) -------------------------------------
# TF layouts equal Keras layouts: every transform is the identity. Per block type:
# (our sublayer, automl variable scope inside ``blocks_{g}``, kind).
_TF_VARIABLES: dict[str, tuple[str, ...]] = {
    "conv": ("kernel",),
    "conv_bias": ("kernel", "bias"),
    "depthwise": ("depthwise_kernel",),
    "bn": ("gamma", "beta", "moving_mean", "moving_variance"),
    "dense": ("kernel", "bias"),
}
_AUTOML_BLOCK_LAYERS = {
    ("fused", False): (
        ("project_conv", "conv2d", "conv"),
        ("project_bn", "tpu_batch_normalization", "bn"),
    ),
    ("fused", True): (
        ("expand_conv", "conv2d", "conv"),
        ("expand_bn", "tpu_batch_normalization", "bn"),
        ("project_conv", "conv2d_1", "conv"),
        ("project_bn", "tpu_batch_normalization_1", "bn"),
    ),
    ("mbconv", True): (
        ("expand_conv", "conv2d", "conv"),
        ("expand_bn", "tpu_batch_normalization", "bn"),
        ("dw_conv", "depthwise_conv2d", "depthwise"),
        ("dw_bn", "tpu_batch_normalization_1", "bn"),
        ("se/conv_reduce", "se/conv2d", "conv_bias"),
        ("se/conv_expand", "se/conv2d_1", "conv_bias"),
        ("project_conv", "conv2d_1", "conv"),
        ("project_bn", "tpu_batch_normalization_2", "bn"),
    ),
}
_AUTOML_STEM = (("stem_conv", "stem/conv2d", "conv"),
                ("stem_bn", "stem/tpu_batch_normalization", "bn"))
_AUTOML_HEAD = (("head_conv", "head/conv2d", "conv"),
                ("head_bn", "head/tpu_batch_normalization", "bn"))
_AUTOML_TOP = (("predictions", "head/dense", "dense"),)


def _tf_layers(layers, our_prefix: str, source_prefix: str) -> dict[str, TensorMapping]:
    out = {}
    for ours, theirs, kind in layers:
        for var in _TF_VARIABLES[kind]:
            ours_var = "kernel" if var == "depthwise_kernel" else var
            out[f"{our_prefix}{ours}/{ours_var}"] = TensorMapping(f"{source_prefix}{theirs}/{var}")
    return out


def automl_model_name(variant) -> str:
    """The variable-scope prefix automl uses, e.g. ``efficientnetv2-s``."""
    return f"efficientnetv2-{get_variant(variant).name}"


# The model scope of automl's older releases (the Keras auto-name of ``EffNetV2Model``).
AUTOML_LEGACY_SCOPE = "eff_net_v2_model"


def automl_scopes(variant) -> tuple[str, ...]:
    """The model scopes an automl checkpoint of ``variant`` may use."""
    return automl_model_name(variant), AUTOML_LEGACY_SCOPE


def automl_mapping(
    variant, include_top: bool = True, prefix: str | None = None
) -> dict[str, TensorMapping]:
    """Our weight key -> google/automl checkpoint variable (non-EMA name).

    Blocks are numbered globally (``{prefix}/blocks_{g}/...``). Readers resolve the
    ``/ExponentialMovingAverage`` shadows to these names, so the map never mentions them.

    Example:
        >>> automl_mapping("b0")["s3_b00/dw_conv/kernel"].source
        'efficientnetv2-b0/blocks_5/depthwise_conv2d/depthwise_kernel'
    """
    spec = get_variant(variant)
    p = (prefix or automl_model_name(spec)) + "/"
    mapping = _tf_layers(_AUTOML_STEM, "", p)
    for block in resolve_blocks(spec):
        layers = _AUTOML_BLOCK_LAYERS[(block.block, block.expand_ratio != 1)]
        mapping.update(_tf_layers(layers, f"{block.name}/", f"{p}blocks_{block.global_index}/"))
    mapping.update(_tf_layers(_AUTOML_HEAD, "", p))
    if include_top:
        mapping.update(_tf_layers(_AUTOML_TOP, "", p))
    return mapping


# --- keras.applications (legacy .h5 weights; docs/architecture.md §3.2) --------------------------
# Keys are ``<layer>/<variable>`` of keras.applications' own Keras 3 model, into which
# :func:`keras_effv2.weights.porting.readers.read_keras_applications` loads the file.
_KAPP_BLOCK_LAYERS = {
    ("fused", False): (("project_conv", "project_conv", "conv"),
                       ("project_bn", "project_bn", "bn")),
    ("fused", True): (
        ("expand_conv", "expand_conv", "conv"),
        ("expand_bn", "expand_bn", "bn"),
        ("project_conv", "project_conv", "conv"),
        ("project_bn", "project_bn", "bn"),
    ),
    ("mbconv", True): (
        ("expand_conv", "expand_conv", "conv"),
        ("expand_bn", "expand_bn", "bn"),
        ("dw_conv", "dwconv2", "conv"),
        ("dw_bn", "bn", "bn"),
        ("se/conv_reduce", "se_reduce", "conv_bias"),
        ("se/conv_expand", "se_expand", "conv_bias"),
        ("project_conv", "project_conv", "conv"),
        ("project_bn", "project_bn", "bn"),
    ),
}
_KAPP_STEM = (("stem_conv", "stem_conv", "conv"), ("stem_bn", "stem_bn", "bn"))
_KAPP_HEAD = (("head_conv", "top_conv", "conv"), ("head_bn", "top_bn", "bn"))
_KAPP_TOP = (("predictions", "predictions", "dense"),)


def keras_applications_block_prefix(block: BlockSpec) -> str:
    """keras.applications' block prefix, e.g. ``block4a_`` for our ``s3_b00``."""
    if block.index >= 26:
        raise ValueError(f"keras.applications cannot name block {block.name} (over 26 per stage).")
    return f"block{block.stage + 1}{chr(97 + block.index)}_"


def keras_applications_mapping(variant, include_top: bool = True) -> dict[str, TensorMapping]:
    """Our weight key -> keras.applications ``EfficientNetV2*`` ``<layer>/<variable>``.

    Example:
        >>> keras_applications_mapping("b0")["s3_b00/dw_conv/kernel"].source
        'block4a_dwconv2/kernel'
    """
    spec = get_variant(variant)
    if spec.name == "xl":
        raise ValueError("keras.applications has no EfficientNetV2XL.")
    mapping = _tf_layers(_KAPP_STEM, "", "")
    for block in resolve_blocks(spec):
        layers = _KAPP_BLOCK_LAYERS[(block.block, block.expand_ratio != 1)]
        prefix = keras_applications_block_prefix(block)
        mapping.update(_tf_layers([(o, prefix + t, k) for o, t, k in layers], f"{block.name}/", ""))
    mapping.update(_tf_layers(_KAPP_HEAD, "", ""))
    if include_top:
        mapping.update(_tf_layers(_KAPP_TOP, "", ""))
    return mapping
