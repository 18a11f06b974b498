"""One small, deterministic training run through ``run_recipe`` and its final state, for the
data-parallel equality tests (tests/test_training_distribution.py).

The run: a tiny conv net (BatchNormalization, no dropout, no augmentation) or, with
``model="twoblock"`` (``--model twoblock``), a two-block EfficientNetV2 of our own blocks (a
FusedMBConv and an MBConv with squeeze-excite: on JAX the fast step's tap-matmul filter
gradient, shifted-slice depthwise with its per-image ``lax.scan`` gradient and 1x1 matmuls all
run), SGD with Nesterov momentum, 2 progressive stages (32 then 40 px, a new ``fit`` each) of
3 steps, global batch ``GLOBAL_BATCH`` from ``TRAIN_EXAMPLES`` shuffled digits (each stage's
third step starts the second, reshuffled pass).

In-process: ``train_state("none")``. In a subprocess (device count and cluster are fixed when
the backend starts): ``python tests/helpers_distribution.py BACKEND MODE OUT.npz OUTPUT_DIR
[--devices 2] [--job-addresses A,B --process-id I] [--bn plain|sync]
[--paths fast|plain|fast,plain] [--model tiny|twoblock]``; writes ``OUT.npz`` (``{rank}`` in
it: torchrun's ``RANK``) and prints ``RESULT{json}``. On torch also under ``python -m
torch.distributed.run --nproc-per-node 2 ...`` (no ``--job-addresses``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

GLOBAL_BATCH = 8
TRAIN_EXAMPLES = 16
STEPS = 6  # 2 stages x 1 epoch x 3 steps


def _probed_input():
    """``(input, its rescaled tensor)``, through a probe layer that keeps the batch size of the
    last training step: per replica (replica 0's) on TensorFlow strategies, the global batch
    on JAX (one SPMD program)."""
    import keras

    class BatchProbe(keras.layers.Layer):
        def build(self, input_shape):
            self.size = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                        aggregation="only_first_replica", name="size")

        def call(self, x, training=None):
            if training:
                self.size.assign(keras.ops.cast(keras.ops.shape(x)[0], "float32"))
            return x

    inp = keras.Input((None, None, 3))
    return inp, keras.layers.Rescaling(1 / 255, name="rescale")(BatchProbe(name="probe")(inp))


def _tiny_model(num_classes, sync_bn):
    import keras

    inp, x = _probed_input()
    x = keras.layers.Conv2D(8, 3, strides=2, use_bias=False, name="conv")(x)  # BN follows
    x = keras.layers.BatchNormalization(synchronized=sync_bn, name="bn")(x)
    x = keras.layers.Activation("silu", name="act")(x)  # smooth: no ReLU kink for noise to flip
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    out = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out)


def _two_block_model(num_classes, sync_bn):
    """Our stem, a FusedMBConv (3x3 expand conv, 1x1 project), an MBConv (1x1 expand, 3x3
    stride-2 depthwise, squeeze-excite, 1x1 project), our head; BatchNormalization throughout,
    no dropout or stochastic depth."""
    from keras_effv2.configs import VARIANTS, _stages
    from keras_effv2.model import build_efficientnetv2

    if sync_bn:
        raise ValueError("the two-block EfficientNetV2 has our plain BatchNormalization "
                         "(--bn plain): it is for the JAX data-parallel tests")
    spec = dataclasses.replace(VARIANTS["s"], width=1.0, depth=1.0, stages=_stages(
        "fused r1 k3 s1 e4 i24 o24", "mbconv r1 k3 s2 e4 i24 o32 se0.25"))
    _, x = _probed_input()
    return build_efficientnetv2(spec, input_tensor=x, classes=num_classes, dropout_rate=0.0,
                                drop_path_rate=0.0)


MODELS = {"tiny": _tiny_model, "twoblock": _two_block_model}


def train_state(distribution="none", *, output_dir, batch_size=GLOBAL_BATCH,
                sync_bn=False, fast_path=True, model="tiny") -> tuple[dict, dict]:
    """Train; returns ``(arrays, info)``: every model and optimizer variable by path, and
    ``replicas``, ``processes``, ``iterations``, ``batch`` (what one replica, or on JAX the
    whole program, trained on), ``devices``, ``test_accuracy``, ``test_loss``, ``fast_path``,
    ``trained_by``. ``model``: a key of ``MODELS``."""
    import keras

    from keras_effv2.training import AugmentConfig, Recipe, load_dataset, run_recipe

    splits = load_dataset("digits")
    splits = dataclasses.replace(splits, train=splits.train.take(TRAIN_EXAMPLES),
                                 train_examples=TRAIN_EXAMPLES, test=splits.test.take(40),
                                 test_examples=40)
    recipe = Recipe("equality", "digits", model="b0", weights=None, optimizer="sgd",
                    batch_size=batch_size, learning_rate=0.02,
                    lr_schedule="constant", total_steps=STEPS, ema_momentum=None,
                    augment=AugmentConfig(flip=False), dropout_rate=0.0, drop_path_rate=0.0,
                    progressive="stages=2,size=32:40", eval_size=40)
    seen = {}

    def build(num_classes):
        net = MODELS[model](num_classes, sync_bn)
        v = net.get_layer("predictions").kernel.value
        sharding = getattr(v, "sharding", None)  # jax
        values = getattr(v, "values", None)  # tf: one per replica (torch: a tensor method)
        seen["devices"] = (len(sharding.device_set) if sharding is not None
                           else len(values) if isinstance(values, (list, tuple)) else 1)
        return net

    result = run_recipe(recipe, output_dir=output_dir, splits=splits, epochs=2,
                        steps_per_epoch=STEPS // 2, tensorboard=False, verbose=0, keras_model=build,
                        print_fn=lambda *a: None, distribution=distribution,
                        fast_path=fast_path)
    trained = result["model_object"]
    arrays = {v.path: keras.ops.convert_to_numpy(v.value) for v in trained.weights
              if not v.path.startswith("probe/")}
    arrays.update({f"optimizer/{v.path.split('/', 1)[-1]}": keras.ops.convert_to_numpy(v.value)
                   for v in trained.optimizer.variables})  # without the optimizer's own name
    info = {"replicas": result["replicas"], "processes": result["processes"],
            "iterations": result["optimizer_iterations"],
            "batch": float(keras.ops.convert_to_numpy(trained.get_layer("probe").size.value)),
            "test_accuracy": result["test_accuracy"], "test_loss": result["test_loss"],
            "fast_path": result["fast_path"], "trained_by": result["trained_by"], **seen}
    return arrays, info


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("backend")
    p.add_argument("mode")
    p.add_argument("out")
    p.add_argument("output_dir")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--job-addresses")
    p.add_argument("--process-id", type=int)
    p.add_argument("--bn", choices=["plain", "sync"], default="plain")
    p.add_argument("--paths", default="fast",
                   help="fast, plain or fast,plain (in turn, one process group; OUT gets "
                   "-fast/-plain)")
    p.add_argument("--model", choices=sorted(MODELS), default="tiny")
    args = p.parse_args(argv)
    rank = os.environ.get("RANK", "0")  # under torchrun: one file per process
    args.out = args.out.replace("{rank}", rank)
    os.environ["KERAS_BACKEND"] = args.backend
    if args.backend == "jax" and args.devices > 1:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    if args.backend == "tensorflow" and args.devices > 1:
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.devices)
    if args.job_addresses:
        from keras_effv2.training.distribution import initialize_multi_process

        initialize_multi_process(args.job_addresses, len(args.job_addresses.split(",")),
                                 args.process_id)
    import numpy as np

    paths = args.paths.split(",")
    for path in paths:
        suffix = f"-{path}" if len(paths) > 1 else ""
        arrays, info = train_state(args.mode, output_dir=args.output_dir + suffix,
                                   sync_bn=args.bn == "sync", fast_path=path == "fast",
                                   model=args.model)
        np.savez(args.out.replace(".npz", f"{suffix}.npz"), **arrays)
        print("RESULT" + json.dumps({**info, "rank": int(rank), "path": path}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
