"""optimize_for_training: a model sharing the weights whose training step is the plain model's.

The reference is the plain Keras model: from identical weights (random BN statistics), the
same seed-generator states and the same torch RNG state, one ``train_on_batch`` of each must
leave every variable equal. Tolerances: the two paths run the same float32 arithmetic in a
different order (oneDNN convolutions on NCHW vs Keras' on NHWC, ``batch_norm``'s one-pass
statistics vs Keras' ``moments``), ~1e-6 relative per op, compounding to ~1e-5 on gradients
through ~60 layers; rtol 1e-4 / atol 1e-5 on the variables leaves a 10x margin, and the SGD
*updates* (lr x gradient) are compared at 1e-3 of their own scale (plus a few ulps of the
weight, the rounding of ``w - lr * g``), so a wrong gradient shows even where the update is
small next to the weight.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
from helpers import random_images, to_numpy
from test_fast_path import randomize_batchnorm

import keras_effv2
from keras_effv2.configs import VARIANTS, _stages
from keras_effv2.fast import optimize_for_training
from keras_effv2.model import build_efficientnetv2

TORCH = keras.backend.backend() == "torch"
torch_only = pytest.mark.skipif(
    not TORCH, reason="fast/_torch_train.py is the torch backend's training path; the JAX one "
                      "is tested in test_fast_training_jax.py, TensorFlow returns the model")


# Every block kind in a small model: FusedMBConv expand 1 *with* a residual (S's first stage:
# SiLU before the add), FusedMBConv expand 4, MBConv + SE; B0 has no residual expand-1 block.
TINY = dataclasses.replace(VARIANTS["s"], width=1.0, depth=1.0, stages=_stages(
    "fused r2 k3 s1 e1 i24 o24", "fused r2 k3 s2 e4 i24 o32", "mbconv r2 k3 s2 e4 i32 o48 se0.25"))


def _tiny(weights=None, **kwargs):  # model.py builds architectures only: no weights argument
    return build_efficientnetv2(TINY, **kwargs)


def _pair(build, **kwargs):
    """(plain, fast view of an identical twin): same weights, BN statistics, seed states."""
    models = []
    for _ in range(2):
        keras.utils.set_random_seed(3)
        models.append(randomize_batchnorm(build(weights=None, **kwargs), seed=3))
    return models[0], optimize_for_training(models[1])


def _values(model, attr="variables"):  # "variables" includes the seed-generator states
    return [to_numpy(v).copy() for v in getattr(model, attr)]


def _step(model, x, y, optimizer, seed=0):
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    keras.utils.set_random_seed(seed)  # the head dropout draws from torch's global RNG
    return float(model.train_on_batch(x, y))


@torch_only
@pytest.mark.parametrize("variant,size,optimizer", [
    ("b0", 48, "sgd"),  # the real graph; 48 -> 3 x 3 maps: symmetric and asymmetric pads
    ("tiny", 64, "sgd"),
    ("tiny", 64, "adam"),
])
def test_one_training_step_updates_every_variable_as_the_plain_model(variant, size, optimizer):
    build = {"b0": keras_effv2.EfficientNetV2B0, "tiny": _tiny}[variant]
    plain, fast = _pair(build, input_shape=(size, size, 3), classes=10, dropout_rate=0.3,
                        drop_path_rate=0.3)
    for model in (plain, fast):  # frozen layers: no update, BN in inference mode
        for name in ("stem_bn", "s1_b01"):
            model.get_layer(name).trainable = False
    x, y = random_images(4, size, seed=4), np.array([1, 3, 5, 7])
    before = _values(plain)
    np.testing.assert_array_equal(np.concatenate([v.ravel() for v in _values(fast)]),
                                  np.concatenate([v.ravel() for v in before]))
    # Adam's first step is lr * g / (|g| + eps): with the default eps=1e-7 a weight whose
    # gradient is float noise moves by +-lr at random; eps=1e-3 keeps it smooth in g.
    opt = {"sgd": lambda: keras.optimizers.SGD(0.5),
           "adam": lambda: keras.optimizers.Adam(epsilon=1e-3)}
    loss_plain = _step(plain, x, y, opt[optimizer]())
    loss_fast = _step(fast, x, y, opt[optimizer]())
    assert loss_fast == pytest.approx(loss_plain, rel=1e-5)
    trainable = {id(v) for v in plain.trainable_variables}
    frozen = {id(v) for name in ("stem_bn", "s1_b01") for v in plain.get_layer(name).weights}
    moving = {id(v) for v in plain.non_trainable_weights} - frozen
    changed = {"trainable": 0, "moving": 0}
    for v, b, p, f in zip(plain.variables, before, _values(plain), _values(fast), strict=True):
        np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-5, err_msg=v.path)
        if optimizer == "sgd" and id(v) in trainable:
            # 1e-3 of the update's scale, plus the rounding of w - lr*g (a few ulps of w).
            tol = 1e-3 * np.abs(p - b).max() + 8 * np.spacing(np.abs(b).max())
            assert np.abs((f - b) - (p - b)).max() <= tol, v.path
        if id(v) in frozen:
            np.testing.assert_array_equal(f, b, err_msg=v.path)
        for kind, ids in (("trainable", trainable), ("moving", moving)):
            changed[kind] += id(v) in ids and not np.allclose(f, b, rtol=1e-6, atol=0)
    # A real step: nearly every weight and every moving statistic moved (by Keras' rules,
    # checked against the plain model above).
    assert changed["trainable"] > 0.9 * len(trainable)
    assert changed["moving"] == len(moving)


@torch_only
def test_fast_model_shares_layers_and_weights_and_predicts_the_same(tmp_path):
    model = randomize_batchnorm(keras_effv2.EfficientNetV2B0(
        weights=None, input_shape=(48, 48, 3), classes=10), seed=5)
    fast = optimize_for_training(model)
    assert fast.inputs == model.inputs and fast.outputs == model.outputs
    assert [id(v) for v in fast.variables] == [id(v) for v in model.variables]
    for name in ("head_dropout", "predictions"):  # progressive_fit finds them by name
        assert fast.get_layer(name) is model.get_layer(name)
    # Everything but input normalisation, head dropout and classifier is lowered to torch.
    kept = [s.name for s in fast._segments if not isinstance(s, tuple)]
    assert kept == ["preprocessing", "head_dropout", "predictions"]
    x, y = random_images(3, 48, seed=5), np.array([0, 4, 9])
    ref = to_numpy(model(x, training=False))
    np.testing.assert_allclose(to_numpy(fast(x, training=False)), ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fast.predict(x, verbose=0), ref, rtol=1e-4, atol=1e-6)
    # Training the fast model trains `model`; the weight files are interchangeable.
    fast.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    fast.fit(x, y, epochs=1, verbose=0)
    trained = to_numpy(model(x, training=False))
    assert np.abs(trained - ref).max() > 1e-4
    fresh = keras_effv2.EfficientNetV2B0(weights=None, input_shape=(48, 48, 3), classes=10)
    for saved in (model, fast):
        saved.save_weights(tmp_path / "w.weights.h5")
        fresh.load_weights(tmp_path / "w.weights.h5")
        np.testing.assert_allclose(to_numpy(fresh(x, training=False)), trained, atol=1e-6)
    with pytest.raises(NotImplementedError, match="save the model passed to"):
        fast.get_config()
    features = keras_effv2.EfficientNetV2B0(weights=None, features_only=True)
    with pytest.raises(ValueError, match="optimize_for_training expects"):
        optimize_for_training(features)


@torch_only
def test_kernels_are_stored_in_torch_layout_and_used_without_a_copy():
    """optimize_for_training re-lays out every lowered kernel (HWIO shape and values kept) so
    that the convolution weight is a view of the variable and its gradient lands in place."""
    import torch

    from keras_effv2.fast._torch import torch_kernel
    from keras_effv2.fast._torch_train import _convs

    model = randomize_batchnorm(keras_effv2.EfficientNetV2B0(
        weights=None, input_shape=(48, 48, 3), classes=10), seed=9)
    x = random_images(2, 48, seed=9)
    before = to_numpy(model(x, training=False))
    kernels = {v.path: to_numpy(v).copy() for v in model.weights if "kernel" in v.path}
    fast = optimize_for_training(model)
    convs = [c for layer in fast.layers for c in _convs(layer)]
    # stem, head; fused e1 block: 1; four fused e4 blocks: 2 each; 16 MBConv blocks: 3 each
    assert len(convs) == 2 + 1 + 4 * 2 + 16 * 3
    for conv in convs:
        value = conv.kernel.value
        weight, _ = torch_kernel(conv, value)
        assert weight.is_contiguous(memory_format=torch.channels_last), conv.name
        assert weight.data_ptr() == value.data_ptr() and isinstance(value, torch.nn.Parameter)
        np.testing.assert_array_equal(to_numpy(value), kernels[conv.kernel.path])
    np.testing.assert_allclose(to_numpy(model(x, training=False)), before, rtol=1e-6, atol=1e-7)
    loss = keras.ops.sum(fast(x, training=True))
    loss.backward()
    for conv in convs:
        assert conv.kernel.value.grad.stride() == conv.kernel.value.stride(), conv.name


@torch_only
def test_channels_first_feature_map_model_trains_the_same():
    keras.config.set_image_data_format("channels_first")
    plain, fast = _pair(keras_effv2.EfficientNetV2B0, include_top=False,
                        input_shape=(3, 64, 64))
    x = np.ascontiguousarray(random_images(4, 64, seed=6).transpose(0, 3, 1, 2))
    ref = to_numpy(plain(x, training=False))
    assert ref.shape == (4, 1280, 2, 2)
    np.testing.assert_allclose(to_numpy(fast(x, training=False)), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(to_numpy(fast(x, training=True)),
                               to_numpy(plain(x, training=True)), rtol=1e-4, atol=1e-4)
    for p, f in zip(_values(plain), _values(fast), strict=True):  # moving statistics
        np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-5)


@torch_only
def test_batch_norm_of_one_value_per_channel_is_keras():
    """Keras normalises a single value per channel (variance 0); F.batch_norm refuses it."""
    from keras_effv2.fast._torch_train import _batch_norm

    layers = []
    for _ in range(2):
        bn = keras.layers.BatchNormalization(axis=1, momentum=0.9, epsilon=1e-3)
        bn.build((1, 8, 1, 1))
        randomize_batchnorm(keras.Sequential([bn]), seed=8)
        layers.append(bn)
    x = keras.ops.convert_to_tensor(np.random.default_rng(8).normal(size=(1, 8, 1, 1)),
                                    "float32")
    ref = to_numpy(layers[0](x, training=True))
    np.testing.assert_allclose(to_numpy(_batch_norm(layers[1], x, True)), ref, atol=1e-6)
    np.testing.assert_allclose(ref.ravel(), to_numpy(layers[0].beta), atol=1e-6)
    for a, b in zip(layers[0].weights, layers[1].weights, strict=True):
        np.testing.assert_allclose(to_numpy(b), to_numpy(a), rtol=1e-6, err_msg=a.path)


@torch_only
def test_mixed_precision_training_step_matches_at_bfloat16_rounding():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:  # 64 px: at 32 the last BNs see 4 values each and bfloat16 rounding turns chaotic
        plain, fast = _pair(keras_effv2.EfficientNetV2B0, input_shape=(64, 64, 3), classes=10,
                            dropout_rate=0.0, drop_path_rate=0.0)
    finally:
        keras.config.set_dtype_policy("float32")
    x, y = random_images(4, 64, seed=7), np.array([1, 2, 3, 4])
    ref = to_numpy(plain(x, training=False))
    np.testing.assert_allclose(to_numpy(fast(x, training=False)), ref,
                               atol=1e-2 * np.abs(ref).max())
    losses = [_step(m, x, y, keras.optimizers.SGD(0.1)) for m in (plain, fast)]
    assert np.isfinite(losses).all() and losses[1] == pytest.approx(losses[0], rel=1e-2)
    for v, p, f in zip(plain.weights, _values(plain, "weights"), _values(fast, "weights"),
                       strict=True):
        assert f.dtype == p.dtype == np.float32 and np.isfinite(f).all(), v.path
        if "moving" in v.path:  # BN computes in float32 under a mixed policy
            np.testing.assert_allclose(f, p, rtol=1e-2, atol=1e-3, err_msg=v.path)


@pytest.mark.skipif(TORCH, reason="checks the other backends' dispatch")
def test_other_backends_dispatch_and_torch_class_refuses_them():
    model = keras_effv2.EfficientNetV2B0(weights=None, input_shape=(32, 32, 3))
    if keras.backend.backend() == "tensorflow":
        assert optimize_for_training(model) is model
    pytest.importorskip("torch")
    from keras_effv2.fast._torch_train import FastTrainingModel

    with pytest.raises(ValueError, match="torch backend only"):
        FastTrainingModel(model)
