"""One process of a small deterministic multi-process run, for
tests/test_resume_multi_process.py to kill and rerun.

    python tests/resume_multi_process_job.py BACKEND OUT.npz OUTPUT_DIR \
        --job-addresses A,B --process-id I [--kill-at EPOCH:BATCH|EPOCH:save] [--bn plain|sync]

The run of tests/helpers_distribution.py (its tiny conv net with BatchNormalization, SGD with
Nesterov momentum, global batch 8 from 16 shuffled digits) through ``run_recipe`` with
``distribution="multi-process"``, but 3 epochs of 2 steps in 2 progressive stages (1 + 2
epochs, 32 then 40 px) and a ``TrainingBackup`` after every epoch (``run_recipe``'s default),
so that stage 2 has a backup mid-stage. ``--kill-at E:B`` makes this process SIGKILL itself
right after batch ``B`` of (global) epoch ``E``: a crash at a known point, with no chance to
clean up; ``--kill-at E:save`` in the backup at the end of epoch ``E``, after its weights
file is written and before the commit (the other process commits it: one save ahead). At the end it
writes every model and optimizer variable to ``OUT.npz`` and prints ``RESULT{json}``:
``iterations``, ``batches_trained`` (the batches this process ran), ``stages``
(``skipped_by_resume``, ``skipped_batches`` of each stage), ``processes``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys

EPOCHS, STEPS_PER_EPOCH = 3, 2


def train(output_dir: str, sync_bn: bool, kill_at=None) -> tuple[dict, dict]:
    import keras
    from helpers_distribution import GLOBAL_BATCH, TRAIN_EXAMPLES, _tiny_model

    from keras_effv2.training import AugmentConfig, Recipe, load_dataset, run_recipe
    from keras_effv2.training import backup as backup_module

    class Crash(keras.callbacks.Callback):
        """Counts the batches this process trains; SIGKILLs it after ``kill_at``."""

        def __init__(self):
            super().__init__()
            self.epoch, self.batches = None, 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            if kill_at == (self.epoch, batch):
                self.kill(f"batch {batch}")

        def kill(self, where):
            print(f"KILLING myself after {where} of epoch {self.epoch}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    splits = load_dataset("digits")
    splits = dataclasses.replace(splits, train=splits.train.take(TRAIN_EXAMPLES),
                                 train_examples=TRAIN_EXAMPLES, test=splits.test.take(40),
                                 test_examples=40)
    recipe = Recipe("resume", "digits", model="b0", weights=None, optimizer="sgd",
                    batch_size=GLOBAL_BATCH, learning_rate=0.02, lr_schedule="constant",
                    total_steps=EPOCHS * STEPS_PER_EPOCH, ema_momentum=None,
                    augment=AugmentConfig(flip=False), dropout_rate=0.0, drop_path_rate=0.0,
                    progressive="stages=2,size=32:40", eval_size=40)
    crash = Crash()
    commit = backup_module._commit_metadata

    def commit_or_crash(backup_dir, meta):  # the epoch's weights file is written by now
        if kill_at == (meta["epoch"] - 1, "save") and meta["batch"] == 0:
            crash.kill("writing its backup's weights, before the commit")
        commit(backup_dir, meta)

    backup_module._commit_metadata = commit_or_crash
    result = run_recipe(recipe, output_dir=output_dir, splits=splits, epochs=EPOCHS,
                        steps_per_epoch=STEPS_PER_EPOCH, tensorboard=False, verbose=0,
                        keras_model=lambda n: _tiny_model(n, sync_bn), callbacks=[crash],
                        print_fn=lambda *a: None, distribution="multi-process",
                        deterministic=True)
    model = result["model_object"]
    arrays = {v.path: keras.ops.convert_to_numpy(v.value) for v in model.weights
              if not v.path.startswith("probe/")}
    arrays.update({f"optimizer/{v.path.split('/', 1)[-1]}": keras.ops.convert_to_numpy(v.value)
                   for v in model.optimizer.variables})
    info = {"iterations": result["optimizer_iterations"], "batches_trained": crash.batches,
            "processes": result["processes"],
            "stages": [{"skipped_by_resume": s["skipped_by_resume"],
                        "skipped_batches": s.get("skipped_batches", 0)}
                       for s in result["stages"]]}
    return arrays, info


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("backend")
    p.add_argument("out")
    p.add_argument("output_dir")
    p.add_argument("--job-addresses", required=True)
    p.add_argument("--process-id", type=int, required=True)
    p.add_argument("--kill-at", type=lambda s: (int(s.split(":")[0]), s.split(":")[1] if
                                                s.endswith(":save") else int(s.split(":")[1])))
    p.add_argument("--bn", choices=["plain", "sync"], default="plain")
    args = p.parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    from keras_effv2.training.distribution import initialize_multi_process

    initialize_multi_process(args.job_addresses, len(args.job_addresses.split(",")),
                             args.process_id)  # before the backend computes anything
    import numpy as np

    arrays, info = train(args.output_dir, args.bn == "sync", args.kill_at)
    tmp = f"{args.out}.partial.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, args.out)
    print("RESULT" + json.dumps(info), flush=True)


if __name__ == "__main__":
    sys.exit(main())
