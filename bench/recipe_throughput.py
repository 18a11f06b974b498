"""Recipe throughput: ``run_recipe`` through the fast step vs the plain model, and vs the bare
train step (issue 19). One backend per process (``KERAS_BACKEND``); the contenders run
interleaved in the same process, so a shared, noisy CPU moves them together: read ratios.

- ``recipe_fast`` / ``recipe_plain``: ``run_recipe("digits", progressive="none")`` (B0 from
  scratch, AdamW, the recipe's tf.data pipeline) at ``--size`` px, batch ``--batch``, one
  epoch of ``--steps`` steps; the number is the recipe's own steady-state
  ``images_per_second`` (``result.json``; first step, which compiles, excluded).
- ``bare_fast``: the same model and optimizer, ``optimize_for_training(model)``,
  ``train_on_batch`` on one fixed batch held in memory (no input pipeline), ``--steps`` timed
  steps after two warm-up steps.

Example:
    KERAS_BACKEND=torch python -m bench.recipe_throughput --size 64 --batch 32 --steps 12
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def recipe_images_per_second(size, batch, steps, fast_path) -> float:
    from keras_effv2.training import load_dataset, run_recipe

    splits = load_dataset("digits")
    with tempfile.TemporaryDirectory() as out:
        result = run_recipe(
            "digits", output_dir=out, splits=splits, progressive="none", train_size=size,
            eval_size=size, batch_size=batch, epochs=1, steps_per_epoch=steps,
            tensorboard=False, verbose=0, print_fn=lambda *a: None, fast_path=fast_path)
    return result["stages"][0]["images_per_second"]


def bare_images_per_second(size, batch, steps) -> float:
    import keras
    import numpy as np

    from keras_effv2.fast import optimize_for_training
    from keras_effv2.training import build_optimizer, resolve
    from keras_effv2.training.runner import build_model

    resolved = resolve("digits", batch_size=batch)
    keras.utils.set_random_seed(0)
    model = build_model(resolved, 10)
    fast = optimize_for_training(model)
    fast.compile(optimizer=build_optimizer(resolved.recipe, steps + 2),
                 loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 16, (batch, size, size, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, batch)]
    for _ in range(2):
        float(fast.train_on_batch(x, y))
    start = time.perf_counter()
    for _ in range(steps):
        loss = fast.train_on_batch(x, y)
    float(loss)
    return batch * steps / (time.perf_counter() - start)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    import keras

    runs = {"recipe_fast": [], "recipe_plain": [], "bare_fast": []}
    for _ in range(args.repeats):  # interleaved
        runs["recipe_fast"].append(recipe_images_per_second(args.size, args.batch, args.steps,
                                                            True))
        runs["recipe_plain"].append(recipe_images_per_second(args.size, args.batch,
                                                             args.steps, False))
        runs["bare_fast"].append(bare_images_per_second(args.size, args.batch, args.steps))
        print(json.dumps({k: v[-1] for k, v in runs.items()}), flush=True)
    best = {k: max(v) for k, v in runs.items()}
    print(json.dumps({
        "backend": keras.backend.backend(), "size": args.size, "batch": args.batch,
        "steps": args.steps, "threads": os.environ.get("OMP_NUM_THREADS"), "runs": runs,
        "fast_over_plain": round(best["recipe_fast"] / best["recipe_plain"], 3),
        "recipe_over_bare": round(best["recipe_fast"] / best["bare_fast"], 3)}))


if __name__ == "__main__":
    main()
