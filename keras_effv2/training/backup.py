"""Resumable training state: ``TrainingBackup``, a ``BackupAndRestore`` that resumes exactly.

``keras.callbacks.BackupAndRestore`` saves the weights, the optimizer (with its EMA copies) and
the epoch, but not the state of the model's seed generators (``Dropout``, ``DropPath``):
``save_weights`` does not write them, so a resumed run draws other dropout masks than an
uninterrupted one. On torch, Keras draws the masks of an unseeded ``Dropout`` (B0's
``head_dropout``) from torch's global generator, which is not saved either. And it writes its
weights file in place and the epoch into a second file, so a kill while it saves can leave a
half-written file, or weights and epoch that disagree.

``TrainingBackup`` saves the same state plus the seed-generator states (on torch also the
global CPU and, when in use, CUDA generator states) and commits each save atomically: the
weights go to a new file, then ``training_metadata.json`` (epoch, batch, that file's name, the
random states) replaces the previous one by rename; older files are removed afterwards. A kill
at any moment leaves either the previous or the new state.

Each commit also keeps the state it replaces (``"previous"`` in the metadata, its weights file
kept): in a multi-process run every process writes its own backup, and a process killed between
the others' commits and its own is one save behind them. :func:`align_backups` (``run_recipe``
calls it before training, with every process's :func:`backup_position`) moves the processes
that are ahead back to the newest state all of them hold.

Example:
    >>> backup = TrainingBackup("runs/x/backup")
    >>> model.fit(ds, epochs=10, callbacks=[backup])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile

import keras
import numpy as np

from keras_effv2.keras_graph import set_resume_epoch

METADATA = "training_metadata.json"
LEGACY_WEIGHTS = "latest.weights.h5"  # where keras.callbacks.BackupAndRestore saved them


def read_backup(backup_dir) -> dict | None:
    """The committed metadata in ``backup_dir`` (``None`` when there is none)."""
    path = os.path.join(backup_dir, METADATA)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _position(meta) -> tuple[int, int] | None:
    """``(epoch, batch)`` of a backup's metadata (``None`` for no metadata)."""
    return None if meta is None else (int(meta["epoch"]), int(meta["batch"]))


def backup_position(backup_dir) -> tuple[int, int] | None:
    """``(epoch, batch)`` of the state committed in ``backup_dir`` (``None`` when none)."""
    return _position(read_backup(backup_dir))


def _commit_metadata(backup_dir, meta) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=".json", dir=backup_dir)
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f)
    os.replace(tmp, os.path.join(backup_dir, METADATA))  # the commit


def align_backups(backup_dir, positions) -> tuple[int, int] | None:
    """Make this process's backup the newest state that every process of a multi-process run
    holds; returns its position. ``positions``: every process's :func:`backup_position` (this
    one's among them). A process one save ahead of the others goes back to the state its
    last save replaced (kept for this); farther apart, nothing can be resumed: a clear error.

    Example:
        >>> align_backups("runs/x/backup", [(2, 0), (1, 0)])  # doctest: +SKIP
        (1, 0)
    """
    positions = [None if p is None else tuple(p) for p in positions]
    target = None if None in positions else min(positions)
    meta = read_backup(backup_dir)
    own = _position(meta)
    if own == target:
        return target
    previous = None if meta is None else meta.get("previous")
    if own is None or _position(previous) != target:
        raise ValueError(
            f"the processes' backups (epoch, batch) are {positions}: this one "
            f"({backup_dir!r}, at {own}) cannot go back to {target}, which only a save more "
            "than one behind holds. The processes did not run the same command, or some "
            "backup folders are from another run: remove every process's backup folder to "
            "start over.")
    if previous is None:
        os.remove(os.path.join(backup_dir, METADATA))  # the others have no backup yet
    else:
        _commit_metadata(backup_dir, previous)
    return target


def seed_state_variables(model) -> list:
    """The model's seed-generator states: its variables that ``save_weights`` leaves out."""
    saved = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in saved]


def _torch_rng_state() -> dict | None:
    if keras.backend.backend() != "torch":
        return None
    import torch

    state = {"cpu": torch.get_rng_state().tolist()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_torch_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(torch.tensor(state["cpu"], dtype=torch.uint8))
    if "cuda" in state:
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


class TrainingBackup(keras.callbacks.Callback):
    """Save the training state after every epoch (or ``save_freq`` batches) and when ``fit``
    ends; restore it at the start of ``fit`` (see the module doc). Unlike ``BackupAndRestore``,
    the backup is kept after ``fit`` ends; remove ``backup_dir`` when the whole run is done.

    The save at the end of ``fit`` holds what Keras assigned there (the EMA weights, with
    ``use_ema``): a later ``fit`` resumed from it starts from them, as it does uninterrupted.
    With ``save_freq`` in batches a resumed ``fit`` repeats the saved epoch from its first batch
    (as ``BackupAndRestore`` does); only ``"epoch"`` resumes exactly where the run stopped.
    """

    def __init__(self, backup_dir, save_freq="epoch", state_model=None):
        """``state_model``: the model whose weights file (and compiled optimizer) the backup
        writes and reads, when ``fit`` runs on another view of its variables (the fast
        training step, ``keras_effv2.training.fast_step``): the file layout is then the same
        whichever step trains, so a run may resume with or without the fast path."""
        super().__init__()
        self.state_model = state_model
        if not backup_dir:
            raise ValueError("backup_dir must be a folder path.")
        if save_freq != "epoch" and not (isinstance(save_freq, int) and save_freq > 0):
            raise ValueError(f"save_freq must be 'epoch' or a positive int; got {save_freq!r}.")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self._epoch = self._done = None
        self._batches = 0
        self._torch_rng = None

    def on_train_begin(self, logs=None):
        self._done = None
        meta = read_backup(self.backup_dir)
        if meta is None:
            return
        model = self.state_model or self.model
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # its variables must exist to load
        model.load_weights(os.path.join(self.backup_dir, meta.get("weights", LEGACY_WEIGHTS)))
        states = meta.get("seed_states")
        if states is not None:
            variables = seed_state_variables(model)
            if len(variables) != len(states):
                raise ValueError(
                    f"the backup in {self.backup_dir!r} holds {len(states)} seed-generator "
                    f"state(s) but the model has {len(variables)}: it was written by another "
                    "model. Remove the folder to start over.")
            for v, s in zip(variables, states, strict=True):
                v.assign(np.asarray(s, dtype=keras.backend.standardize_dtype(v.dtype)))
        if meta.get("torch_rng") is not None and keras.backend.backend() == "torch":
            # torch's DataLoader draws a seed from the global generator when fit starts reading
            # the data. Saved mid-fit, the interrupted run had drawn it already: restore after
            # this fit's draw (first batch). Saved at a fit's end, the next fit draws it anew.
            self._torch_rng = meta["torch_rng"]
            if meta.get("fit_ended"):
                self._restore_torch_rng()
        set_resume_epoch(self.model, int(meta["epoch"]))  # fit starts there

    def _restore_torch_rng(self):
        if self._torch_rng is not None:
            _set_torch_rng_state(self._torch_rng)
            self._torch_rng = None

    def on_train_batch_begin(self, batch, logs=None):
        self._restore_torch_rng()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self._done = epoch + 1
        if self.save_freq == "epoch":
            self.save(epoch + 1)

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq != "epoch":
            self._batches += 1
            if self._batches % self.save_freq == 0:
                self.save(self._epoch, batch + 1)  # a resumed fit repeats this epoch

    def on_train_end(self, logs=None):
        if self._done is not None:  # not after a fit that only restored (no epoch left)
            self.save(self._done, fit_ended=True)

    def save(self, epoch: int, batch: int = 0, fit_ended: bool = False) -> None:
        """Commit the current state as the state after ``epoch`` epochs (+ ``batch`` batches)."""
        if hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()  # JAX: the variables lag the trainer's state in an epoch
        model = self.state_model or self.model
        os.makedirs(self.backup_dir, exist_ok=True)
        fd, weights = tempfile.mkstemp(prefix="state-", suffix=".weights.h5", dir=self.backup_dir)
        os.close(fd)
        model.save_weights(weights, overwrite=True)
        previous = read_backup(self.backup_dir)  # kept for align_backups
        if previous is not None:
            previous.pop("previous", None)
        meta = {"epoch": int(epoch), "batch": int(batch), "fit_ended": fit_ended,
                "weights": os.path.basename(weights),
                "seed_states": [keras.ops.convert_to_numpy(v).tolist()
                                for v in seed_state_variables(model)],
                "torch_rng": _torch_rng_state(), "previous": previous}
        _commit_metadata(self.backup_dir, meta)
        keep = {meta["weights"], (previous or {}).get("weights", LEGACY_WEIGHTS)}
        for name in os.listdir(self.backup_dir):  # older states, leftovers of killed saves
            if name not in keep and name.startswith(("state-", ".partial-", LEGACY_WEIGHTS)):
                os.remove(os.path.join(self.backup_dir, name))
