"""Where each of our weights comes from in a source checkpoint, and how it is transformed.

Our weight keys are ``<layer>/<sublayer...>/<variable>`` relative to the model, e.g.
``s3_b00/dw_conv/kernel``. A source's key map lists, per key, the source tensor name and
the transform that brings it to Keras layout. The tables below are the whole mapping;
nothing is matched by position.

Example:
    >>> from keras_effv2.porting import timm_mapping
    >>> m = timm_mapping("b0")
    >>> m["s3_b00/dw_conv/kernel"].source
    'blocks.3.0.conv_dw.weight'
"""

from __future__ import annotations

import dataclasses
from typing import Callable

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
