"""model.fit learns, and stochastic depth behaves (ramp, train/inference, seeds)."""

import keras
import numpy as np
import pytest
from helpers import to_numpy

import keras_effv2
from keras_effv2.configs import VARIANTS, resolve_blocks
from keras_effv2.layers import DropPath


def _two_class_data(n=64, size=32, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = rng.normal(size=(n, size, size, 3)).astype("float32")
    x[..., 0] += np.where(y == 1, 1.5, -1.5)[:, None, None]  # learnable: red-channel offset
    return x, y


def test_fit_reduces_loss():
    x, y = _two_class_data()
    model = keras_effv2.EfficientNetV2B0(weights=None, classes=2, include_preprocessing=False,
                                         input_shape=(32, 32, 3))
    # automl/timm's U(+-1/sqrt(classes)) head init gives a 2-class head logits of about +-7;
    # a zero head starts at chance (loss ln 2) so the curve measures learning, not recovery.
    head = model.get_layer("predictions")
    head.kernel.assign(np.zeros(head.kernel.shape, "float32"))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=16, epochs=6, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[0] == pytest.approx(np.log(2), abs=0.15)
    assert np.mean(losses[-2:]) < 0.6 * losses[0], losses
    assert history.history["accuracy"][-1] > 0.8


@pytest.mark.parametrize("variant", ["b0", "s"])
def test_drop_path_ramp_only_on_residual_blocks(variant):
    model = keras_effv2.EfficientNetV2(variant, weights=None, drop_path_rate=0.3)
    blocks = resolve_blocks(VARIANTS[variant], 0.3)
    n = len(blocks)
    for b in blocks:
        layer = model.get_layer(b.name)
        if b.has_residual and b.global_index > 0:
            assert layer.drop_path.rate == pytest.approx(0.3 * b.global_index / n)
        else:
            assert layer.drop_path is None
    assert any(model.get_layer(b.name).drop_path is None and b.global_index > 0 for b in blocks)


def test_drop_path_statistics_and_inference_identity():
    layer = DropPath(0.3, seed=1)
    x = np.ones((4000, 2, 2, 1), "float32")
    out = to_numpy(layer(x, training=True))
    per_sample = out.reshape(4000, -1)
    assert np.all(per_sample == per_sample[:, :1])  # whole sample dropped or kept
    np.testing.assert_allclose(np.unique(out), [0.0, 1 / 0.7], rtol=1e-6)
    assert abs((out[:, 0, 0, 0] == 0).mean() - 0.3) < 0.03
    np.testing.assert_array_equal(to_numpy(layer(x, training=False)), x)
    np.testing.assert_array_equal(to_numpy(layer(x)), x)


def test_drop_path_draws_fresh_masks_and_is_seeded():
    x = np.ones((256, 1, 1, 1), "float32")
    a, b = DropPath(0.5, seed=7), DropPath(0.5, seed=7)
    first, second = to_numpy(a(x, training=True)), to_numpy(a(x, training=True))
    assert not np.array_equal(first, second)  # the seed generator advances per call
    np.testing.assert_array_equal(to_numpy(b(x, training=True)), first)


def test_stochastic_depth_active_in_training_only():
    x = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32")
    kwargs = dict(weights=None, include_preprocessing=False, dropout_rate=0.0,
                  classifier_activation=None)
    model = keras_effv2.EfficientNetV2B0(drop_path_rate=0.5, **kwargs)
    assert not np.allclose(to_numpy(model(x, training=True)), to_numpy(model(x, training=True)))
    np.testing.assert_array_equal(to_numpy(model(x, training=False)),
                                  to_numpy(model(x, training=False)))
    plain = keras_effv2.EfficientNetV2B0(drop_path_rate=0.0, **kwargs)
    np.testing.assert_allclose(to_numpy(plain(x, training=True)), to_numpy(plain(x, training=True)),
                               atol=1e-6)


def test_seed_state_advances_inside_compiled_fit():
    """Under jit (JAX, tf.function) the seed generator state is threaded through fit steps."""
    inp = keras.Input((4, 4, 8))
    layer = DropPath(0.5, seed=3, name="dp")
    out = keras.layers.GlobalAveragePooling2D()(layer(keras.layers.Conv2D(8, 1)(inp)))
    model = keras.Model(inp, keras.layers.Dense(1)(out))
    model.compile(optimizer="sgd", loss="mse")
    state = layer.seed_generator.state
    before = to_numpy(state).copy()
    x = np.random.default_rng(0).normal(size=(32, 4, 4, 8)).astype("float32")
    model.fit(x, np.zeros((32, 1)), batch_size=8, epochs=1, verbose=0)
    after = to_numpy(layer.seed_generator.state)
    assert not np.array_equal(before, after)
