"""Loading ``.weights.h5`` files: the layout Keras writes, strict refusals, the classifier
rules, and the memory a load needs (the model's own weights plus a few percent)."""

import json
import logging
import os
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
from helpers import to_numpy

import keras_effv2
from keras_effv2.weights import CheckpointError, PortingError, load_file
from keras_effv2.weights.keras_h5 import dataset_paths, read_index

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Peak RSS growth while loading, over the model's own weight bytes: at most 20 % on top of
# the weights the built model already holds (a second model or a copy of the file: >= 100 %).
MAX_LOAD_GROWTH = 0.2
# First use of a tag (download from a mirror, streaming conversion, cache, load). Issue 21 asks
# for <= 1.3x the weights (before streaming: S 2.37x TensorFlow / 2.27x torch, XL 2.13x);
# streaming measures S 0.21-0.27x, XL 0.07x. 0.6 also fails when conversion holds one whole
# copy of the checkpoint (S 1.15x measured), which 1.3 would let pass.
MAX_FIRST_USE_GROWTH = 0.6


def randomize(model, seed=0):
    """Distinct random values in every variable (Keras' init repeats BN's zeros and ones)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(size=v.shape).astype(v.dtype))
    return model


def values(model):
    return {v.path: to_numpy(v).copy() for v in model.weights}


def b0(**kwargs):
    return keras_effv2.EfficientNetV2B0(include_preprocessing=False, **kwargs)


@pytest.fixture(scope="module")
def b0_file(tmp_path_factory):
    """``(path, {dataset: value})`` of a random B0 (1000 classes) saved by Keras."""
    path = str(tmp_path_factory.mktemp("b0") / "b0.weights.h5")
    model = randomize(b0(weights=None))
    model.save_weights(path)
    return path, model


@pytest.mark.parametrize("include_top", [True, False])
def test_layout_is_what_keras_writes(include_top, tmp_path):
    model = randomize(b0(weights=None, include_top=include_top), seed=1)
    path = str(tmp_path / "b0.weights.h5")
    model.save_weights(path)  # Keras' own writer
    paths = dataset_paths(model)
    with h5py.File(path) as f:
        assert set(paths.values()) == set(read_index(f))
        for v, (key, p) in zip(model.weights, paths.items(), strict=True):
            np.testing.assert_array_equal(f[p][()], to_numpy(v), err_msg=f"{key} <- {p}")
    loaded = b0(weights=path, include_top=include_top)
    for (k, a), (_, b) in zip(values(loaded).items(), values(model).items(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_backbone_and_features_from_a_full_file(b0_file):
    path, model = b0_file
    expected = {v.path: to_numpy(v) for v in model.weights}
    # All but the classifier (2 weights); the feature maps also end before head_conv/head_bn.
    for m, count in ((b0(weights=path, include_top=False, pooling="avg"), 359),
                     (b0(weights=path, features_only=True), 354)):
        got = values(m)
        assert len(got) == count
        for k, v in got.items():
            np.testing.assert_array_equal(v, expected[k], err_msg=k)


def test_head_of_another_width_stays_fresh(b0_file, caplog):
    path, model = b0_file
    with caplog.at_level(logging.WARNING, logger="keras_effv2"):
        tuned = b0(weights=path, classes=10)
    assert "have 1000 classes but classes=10" in caplog.text
    np.testing.assert_array_equal(to_numpy(tuned.get_layer("head_bn").gamma),
                                  to_numpy(model.get_layer("head_bn").gamma))
    assert tuple(tuned.get_layer("predictions").kernel.shape) == (1280, 10)


def test_classes_default_to_the_files(tmp_path):
    path = str(tmp_path / "b0_7.weights.h5")
    randomize(b0(weights=None, classes=7)).save_weights(path)
    assert b0(weights=path).output_shape == (None, 7)


def _rewrite(src, dst, edit):
    import shutil

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return str(dst)


@pytest.mark.parametrize("case,message", [
    ("wrong shape", r"shape mismatches \(model <- file\) \(1\): stem_conv/kernel "
                    r"\(3, 3, 3, 32\) <- \(3, 3, 3, 16\)"),
    ("extra", r"file weights the model does not have \(1\): layers/extra/vars/0"),
    ("missing", r"model weights missing from the file \(1\): s3_b00/se/conv_reduce/bias "
                r"\(layers/mb_conv/se/conv_reduce/vars/1\)"),
    ("no head", r"holds no classifier but model 'efficientnetv2_b0' has one"),
    ("other variant", r"(?s)missing from the file \(87\): .*file weights the model does not "
                      r"have \(5\): .*shape mismatches \(model <- file\) \(98\)"),
])
def test_mismatches_are_listed_and_nothing_is_loaded(b0_file, tmp_path, case, message):
    src = b0_file[0]
    edits = {
        "wrong shape": lambda f: (f.__delitem__("layers/conv2d/vars/0"),
                                  f.create_dataset("layers/conv2d/vars/0", (3, 3, 3, 16))),
        "extra": lambda f: f.create_dataset("layers/extra/vars/0", (2,)),
        "missing": lambda f: f.__delitem__("layers/mb_conv/se/conv_reduce/vars/1"),
        "no head": lambda f: f.__delitem__("layers/dense"),
    }
    path = _rewrite(src, tmp_path / "bad.weights.h5", edits[case]) if case in edits else src
    target = keras_effv2.EfficientNetV2B1(weights=None) if case == "other variant" else \
        b0(weights=None)
    before = values(target)
    with pytest.raises(PortingError, match=message) as e:
        load_file(target, path)
    assert "nothing was loaded" in str(e.value)
    for k, v in values(target).items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_not_a_weights_file(tmp_path):
    bad = tmp_path / "text.weights.h5"
    bad.write_text("not hdf5")
    with pytest.raises(CheckpointError, match="cannot read .* as a Keras .weights.h5 file"):
        b0(weights=str(bad))
    with pytest.raises(ValueError, match=r"weights='b0\.h5': expected None or a path to a "
                                         r"Keras '\.weights\.h5' file, or a registered tag "
                                         r"\(imagenet, imagenet21k, .*in21k_ft_in1k, or an "
                                         r"mmpretrain model-zoo name efficientnetv2-<v>_"):
        b0(weights="b0.h5")


def probe_load_growth(variant: str, tmp_path, *extra: str) -> tuple[dict, float]:
    """``load_memory_probe.py`` in a fresh process: its JSON and the peak RSS growth while
    loading, over the model's weight bytes. (A fresh process: in the suite's own process the
    heap left by earlier tests moved the figure by +/-0.03.)"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, os.path.join(REPO, "tests", "load_memory_probe.py"),
                          variant, str(tmp_path), *extra], env=env, capture_output=True,
                         text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(run.stdout.strip().splitlines()[-1])
    growth = (r["peak_kib"] - r["before_load_kib"]) * 1024 / r["weight_bytes"]
    print(f"\n{variant} load ({keras.backend.backend()}): {r}; growth {growth:.3f}")
    assert r["restored"]
    return r, growth


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux peak-RSS reset")
def test_load_memory_is_the_models_own(tmp_path):
    """EfficientNetV2-S (86 MB of weights): loading adds at most 20 % of that at its peak."""
    r, growth = probe_load_growth("s", tmp_path)
    assert r["weight_bytes"] == 21_612_360 * 4
    assert growth <= MAX_LOAD_GROWTH


@pytest.mark.large
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux peak-RSS reset")
def test_load_memory_xl_fresh_process(tmp_path):
    """EfficientNetV2-XL (836 MB of weights)."""
    r, growth = probe_load_growth("xl", tmp_path)
    assert r["weight_bytes"] == 208_896_832 * 4
    assert growth <= MAX_LOAD_GROWTH


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux peak-RSS reset")
def test_first_use_memory_s(tmp_path):
    """First use of s.in1k from a local mirror (random timm-layout safetensors) on a built S:
    download, streaming conversion into the cache and the load add at most 0.6x the weights
    (issue 21 asks for 1.3x; see MAX_FIRST_USE_GROWTH)."""
    r, growth = probe_load_growth("s", tmp_path, "--first-use", "in1k")
    assert r["weight_bytes"] == 21_612_360 * 4
    assert growth <= MAX_FIRST_USE_GROWTH


@pytest.mark.large
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux peak-RSS reset")
def test_first_use_memory_xl(tmp_path):
    """First use of xl.in21k_ft_in1k (836 MB of weights)."""
    r, growth = probe_load_growth("xl", tmp_path, "--first-use", "in21k_ft_in1k")
    assert r["weight_bytes"] == 208_896_832 * 4
    assert growth <= MAX_FIRST_USE_GROWTH
