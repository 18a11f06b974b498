"""google/automl's checkpoint variable names, from the naming rules of automl's
``efficientnetv2/effnetv2_model.py`` (docs/architecture.md §3.3), written independently of
keras_effv2's ``automl_mapping``.

automl builds the model ``EffNetV2Model(name=<scope>)`` with ``Stem(name='stem')``, blocks
``blocks_<N>`` numbered globally, and ``Head(name='head')``. Inside a block, ``_build``
names its Keras layers in creation order with two counters,

    conv2d, conv2d_1, ...                               (get_conv_name)
    tpu_batch_normalization, tpu_batch_normalization_1  (get_norm_name)

each ``name + ('' if not next(c) else '_' + str(next(c) // 2))``; the depthwise layer is
``depthwise_conv2d``, the squeeze-excite layer ``se`` holds ``conv2d`` (reduce) and
``conv2d_1`` (expand). Creation order:

* ``MBConvBlock``: expand conv, norm, depthwise, norm, se, project conv, norm;
* ``FusedMBConvBlock``: (expand conv k x k, norm, when expand_ratio != 1), project conv, norm.

The stem holds ``conv2d`` and ``tpu_batch_normalization``; the head ``conv2d``,
``tpu_batch_normalization`` and ``dense``. Variables are TF layout: conv ``kernel`` (kh, kw,
in, out), ``depthwise_kernel`` (kh, kw, channels, 1), BN ``gamma``/``beta``/``moving_mean``/
``moving_variance``, dense ``kernel`` (in, out) and ``bias``.

The tensors come from a timm ``tf_efficientnetv2_*`` state dict, whose modules are timm's own
(``ConvBnAct``: conv, bn1; ``EdgeResidual``: conv_exp, bn1, conv_pwl, bn2;
``InvertedResidual``: conv_pw, bn1, conv_dw, bn2, se.conv_reduce, se.conv_expand, conv_pwl,
bn3), so the same tensors run in timm as the reference.
"""

from __future__ import annotations

import itertools

import numpy as np


class BlockNames:
    """automl's per-block layer-name counters (``get_conv_name``, ``get_norm_name``)."""

    def __init__(self):
        self._conv = itertools.count(0)
        self._norm = itertools.count(0)

    def conv(self) -> str:
        return "conv2d" + ("" if not next(self._conv) else "_" + str(next(self._conv) // 2))

    def norm(self) -> str:
        return "tpu_batch_normalization" + (
            "" if not next(self._norm) else "_" + str(next(self._norm) // 2))


def _conv(state, module):
    return {"kernel": np.transpose(state[f"{module}.weight"], (2, 3, 1, 0))}


def _conv_bias(state, module):
    return {**_conv(state, module), "bias": state[f"{module}.bias"]}


def _depthwise(state, module):
    return {"depthwise_kernel": np.transpose(state[f"{module}.weight"], (2, 3, 0, 1))}


def _norm(state, module):
    return {"gamma": state[f"{module}.weight"], "beta": state[f"{module}.bias"],
            "moving_mean": state[f"{module}.running_mean"],
            "moving_variance": state[f"{module}.running_var"]}


def _dense(state, module):
    return {"kernel": np.transpose(state[f"{module}.weight"]), "bias": state[f"{module}.bias"]}


def _block_layers(state, prefix: str):
    """``[(automl layer, timm module, reader)]`` of one block, in automl's creation order."""
    names = BlockNames()
    if f"{prefix}conv_dw.weight" in state:  # MBConvBlock (timm InvertedResidual)
        return [(names.conv(), "conv_pw", _conv), (names.norm(), "bn1", _norm),
                ("depthwise_conv2d", "conv_dw", _depthwise), (names.norm(), "bn2", _norm),
                ("se/conv2d", "se.conv_reduce", _conv_bias),
                ("se/conv2d_1", "se.conv_expand", _conv_bias),
                (names.conv(), "conv_pwl", _conv), (names.norm(), "bn3", _norm)]
    if f"{prefix}conv_exp.weight" in state:  # FusedMBConvBlock, expand (EdgeResidual)
        return [(names.conv(), "conv_exp", _conv), (names.norm(), "bn1", _norm),
                (names.conv(), "conv_pwl", _conv), (names.norm(), "bn2", _norm)]
    return [(names.conv(), "conv", _conv), (names.norm(), "bn1", _norm)]  # ConvBnAct


def timm_block_prefixes(state) -> list[str]:
    """``blocks.<stage>.<index>.`` of every timm block, in model order."""
    ids = {tuple(int(x) for x in k.split(".")[1:3]) for k in state if k.startswith("blocks.")}
    return [f"blocks.{s}.{j}." for s, j in sorted(ids)]


def automl_variables(state: dict, scope: str) -> dict[str, np.ndarray]:
    """``{automl variable name: value}`` for a timm state dict (EMA twins not included)."""
    layers = [("stem/conv2d", "conv_stem", _conv), ("stem/tpu_batch_normalization", "bn1", _norm)]
    for n, prefix in enumerate(timm_block_prefixes(state)):
        layers += [(f"blocks_{n}/{name}", prefix + module, read)
                   for name, module, read in _block_layers(state, prefix)]
    layers += [("head/conv2d", "conv_head", _conv), ("head/tpu_batch_normalization", "bn2", _norm)]
    if "classifier.weight" in state:
        layers.append(("head/dense", "classifier", _dense))
    return {f"{scope}/{name}/{var}": np.ascontiguousarray(value)
            for name, module, read in layers for var, value in read(state, module).items()}
