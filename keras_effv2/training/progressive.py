"""The progressive-learning driver: one ``model.fit`` per stage, everything else continuous.

Weights, optimizer state (hence a step-based learning-rate schedule) and the global epoch count
carry over between stages (``initial_epoch``). Each stage gets its own dataset (image size,
RandAugment, mixup/cutmix) from ``train_fn(stage)``.

Dropout: Keras caches the compiled train step (``model.train_function``), and TF/JAX read
``Dropout.rate`` as a constant while tracing, so assigning a new rate alone changes nothing.
On TensorFlow (no distribution strategy) the driver has the ``head_dropout`` layer read its
rate from a variable for the run, and gives the step datasets without height and width in their
spec (:mod:`~keras_effv2.training.tf_shared_step`), so one traced step serves every stage and
size. Elsewhere, when a stage changes the rate, the driver assigns it and rebuilds the train
function once (``make_train_function(force=True)``): one retrace per stage, no new variables,
weights and optimizer untouched; on JAX and torch each new image size costs one compile too.

With ``backup_dir``, a :class:`~keras_effv2.training.backup.TrainingBackup` shared by all
stages saves the training state after every epoch (weights, optimizer with EMA, seed-generator
states); rerunning the same call after a crash skips finished stages (the restored epoch is past
them) and resumes the interrupted one. Resuming mid-stage, a ``tf.data`` stage dataset skips the
batches the killed run had already consumed, so the run continues on the same batches; with
deterministic ops (``run_recipe(deterministic=True)``) the resumed run ends with the same
weights and optimizer state as an uninterrupted one, bit for bit (tested). With EMA, Keras
assigns the averaged weights at the end of each ``fit``; the backup saved then holds them, so
a run resumed at a stage boundary starts the next stage from them too. The backup is removed
when the last stage ends.

Example:
    >>> result = progressive_fit(model, lambda s: make_ds(s.image_size), get_schedule("paper-s"),
    ...                          epochs=8, steps_per_epoch=100)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Sequence

import keras

from keras_effv2.keras_graph import set_resume_epoch
from keras_effv2.training.backup import TrainingBackup, read_backup
from keras_effv2.training.fast_step import StepThroughput, training_view
from keras_effv2.training.schedule import ProgressiveSchedule, StageSettings
from keras_effv2.training.tf_shared_step import (
    VariableDropoutRate,
    any_size,
    available,
    takes_any_size,
)

DROPOUT_LAYER = "head_dropout"


def split_epochs(total: int, num_stages: int) -> list[int]:
    """Epochs per stage, as even as possible (later stages get the remainder)."""
    if total < num_stages:
        raise ValueError(f"{total} epoch(s) cannot be split over {num_stages} stages; "
                         f"use at least {num_stages}.")
    base, extra = divmod(total, num_stages)
    return [base + (1 if i >= num_stages - extra else 0) for i in range(num_stages)]


def set_dropout_rate(model: keras.Model, rate: float, layer_name: str = DROPOUT_LAYER) -> bool:
    """Set the dropout layer's rate; returns whether it changed (then rebuild the train step)."""
    try:
        layer = model.get_layer(layer_name)
    except ValueError:
        raise ValueError(
            f"the schedule sets dropout, but model {model.name!r} has no layer {layer_name!r}; "
            "build it with dropout_rate > 0 (any small value) or use a schedule without "
            "dropout (dropout_rate=None)."
        ) from None
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1); got {rate}.")
    if getattr(layer, "seed_generator", None) is None and rate > 0:
        raise ValueError(f"layer {layer_name!r} was built with rate 0 (no random state); "
                         "build the model with dropout_rate > 0.")
    changed = float(layer.rate) != float(rate)
    layer.rate = float(rate)
    return changed


def stage_columns(stage: StageSettings, model: keras.Model | None = None,
                  layer_name: str = DROPOUT_LAYER) -> dict:
    """The per-epoch record of a stage's settings (``result.history`` and ``log.csv`` columns).

    They are not Keras metrics: ``fit`` prints them neither on its epoch lines nor in its
    progress bar; ``run_recipe`` prints them once when the stage begins.
    """
    rate = 0.0
    if model is not None:
        try:
            rate = float(model.get_layer(layer_name).rate)
        except ValueError:
            pass
    return {"stage": stage.index, "image_size": stage.image_size,
            "randaug_magnitude": stage.randaug_magnitude or 0.0,
            "mixup_alpha": stage.mixup_alpha, "cutmix_alpha": stage.cutmix_alpha,
            "dropout_rate": rate}


class StageCSVLogger(keras.callbacks.CSVLogger):
    """``keras.callbacks.CSVLogger`` whose rows also hold the stage's settings
    (:func:`stage_columns`), without adding them to the logs that ``fit`` prints.

    ``progressive_fit`` tells it the stage (``set_stage``) before each stage's ``fit``.

    Example:
        >>> log = StageCSVLogger("runs/x/log.csv", append=True)
        >>> progressive_fit(model, make_ds, schedule, epochs=6, steps_per_epoch=10,
        ...                 callbacks=[log])  # doctest: +SKIP
    """

    def __init__(self, filename, separator=",", append=False, layer_name=DROPOUT_LAYER):
        super().__init__(filename, separator=separator, append=append)
        self.layer_name = layer_name
        self._columns: dict = {}

    def set_stage(self, stage: StageSettings, model: keras.Model) -> None:
        self._columns = stage_columns(stage, model, self.layer_name)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, {**(logs or {}), **self._columns})


@dataclasses.dataclass
class ProgressiveResult:
    """Merged per-epoch history and one record per stage."""

    history: dict = dataclasses.field(default_factory=dict)
    stages: list = dataclasses.field(default_factory=list)
    train_function_builds: int = 0
    dropout_rate_in_variable: bool = False
    shared_step: bool = False
    fast_path: bool = False
    trained_by: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _backup_epoch(backup_dir) -> int:
    meta = None if backup_dir is None else read_backup(backup_dir)
    return 0 if meta is None else int(meta["epoch"])


def progressive_fit(
    model: keras.Model,
    train_fn: Callable[[StageSettings], object],
    schedule: ProgressiveSchedule,
    *,
    epochs: int | Sequence[int],
    steps_per_epoch: int,
    validation_fn: Callable[[StageSettings], object] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    backup_dir: str | None = None,
    backup_freq="epoch",
    verbose="auto",
    dropout_layer: str = DROPOUT_LAYER,
    on_stage_begin: Callable[[StageSettings, dict], None] | None = None,
    on_stage_end: Callable[[StageSettings, dict], None] | None = None,
    fast_path: bool = True,
) -> ProgressiveResult:
    """Train a compiled ``model`` stage by stage (see the module doc).

    Args:
        model: a compiled Keras model.
        train_fn: ``stage -> dataset`` yielding (at least) ``steps_per_epoch`` batches per epoch.
        schedule: the ``ProgressiveSchedule``.
        epochs: total epochs (split evenly over the stages) or a list, one per stage.
        steps_per_epoch: steps in each epoch.
        validation_fn: optional ``stage -> dataset`` evaluated at each epoch end.
        callbacks: extra callbacks for every stage (progress bars come from ``verbose``).
        backup_dir: enables resuming with ``TrainingBackup`` (see the module doc).
        backup_freq: ``"epoch"`` or a number of steps between backups (a run resumed from a
            mid-epoch backup repeats that epoch from its start, as Keras does).
        dropout_layer: the layer whose rate the schedule sets.
        on_stage_begin: called with ``(stage, record)`` before each stage's ``fit``.
        on_stage_end: called with ``(stage, record)`` after it (the record then holds the
            stage's last-epoch metrics as ``final_<name>``).
        fast_path: fit through ``keras_effv2.fast.optimize_for_training(model)`` on torch and
            JAX (:func:`~keras_effv2.training.fast_step.training_view`; ``model`` is trained,
            its optimizer holds the state); ``False`` fits ``model`` itself. Each stage record
            gets ``images_per_second`` (steady state, first step excluded).

    ``result.history`` holds, per epoch, ``fit``'s metrics and the stage's settings
    (:func:`stage_columns`). Callbacks with a ``set_stage(stage, model)`` method (such as
    :class:`StageCSVLogger`) are told the stage before its ``fit``.
    """
    if model.optimizer is None:
        raise ValueError("compile the model before progressive_fit.")
    stages = schedule.stages()
    per_stage = (split_epochs(epochs, len(stages)) if isinstance(epochs, int) else list(epochs))
    if len(per_stage) != len(stages) or min(per_stage) < 1:
        raise ValueError(f"epochs must be an int >= {len(stages)} or {len(stages)} positive "
                         f"ints; got {epochs!r}.")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1; got {steps_per_epoch}.")
    plain = model
    model, path = training_view(plain, fast_path)  # the model every stage fits
    backup = None if backup_dir is None else TrainingBackup(backup_dir, save_freq=backup_freq,
                                                            state_model=plain)
    throughput = StepThroughput()
    result = ProgressiveResult(fast_path=path.fast, trained_by=path.describe())
    dropout = _StageDropout(model, dropout_layer)
    shared_step = available(model) and takes_any_size(model)  # TF: one trace for every size
    start = 0
    try:
        for stage, n_epochs in zip(stages, per_stage, strict=True):
            end = start + n_epochs
            record = {**stage.to_dict(), "initial_epoch": start, "epochs": end,
                      "steps": n_epochs * steps_per_epoch}
            if stage.dropout_rate is not None and dropout.set(stage.dropout_rate):
                result.train_function_builds += 1
                record["train_function_rebuilt"] = True
            resume_epoch = _backup_epoch(backup_dir)
            resumed_past = resume_epoch >= end
            record["skipped_by_resume"] = bool(resumed_past)
            if on_stage_begin is not None:
                on_stage_begin(stage, record)
            for cb in callbacks:
                if hasattr(cb, "set_stage"):
                    cb.set_stage(stage, model)
            cbs = [throughput, *callbacks]
            if backup is not None:
                cbs.insert(0, backup)
            train = train_fn(stage)
            record["batch_shape"] = [None if d is None else int(d)
                                     for d in _batch_shape(train)]
            if start < resume_epoch < end and hasattr(train, "skip"):  # tf.data: where it stopped
                record["resumed_at_epoch"] = resume_epoch
                record["skipped_batches"] = (resume_epoch - start) * steps_per_epoch
                train = train.skip(record["skipped_batches"])
            throughput.batch_size = record["batch_shape"][0] if record["batch_shape"] else None
            validation = validation_fn(stage) if validation_fn is not None else None
            if shared_step:
                train, validation = any_size(train), any_size(validation)
            set_resume_epoch(model, None)  # set only by the backup when it restores
            history = model.fit(
                # Where a backup resumes (its restore sets the same through the private hook).
                train, epochs=end, initial_epoch=min(max(start, resume_epoch), end),
                steps_per_epoch=steps_per_epoch,
                validation_data=validation,
                callbacks=cbs, verbose=verbose, shuffle=False,
            )
            _unalias_ema(model)
            for key, values in history.history.items():
                result.history.setdefault(key, []).extend(values)
                if values:
                    record[f"final_{key}"] = float(values[-1])
            for key, value in stage_columns(stage, model, dropout_layer).items():
                result.history.setdefault(key, []).extend([value] * len(history.epoch))
            result.history.setdefault("epoch", []).extend(e + 1 for e in history.epoch)
            record["images_per_second"] = throughput.per_fit[-1]
            record["observed_dropout_rate"] = (
                float(model.get_layer(dropout_layer).rate)
                if dropout_layer in {layer.name for layer in model.layers} else None)
            if on_stage_end is not None:
                on_stage_end(stage, record)
            result.stages.append(record)
            start = end
    finally:
        dropout.close()
    result.dropout_rate_in_variable = dropout.holder is not None
    result.shared_step = shared_step
    set_resume_epoch(model, None)
    if backup_dir is not None and os.path.isdir(backup_dir):
        shutil.rmtree(backup_dir)
    return result


class _StageDropout:
    """Sets the schedule's dropout rate: through a variable on TensorFlow (no new step), else
    by rebuilding the train function when the rate changes."""

    def __init__(self, model, layer_name):
        self.model, self.layer_name, self.holder = model, layer_name, None

    def set(self, rate) -> bool:
        """Apply ``rate``; returns whether the train function was rebuilt."""
        changed = set_dropout_rate(self.model, rate, self.layer_name)  # checks layer and rate
        if self.holder is None and available(self.model):
            self.holder = VariableDropoutRate(self.model.get_layer(self.layer_name))
            self.model.make_train_function(force=True)  # a step traced before read the float
        if self.holder is not None:
            self.holder.sync()
            return False
        if changed:
            self.model.make_train_function(force=True)  # the one retrace of this stage
        return changed

    def close(self):
        if self.holder is not None:
            self.holder.remove()


def _unalias_ema(model) -> None:
    """After ``fit`` with ``use_ema``, Keras assigns the EMA arrays to the weights; on JAX both
    then share one buffer, which the next donated step deletes ("Array has been deleted" when
    the optimizer is saved). Give the weights their own copy."""
    if getattr(model.optimizer, "use_ema", False) and keras.backend.backend() == "jax":
        for v in model.trainable_variables:
            v.assign(keras.ops.copy(v.value))


def _batch_shape(ds) -> tuple:
    spec = getattr(ds, "element_spec", None)
    if spec is None:
        return ()
    first = spec[0] if isinstance(spec, (tuple, list)) else spec
    return tuple(first.shape)
