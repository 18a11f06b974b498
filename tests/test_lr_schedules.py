"""``WarmupCosineDecay`` against Keras' own ``CosineDecay``: equal values at every step, the same
config, serializable, and (TensorFlow) no conditional in its graph."""

import keras
import numpy as np
import pytest

from keras_effv2.lr_schedules import WarmupCosineDecay
from keras_effv2.training.recipes import build_optimizer, get_recipe

CASES = [
    dict(initial_learning_rate=0.0, decay_steps=374, warmup_target=2e-3, warmup_steps=40),
    dict(initial_learning_rate=1e-4, decay_steps=50, warmup_target=1e-2, warmup_steps=7,
         alpha=0.1),
    dict(initial_learning_rate=1e-3, decay_steps=100),  # no warmup: Keras' own path
]


@pytest.mark.parametrize("kwargs", CASES)
def test_values_equal_keras_cosine_decay_at_every_step(kwargs):
    ours, keras_own = WarmupCosineDecay(**kwargs), keras.optimizers.schedules.CosineDecay(**kwargs)
    end = kwargs["decay_steps"] + kwargs.get("warmup_steps", 0)
    steps = list(range(end + 6))  # warmup, its last step, the decay, and past the end
    got = np.array([float(keras.ops.convert_to_numpy(ours(s))) for s in steps])
    want = np.array([float(keras.ops.convert_to_numpy(keras_own(s))) for s in steps])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    assert got.max() == pytest.approx(kwargs.get("warmup_target") or
                                      kwargs["initial_learning_rate"], rel=1e-5)


def test_config_and_serialization_round_trip():
    lr = WarmupCosineDecay(**CASES[0])
    assert lr.get_config() == keras.optimizers.schedules.CosineDecay(**CASES[0]).get_config()
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(lr))
    assert type(again) is WarmupCosineDecay and again.get_config() == lr.get_config()
    opt = keras.optimizers.AdamW(learning_rate=lr, weight_decay=1e-4)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    config = keras.optimizers.serialize(restored)["config"]["learning_rate"]
    assert config["class_name"] == "WarmupCosineDecay" and config["config"] == lr.get_config()


def test_recipes_with_warmup_use_it():
    opt = build_optimizer(get_recipe("digits"), total_steps=800)
    config = keras.optimizers.serialize(opt)["config"]["learning_rate"]
    assert config["class_name"] == "WarmupCosineDecay"
    assert config["config"]["warmup_steps"] == 40


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow graphs")
def test_tensorflow_graph_has_no_conditional():
    import tensorflow as tf

    def op_types(schedule):
        fn = tf.function(lambda step: schedule(step))
        graph = fn.get_concrete_function(tf.TensorSpec([], tf.int64)).graph
        return {op.type for op in graph.get_operations()}

    assert {"If", "StatelessIf"} & op_types(keras.optimizers.schedules.CosineDecay(**CASES[0]))
    assert not {"If", "StatelessIf"} & op_types(WarmupCosineDecay(**CASES[0]))
