"""The keras.applications argument set, input sizes, data formats, names and errors."""

import re

import keras
import numpy as np
import pytest
from helpers import random_images, to_numpy

import keras_effv2
from keras_effv2.configs import VARIANTS, resolve_blocks
from keras_effv2.preprocessing import AUTOML_128, IMAGENET, INCEPTION, PreprocessingSpec

CONSTRUCTORS = {
    "b0": keras_effv2.EfficientNetV2B0, "b1": keras_effv2.EfficientNetV2B1,
    "b2": keras_effv2.EfficientNetV2B2, "b3": keras_effv2.EfficientNetV2B3,
    "s": keras_effv2.EfficientNetV2S, "m": keras_effv2.EfficientNetV2M,
    "l": keras_effv2.EfficientNetV2L, "xl": keras_effv2.EfficientNetV2XL,
}


@pytest.fixture(scope="module")
def b0_notop():
    return keras_effv2.EfficientNetV2B0(include_top=False, weights=None)


@pytest.mark.parametrize("size", [32, 47, 100, 224])
def test_any_input_size_without_top(b0_notop, size):
    out = b0_notop(random_images(1, size), training=False)
    expected = -(-size // 32)
    assert tuple(out.shape) == (1, expected, expected, 1280)


@pytest.mark.parametrize("size", [32, 77])
def test_any_input_size_with_top(size):
    model = keras_effv2.EfficientNetV2B0(weights=None, classes=7)
    probs = to_numpy(model(random_images(2, size), training=False))
    assert probs.shape == (2, 7)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_channels_first_shapes_and_equivalence():
    ref = keras_effv2.EfficientNetV2B0(weights=None, include_top=False, pooling="avg")
    keras.config.set_image_data_format("channels_first")
    model = keras_effv2.EfficientNetV2B0(weights=None, include_top=False, pooling="avg")
    assert model.input_shape == (None, 3, None, None)
    model.set_weights(ref.get_weights())
    x = random_images(2, 64)
    got = to_numpy(model(x.transpose(0, 3, 1, 2), training=False))
    np.testing.assert_allclose(got, to_numpy(ref(x, training=False)), atol=1e-4)
    feature_map = keras_effv2.EfficientNetV2B0(weights=None, include_top=False)
    assert feature_map.output_shape == (None, 1280, None, None)


def test_constructors_names_and_defaults():
    for variant, constructor in CONSTRUCTORS.items():
        assert constructor.__name__ == f"EfficientNetV2{variant.upper()}"
        assert f"EfficientNetV2-{variant.upper()}" in constructor.__doc__
    model = keras_effv2.EfficientNetV2B2(weights=None)
    assert model.name == "efficientnetv2_b2"
    assert model.get_layer("head_dropout").rate == 0.3
    assert keras_effv2.EfficientNetV2B0(weights=None, name="x", dropout_rate=0.5).get_layer(
        "head_dropout").rate == 0.5
    dropouts = [VARIANTS[v].dropout_rate for v in CONSTRUCTORS]
    assert dropouts == [0.2, 0.2, 0.3, 0.3, 0.2, 0.3, 0.4, 0.4]


def test_pooling_and_classifier_activation():
    avg = keras_effv2.EfficientNetV2B0(include_top=False, weights=None, pooling="avg")
    mx = keras_effv2.EfficientNetV2B0(include_top=False, weights=None, pooling="max")
    assert avg.output_shape == mx.output_shape == (None, 1280)
    softmax = keras_effv2.EfficientNetV2B0(weights=None)
    logits = keras_effv2.EfficientNetV2B0(weights=None, classifier_activation=None)
    logits.set_weights(softmax.get_weights())
    x = random_images(2, 64)
    z = to_numpy(logits(x, training=False)).astype("float64")
    assert z.min() < 0 and np.all(np.abs(z.sum(-1) - 1) > 0.1)  # logits, not probabilities
    reference = np.exp(z - z.max(-1, keepdims=True))  # softmax, in NumPy
    reference /= reference.sum(-1, keepdims=True)
    np.testing.assert_allclose(to_numpy(softmax(x, training=False)), reference, rtol=1e-4,
                               atol=1e-8)


def test_input_tensor():
    inp = keras.Input((64, 64, 3))
    model = keras_effv2.EfficientNetV2B0(input_tensor=inp, weights=None, include_top=False)
    assert model.inputs[0] is inp
    assert model.output_shape == (None, 2, 2, 1280)


@pytest.mark.parametrize(
    "spec,mean,std",
    [(True, IMAGENET.mean, IMAGENET.std), (AUTOML_128, AUTOML_128.mean, AUTOML_128.std)],
)
def test_include_preprocessing_equals_manual_normalisation(spec, mean, std):
    with_pre = keras_effv2.EfficientNetV2B0(weights=None, include_preprocessing=spec)
    without = keras_effv2.EfficientNetV2B0(weights=None, include_preprocessing=False)
    without.set_weights(with_pre.get_weights())
    x = random_images(2, 64)
    manual = (x / 255.0 - np.asarray(mean, "float32")) / np.asarray(std, "float32")
    np.testing.assert_allclose(
        to_numpy(with_pre(x)), to_numpy(without(manual)), atol=1e-5
    )
    np.testing.assert_allclose(keras_effv2.preprocess_input(x, PreprocessingSpec(mean, std)),
                               manual, rtol=1e-6, atol=1e-6)


def test_default_preprocessing_follows_the_imagenet_weight_set():
    means = {v: keras_effv2.EfficientNetV2(v, weights=None).get_layer("preprocessing").mean
             for v in ("b0", "s", "xl")}
    assert means == {"b0": IMAGENET.mean, "s": AUTOML_128.mean, "xl": INCEPTION.mean}
    layer = keras_effv2.EfficientNetV2S(weights=None).get_layer("preprocessing")
    out = to_numpy(layer(np.array([[[[0.0, 128.0, 255.0]]]], "float32")))
    np.testing.assert_allclose(out, [[[[-1.0, 0.0, 127 / 128]]]], atol=1e-6)


def test_layer_names_are_explicit_and_numeric():
    model = keras_effv2.EfficientNetV2XL(weights=None)
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    blocks = [n for n in names if re.fullmatch(r"s\d_b\d\d", n)]
    assert blocks == [b.name for b in resolve_blocks(VARIANTS["xl"])]
    assert "s5_b31" in blocks
    assert names[:5] == ["input", "preprocessing", "stem_conv", "stem_bn", "stem_act"]
    assert names[-6:] == ["head_conv", "head_bn", "head_act", "avg_pool", "head_dropout",
                          "predictions"]
    weight_paths = {w.path for w in model.get_layer("s5_b31").weights}
    assert "s5_b31/se/conv_reduce/kernel" in weight_paths


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(input_shape=(16, 16, 3)), "at least 32"),
        (dict(input_shape=(224, 224)), "3 entries"),
        (dict(include_top=False, pooling="mean"), "pooling must be None, 'avg' or 'max'"),
        (dict(classes=0), "classes must be a positive int"),
        (dict(weights=3), "weights must be None, a registered tag or a path"),
        (dict(weights="model.h5"), "expected None or a path to a Keras '.weights.h5' file"),
        (dict(dropout_rate=1.5), "dropout_rate must be in"),
        (dict(drop_path_rate=-0.1), "drop_path_rate must be in"),
        (dict(include_preprocessing="imagenet"), "include_preprocessing must be"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        keras_effv2.EfficientNetV2B0(**kwargs)


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        keras_effv2.EfficientNetV2B0(weights=str(tmp_path / "none.weights.h5"))
