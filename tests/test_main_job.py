"""The main job, shortened: ``make demo``'s command (``python -m keras_effv2.train --recipe
digits --no-tensorboard --verbose 2``) with one epoch of one step per stage (``--epochs 3
--steps-per-epoch 1``), run as a subprocess, checked on what it writes.

Torch leg only. The command is a thin layer over ``run_recipe``: what differs per backend is
the training itself, which ``test_training_progressive.py`` runs with the real B0 on TensorFlow
and JAX; on torch this test is that coverage. Torch is the cheapest backend for it: B0 runs
eagerly there, while TensorFlow traces B0's train step anew at each of the three stages
(measured: 200 s of CPU for this run on TensorFlow, 85 s on torch) and JAX compiles it and
traces Keras' JAX-backend RandAugment as well. The ``tf.data`` pipeline (RandAugment, mixup) is
the same TensorFlow code whatever the backend, ``make demo``'s default (TensorFlow) included.

The per-stage settings are checked against the paper's rule (§4.2, Algorithm 1: each stage
interpolates linearly between the first and last stage's values) applied to the endpoints the
main job documents (docs/training.md, "Main job"); the test accuracy and loss against
NumPy, from the reloaded ``model.keras`` on the test images. The settings print once per stage
(not as metrics on the epoch lines), and the curves' data hold held-out accuracy per epoch.
"""

import csv
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch",
                                reason="the main job's command runs on the torch leg (see above)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# docs/training.md, "Main job": image 40 -> 52 -> 64 px, dropout 0.1 -> 0.3, no RandAugment (0 in
# log.csv, None printed), no mixup, three stages, label smoothing 0.1.
ENDPOINTS = dict(image_size=(40, 64), randaug_magnitude=(0, 0), mixup_alpha=(0, 0),
                 dropout_rate=(0.1, 0.3))
STAGES = 3
LABEL_SMOOTHING = 0.1
EXPECTED = {k: [lo + (hi - lo) * i / (STAGES - 1) for i in range(STAGES)]
            for k, (lo, hi) in ENDPOINTS.items()}


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    env = {**os.environ, "KERAS_BACKEND": "torch",
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "keras_effv2.train", "--recipe", "digits", "--output", str(out),
         "--no-tensorboard", "--verbose", "2", "--epochs", "3", "--steps-per-epoch", "1"],
        env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "result.json") as f:
        return out, proc.stdout, json.load(f)


def test_main_job_prints_each_stage_and_the_result(main_job):
    _, stdout, result = main_job
    stages = re.findall(r"^stage (\d)/3: image (\d+) px, RandAugment None, mixup ([\d.]+), "
                        r"cutmix 0, dropout ([\d.]+), epochs (\d)\.\.(\d)$", stdout, re.M)
    got = np.array(stages, dtype=float)
    np.testing.assert_array_equal(got[:, 0], [1, 2, 3])
    for col, key in enumerate(["image_size", "mixup_alpha", "dropout_rate"], start=1):
        np.testing.assert_allclose(got[:, col], EXPECTED[key], atol=1e-9, err_msg=key)
    np.testing.assert_array_equal(got[:, 4:], [[0, 1], [1, 2], [2, 3]])
    done = re.findall(r"^stage (\d)/3 done: train accuracy [\d.]+, held-out accuracy ([\d.]+) "
                      r"at (\d+) px, test accuracy ([\d.]+) at 64 px$", stdout, re.M)
    assert [int(d[0]) for d in done] == [1, 2, 3]
    np.testing.assert_allclose([float(d[1]) for d in done], result["history"]["val_accuracy"],
                               atol=5e-5)
    assert [int(d[2]) for d in done] == EXPECTED["image_size"]
    assert [float(d[3]) for d in done] == [s["test_accuracy"] for s in result["stages"]]
    assert result["stages"][-1]["test_accuracy"] == result["test_accuracy"]
    epoch_lines = [line for line in stdout.splitlines() if " - loss: " in line]
    assert len(epoch_lines) == 3, stdout  # one per epoch: metrics only, no stage settings
    for line in epoch_lines:
        assert "val_accuracy" in line
        assert not any(k in line for k in ("image_size", "cutmix_alpha", "dropout_rate")), line
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary == {"recipe": "digits", "dataset": "digits", "model": "b0",
                       "backend": "torch", "test_accuracy": result["test_accuracy"],
                       "paper_top1": None, "total_steps": 3,
                       "train_seconds": result["train_seconds"], "fast_path": True}
    # torch trains through the fast step by default, and says so (issue 19).
    assert "trained through the fast training step (keras_effv2.fast.optimize_for_training, " \
           "torch)" in stdout
    assert result["fast_path"] is True and result["stages"][0]["images_per_second"] is None


def test_main_job_writes_the_stages_it_ran(main_job):
    out, _, result = main_job
    assert sorted(os.listdir(out)) == ["curves.png", "log.csv", "model.keras", "result.json"]
    with open(out / "curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert (result["epochs"], result["total_steps"], result["optimizer_iterations"]) == (3, 3, 3)
    assert result["test_examples"] == 360  # scikit-learn's 1,797 digits, 20 % held out
    sizes = [int(s) for s in EXPECTED["image_size"]]
    assert [s["batch_shape"] for s in result["stages"]] == [[32, s, s, 3] for s in sizes]
    assert result["history"]["epoch"] == [1, 2, 3]
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for key, want in EXPECTED.items():
        np.testing.assert_allclose([float(r[key]) for r in rows], want, atol=1e-6, err_msg=key)
        np.testing.assert_allclose(result["history"][key], want, atol=1e-6, err_msg=key)
    assert np.all(np.isfinite([float(r["loss"]) for r in rows]))


def test_saved_model_reproduces_the_recorded_test_result(main_job):
    from keras_effv2.training import load_dataset

    out, _, result = main_job
    model = keras.saving.load_model(out / "model.keras")
    assert model.name == "efficientnetv2_b0"
    assert model.get_layer("head_dropout").rate == pytest.approx(EXPECTED["dropout_rate"][-1])
    pairs = list(load_dataset("digits").test.as_numpy_iterator())
    images = np.stack([x for x, _ in pairs]).astype("float32")  # 64 px = the eval size
    labels = np.array([y for _, y in pairs])
    probs = keras.ops.convert_to_numpy(model.predict(images, batch_size=64, verbose=0))
    accuracy = np.mean(probs.argmax(-1) == labels)
    target = np.full(probs.shape, LABEL_SMOOTHING / 10)  # label-smoothed one-hot, 10 classes
    target[np.arange(len(labels)), labels] += 1 - LABEL_SMOOTHING
    loss = -np.mean(np.sum(target * np.log(np.clip(probs.astype("float64"), 1e-7, 1)), -1))
    assert result["test_accuracy"] == round(accuracy, 4)
    assert result["test_loss"] == pytest.approx(loss, abs=6e-5)  # recorded to 4 decimals
