"""The progressive driver on every backend: dropout really changes in the compiled step, the
freeze helpers freeze, every dataset's loader runs through ``run_recipe`` with a tiny model;
with ``--run-large``, the real EfficientNetV2-B0 through ``run_recipe`` with its stage settings
observable in the trained run. (Resuming a killed run: test_resume.py; the main job's command,
B0 through ``run_recipe`` by default: test_main_job.py; the dataset loaders and pipelines:
test_training_data.py.)"""

import csv
import json
import os

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the tf.data pipelines need tensorflow")
tfds = pytest.importorskip("tensorflow_datasets", reason="the loaders need tensorflow-datasets")

import keras_effv2  # noqa: E402
from keras_effv2.training import (  # noqa: E402
    ProgressiveSchedule,
    Splits,
    StageCSVLogger,
    freeze_backbone,
    load_dataset,
    progressive_fit,
    run_recipe,
    set_bn_trainable,
    unfreeze,
)

# No RandAugment: on the JAX backend Keras traces its equalization as a 256-step loop per
# channel (about 25 s per stage); the main job's test runs it (TensorFlow), and
# test_training_data.py checks the augmentation itself.
TINY = "stages=2,size=32:40,mixup=0:0.2,dropout=0.1:0.3"


def zero_fraction(y_true, y_pred):
    return keras.ops.mean(keras.ops.cast(keras.ops.equal(y_pred, 0.0), "float32"))


class _CountsTraces(keras.layers.Layer):
    """Identity that counts the Python calls in training: on TF/JAX, traces of the step."""

    calls = 0

    def call(self, x, training=False):
        if training:
            type(self).calls += 1
        return x


def _probe_model():
    """Output = head_dropout(ones): the zero fraction of y_pred is the rate in effect."""
    inp = keras.Input((512,))
    x = keras.layers.Dense(512, use_bias=False, kernel_initializer="identity", name="dense")(inp)
    x = _CountsTraces()(x)
    out = keras.layers.Dropout(0.1, seed=1, name="head_dropout")(x)
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse",
                  metrics=[keras.metrics.MeanMetricWrapper(zero_fraction, name="zero_fraction")])
    return model


def _ones(stage):
    return tf.data.Dataset.from_tensors((tf.ones((16, 512)), tf.ones((16, 512)))).repeat()


RATES = [0.1, 0.3, 0.5]


def test_dropout_rate_changes_inside_the_compiled_train_step():
    schedule = ProgressiveSchedule(3, (32, 32), dropout_rate=(0.1, 0.5))
    model = _probe_model()
    traces = []
    result = progressive_fit(model, _ones, schedule, epochs=3, steps_per_epoch=4, verbose=0,
                             on_stage_end=lambda stage, record: traces.append(
                                 _CountsTraces.calls))
    np.testing.assert_allclose(result.history["zero_fraction"], RATES, atol=0.03)
    assert result.history["dropout_rate"] == pytest.approx(RATES)
    if keras.backend.backend() == "tensorflow":  # the rate is read from a variable
        assert result.dropout_rate_in_variable and result.train_function_builds == 0
        assert traces[0] > 0 and traces[2] == traces[0]  # stages 2 and 3: the same step
        assert "call" not in vars(model.get_layer("head_dropout"))  # given back
    else:  # stage 0 already had 0.1: one retrace per change
        assert not result.dropout_rate_in_variable and result.train_function_builds == 2
        assert [s.get("train_function_rebuilt", False) for s in result.stages] == [
            False, True, True]


class _LogsSeen(keras.callbacks.Callback):
    """What ``fit`` prints on its epoch lines: the logs its callbacks receive."""

    def __init__(self):
        super().__init__()
        self.keys = []

    def on_epoch_end(self, epoch, logs=None):
        self.keys.append(sorted(logs))


def test_stage_settings_are_not_epoch_metrics(tmp_path):
    """The stage's settings go to ``result.history`` and ``log.csv`` (StageCSVLogger), not
    into the logs that ``fit`` prints as metrics on every epoch line."""
    schedule = ProgressiveSchedule(2, (32, 40), mixup_alpha=(0, 0.2), dropout_rate=(0.1, 0.3))
    seen = _LogsSeen()
    log = StageCSVLogger(str(tmp_path / "log.csv"), append=True)  # one fit per stage
    result = progressive_fit(_probe_model(), _ones, schedule, epochs=2, steps_per_epoch=1,
                             verbose=0, callbacks=[log, seen])
    assert seen.keys == [["loss", "zero_fraction"]] * 2
    assert result.history["image_size"] == [32, 40] and result.history["stage"] == [0, 1]
    assert result.history["mixup_alpha"] == pytest.approx([0, 0.2])
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["image_size"]) for r in rows] == [32, 40]
    np.testing.assert_allclose([float(r["dropout_rate"]) for r in rows], [0.1, 0.3])
    assert [s["final_loss"] for s in result.stages] == pytest.approx(result.history["loss"])


def test_without_the_rebuild_the_cached_step_keeps_its_rate():
    """The control: what the driver fixes. TF and JAX bake the rate into the traced step."""
    model = _probe_model()
    fractions = []
    for epoch, rate in enumerate(RATES):
        model.get_layer("head_dropout").rate = rate
        h = model.fit(_ones(None), epochs=epoch + 1, initial_epoch=epoch, steps_per_epoch=4,
                      verbose=0)
        fractions.append(h.history["zero_fraction"][0])
    expected = RATES if keras.backend.backend() == "torch" else [0.1] * 3  # torch runs eagerly
    np.testing.assert_allclose(fractions, expected, atol=0.03)


_TEST_SET = None


def _run(tmp_path, splits, name="run", **kwargs):
    """The main job's recipe (B0 from scratch, AdamW, warmup + cosine), tiny: two stages of one
    step at 32 and 40 px, batch 4. (EMA: test_resume.py; on JAX, Keras assigns B0's EMA weights
    variable by variable at each stage end, about 25 s.)"""
    kwargs.setdefault("epochs", 2)
    kwargs.setdefault("steps_per_epoch", 1)
    global _TEST_SET
    _TEST_SET = tuple(zip(*splits.test.as_numpy_iterator(), strict=True))  # sizes may differ
    return run_recipe("digits", output_dir=str(tmp_path / name), splits=splits, batch_size=4,
                      progressive=TINY, eval_size=32, tensorboard=False, verbose=0,
                      print_fn=lambda *a: None, **kwargs)


def _check_run(result, out_dir, num_classes, test_examples):
    assert [s["image_size"] for s in result["stages"]] == [32, 40]
    assert [s["batch_shape"] for s in result["stages"]] == [[4, 32, 32, 3], [4, 40, 40, 3]]
    assert result["shared_step"] is (keras.backend.backend() == "tensorflow")
    h = result["history"]
    assert h["image_size"] == [32, 40] and h["dropout_rate"] == pytest.approx([0.1, 0.3])
    assert h["mixup_alpha"] == pytest.approx([0, 0.2]) and h["epoch"] == [1, 2]
    assert result["optimizer_iterations"] == 2 == result["total_steps"]
    assert result["test_examples"] == test_examples and 0 <= result["test_accuracy"] <= 1
    assert np.all(np.isfinite(h["loss"]))
    model = result["model_object"]
    assert model.output_shape == (None, num_classes)
    assert model.get_layer("head_dropout").rate == pytest.approx(0.3)
    assert sorted(os.listdir(out_dir)) == ["curves.png", "log.csv", "model.keras", "result.json"]
    with open(os.path.join(out_dir, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(float(r["image_size"])) for r in rows] == [32, 40]
    with open(os.path.join(out_dir, "result.json")) as f:
        assert json.load(f)["test_accuracy"] == result["test_accuracy"]
    _check_held_out(result, num_classes)


def _check_held_out(result, num_classes):
    """The curves' held-out accuracy: each epoch's ``val_accuracy`` is the test split at the
    stage's size (the last one recomputed from the final model with NumPy and tf.image);
    each stage records the test accuracy at the eval size (the last = the final result)."""
    h = result["history"]
    assert len(h["val_accuracy"]) == len(h["val_loss"]) == len(h["epoch"])
    assert [s["test_accuracy"] for s in result["stages"]][-1] == result["test_accuracy"]
    images, labels = _TEST_SET
    resized = np.stack([tf.image.resize(x.astype("float32"), (40, 40)).numpy()
                        for x in images])  # at the last stage's size
    labels = np.array(labels)
    probs = keras.ops.convert_to_numpy(result["model_object"].predict(resized, verbose=0))
    assert probs.shape == (len(labels), num_classes)
    assert h["val_accuracy"][-1] == pytest.approx(np.mean(probs.argmax(-1) == labels), abs=1e-6)


def _digits(train, test):
    digits = load_dataset("digits")
    return Splits("digits", digits.train.take(train), digits.test.take(test), 10, train, test)


@pytest.mark.large
def test_efficientnetv2_b0_end_to_end(tmp_path):
    """The real model through two stages of one step. ``--run-large`` only: TensorFlow traces
    B0's train step anew at each stage (measured 232 s on the 2-core CI machine, more than the
    whole budget for new tests), JAX compiles it per stage. By default the main job's test
    (torch, three stages, RandAugment, reload) puts B0 through ``run_recipe``."""
    splits = _digits(16, 8)
    result = _run(tmp_path, splits)
    _check_run(result, str(tmp_path / "run"), 10, 8)
    assert result["model_object"].name == "efficientnetv2_b0"
    # The recorded test numbers are the trained model's at the eval size (32 px), with the
    # recipe's label smoothing: recomputed with NumPy.
    images, labels = (np.stack(a) for a in zip(*splits.test.as_numpy_iterator(), strict=True))
    images = tf.image.resize(images.astype("float32"), (32, 32)).numpy()
    model = result["model_object"]  # JAX: one compile beats ~300 eagerly compiled ops
    probs = keras.ops.convert_to_numpy(model.predict(images, verbose=0) if
                                       keras.backend.backend() == "jax" else model(images))
    target = np.full(probs.shape, 0.01)
    target[np.arange(8), labels] += 0.9
    loss = -np.mean(np.sum(target * np.log(np.clip(probs.astype("float64"), 1e-7, 1)), -1))
    assert result["test_accuracy"] == round(np.mean(probs.argmax(-1) == labels), 4)
    assert result["test_loss"] == pytest.approx(loss, abs=6e-5)


TFDS = [("cifar10", 10), ("cifar100", 100), ("oxford_flowers102", 102), ("cars196", 196)]


def tiny_model(num_classes):
    """A small CNN with B0's head layer names: the recipe, pipeline and driver without B0's cost."""
    inp = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(0.1, name="head_dropout")(x)
    out = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out)


# The tf.data pipelines are the same TensorFlow code on every backend; what differs per backend
# is the fit, and JAX compiles each run's steps anew (~60 s a dataset on the CI machine): there
# one dataset by default, the other three with --run-large.
_JAX = keras.backend.backend() == "jax"


@pytest.mark.parametrize("name,classes", [
    pytest.param(n, c, marks=pytest.mark.large if _JAX and i else ()) for i, (n, c) in
    enumerate(TFDS)])
def test_tfds_dataset_end_to_end(name, classes, tmp_path):
    """Each dataset's loader (tfds mock data) through ``run_recipe`` with a tiny model."""
    with tfds.testing.mock_data(num_examples=8):
        splits = load_dataset(name, data_dir=str(tmp_path))
        result = _run(tmp_path, splits, keras_model=tiny_model)
    _check_run(result, str(tmp_path / "run"), classes, 8)


@pytest.mark.large
@pytest.mark.parametrize("name,classes", TFDS)
def test_tfds_dataset_end_to_end_b0(name, classes, tmp_path):
    with tfds.testing.mock_data(num_examples=8):
        splits = load_dataset(name, data_dir=str(tmp_path))
        result = _run(tmp_path, splits)
    _check_run(result, str(tmp_path / "run"), classes, 8)


def _small_b0():
    return keras_effv2.EfficientNetV2B0(weights=None, classes=3, input_shape=(32, 32, 3))


def _fit_once(model):
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % 3
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)


def _by_path(layer):
    return {w.path: keras.ops.convert_to_numpy(w).copy() for w in layer.weights}


def test_freeze_helpers_freeze_what_they_say():
    """One fit checks both phases' helpers: ``freeze_backbone(until="stage4")`` freezes the stem
    and stages 1-4, ``set_bn_trainable(False)`` the batch norms inside the still trainable
    stage 5 (in inference mode: moving statistics fixed too), while stage 5's convolutions and
    the head train. (One B0 train step less than a fit per phase: ~30 s on TF and JAX.)"""
    model = _small_b0()
    assert freeze_backbone(model) == ["predictions"]
    assert [layer.name for layer in model.layers if layer.trainable] == ["head_dropout",
                                                                          "predictions"]
    unfreeze(model)
    assert all(layer.trainable for layer in model.layers)
    names = freeze_backbone(model, until="stage4")
    assert "s5_b00" in names and "s4_b00" not in names and "stem_conv" not in names
    with pytest.raises(ValueError, match="until must be"):
        freeze_backbone(model, until="block4")
    assert set_bn_trainable(model, False) > 40  # blocks' inner BNs included
    layers = [model.get_layer(n) for n in ("stem_bn", "s4_b00", "s5_b00", "predictions")]
    before = [_by_path(layer) for layer in layers]
    _fit_once(model)
    after = [_by_path(layer) for layer in layers]
    for path, value in {**before[0], **before[1]}.items():  # stem and stage 4: frozen
        np.testing.assert_array_equal(value, {**after[0], **after[1]}[path], err_msg=path)
    bn = [p for p in before[2] if "_bn/" in p]
    conv = [p for p in before[2] if p.endswith("kernel")]
    assert len(bn) == 12 and len(conv) == 5
    for path in bn:  # gamma, beta, moving mean and variance of the 3 BNs
        np.testing.assert_array_equal(before[2][path], after[2][path], err_msg=path)
    for path in conv:
        assert not np.array_equal(before[2][path], after[2][path]), path
    assert not np.array_equal(before[3]["predictions/kernel"], after[3]["predictions/kernel"])


def test_schedule_dropout_needs_a_dropout_layer():
    model = keras_effv2.EfficientNetV2B0(weights=None, classes=3, dropout_rate=0.0)
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="has no layer 'head_dropout'.*dropout_rate > 0"):
        progressive_fit(model, _ones, ProgressiveSchedule(2, (32, 32), dropout_rate=(0.1, 0.2)),
                        epochs=2, steps_per_epoch=1, verbose=0)
