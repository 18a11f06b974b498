"""Write upstream-format checkpoint fixtures from a (random, well-conditioned) timm model.

* timm ``model.safetensors`` / ``.pth``;
* an automl-style name-based TF checkpoint (``tf.raw_ops.SaveV2`` with automl's variable
  names, EMA shadows, an optimizer slot and ``global_step``), optionally as a ``.tgz``;
* a keras.applications legacy ``.h5`` (keras.applications model, weights ported in by name,
  saved with Keras' legacy HDF5 writer, which is what keras.applications ships).
"""

from __future__ import annotations

import os
import tarfile

import numpy as np

from keras_effv2.porting import automl_mapping, keras_applications_mapping, timm_mapping
from keras_effv2.porting.key_map import automl_model_name

EMA = "/ExponentialMovingAverage"


def keras_layout(state: dict, variant: str, include_top=True) -> dict:
    """timm state dict -> our weight keys, in Keras (= TF) layout."""
    m = timm_mapping(variant, include_top=include_top)
    return {k: t.transform(np.asarray(state[t.source])) for k, t in m.items()}


def write_safetensors(state: dict, path) -> str:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, os.fspath(path))
    return os.fspath(path)


def write_pth(model, path) -> str:
    import torch

    torch.save(model.state_dict(), os.fspath(path))
    return os.fspath(path)


def write_automl_checkpoint(state: dict, variant: str, folder, raw_noise: float = 0.0) -> str:
    """automl checkpoint in ``folder`` (``model.*`` + ``checkpoint``); returns the folder.

    The EMA shadows hold the timm weights; the raw variables hold them plus ``raw_noise``.
    """
    import tensorflow as tf

    os.makedirs(folder, exist_ok=True)
    ours = keras_layout(state, variant)
    amap = automl_mapping(variant)
    scope = automl_model_name(variant)
    names, values = [], []
    rng = np.random.default_rng(0)
    for key, value in ours.items():
        src = amap[key].source
        names += [src, src + EMA]
        noise = 1 + raw_noise * rng.uniform(-1, 1, size=value.shape)
        values += [(value * noise).astype(value.dtype), value]
    names += ["global_step", f"{scope}/stem/conv2d/kernel/RMSProp"]
    values += [np.asarray(1000, np.int64), np.zeros_like(ours["stem_conv/kernel"])]
    prefix = os.path.join(os.fspath(folder), "model")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(v) for v in values])
    with open(os.path.join(os.fspath(folder), "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "model"\nall_model_checkpoint_paths: "model"\n')
    return os.fspath(folder)


def write_tgz(folder, path) -> str:
    with tarfile.open(os.fspath(path), "w:gz") as tar:
        tar.add(os.fspath(folder), arcname=os.path.basename(os.fspath(folder).rstrip("/")))
    return os.fspath(path)


def keras_applications_model(variant: str, state: dict, num_classes: int, size: int):
    """keras.applications EfficientNetV2 (logits, no preprocessing) with timm's weights."""
    from keras.src.applications import efficientnet_v2 as kapp

    model = getattr(kapp, f"EfficientNetV2{variant.upper()}")(
        weights=None, classes=num_classes, include_preprocessing=False,
        classifier_activation=None, input_shape=(size, size, 3),
    )
    ours = keras_layout(state, variant)
    by_source = {t.source: ours[k] for k, t in keras_applications_mapping(variant).items()}
    for layer in model.layers:
        for w in layer.weights:
            w.assign(by_source.pop(f"{layer.name}/{w.name}"))
    assert not by_source, sorted(by_source)[:5]
    return model


def write_legacy_h5(model, path) -> str:
    import h5py
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    with h5py.File(os.fspath(path), "w") as f:
        save_weights_to_hdf5_group(f, model)
    return os.fspath(path)
