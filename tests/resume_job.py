"""A small deterministic progressive training run, for tests/test_resume.py to kill and rerun.

    python tests/resume_job.py OUTPUT DUMPS [--hang-at EPOCH:BATCH] [--model cnn|effv2]

``run_recipe`` with the main job's ``digits`` recipe (AdamW with weight decay, warmup and
cosine decay, label smoothing) plus EMA (momentum 0.5), on 64 digits, batch 8, 3 epochs of 2
steps in 2 progressive stages (1 + 2 epochs; the image size, mixup and the dropout rate change),
``deterministic=True``. The model (``--model``) is a tiny CNN with every kind of state B0 has:
batch-norm statistics, ``Dropout`` and ``DropPath`` seed generators, the optimizer's moments,
EMA copies and step count; or ``effv2``, a tiny EfficientNetV2 (one FusedMBConv e1 block with
a residual and DropPath, one MBConv + SE), which the recipe trains through the fast training
step on torch and JAX (``keras_effv2.fast.optimize_for_training``). RandAugment (magnitude
2 -> 6) runs on TensorFlow and torch; on JAX it is left out, because there Keras traces its
equalization as a 256-step loop per channel (about 25 s per stage and process) while the
``tf.data`` pipeline itself is the same TensorFlow code on every backend.

The state (model variables incl. seed-generator states, optimizer variables) is dumped to
``DUMPS/*.npz``: ``epoch<N>`` after N epochs (at a stage end: after Keras assigned the EMA
weights, what the next stage starts from), ``restored<N>`` right after the first ``fit`` of
the process restored a backup of epoch N, ``final`` at the end. ``--hang-at E:B`` writes
``DUMPS/hanging`` after batch B of epoch E and waits to be killed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import keras
import numpy as np

from keras_effv2.keras_graph import resume_epoch


def tiny_model(num_classes):
    from keras_effv2.layers import DropPath

    inp = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Add()([x, DropPath(0.3)(keras.layers.Conv2D(8, 3, padding="same")(x))])
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(0.1, name="head_dropout")(x)
    out = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out)


def tiny_effv2(num_classes):
    import dataclasses

    from keras_effv2.configs import VARIANTS, _stages
    from keras_effv2.model import build_efficientnetv2

    spec = dataclasses.replace(VARIANTS["s"], width=1.0, depth=1.0, stages=_stages(
        "fused r1 k3 s1 e1 i16 o16", "mbconv r1 k3 s2 e2 i16 o24 se0.25"))
    return build_efficientnetv2(spec, classes=num_classes, dropout_rate=0.1,
                                drop_path_rate=0.3)


MODELS = {"cnn": tiny_model, "effv2": tiny_effv2}


def state(model) -> dict:
    """Every variable of the model and its optimizer, by position (names may repeat)."""
    groups = {"model": model.variables, "optimizer": model.optimizer.variables}
    return {f"{g}{i:03d}:{v.path.replace('/', '|')}": keras.ops.convert_to_numpy(v)
            for g, variables in groups.items() for i, v in enumerate(variables)}


class Probe(keras.callbacks.Callback):
    def __init__(self, dumps, hang_at=None):
        super().__init__()
        self.dumps, self.hang_at = dumps, hang_at
        self.restored = False
        self.epoch = self.ran = None

    def dump(self, name):
        tmp = os.path.join(self.dumps, f".{name}.npz")
        np.savez(tmp, **state(self.model))
        os.replace(tmp, os.path.join(self.dumps, f"{name}.npz"))

    def on_train_begin(self, logs=None):
        self.ran = None
        epoch = resume_epoch(self.model)
        if epoch is not None and not self.restored:  # set by the restore
            self.restored = True
            self.dump(f"restored{epoch}")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.hang_at == (self.epoch, batch):
            with open(os.path.join(self.dumps, ".hanging"), "w") as f:
                f.write(str(os.getpid()))
            os.replace(os.path.join(self.dumps, ".hanging"), os.path.join(self.dumps, "hanging"))
            time.sleep(600)
            sys.exit("resume_job: hung 600 s at --hang-at and nobody killed it")

    def on_epoch_end(self, epoch, logs=None):
        self.ran = epoch + 1
        self.dump(f"epoch{epoch + 1}")

    def on_train_end(self, logs=None):
        if self.ran is not None:  # after fit assigned the EMA weights
            self.dump(f"epoch{self.ran}")


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("output")
    p.add_argument("dumps")
    p.add_argument("--hang-at", type=lambda s: tuple(int(x) for x in s.split(":")))
    p.add_argument("--model", choices=sorted(MODELS), default="cnn")
    args = p.parse_args(argv)
    from keras_effv2.training import load_dataset, run_recipe
    from keras_effv2.training.data import Splits

    os.makedirs(args.dumps, exist_ok=True)
    digits = load_dataset("digits")
    splits = Splits("digits", digits.train.take(64), digits.test.take(32), 10, 64, 32)
    probe = Probe(args.dumps, args.hang_at)
    randaug = "" if keras.backend.backend() == "jax" else "randaug=2:6,"
    result = run_recipe(
        "digits", output_dir=args.output, splits=splits, keras_model=MODELS[args.model],
        epochs=3, steps_per_epoch=2, batch_size=8,
        progressive=f"stages=2,size=32:40,{randaug}mixup=0:0.2,dropout=0.1:0.3",
        ema_momentum=0.5, eval_size=32, deterministic=True,
        tensorboard=False, verbose=0, callbacks=[probe], print_fn=lambda *a: None)
    probe.dump("final")
    print("stages skipped by resume:", [s["skipped_by_resume"] for s in result["stages"]])
    print("fast path:", result["fast_path"])


if __name__ == "__main__":
    main()
