"""Run a recipe end to end: plan, data, model, progressive fit, evaluation, artefacts.

``make_plan`` resolves a recipe (model, batch size, steps/epochs, image sizes, the per-stage
schedule) without touching data; ``run_recipe`` trains it and writes into ``output_dir``:
``model.keras``, ``curves.png``, ``log.csv``, ``tensorboard/``, ``result.json`` (files are
written to a temporary name and renamed). ``backup/`` exists only while a run is unfinished:
rerun the same command and it resumes.

Example:
    >>> from keras_effv2.training import make_plan
    >>> plan = make_plan("paper-oxford_flowers102", model="s")
    >>> plan["stages"][0]["image_size"], plan["steps_per_epoch"]
    (384, 3)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
import time

import keras

from keras_effv2.configs import VariantSpec, get_variant
from keras_effv2.training.backup import align_backups, backup_position
from keras_effv2.training.data import (
    DATASETS,
    check_batch_size,
    eval_dataset,
    load_dataset,
    train_dataset,
)
from keras_effv2.training.distribution import (
    data_parallel_scope,
    full_batches,
    gather_from_processes,
    process_info,
    shard_for_workers,
    start_distribution,
    synchronized_training,
)
from keras_effv2.training.plotting import plot_history
from keras_effv2.training.progressive import StageCSVLogger, progressive_fit, split_epochs
from keras_effv2.training.recipes import Recipe, build_optimizer, get_recipe, recipe_for
from keras_effv2.training.schedule import (
    MIN_IMAGE_SIZE,
    ProgressiveSchedule,
    constant_schedule,
    get_schedule,
)
from keras_effv2.weights import WeightsSpec, get_weights_spec
from keras_effv2.weights.registry import is_weights_tag


def _size(value, variant) -> int:
    size = variant.eval_size if value == "eval" else int(value)
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {size} is below the minimum {MIN_IMAGE_SIZE} px.")
    return size


@dataclasses.dataclass(frozen=True)
class ResolvedRecipe:
    """A recipe with its variant, weight set and schedule resolved once (:func:`resolve`).

    ``weights``: ``None`` (random init), a registered ``WeightsSpec`` or a weights file path.
    """

    recipe: Recipe
    variant: VariantSpec
    weights: WeightsSpec | str | None
    schedule: ProgressiveSchedule


def _resolve_weights(variant: VariantSpec, weights):
    if weights in (None, "none"):
        return None
    w = os.fspath(weights)
    if is_weights_tag(w) or not (w.endswith(".h5") or os.sep in w or os.path.exists(w)):
        return get_weights_spec(variant, w)  # not a tag nor a file: the error lists the tags
    return w  # a file: EfficientNetV2 checks it when it loads


def resolve(recipe=None, dataset=None, **overrides) -> ResolvedRecipe:
    """Resolve a recipe (name, ``Recipe`` or ``ResolvedRecipe``) and its overrides once."""
    if isinstance(recipe, ResolvedRecipe):
        if dataset is not None or any(v is not None for v in overrides.values()):
            raise ValueError("a ResolvedRecipe is final: give overrides to resolve() instead.")
        return recipe
    recipe = resolve_recipe(recipe, dataset, **overrides)
    variant = get_variant(recipe.model)
    schedule = (get_schedule(recipe.progressive) if recipe.progressive
                else constant_schedule(_size(recipe.train_size, variant)))
    return ResolvedRecipe(recipe, variant, _resolve_weights(variant, recipe.weights), schedule)


def resolve_recipe(recipe=None, dataset=None, **overrides) -> Recipe:
    """A recipe by name (or the dataset's default) with ``None``-free overrides applied."""
    if recipe is None:
        if dataset is None:
            raise ValueError("give a recipe or a dataset.")
        recipe = recipe_for(dataset)
    recipe = get_recipe(recipe)
    if dataset is not None and dataset != recipe.dataset:
        recipe = dataclasses.replace(recipe, dataset=dataset, paper_top1=None)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "batch_size" in overrides and "learning_rate" not in overrides:
        overrides["learning_rate"] = (recipe.learning_rate * overrides["batch_size"]
                                      / recipe.batch_size)  # linear scaling
    if overrides.get("progressive") == "none":
        overrides["progressive"] = None
        recipe = dataclasses.replace(recipe, progressive=None)
    return dataclasses.replace(recipe, **overrides)


def make_plan(recipe=None, *, dataset=None, train_examples=None, epochs=None,
              steps_per_epoch=None, **overrides) -> dict:
    """Resolve everything a run needs, as JSON-ready data (``--dry-run`` prints it).

    ``recipe`` may be a :class:`ResolvedRecipe` (then no ``dataset``/overrides)."""
    resolved = resolve(recipe, dataset, **overrides)
    recipe, variant, schedule = resolved.recipe, resolved.variant, resolved.schedule
    n = schedule.num_stages
    if train_examples is None:
        spec = DATASETS.get(recipe.dataset)
        if spec is None:
            train_examples = load_dataset(recipe.dataset).train_examples
        else:
            train_examples = spec.train_examples
    if recipe.batch_size > train_examples:
        raise ValueError(
            f"batch_size {recipe.batch_size} is larger than the {train_examples} training "
            f"examples of {recipe.dataset!r}; use a batch size <= {train_examples}."
        )
    spe = steps_per_epoch or train_examples // recipe.batch_size
    if epochs is None:
        epochs = max(n, math.ceil(recipe.total_steps / spe))
    if epochs < n:
        raise ValueError(f"{epochs} epoch(s) cannot cover {n} progressive stages.")
    per_stage = split_epochs(epochs, n)
    stages = []
    start = 0
    for s, e in zip(schedule.stages(), per_stage, strict=True):
        stages.append({**s.to_dict(), "epochs": [start, start + e], "steps": e * spe})
        start += e
    return {
        "recipe": recipe.to_dict(),
        "model": variant.name,
        "schedule": {k: v for k, v in schedule.to_dict().items() if k != "stages"},
        "stages": stages,
        "train_examples": train_examples,
        "batch_size": recipe.batch_size,
        "steps_per_epoch": spe,
        "epochs": epochs,
        "total_steps": epochs * spe,
        "eval_size": _size(recipe.eval_size, variant),
        "backend": keras.backend.backend(),
    }


def _atomic_json(data, path):
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=os.path.dirname(os.path.abspath(path)))
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def _atomic_save_model(model, path):
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), ".partial-model.keras")
    model.save(tmp)
    os.replace(tmp, path)


def build_model(recipe: Recipe | ResolvedRecipe, num_classes: int) -> keras.Model:
    from keras_effv2.applications import EfficientNetV2

    resolved = resolve(recipe)
    weights = resolved.weights
    return EfficientNetV2(
        resolved.variant, weights=weights.tag if isinstance(weights, WeightsSpec) else weights,
        classes=num_classes, dropout_rate=resolved.recipe.dropout_rate,
        drop_path_rate=resolved.recipe.drop_path_rate)


class _ValidationTimer(keras.callbacks.Callback):
    """Sums the seconds ``fit`` spends on its per-epoch held-out evaluation."""

    def __init__(self):
        super().__init__()
        self.seconds = 0.0
        self._t0 = None

    def on_test_begin(self, logs=None):
        self._t0 = time.time()

    def on_test_end(self, logs=None):
        if self._t0 is not None:
            self.seconds += time.time() - self._t0
            self._t0 = None


def run_recipe(recipe=None, *, output_dir: str, dataset=None, data_dir=None, epochs=None,
               steps_per_epoch=None, distribution="none", verbose="auto", seed=0,
               tensorboard=True, callbacks=(), backup_freq="epoch", splits=None,
               keras_model=None, print_fn=print, deterministic=False, fast_path=True,
               **overrides) -> dict:
    """Train ``recipe`` (name or ``Recipe``) and write the artefacts; returns the result dict.

    ``overrides`` replace recipe fields (``model``, ``weights``, ``batch_size`` (scales the
    learning rate), ``total_steps``, ``progressive``...). ``splits``/``keras_model`` inject
    data or a prebuilt, uncompiled ``keras_model`` (or a ``num_classes -> model`` builder, which
    runs inside the distribution scope). With ``distribution="multi-process"`` every process
    runs this call (see ``initialize_multi_process``); only process 0 writes the artefacts, the
    others keep only their resume state (``backup-worker<i>/``, removed at the end).
    ``deterministic=True`` turns on TensorFlow's op determinism for the rest of the process (the
    ``tf.data`` augmentation draws its random numbers in a fixed order, and TF ops): the same
    call gives the same weights, and a killed run resumes to exactly the uninterrupted result.
    ``fast_path`` (default True): train through ``keras_effv2.fast.optimize_for_training`` on
    torch and JAX (TensorFlow: the model itself is the fast path); ``False`` trains the plain
    model. ``result.json`` records ``"fast_path"`` and each stage's ``"images_per_second"``;
    ``model.keras`` is the plain model either way.
    """
    start_distribution(distribution)  # join the processes before the backend computes anything
    if deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    resolved = resolve(recipe, dataset, **overrides)  # the one resolution of this run
    recipe, schedule = resolved.recipe, resolved.schedule
    if splits is None:
        splits = load_dataset(recipe.dataset, data_dir=data_dir, seed=seed)
    check_batch_size(splits, recipe.batch_size)
    plan = make_plan(resolved, train_examples=splits.train_examples, epochs=epochs,
                     steps_per_epoch=steps_per_epoch)
    os.makedirs(output_dir, exist_ok=True)
    keras.utils.set_random_seed(seed)
    policy = keras.config.dtype_policy()
    if recipe.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        with contextlib.ExitStack() as scopes:
            replicas = scopes.enter_context(data_parallel_scope(distribution,
                                                                recipe.batch_size))
            if keras_model is None:
                model = build_model(resolved, splits.num_classes)
            elif isinstance(keras_model, keras.Model):
                model = keras_model
            else:  # a builder, called inside the distribution scope
                model = keras_model(splits.num_classes)
            model.compile(
                optimizer=build_optimizer(recipe, plan["total_steps"]),
                loss=keras.losses.CategoricalCrossentropy(
                    label_smoothing=recipe.label_smoothing),
                weighted_metrics=["accuracy"],  # = metrics without weights; see full_batches
            )
            scopes.enter_context(synchronized_training(model))  # torch: gradients, BN
            process, processes = process_info()
            chief = process == 0
            timer = _ValidationTimer()
            cbs = [timer, StageCSVLogger(os.path.join(output_dir, "log.csv"), append=True),
                   *callbacks] if chief else [timer, *callbacks]
            if tensorboard and chief:
                cbs.append(keras.callbacks.TensorBoard(os.path.join(output_dir, "tensorboard")))

            eval_batch = -(-max(recipe.batch_size, 64) // replicas) * replicas

            def held_out(size):
                test = eval_dataset(splits, size, eval_batch)
                factor = 1.0
                if distribution != "none":  # equal slices for every replica and process
                    test, factor = full_batches(test, eval_batch, splits.test_examples)
                return shard_for_workers(test, evaluation=True), factor

            def announce(stage, record):
                print_fn(f"stage {stage.index + 1}/{stage.num_stages}: image {stage.image_size}"
                         f" px, RandAugment {stage.randaug_magnitude}, mixup "
                         f"{stage.mixup_alpha:.3g}, cutmix {stage.cutmix_alpha:.3g}, dropout "
                         f"{stage.dropout_rate}, epochs {record['initial_epoch']}.."
                         f"{record['epochs']}")

            def stage_done(stage, record):
                t0 = time.time()
                _, acc = model.evaluate(held_out(plan["eval_size"])[0], verbose=0)
                timer.seconds += time.time() - t0
                record["test_accuracy"] = round(float(acc), 4)  # at the eval size
                print_fn(f"stage {stage.index + 1}/{stage.num_stages} done: train accuracy "
                         f"{record.get('final_accuracy', float('nan')):.4f}, held-out accuracy "
                         f"{record.get('final_val_accuracy', float('nan')):.4f} at "
                         f"{stage.image_size} px, test accuracy {acc:.4f} at "
                         f"{plan['eval_size']} px")

            backup_dir = os.path.join(output_dir, "backup" if chief else
                                      f"backup-worker{process}")
            if processes > 1:  # a process killed mid-save may be one save behind the others
                at = backup_position(backup_dir)
                align_backups(backup_dir, [None if p[0] < 0 else tuple(p) for p in
                                           gather_from_processes(at or (-1, -1))])
            start = time.time()
            result = progressive_fit(
                model,
                lambda s: shard_for_workers(
                    train_dataset(splits, s, recipe.batch_size, recipe.augment, seed)),
                schedule, epochs=[e - s for s, e in (st["epochs"] for st in plan["stages"])],
                steps_per_epoch=plan["steps_per_epoch"], callbacks=cbs,
                validation_fn=lambda s: held_out(s.image_size)[0],
                backup_dir=backup_dir, backup_freq=backup_freq,
                verbose=verbose, on_stage_begin=announce, on_stage_end=stage_done,
                fast_path=fast_path)
            train_seconds = time.time() - start - timer.seconds
            if chief:
                print_fn(f"trained through {result.trained_by}")
            test, loss_factor = held_out(plan["eval_size"])
            test_loss, test_acc = model.evaluate(test, verbose=0)
            test_loss *= loss_factor
    finally:
        keras.config.set_dtype_policy(policy)
    out = {
        "recipe": recipe.name, "dataset": splits.name, "model": recipe.model,
        "backend": keras.backend.backend(), "replicas": replicas, "processes": processes,
        "test_accuracy": round(float(test_acc), 4), "test_loss": round(float(test_loss), 4),
        "test_examples": splits.test_examples, "train_seconds": round(train_seconds, 1),
        "held_out_seconds": round(timer.seconds, 1),
        "total_steps": plan["total_steps"], "epochs": plan["epochs"],
        "optimizer_iterations": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        "fast_path": result.fast_path, "trained_by": result.trained_by,
        "shared_step": result.shared_step,
        "stages": result.stages, "history": result.history,
        "paper_top1": (recipe.paper_top1 or {}).get(recipe.model),
    }
    if chief:
        _atomic_save_model(model, os.path.join(output_dir, "model.keras"))
        plot_history(result.history, os.path.join(output_dir, "curves.png"),
                     title=f"{recipe.name} ({recipe.model}): test accuracy {test_acc:.4f}")
        _atomic_json(out, os.path.join(output_dir, "result.json"))
    out["model_object"] = model
    return out
