"""Data-parallel training on two virtual CPU devices (TF MirroredStrategy, JAX DataParallel),
each in a fresh subprocess (device counts are fixed when the framework starts)."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest

from keras_effv2.training import data_parallel_scope

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json, os, sys, tempfile
    backend = sys.argv[1]
    os.environ["KERAS_BACKEND"] = backend
    if backend == "jax":
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import tensorflow as tf
    if backend == "tensorflow":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from keras_effv2.training import load_dataset, run_recipe
    from test_training_progressive import tiny_model

    seen = {}

    def build(num_classes):
        model = tiny_model(num_classes)
        v = model.get_layer("predictions").kernel
        if backend == "jax":
            seen["devices"] = len(v.value.sharding.device_set)
        else:
            seen["devices"] = len(getattr(v.value, "values", [None]))
        return model

    result = run_recipe("paper-cifar10", output_dir=tempfile.mkdtemp(),
                        splits=load_dataset("digits"), model="b0", weights="none",
                        batch_size=8, progressive="stages=2,size=32:40,dropout=0.1:0.3",
                        epochs=2, steps_per_epoch=2, tensorboard=False, verbose=0,
                        print_fn=lambda *a: None, keras_model=build,
                        distribution="data-parallel")
    print("RESULT" + json.dumps({"replicas": result["replicas"], **seen,
                                 "iterations": result["optimizer_iterations"],
                                 "loss": result["history"]["loss"],
                                 "accuracy": result["test_accuracy"]}))
""")


@pytest.mark.skipif(keras.backend.backend() == "torch",
                    reason="Keras offers no data-parallel fit on torch (error tested below)")
def test_data_parallel_on_two_virtual_cpus(tmp_path):
    backend = keras.backend.backend()
    script = tmp_path / "dp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, str(script), backend], env=env, capture_output=True,
                          text=True, timeout=600)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT"):])
    assert out["replicas"] == 2 and out["devices"] == 2  # variables live on both devices
    assert out["iterations"] == 4 and len(out["loss"]) == 2
    assert all(x == x and x < 1e3 for x in out["loss"]) and 0 <= out["accuracy"] <= 1


def test_distribution_bad_input():
    with pytest.raises(ValueError, match="distribution must be one of"):
        with data_parallel_scope("model-parallel"):
            pass
    if keras.backend.backend() == "torch":
        with pytest.raises(ValueError, match="offered on the jax backend.*tensorflow backend"):
            with data_parallel_scope("data-parallel"):
                pass
    else:
        from keras_effv2.training.distribution import available_devices

        with data_parallel_scope("data-parallel") as replicas:
            assert replicas == len(available_devices()) >= 1
