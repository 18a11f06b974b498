"""The recipes train through the fast step by default (issue 19), and it trains what the plain
model trains.

Reference: the plain Keras model trained by the same ``run_recipe`` call with
``fast_path=False``. A tiny EfficientNetV2 (every block kind, one block each) goes through
two progressive stages (32 -> 40 px, dropout 0.1 -> 0.3: the second stage changes the image
size and rebuilds the step), EMA on, 2 steps per stage, SGD with Nesterov momentum
(smooth in the gradient; Adam's first steps amplify float noise, see test_fast_training.py).
Every variable of the two trained models (weights, BN statistics, seed-generator states) must
be equal within the parity tolerances of test_fast_training.py (rtol 1e-4, atol 1e-5), the
atol taken relative to the array's largest magnitude where that exceeds 1 (the stem's BN
statistics see raw-pixel-scale activations, ~100, where float32 rounding alone is ~1e-5 of
that), and the evaluation numbers recorded in ``result.json`` equal. Measured: worst
normalised difference 0.064 (torch); with the fast step's BN moving-variance rule broken
(unbiased instead of biased variance) 73.8. TensorFlow: the model itself is the fast path,
checked in one line. The parity test runs on the torch and JAX legs (on JAX the two stages
compile once each per path); the saved ``model.keras`` loading without ``keras_effv2.fast``
on the torch leg.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import to_numpy

pytest.importorskip("tensorflow", reason="the tf.data pipelines need tensorflow")

import dataclasses  # noqa: E402

from keras_effv2.configs import VARIANTS, _stages  # noqa: E402
from keras_effv2.model import build_efficientnetv2  # noqa: E402
from keras_effv2.training import Splits, load_dataset, run_recipe  # noqa: E402

BACKEND = keras.backend.backend()
# test_fast_training.TINY with one block per stage (JAX compiles each stage of each path):
# FusedMBConv expand 1 with a residual, FusedMBConv expand 4, MBConv + SE.
TINY = dataclasses.replace(VARIANTS["s"], width=1.0, depth=1.0, stages=_stages(
    "fused r1 k3 s1 e1 i24 o24", "fused r1 k3 s2 e4 i24 o32", "mbconv r1 k3 s2 e4 i32 o48 se0.25"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(num_classes):
    return build_efficientnetv2(TINY, classes=num_classes, dropout_rate=0.1,
                                drop_path_rate=0.2)


def _run(tmp_path, name, fast_path, **kwargs):
    digits = load_dataset("digits")
    splits = Splits("digits", digits.train.take(32), digits.test.take(16), 10, 32, 16)
    kwargs = {"epochs": 2, "steps_per_epoch": 2, "batch_size": 4, **kwargs}
    return run_recipe(
        "digits", output_dir=str(tmp_path / name), splits=splits, keras_model=_tiny,
        progressive="stages=2,size=32:40,dropout=0.1:0.3", optimizer="sgd",
        learning_rate=0.02, warmup_steps=0, ema_momentum=0.5, eval_size=32,
        tensorboard=False, verbose=0, print_fn=lambda *a: None, fast_path=fast_path,
        **kwargs)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="TensorFlow: the model is the fast path")
def test_two_stage_recipe_fast_equals_plain(tmp_path):
    fast = _run(tmp_path, "fast", True)
    plain = _run(tmp_path, "plain", False)
    assert fast["fast_path"] is True and plain["fast_path"] is False
    assert "optimize_for_training" in fast["trained_by"]
    fm, pm = fast["model_object"], plain["model_object"]
    assert type(fm) is type(pm) and "Fast" not in type(fm).__name__ and fm.name == pm.name
    assert len(fm.variables) == len(pm.variables)
    moved = 0
    worst = {}  # |fast - plain| / (rtol |plain| + atol * scale), must stay <= 1
    for v, f, p in zip(pm.variables, fm.variables, pm.variables, strict=True):
        f, p = to_numpy(f).astype("float64"), to_numpy(p).astype("float64")
        scale = max(1.0, np.abs(p).max()) if p.size else 1.0
        worst[v.path] = float(np.max(np.abs(f - p) / (1e-4 * np.abs(p) + 1e-5 * scale),
                                     initial=0.0))
    print("worst normalised difference:", max(worst.values()), max(worst, key=worst.get))
    assert max(worst.values()) <= 1.0, sorted(worst.items(), key=lambda kv: -kv[1])[:5]
    keras.utils.set_random_seed(0)  # run_recipe's seed: the runs' initial weights
    init = _tiny(10)
    for v, f in zip(init.weights, fm.weights, strict=True):
        moved += not np.allclose(to_numpy(v), to_numpy(f), rtol=1e-6, atol=0)
    assert moved > 0.9 * len(init.weights)  # a real run: nearly every weight changed
    for key in ("test_accuracy", "optimizer_iterations"):
        assert fast[key] == plain[key], key
    assert fast["test_loss"] == pytest.approx(plain["test_loss"], abs=2e-4)
    for run in (fast, plain):
        assert [s["image_size"] for s in run["stages"]] == [32, 40]
        ips = [s["images_per_second"] for s in run["stages"]]
        assert all(isinstance(x, float) and x > 0 for x in ips), ips  # step 2 of each stage
    with open(tmp_path / "fast" / "result.json") as f:
        saved = json.load(f)
    assert saved["fast_path"] is True and saved["stages"][1]["images_per_second"] > 0


@pytest.mark.skipif(BACKEND == "jax", reason="backend-independent bookkeeping; JAX compiles "
                    "are slow here (torch and TensorFlow legs run it)")
def test_tensorflow_or_one_step_stages_record_the_path(tmp_path):
    """On TensorFlow the fast path is the model itself; a stage of one step has no
    steady-state throughput (its only step compiles): ``images_per_second`` is null."""
    run = _run(tmp_path, "one", True, steps_per_epoch=1)
    assert run["fast_path"] is True
    assert [s["images_per_second"] for s in run["stages"]] == [None, None]
    if BACKEND == "tensorflow":
        assert run["trained_by"].startswith("the model itself")


BLOCK_FAST = """
import builtins, sys
real = builtins.__import__
def guarded(name, *args, **kwargs):
    if name == "keras_effv2.fast" or name.startswith("keras_effv2.fast."):
        raise ImportError("keras_effv2.fast made unimportable by the test")
    return real(name, *args, **kwargs)
builtins.__import__ = guarded
import keras, numpy as np
import keras_effv2  # registers the layers; must not need keras_effv2.fast
model = keras.saving.load_model(sys.argv[1])
assert not any(m.startswith("keras_effv2.fast") for m in sys.modules), "fast was imported"
np.save(sys.argv[2], keras.ops.convert_to_numpy(model.predict(np.load(sys.argv[3]), verbose=0)))
print(type(model).__name__, model.name)
"""


@pytest.mark.skipif(BACKEND != "torch", reason="torch leg: saving is backend-independent and "
                    "JAX compiles are slow here; TensorFlow trains the model itself")
def test_saved_model_is_plain_and_loads_without_the_fast_package(tmp_path):
    run = _run(tmp_path, "saved", True, steps_per_epoch=1)
    assert run["fast_path"] is True
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_FAST, str(tmp_path / "saved" / "model.keras"),
         str(tmp_path / "y.npy"), str(tmp_path / "x.npy")],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH",
                                                                                "")])},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["Functional", run["model_object"].name]
    ref = to_numpy(run["model_object"](x, training=False))
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ref, rtol=1e-5, atol=1e-6)
