"""The fast inference path computes the same function; training neither retraces nor syncs."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
from helpers import random_images, to_numpy

import keras_effv2
from keras_effv2.configs import VARIANTS, _stages
from keras_effv2.fast import fuse_batchnorm, make_predictor, optimize_for_inference
from keras_effv2.fast.layers import ShiftDepthwiseConv2D
from keras_effv2.keras_graph import nested_layers, node_operation
from keras_effv2.layers import MBConv
from keras_effv2.model import build_efficientnetv2

TOL = 1e-4


def randomize_batchnorm(model, seed=0):
    """Non-trivial BN statistics and affines, small enough that activations stay O(1)."""
    rng = np.random.default_rng(seed)
    for layer in nested_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.2, 0.5, c).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.2, c).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.3, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, c).astype("float32"))
    return model


def _infer(model, x):
    """Inference-mode output; jitted on JAX (its op-by-op first call compiles every op)."""
    if keras.backend.backend() == "jax":
        return to_numpy(model.predict_on_batch(x))
    return to_numpy(model(x, training=False))


def _all_layers(model):
    return nested_layers(model)


def _count(model, cls):
    return sum(type(layer) is cls for layer in _all_layers(model))


def test_b0_with_top_fused_logits_match_in_every_layout():
    model = randomize_batchnorm(keras_effv2.EfficientNetV2B0(
        weights=None, input_shape=(48, 48, 3), classifier_activation=None))
    x = random_images(2, 48)
    ref = _infer(model, x)
    assert np.abs(ref).max() > 0.05  # the comparison below is not between near-zeros
    n_conv = _count(model, keras.layers.Conv2D)
    n_dw = _count(model, keras.layers.DepthwiseConv2D)
    for data_format, depthwise in [("channels_last", "conv"), ("channels_first", "conv"),
                                   ("channels_last", "shift")]:
        fused = fuse_batchnorm(model, data_format=data_format, depthwise=depthwise)
        assert _count(fused, keras.layers.BatchNormalization) == 0
        # Every conv survives once (SE convs included), now all with a bias.
        assert _count(fused, keras.layers.Conv2D) == n_conv
        dw_cls = ShiftDepthwiseConv2D if depthwise == "shift" else keras.layers.DepthwiseConv2D
        assert _count(fused, dw_cls) == n_dw
        out = _infer(fused, x)
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() <= TOL, (data_format, depthwise)


def test_s_without_top_feature_map_matches():
    x = random_images(2, 32, seed=1)
    model = randomize_batchnorm(keras_effv2.EfficientNetV2S(
        weights=None, include_top=False, input_shape=(32, 32, 3)), seed=2)
    ref = _infer(model, x)
    fused = fuse_batchnorm(model, data_format="channels_first")
    out = _infer(fused, x)
    assert out.shape == ref.shape == (2, 1, 1, 1280)
    assert np.abs(out - ref).max() <= TOL


def test_channels_first_model_keeps_its_layout():
    keras.config.set_image_data_format("channels_first")
    model = randomize_batchnorm(keras_effv2.EfficientNetV2B0(
        weights=None, input_shape=(3, 32, 32), classifier_activation=None), seed=3)
    x = np.ascontiguousarray(random_images(2, 32, seed=3).transpose(0, 3, 1, 2))
    ref = _infer(model, x)
    for data_format in ("channels_first", "channels_last"):
        out = _infer(fuse_batchnorm(model, data_format=data_format), x)
        assert np.abs(out - ref).max() <= TOL


def test_fused_after_loading_weights_and_predictor(tmp_path):
    source = randomize_batchnorm(keras_effv2.EfficientNetV2B0(
        weights=None, input_shape=(32, 32, 3), classifier_activation=None), seed=4)
    path = str(tmp_path / "b0.weights.h5")
    source.save_weights(path)
    loaded = keras_effv2.EfficientNetV2B0(weights=path, input_shape=(32, 32, 3),
                                          classifier_activation=None)
    x = random_images(3, 32, seed=4)
    ref = _infer(source, x)
    fast = optimize_for_inference(loaded)
    out = make_predictor(fast)(x)
    assert out.shape == (3, 1000)
    assert np.abs(out - ref).max() <= TOL


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_shift_depthwise_matches_depthwise_conv(data_format):
    rng = np.random.default_rng(5)
    for k, s, size in [(3, 1, 9), (3, 2, 10), (5, 2, 11)]:
        shape = (2, size, size, 4) if data_format == "channels_last" else (2, 4, size, size)
        x = rng.normal(size=shape).astype("float32")
        ref_layer = keras.layers.DepthwiseConv2D(k, s, padding="same", data_format=data_format)
        ref = to_numpy(ref_layer(x))
        layer = ShiftDepthwiseConv2D(k, s, data_format)
        layer.build(shape)
        layer.set_weights(ref_layer.get_weights())
        out = to_numpy(layer(x))
        assert out.shape == ref.shape == layer.compute_output_shape(shape)
        np.testing.assert_allclose(out, ref, atol=1e-5)


def test_fuse_rejects_bad_input():
    model = keras_effv2.EfficientNetV2B0(weights=None, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="data_format"):
        fuse_batchnorm(model, data_format="nhwc")
    with pytest.raises(ValueError, match="depthwise"):
        fuse_batchnorm(model, depthwise="winograd")
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 1)(inputs)
    branchy = keras.Model(inputs, keras.layers.Add()([a, keras.layers.Conv2D(4, 1)(inputs)]))
    with pytest.raises(ValueError, match="chain"):
        fuse_batchnorm(branchy)


def _count_calls(layer):
    """Replace ``layer.call`` by a counting wrapper; returns the counter list."""
    calls = []
    original = layer.call

    def call(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    layer.call = call
    return calls


def test_training_steps_do_not_retrace():
    """Constant shapes: the train step is traced once (TF/JAX) or run once per step (torch).
    A two-block EfficientNetV2 (a Fused-MBConv and an MBConv with SE): tracing B0's training
    step twice took minutes of CI time and tests nothing more."""
    model = build_efficientnetv2(dataclasses.replace(
        VARIANTS["s"], width=1.0, depth=1.0, stages=_stages(
            "fused r1 k3 s1 e1 i16 o16", "mbconv r2 k3 s2 e2 i16 o24 se0.25")),
        input_shape=(None, None, 3), classes=10)
    # XLA is off on TF (slower on CPU, see keras_effv2.fast.FAST_JIT_COMPILE); the retrace
    # behaviour under test is tf.function's / jax.jit's and is the same either way.
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  jit_compile=keras.backend.backend() == "jax")
    block = next(layer for layer in model.layers if isinstance(layer, MBConv))
    calls = _count_calls(block)
    x, y = random_images(2, 32), np.array([1, 2])
    model.train_on_batch(x, y)
    after_first = len(calls)
    assert after_first >= 1
    for _ in range(2):
        model.train_on_batch(x, y)
    eager = keras.backend.backend() == "torch"
    assert len(calls) == (after_first + 2 if eager else after_first)
    # A new image size (a progressive-learning stage) compiles at most once more.
    x2 = random_images(2, 48)
    for _ in range(2):
        model.train_on_batch(x2, y)
    assert len(calls) <= (after_first + 4 if eager else 2 * after_first)


@pytest.mark.skipif(keras.backend.backend() != "torch",
                    reason="the lowering to torch.nn.functional exists on the torch backend only")
def test_torch_predictor_lowers_every_fused_layer_and_matches():
    from keras_effv2.fast import _torch

    model = randomize_batchnorm(keras_effv2.EfficientNetV2B0(
        weights=None, input_shape=(48, 48, 3), classifier_activation=None), seed=6)
    x = random_images(2, 48, seed=6)
    ref = _infer(model, x)
    fast = optimize_for_inference(model)
    # Only the input normalisation still runs through Keras; everything else is direct torch.
    plan = _torch._plan(fast)
    kept = [type(op).__name__ for op, node, _ in plan if op is node_operation(fast, node)]
    assert kept == ["InputNormalization"]
    x_before = x.copy()
    out = make_predictor(fast)(x)
    np.testing.assert_array_equal(x, x_before)  # in-place ops never touch the caller's array
    assert np.abs(out - ref).max() <= TOL
    # Same call twice: in-place ops must not have touched weights or cached state.
    np.testing.assert_array_equal(make_predictor(fast)(x), out)


@pytest.mark.skipif(keras.backend.backend() != "torch",
                    reason="the lowering to torch.nn.functional exists on the torch backend only")
def test_torch_predictor_feature_map_and_mixed_precision():
    x = random_images(2, 32, seed=7)
    model = randomize_batchnorm(keras_effv2.EfficientNetV2S(
        weights=None, include_top=False, input_shape=(32, 32, 3)), seed=7)
    ref = _infer(model, x)
    out = make_predictor(optimize_for_inference(model))(x)
    assert out.shape == ref.shape == (2, 1, 1, 1280)
    assert np.abs(out - ref).max() <= TOL
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = keras_effv2.EfficientNetV2S(weights=None, include_top=False,
                                            input_shape=(32, 32, 3))
        mixed.set_weights(model.get_weights())
        mixed_ref = _infer(mixed, x)
        mixed_out = make_predictor(optimize_for_inference(mixed))(x)
    finally:
        keras.config.set_dtype_policy("float32")
    # float16 rounding: both mixed runs stay within 1 % of the float32 feature scale.
    scale = np.abs(ref).max()
    assert np.abs(mixed_ref - ref).max() <= 0.01 * scale
    assert np.abs(mixed_out - ref).max() <= 0.01 * scale


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the frozen-graph predictor exists on the TensorFlow backend only")
def test_tensorflow_predictor_freezes_a_snapshot_of_the_weights():
    model = randomize_batchnorm(keras_effv2.EfficientNetV2B0(
        weights=None, input_shape=(32, 32, 3), classifier_activation=None), seed=8)
    fast = optimize_for_inference(model)
    predict = make_predictor(fast)
    x = random_images(3, 32, seed=8)
    before = predict(x)
    assert np.abs(before - _infer(model, x)).max() <= TOL
    assert predict(x[:1]).shape == (1, 1000)  # any batch size, one trace
    # The weights are graph constants: changing the model afterwards leaves the predictor as is.
    head = fast.get_layer("predictions")
    head.set_weights([w * 2 for w in head.get_weights()])
    np.testing.assert_array_equal(predict(x), before)
    assert np.abs(make_predictor(fast)(x) - 2 * before).max() <= 2 * TOL
    # freeze=False: predict_on_batch on the live variables.
    assert np.abs(make_predictor(fast, freeze=False)(x) - 2 * before).max() <= 2 * TOL


@pytest.mark.skipif(keras.backend.backend() == "tensorflow",
                    reason="freeze=True is the TensorFlow default; the error is for the others")
def test_freeze_is_refused_off_tensorflow():
    model = keras_effv2.EfficientNetV2B0(weights=None, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="TensorFlow backend only"):
        make_predictor(model, freeze=True)
