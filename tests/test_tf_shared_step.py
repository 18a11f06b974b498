"""TensorFlow's one traced step for every progressive stage (keras_effv2.training.tf_shared_step):
the head-dropout rate held in a variable gives Keras' own dropout masks, follows the variable
inside one traced function, and trains a progressive run to the same weights as rebuilding the
step at every rate change; stages at two sizes and two rates run one trace."""

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="the variable rate is TensorFlow's (the module doc)")
tf = pytest.importorskip("tensorflow")

from keras_effv2.training import ProgressiveSchedule, progressive, progressive_fit  # noqa: E402
from keras_effv2.training.tf_shared_step import (  # noqa: E402
    VariableDropoutRate,
    any_size,
    available,
    takes_any_size,
)


def _zero_fraction(y):
    return float(np.mean(keras.ops.convert_to_numpy(y) == 0))


def test_masks_equal_keras_dropout_at_the_same_seed_state():
    layer = keras.layers.Dropout(0.3, seed=5)
    x = tf.ones((8, 256))
    state = layer.seed_generator.state.numpy()
    expected = [layer(x, training=True).numpy() for _ in range(3)]  # Keras' Dropout.call
    layer.seed_generator.state.assign(state)
    holder = VariableDropoutRate(layer)
    got = [layer(x, training=True).numpy() for _ in range(3)]
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(g, e)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    holder.remove()
    assert "call" not in vars(layer) and layer.call.__func__ is keras.layers.Dropout.call


def test_one_trace_follows_the_variable():
    layer = keras.layers.Dropout(0.1, seed=1)
    holder = VariableDropoutRate(layer)
    step = tf.function(lambda x: layer(x, training=True))
    x = tf.ones((16, 512))
    fractions = []
    for rate in (0.0, 0.5, 0.2):
        layer.rate = rate
        holder.sync()
        fractions.append(_zero_fraction(step(x)))
    assert step.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(fractions, [0.0, 0.5, 0.2], atol=0.03)


def test_any_size_leaves_height_and_width_out_of_the_spec():
    images = np.arange(2 * 5 * 6 * 3, dtype="float32").reshape(2, 5, 6, 3)
    labels = np.eye(2, dtype="float32")
    ds = tf.data.Dataset.from_tensors((images, labels))
    loose = any_size(ds)
    assert loose.element_spec[0].shape.as_list() == [2, None, None, 3]
    assert loose.element_spec[1] == ds.element_spec[1]
    got_images, got_labels = next(iter(loose))
    np.testing.assert_array_equal(got_images.numpy(), images)
    np.testing.assert_array_equal(got_labels.numpy(), labels)
    flat = tf.data.Dataset.from_tensors((np.ones((2, 7), "float32"), labels))
    assert any_size(flat) is flat and any_size(None) is None  # not images: as it is


def test_takes_any_size():
    def conv(shape):
        return keras.Sequential([keras.Input(shape), keras.layers.Conv2D(2, 3)])

    assert takes_any_size(conv((None, None, 3)))
    assert not takes_any_size(conv((32, 32, 3)))  # a fixed size: a spec without it would fail
    assert not takes_any_size(keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)]))


def test_not_under_a_distribution_strategy():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    assert available(model)
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        assert not available(model)
    model.compile(loss="mse", run_eagerly=True)
    assert not available(model)


def test_rejects_a_layer_that_is_not_dropout():
    with pytest.raises(TypeError, match="not a keras.layers.Dropout"):
        VariableDropoutRate(keras.layers.Dense(2))
    with pytest.raises(ValueError, match="built with rate 0"):
        VariableDropoutRate(keras.layers.Dropout(0.0))


def _model(weights=None):
    inp = keras.Input((32,))
    x = keras.layers.Dense(64, activation="relu", name="dense")(inp)
    x = keras.layers.Dropout(0.1, seed=3, name="head_dropout")(x)
    model = keras.Model(inp, keras.layers.Dense(4, name="out")(x))
    if weights is not None:
        model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def test_variable_rate_trains_like_rebuilding_the_step(monkeypatch):
    rng = np.random.default_rng(0)
    data = tf.data.Dataset.from_tensors(
        (rng.normal(size=(8, 32)).astype("float32"),
         rng.normal(size=(8, 4)).astype("float32"))).repeat()
    schedule = ProgressiveSchedule(3, (32, 32), dropout_rate=(0.1, 0.5))
    keras.utils.set_random_seed(0)
    start = _model().get_weights()
    held = _model(start)
    result = progressive_fit(held, lambda s: data, schedule, epochs=3, steps_per_epoch=3,
                             verbose=0)
    assert result.dropout_rate_in_variable and result.train_function_builds == 0
    monkeypatch.setattr(progressive, "available", lambda model: False)
    rebuilt = _model(start)
    control = progressive_fit(rebuilt, lambda s: data, schedule, epochs=3, steps_per_epoch=3,
                              verbose=0)
    assert not control.dropout_rate_in_variable and control.train_function_builds == 2
    assert not np.allclose(start[0], held.get_weights()[0])  # it trained
    for a, b in zip(held.get_weights(), rebuilt.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


class _CountsTraces(keras.layers.Layer):
    calls = 0

    def call(self, x, training=False):
        if training:
            type(self).calls += 1  # Python runs only while TensorFlow traces the step
        return x


def test_one_traced_step_for_every_stage_size_and_rate():
    """The recipe pipeline's spec has no height and width, and the rate is a variable: the
    stages at 32 and 40 px with dropout 0.1 and 0.3 run one traced train step."""
    from keras_effv2.training import load_dataset, train_dataset

    splits = load_dataset("digits")
    inp = keras.Input((None, None, 3))
    x = _CountsTraces()(keras.layers.Conv2D(4, 3, strides=2, name="conv")(inp))
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.1, seed=1, name="head_dropout")(x)
    model = keras.Model(inp, keras.layers.Dense(10, name="out")(x))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="categorical_crossentropy")
    traces = []
    result = progressive_fit(
        model, lambda s: train_dataset(splits, s, 8), ProgressiveSchedule(
            2, (32, 40), dropout_rate=(0.1, 0.3)), epochs=2, steps_per_epoch=2, verbose=0,
        on_stage_end=lambda stage, record: traces.append(_CountsTraces.calls))
    assert [s["image_size"] for s in result.stages] == [32, 40]
    assert [s["batch_shape"] for s in result.stages] == [[8, 32, 32, 3], [8, 40, 40, 3]]
    assert result.shared_step and result.dropout_rate_in_variable
    assert traces[0] > 0 and traces[1] == traces[0]
