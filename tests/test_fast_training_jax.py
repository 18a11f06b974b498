"""The JAX fast training path trains the same weights as the plain model, on its variables.

Reference: the plain Keras model (``train_on_batch``/``predict_on_batch`` of the model as
built), from identical weights, BN statistics and random-generator states.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers import random_images, to_numpy
from test_fast_path import randomize_batchnorm

import keras_effv2
from keras_effv2.fast import optimize_for_training

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="keras_effv2.fast._jax_train (custom JAX gradients) is the JAX backend's training "
           "path; other backends have their own")


def _twins(**kwargs):
    """Two B0s with identical variables (weights, BN statistics, dropout/drop-path seeds)."""
    kwargs = dict(weights=None, input_shape=(None, None, 3), classes=10,
                  classifier_activation=None, **kwargs)
    plain = randomize_batchnorm(keras_effv2.EfficientNetV2B0(**kwargs), seed=11)
    other = keras_effv2.EfficientNetV2B0(**kwargs)
    for a, b in zip(plain.variables, other.variables, strict=True):
        b.assign(a)
    return plain, other


def _state(model):
    return {v.path: to_numpy(v) for v in model.variables}


# Float32 rounding only: the fast graph sums the same products in another order (k*k
# shifted slices, matmul instead of conv), ~1e-6 relative per op. After one step, SGD's
# weights differ by lr * (gradient difference) and Adam's by lr * d(g / (|g| + eps)), both
# far below these bounds (measured: < 2e-7 absolute). A wrong depthwise shift, padding or
# filter gradient changes updated weights by ~lr = 1e-2 (SGD, Adam) and logits by O(0.1).
ATOL, RTOL = 2e-5, 1e-4


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_one_training_step_gives_the_plain_models_weights(optimizer):
    plain, twin = _twins()
    fast = optimize_for_training(twin)
    x, y = random_images(4, 32, seed=12), np.array([1, 2, 3, 4])
    for model in (plain, fast):
        opt = keras.optimizers.get({"class_name": optimizer, "config": {"learning_rate": 1e-2}})
        model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(True))
    before = _state(plain)
    loss_plain = plain.train_on_batch(x, y)
    loss_fast = fast.train_on_batch(x, y)
    np.testing.assert_allclose(loss_fast, loss_plain, rtol=RTOL)
    after_plain, after_fast = _state(plain), _state(twin)  # fast trained twin's variables
    moved = [p for p in after_plain if not np.array_equal(after_plain[p], before[p])]
    assert len(moved) > 300  # weights, BN moving statistics and seed states all stepped
    for path, ref in after_plain.items():
        np.testing.assert_allclose(after_fast[path], ref, atol=ATOL, rtol=RTOL, err_msg=path)
    x_eval = random_images(2, 48, seed=13)  # another size: the models take any H, W
    ref = to_numpy(plain.predict_on_batch(x_eval))
    assert np.abs(ref).max() > 0.05
    np.testing.assert_allclose(to_numpy(fast.predict_on_batch(x_eval)), ref, atol=1e-4)


def test_fast_model_shares_variables_names_and_head():
    model = keras_effv2.EfficientNetV2B0(weights=None, input_shape=(32, 32, 3), classes=10)
    fast = optimize_for_training(model)
    assert [id(v) for v in fast.variables] == [id(v) for v in model.variables]
    assert [layer.name for layer in fast.layers] == [layer.name for layer in model.layers]
    # progressive_fit changes dropout through the layer it finds by name
    assert fast.get_layer("head_dropout") is model.get_layer("head_dropout")
    assert fast.get_layer("predictions") is model.get_layer("predictions")
    assert fast.input.shape == model.input.shape and fast.output.shape == model.output.shape


def test_depthwise_values_and_gradients_match_the_library_conv():
    import jax

    from keras_effv2.fast._jax_train import depthwise

    rng = np.random.default_rng(14)
    for fmt, k, s, size in [("channels_last", 3, 1, 7), ("channels_last", 3, 2, 8),
                            ("channels_last", 5, 2, 9), ("channels_first", 3, 2, 7)]:
        shape = (3, size, size, 5) if fmt == "channels_last" else (3, 5, size, size)
        x = rng.normal(size=shape).astype("float32")
        w = rng.normal(size=(k, k, 5, 1)).astype("float32")

        def ref_fn(x, w, s=s, fmt=fmt):
            return keras.ops.depthwise_conv(x, w, s, "same", fmt)

        def fast_fn(x, w, s=s, fmt=fmt):
            return depthwise(x, w, s, fmt)

        ref = ref_fn(x, w)
        cot = rng.normal(size=ref.shape).astype("float32")
        np.testing.assert_allclose(fast_fn(x, w), ref, atol=1e-5)
        grads = [jax.grad(lambda x, w, f=f: (f(x, w) * cot).sum(), (0, 1))(x, w)
                 for f in (ref_fn, fast_fn)]
        for got, want in zip(grads[1], grads[0], strict=True):
            np.testing.assert_allclose(got, want, atol=1e-4, err_msg=(fmt, k, s, size))


def test_rejects_a_model_it_cannot_rewrite():
    with pytest.raises(TypeError, match="functional"):
        optimize_for_training(keras.Sequential([keras.layers.Dense(2)]))
