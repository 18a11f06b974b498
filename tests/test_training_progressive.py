"""The progressive driver on every backend: dropout really changes in the compiled step, stage
settings are observable in the trained run, every dataset trains end to end, a killed run
resumes to the same step count, and the freeze helpers freeze."""

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
    freeze_backbone,
    load_dataset,
    progressive_fit,
    run_recipe,
    set_bn_trainable,
    unfreeze,
)

TINY = "stages=2,size=32:40,randaug=2:6,mixup=0:0.2,dropout=0.1:0.3"


def zero_fraction(y_true, y_pred):
    return keras.ops.mean(keras.ops.cast(keras.ops.equal(y_pred, 0.0), "float32"))


def _probe_model():
    """Output = head_dropout(ones): the zero fraction of y_pred is the rate in effect."""
    inp = keras.Input((512,))
    x = keras.layers.Dense(512, use_bias=False, kernel_initializer="identity", name="dense")(inp)
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
    result = progressive_fit(model, _ones, schedule, epochs=3, steps_per_epoch=4, verbose=0)
    np.testing.assert_allclose(result.history["zero_fraction"], RATES, atol=0.03)
    assert result.history["dropout_rate"] == pytest.approx(RATES)
    assert result.train_function_builds == 2  # stage 0 already had 0.1: one retrace per change
    assert [s.get("train_function_rebuilt", False) for s in result.stages] == [False, True, True]


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


def tiny_model(num_classes):
    """A small CNN with the same head layer names: the driver/pipeline cost without B0's."""
    inp = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(0.1, name="head_dropout")(x)
    out = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out)


def _run(tmp_path, splits, progressive=TINY, name="run", tiny=True, **kwargs):
    if tiny:
        kwargs["keras_model"] = tiny_model
    kwargs.setdefault("epochs", 2)
    kwargs.setdefault("steps_per_epoch", 2)
    return run_recipe("paper-cifar10", output_dir=str(tmp_path / name), splits=splits,
                      model="b0", weights="none", batch_size=4, progressive=progressive,
                      tensorboard=False, verbose=0, print_fn=lambda *a: None, **kwargs)


def _check_run(result, out_dir, num_classes, test_examples):
    assert [s["image_size"] for s in result["stages"]] == [32, 40]
    assert [s["batch_shape"][1:] for s in result["stages"]] == [[32, 32, 3], [40, 40, 3]]
    h = result["history"]
    assert h["image_size"] == [32, 40] and h["dropout_rate"] == pytest.approx([0.1, 0.3])
    assert h["randaug_magnitude"] == pytest.approx([2, 6])
    assert h["mixup_alpha"] == pytest.approx([0, 0.2]) and h["epoch"] == [1, 2]
    assert result["optimizer_iterations"] == 4 == result["total_steps"]
    assert result["test_examples"] == test_examples and 0 <= result["test_accuracy"] <= 1
    assert np.all(np.isfinite(h["loss"]))
    model = result["model_object"]
    assert model.output_shape == (None, num_classes)
    assert model.get_layer("head_dropout").rate == pytest.approx(0.3)
    for f in ("model.keras", "curves.png", "result.json", "log.csv"):
        assert os.path.getsize(os.path.join(out_dir, f)) > 0
    assert not os.path.exists(os.path.join(out_dir, "backup"))
    with open(os.path.join(out_dir, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(float(r["image_size"])) for r in rows] == [32, 40]
    with open(os.path.join(out_dir, "result.json")) as f:
        assert json.load(f)["test_accuracy"] == result["test_accuracy"]


TFDS = [("cifar10", 10), ("cifar100", 100), ("oxford_flowers102", 102), ("cars196", 196)]


@pytest.mark.parametrize("name,classes", TFDS)
def test_tfds_dataset_end_to_end(name, classes, tmp_path):
    with tfds.testing.mock_data(num_examples=8):
        splits = load_dataset(name, data_dir=str(tmp_path))
        result = _run(tmp_path, splits)
    _check_run(result, str(tmp_path / "run"), classes, 8)


@pytest.mark.large
def test_efficientnetv2_b0_end_to_end(tmp_path):
    """The real model through two stages (the main job runs it at full length)."""
    _check_run(_run(tmp_path, load_dataset("digits"), tiny=False), str(tmp_path / "run"), 10,
               360)


@pytest.mark.large
@pytest.mark.parametrize("name,classes", TFDS)
def test_tfds_dataset_end_to_end_b0(name, classes, tmp_path):
    with tfds.testing.mock_data(num_examples=8):
        splits = load_dataset(name, data_dir=str(tmp_path))
        result = _run(tmp_path, splits, tiny=False)
    _check_run(result, str(tmp_path / "run"), classes, 8)


def test_image_folder_and_digits_end_to_end(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        os.makedirs(tmp_path / "imgs" / c)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (36, 50, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / c / f"{i}.png")
    folder = load_dataset(f"folder:{tmp_path / 'imgs'}")
    _check_run(_run(tmp_path, folder, name="folder"), str(tmp_path / "folder"), 3, 3)
    digits = load_dataset("digits")
    _check_run(_run(tmp_path, digits, name="digits"), str(tmp_path / "digits"), 10, 360)


class Kill(keras.callbacks.Callback):
    def __init__(self, at_step):
        super().__init__()
        self.at_step = at_step

    def on_train_batch_end(self, batch, logs=None):
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == self.at_step:
            raise KeyboardInterrupt(f"killed at step {self.at_step}")


def test_killed_run_resumes_to_the_same_step_count(tmp_path):
    splits = load_dataset("digits")
    kwargs = dict(epochs=4, steps_per_epoch=3)  # backups at epoch ends (Keras resumes there)
    # killed in the middle of stage 2 (global steps 7..12), after its first epoch
    with pytest.raises(KeyboardInterrupt, match="killed at step 11"):
        _run(tmp_path, splits, name="killed", callbacks=[Kill(11)], **kwargs)
    out = tmp_path / "killed"
    assert os.path.exists(out / "backup" / "latest.weights.h5")
    assert not os.path.exists(out / "model.keras")  # nothing half-written
    resumed = _run(tmp_path, splits, name="killed", **kwargs)
    assert resumed["stages"][0]["skipped_by_resume"] and resumed["history"]["epoch"] == [4]
    full = _run(tmp_path, splits, name="full", **kwargs)
    assert resumed["optimizer_iterations"] == full["optimizer_iterations"] == 12
    assert full["history"]["epoch"] == [1, 2, 3, 4]
    assert not os.path.exists(out / "backup")
    with open(out / "log.csv") as f:
        epochs = sorted({int(r["epoch"]) for r in csv.DictReader(f)})
    assert epochs == [0, 1, 2, 3]  # every epoch logged across the two processes


def _small_b0():
    return keras_effv2.EfficientNetV2B0(weights=None, classes=3, input_shape=(32, 32, 3))


def _fit_once(model):
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % 3
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)


def _values(layer):
    return [keras.ops.convert_to_numpy(w).copy() for w in layer.weights]


def test_freeze_backbone_then_bn_only(tmp_path):
    model = _small_b0()
    trainable = freeze_backbone(model)
    assert trainable == ["predictions"]
    bn, conv, head = (model.get_layer(n) for n in ("stem_bn", "s5_b00", "predictions"))
    before = [_values(x) for x in (bn, conv, head)]
    _fit_once(model)
    after = [_values(x) for x in (bn, conv, head)]
    for b, a in zip(before[0] + before[1], after[0] + after[1], strict=True):
        np.testing.assert_array_equal(b, a)  # moving_mean included: BN in inference mode
    assert not np.array_equal(before[2][0], after[2][0])

    unfreeze(model)
    assert set_bn_trainable(model, False) > 40  # blocks' inner BNs included
    before = [_values(x) for x in (bn, conv)]
    _fit_once(model)
    after = [_values(x) for x in (bn, conv)]
    for b, a in zip(before[0], after[0], strict=True):
        np.testing.assert_array_equal(b, a)
    assert not np.array_equal(before[1][0], after[1][0])  # conv kernels train

    model2 = _small_b0()
    names = freeze_backbone(model2, until="stage4")
    assert "s5_b00" in names and "s4_b00" not in names and "stem_conv" not in names
    with pytest.raises(ValueError, match="until must be"):
        freeze_backbone(model2, until="block4")


def test_schedule_dropout_needs_a_dropout_layer():
    model = keras_effv2.EfficientNetV2B0(weights=None, classes=3, dropout_rate=0.0)
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="has no layer 'head_dropout'.*dropout_rate > 0"):
        progressive_fit(model, _ones, ProgressiveSchedule(2, (32, 32), dropout_rate=(0.1, 0.2)),
                        epochs=2, steps_per_epoch=1, verbose=0)
