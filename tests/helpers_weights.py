"""Write upstream-format checkpoint fixtures, independently of keras_effv2's key maps.

* timm ``model.safetensors`` / ``.pth`` from a (random, well-conditioned) timm model;
* an automl TF checkpoint whose variable names follow automl's ``effnetv2_model.py`` naming
  rules (:mod:`automl_naming`), written from the timm state dict;
* a keras.applications legacy ``.h5`` in the tf.keras 2 layout, written by hand with h5py
  from keras.applications' own (public) model.
"""

from __future__ import annotations

import os
import tarfile

import keras
import numpy as np
from automl_naming import automl_variables
from helpers import to_numpy

EMA = "/ExponentialMovingAverage"


def write_safetensors(state: dict, path) -> str:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, os.fspath(path))
    return os.fspath(path)


def write_pth(model, path) -> str:
    import torch

    torch.save(model.state_dict(), os.fspath(path))
    return os.fspath(path)


def write_tf_checkpoint(variables: dict, folder) -> str:
    """A name-based TF checkpoint ``folder/model.*`` (+ ``checkpoint``) as automl publishes."""
    import tensorflow as tf

    os.makedirs(folder, exist_ok=True)
    prefix = os.path.join(os.fspath(folder), "model")
    names = list(variables)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(variables[n]) for n in names])
    with open(os.path.join(os.fspath(folder), "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "model"\nall_model_checkpoint_paths: "model"\n')
    return os.fspath(folder)


def automl_checkpoint_variables(state: dict, variant: str, raw_noise: float = 0.0,
                                scope: str | None = None) -> dict:
    """Every automl variable with its ``/ExponentialMovingAverage`` twin, ``global_step`` and
    one RMSProp slot. The EMA twins hold ``state``'s values, the raw variables the same plus
    ``raw_noise`` relative noise."""
    scope = scope or f"efficientnetv2-{variant}"
    rng = np.random.default_rng(0)
    out = {}
    for name, value in automl_variables(state, scope).items():
        noise = 1 + raw_noise * rng.uniform(-1, 1, size=value.shape)
        out[name] = (value * noise).astype(value.dtype)
        out[name + EMA] = value
    out["global_step"] = np.asarray(1000, np.int64)
    out[f"{scope}/stem/conv2d/kernel/RMSProp"] = np.zeros_like(out[f"{scope}/stem/conv2d/kernel"])
    return out


def write_automl_checkpoint(state: dict, variant: str, folder, raw_noise: float = 0.0,
                            scope: str | None = None) -> str:
    """An automl checkpoint of ``state`` (timm names) in ``folder``; returns the folder."""
    return write_tf_checkpoint(automl_checkpoint_variables(state, variant, raw_noise, scope),
                               folder)


def write_tgz(folder, path) -> str:
    with tarfile.open(os.fspath(path), "w:gz") as tar:
        tar.add(os.fspath(folder), arcname=os.path.basename(os.fspath(folder).rstrip("/")))
    return os.fspath(path)


# ----------------------------------------------------------------- keras.applications files

def keras_applications_model(variant: str, include_top: bool = True, size: int = 64,
                             seed: int = 0):
    """keras.applications' ``EfficientNetV2<V>`` (public API; logits, no preprocessing;
    ``size`` px input with the top, any size without) with random, well-conditioned weights.

    As :func:`helpers_timm.make_timm_model`: BN affines randomised (small scales where a
    residual branch ends), BN statistics calibrated on random images (one training-mode
    pass with momentum 0 and dropout off), the classifier scaled to logits of std ~2. A
    parity check on such a model tells a right port from a wrong one; on Keras' default
    init the deep network's output hardly depends on its input.
    """
    model = getattr(keras.applications, f"EfficientNetV2{variant.upper()}")(
        weights=None, include_top=include_top, include_preprocessing=False,
        classifier_activation=None, input_shape=(size, size, 3) if include_top else None)
    rng = np.random.default_rng(seed)
    names = {layer.name for layer in model.layers}
    branch_ends = {n[: -len("add")] + "project_bn" for n in names if n.endswith("_add")}
    saved = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            low, high = (0.1, 0.4) if layer.name in branch_ends else (0.6, 1.4)
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(low, high, c).astype("float32"))
            layer.beta.assign((rng.normal(size=c) * 0.2).astype("float32"))
            saved.append((layer, "momentum", layer.momentum))
            layer.momentum = 0.0  # one training pass sets the statistics to the batch's
        elif isinstance(layer, keras.layers.Dropout):
            saved.append((layer, "rate", layer.rate))
            layer.rate = 0.0
    model(rng.normal(size=(8, size, size, 3)).astype("float32"), training=True)
    for layer, attr, value in saved:
        setattr(layer, attr, value)
    if include_top:
        head = model.get_layer("predictions")
        pooled = keras.Model(model.input, model.get_layer("avg_pool").output)
        feats = to_numpy(pooled(rng.normal(size=(4, size, size, 3)).astype("float32")))
        w = rng.normal(size=head.kernel.shape)
        head.kernel.assign((w * 2.0 / (feats @ w).std()).astype("float32"))
        head.bias.assign((rng.normal(size=head.bias.shape) * 0.5).astype("float32"))
    return model


def _tf_keras2_variable(layer, variable) -> str:
    """tf.keras 2's variable name: ``<layer>/<var>:0``; DepthwiseConv2D's is
    ``depthwise_kernel``."""
    var = variable.name
    if isinstance(layer, keras.layers.DepthwiseConv2D) and var == "kernel":
        var = "depthwise_kernel"
    return f"{layer.name}/{var}:0"


def tf_keras2_layers(model) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """``[(layer name, [(weight name, value)])]`` in ``model.layers`` order, named as tf.keras
    2 saved them (its input layer is ``input_1``)."""
    out = []
    for layer in model.layers:
        name = "input_1" if isinstance(layer, keras.layers.InputLayer) else layer.name
        out.append((name, [(_tf_keras2_variable(layer, w), to_numpy(w))
                           for w in layer.weights]))
    return out


def write_tf_keras2_h5(layers, path) -> str:
    """A legacy weights ``.h5`` in the layout tf.keras 2 (``save_weights_to_hdf5_group``)
    wrote: root attrs ``layer_names``, ``backend``, ``keras_version``; a group per layer with
    attr ``weight_names`` and datasets ``<layer>/<layer>/<var>:0``."""
    import h5py

    with h5py.File(os.fspath(path), "w") as f:
        f.attrs["layer_names"] = [name.encode("utf8") for name, _ in layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.9.0"
        for name, weights in layers:
            group = f.create_group(name)
            group.attrs["weight_names"] = [w.encode("utf8") for w, _ in weights]
            for w, value in weights:
                group.create_dataset(w, data=value)
    return os.fspath(path)
