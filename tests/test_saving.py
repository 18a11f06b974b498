"""Round trips: .keras, .weights.h5, nested instances, layer configs, and across backends."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import normal_images, to_numpy

import keras_effv2
from keras_effv2.layers import DropPath, FusedMBConv, InputNormalization, MBConv, SqueezeExcite
from keras_effv2.weights import TIMM_IGNORED_SUFFIXES, assign_weights, timm_mapping

BACKENDS = ("tensorflow", "jax", "torch")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ported_b0():
    """B0 with well-conditioned weights (a ported random timm model), logits out."""
    pytest.importorskip("timm")
    from helpers_timm import make_timm_model, timm_state_dict

    model = keras_effv2.EfficientNetV2B0(weights=None, include_preprocessing=False,
                                         classifier_activation=None)
    assign_weights(model, timm_state_dict(make_timm_model("b0", image_size=64)),
                   timm_mapping("b0"), ignored_suffixes=TIMM_IGNORED_SUFFIXES)
    return model


def test_keras_file_round_trip(ported_b0, tmp_path):
    x = normal_images(2, 64)
    path = tmp_path / "b0.keras"
    ported_b0.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(to_numpy(loaded(x)), to_numpy(ported_b0(x)), rtol=0, atol=1e-6)
    assert [w.path for w in loaded.weights] == [w.path for w in ported_b0.weights]
    assert type(loaded.get_layer("s3_b00")) is MBConv


def test_weights_file_round_trip(ported_b0, tmp_path):
    x = normal_images(2, 64)
    path = tmp_path / "b0.weights.h5"
    ported_b0.save_weights(path)
    rebuilt = keras_effv2.EfficientNetV2B0(weights=str(path), include_preprocessing=False,
                                           classifier_activation=None)
    np.testing.assert_allclose(to_numpy(rebuilt(x)), to_numpy(ported_b0(x)), rtol=0, atol=1e-6)


def test_weights_file_of_another_variant_is_refused(ported_b0, tmp_path):
    path = tmp_path / "b0.weights.h5"
    ported_b0.save_weights(path)
    with pytest.raises(ValueError):
        keras_effv2.EfficientNetV2B1(weights=str(path))


def test_two_instances_in_one_model_save_and_load(tmp_path):
    inp = keras.Input((64, 64, 3))
    left = keras_effv2.EfficientNetV2B0(weights=None, include_top=False, pooling="avg", name="left")
    right = keras_effv2.EfficientNetV2B0(weights=None, include_top=False, pooling="avg",
                                         name="right")
    out = keras.layers.Concatenate()([left(inp), right(inp)])
    pair = keras.Model(inp, out)
    x = normal_images(2, 64, seed=5) * 50 + 128
    expected = to_numpy(pair(x))
    assert not np.allclose(expected[:, :1280], expected[:, 1280:])
    pair.save(tmp_path / "pair.keras")
    loaded = keras.saving.load_model(tmp_path / "pair.keras")
    np.testing.assert_allclose(to_numpy(loaded(x)), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "layer,shape",
    [
        (FusedMBConv(16, 16, expand_ratio=4, drop_path_rate=0.1, name="f"), (2, 8, 8, 16)),
        (FusedMBConv(16, 24, strides=2, name="f1"), (2, 8, 8, 16)),
        (MBConv(16, 16, expand_ratio=6, se_channels=4, drop_path_rate=0.1, name="m"),
         (2, 8, 8, 16)),
        (SqueezeExcite(16, 4, name="se"), (2, 8, 8, 16)),
        (DropPath(0.3, seed=3, name="dp"), (2, 8, 8, 16)),
        (InputNormalization((0.5,) * 3, (0.25,) * 3, name="norm"), (2, 8, 8, 3)),
    ],
)
def test_layer_serialization_round_trip(layer, shape):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    expected = to_numpy(layer(x))
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
    assert clone.built  # deserialisation rebuilds from the saved build config
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(to_numpy(clone(x)), expected, atol=1e-6)


def test_weights_load_on_the_next_backend(ported_b0, tmp_path):
    """Files saved on this backend give the same outputs on the next one (a subprocess). Each
    leg checks the next backend in ``BACKENDS`` order (TensorFlow -> JAX -> torch ->
    TensorFlow), so over the three legs every backend both saves and loads: a quarter of the CI
    time of every leg loading on both others."""
    x = normal_images(2, 64, seed=7)
    ported_b0.save(tmp_path / "model.keras")
    ported_b0.save_weights(tmp_path / "model.weights.h5")
    np.savez(tmp_path / "io.npz", inputs=x, outputs=to_numpy(ported_b0(x, training=False)))
    here = BACKENDS.index(keras.backend.backend())
    for backend in [BACKENDS[(here + 1) % len(BACKENDS)]]:
        env = {**os.environ, "KERAS_BACKEND": backend,
               "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
        result = subprocess.run(
            [sys.executable, os.path.join(REPO, "tests", "cross_backend_check.py"), str(tmp_path)],
            env=env, capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, f"{backend}:\n{result.stdout}\n{result.stderr[-3000:]}"
        assert f"{backend} .keras: max |diff|" in result.stdout
