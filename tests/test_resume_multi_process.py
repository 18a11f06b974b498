"""A multi-process run with one process SIGKILLed mid-stage resumes, when every process's command
is rerun, to the weights and optimizer state of an uninterrupted run.

tests/resume_multi_process_job.py (2 processes on loopback, ``run_recipe`` with
``distribution="multi-process"``, 3 epochs of 2 steps in 2 progressive stages, a backup after
every epoch) runs uninterrupted and, beside it, with crashes: one process kills itself at a
fixed point, the survivor (it fails or hangs in its next collective) is killed by the harness as
a cluster manager would, and every command is rerun with the same output folder. Cases
(``CRASHES``): the worker in stage 2's second epoch (backups mid-stage); the worker at the start
of stage 2, then the chief in the rerun; the worker while it writes its backup (the chief
commits one epoch more: ``run_recipe`` moves the chief back to the state both hold,
``align_backups``). Every model and optimizer variable of both processes, BatchNorm moving
statistics included, must equal the uninterrupted run's (rtol 1e-5 / atol 1e-6; measured
exact, docs/distribution.md), and the last rerun must have resumed (it trains 2 or 4 of the 6
batches and skips stage 1), so a rerun from scratch cannot pass.

Only the first case runs by default on TensorFlow and torch (the torch case needs the torch
multi-process engine); the others, and every JAX case, run with ``--run-large``.
"""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from helpers import free_ports

from keras_effv2.training.backup import read_backup
from keras_effv2.training.distribution import ENV_ADDRESSES, ENV_NUM_PROCESSES, ENV_PROCESS_ID

pytest.importorskip("tensorflow", reason="the tf.data pipelines need tensorflow")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = os.path.join(ROOT, "tests", "resume_multi_process_job.py")
BACKEND = keras.backend.backend()
BN = "sync" if BACKEND == "tensorflow" else "plain"  # as in test_training_distribution.py
RTOL, ATOL = 1e-5, 1e-6
TIMEOUT = 480  # a hung collective fails the test instead of hanging CI
GRACE = 60.0  # at most, for the survivor of a crash to fail or save before it is killed


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "TF_CONFIG", ENV_ADDRESSES, ENV_NUM_PROCESSES,
                        ENV_PROCESS_ID, "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                        "MASTER_PORT")}
    env.update(PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
               TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    return env


class Cluster:
    """The 2 processes of one run (one command each); output to log files (a full pipe would
    block a collective)."""

    def __init__(self, tmp_path, name, run_dir, addresses, kill_at=None):
        self.name, self.procs, self.logs = name, [], []
        for i in range(2):
            log = open(tmp_path / f"{name}-p{i}.log", "w")
            extra = ["--kill-at", kill_at[1]] if kill_at and kill_at[0] == i else []
            self.procs.append(subprocess.Popen(
                [sys.executable, JOB, BACKEND, str(tmp_path / f"{name}-p{i}.npz"), str(run_dir),
                 "--job-addresses", addresses, "--process-id", str(i), "--bn", BN, *extra],
                env=_env(), stdout=log, stderr=subprocess.STDOUT))
            self.logs.append(log)
        self.tmp_path = tmp_path

    def text(self, i):
        if not self.logs[i].closed:
            self.logs[i].flush()
        with open(self.logs[i].name) as f:
            return f.read()

    def kill_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        for log in self.logs:
            log.close()

    def finish(self):
        """Wait for both to succeed; returns each process's (arrays, ``RESULT`` dict)."""
        deadline = time.monotonic() + TIMEOUT
        try:
            for proc in self.procs:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.kill_all()
        out = []
        for i, proc in enumerate(self.procs):
            text = self.text(i)
            lines = [x for x in text.splitlines() if x.startswith("RESULT")]
            assert proc.returncode == 0 and lines, \
                f"{self.name} process {i}: rc {proc.returncode}\n{text[-4000:]}"
            with np.load(self.tmp_path / f"{self.name}-p{i}.npz") as f:
                out.append((dict(f), json.loads(lines[-1][len("RESULT"):])))
        return out

    def crash(self, victim, run_dir, backups):
        """Wait for process ``victim`` to SIGKILL itself, then for the survivor to fail on its
        own or to hold its expected backup (``backups``: both processes' positions), for at
        most ``GRACE`` seconds; then kill it, as a cluster manager would."""
        deadline = time.monotonic() + TIMEOUT
        try:
            while self.procs[victim].poll() is None:
                for i, proc in enumerate(self.procs):
                    if i != victim and proc.poll() is not None:
                        pytest.fail(f"{self.name}: process {i} ended (rc {proc.returncode}) "
                                    f"before process {victim} crashed:\n{self.text(i)[-4000:]}")
                assert time.monotonic() < deadline, f"{self.name}: no crash in {TIMEOUT} s"
                time.sleep(0.05)
            assert self.procs[victim].returncode == -signal.SIGKILL, self.text(victim)[-4000:]
            assert "KILLING myself" in self.text(victim)
            survivor, grace = self.procs[1 - victim], time.monotonic() + GRACE
            while survivor.poll() is None and time.monotonic() < grace and \
                    _backup_epochs(run_dir) != backups:
                time.sleep(0.05)
            # it cannot have finished: the run needs the killed process's gradients
            assert survivor.poll() != 0, self.text(1 - victim)[-4000:]
        finally:
            self.kill_all()
        assert _backup_epochs(run_dir) == backups


def _backup_epochs(run_dir):
    metas = [read_backup(run_dir / d) for d in ("backup", "backup-worker1")]
    return [None if m is None else (m["epoch"], m["batch"]) for m in metas]


def _max_delta(got, want):
    assert sorted(got) == sorted(want)
    return max(float(np.max(np.abs(got[k].astype("float64") - want[k]))) for k in want)


def _assert_same_state(got, want, what):
    assert sorted(got) == sorted(want), what
    assert any("moving_mean" in k for k in want) and any("momentum" in k for k in want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=ATOL,
                                   err_msg=f"{what}: {key}")


# Each case: the crashes in order (the process that kills itself, where: EPOCH:BATCH, or
# EPOCH:save, in the epoch's backup before its commit; both processes' backup positions
# (epoch, batch) after it), what the last rerun trains (batches per process, and batches of
# stage 2 it skips), and the epochs in log.csv (the chief logs every epoch it finishes).
CRASHES = {
    # process 1 (a worker) in stage 2's second epoch: both backups mid-stage
    "worker": ([(1, "2:0", [(2, 0), (2, 0)])], 2, 2, "0 1 2"),
    # process 1 in the first batch of stage 2 (backups at the stage boundary), then, in the
    # rerun, process 0 (the chief) in stage 2's second epoch
    "worker-then-chief": ([(1, "1:0", [(1, 0), (1, 0)]), (0, "2:0", [(2, 0), (2, 0)])], 2, 2,
                          "0 1 2"),
    # process 1 while it saves its backup at the end of stage 2's first epoch: the chief
    # commits the epoch, the worker does not; the rerun goes back to the stage boundary
    "worker-in-its-save": ([(1, "1:save", [(2, 0), (1, 0)])], 4, 0, "0 1 1 2"),
}


@pytest.mark.parametrize("crashes", [
    pytest.param("worker", marks=[pytest.mark.large] if BACKEND == "jax" else []),
    pytest.param("worker-then-chief", marks=pytest.mark.large),
    pytest.param("worker-in-its-save", marks=pytest.mark.large),
])
def test_killed_multi_process_run_resumes_to_the_uninterrupted_result(tmp_path, crashes):
    def addresses():
        return ",".join(f"127.0.0.1:{p}" for p in free_ports(2))

    reference = Cluster(tmp_path, "reference", tmp_path / "reference", addresses())
    run_dir, run_addresses = tmp_path / "run", addresses()  # the same command at each rerun
    kills, batches, skipped, logged = CRASHES[crashes]
    for n, (victim, at, backups) in enumerate(kills):
        crash = Cluster(tmp_path, f"crash{n}", run_dir, run_addresses, kill_at=(victim, at))
        crash.crash(victim, run_dir, backups)
        assert not (run_dir / "result.json").exists()
    # every command rerun: the run completes
    resumed = Cluster(tmp_path, "resumed", run_dir, run_addresses).finish()
    want, want_info = reference.finish()[0]

    for i, (arrays, info) in enumerate(resumed):
        print(f"{BACKEND} {crashes}: max |delta| resumed process {i} vs uninterrupted: "
              f"{_max_delta(arrays, want):.3g}")
        # it resumed: trained only what the backups had not, on the batches left over
        assert info["batches_trained"] == batches and want_info["batches_trained"] == 6
        assert info["stages"] == [{"skipped_by_resume": True, "skipped_batches": 0},
                                  {"skipped_by_resume": False, "skipped_batches": skipped}]
        assert info["iterations"] == want_info["iterations"] == 6
        assert info["processes"] == 2
        _assert_same_state(arrays, want, f"process {i}, resumed vs uninterrupted")
    assert sorted(os.listdir(run_dir)) == ["curves.png", "log.csv", "model.keras",
                                           "result.json"]  # backups removed at the end
    with open(run_dir / "log.csv") as f:  # the epochs the chief finished
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == logged.split()


def test_align_backups(tmp_path):
    """A backup one save ahead goes back to the state its last save replaced (weights file
    kept); without one to go back to, a clear error. In-process, no cluster."""
    from keras_effv2.training.backup import TrainingBackup, align_backups, backup_position
    from keras_effv2.training.distribution import gather_from_processes

    assert gather_from_processes([2, 0]) == [[2, 0]]  # outside a multi-process run
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    backup = TrainingBackup(tmp_path / "b")
    backup.set_model(model)
    kernels = []
    for epoch in (1, 2):
        model.layers[0].kernel.assign(np.full((3, 2), epoch, "float32"))
        kernels.append(keras.ops.convert_to_numpy(model.layers[0].kernel))
        backup.save(epoch)
    assert backup_position(tmp_path / "b") == (2, 0)
    assert len([n for n in os.listdir(tmp_path / "b") if n.startswith("state-")]) == 2
    with pytest.raises(ValueError, match=r"backups \(epoch, batch\) are \[\(2, 0\), None\].*"
                                         "remove every process's backup folder"):
        align_backups(tmp_path / "b", [(2, 0), None])  # two saves behind: nothing to go back to
    assert align_backups(tmp_path / "b", [(2, 0), (2, 0)]) == (2, 0)  # in step: unchanged
    assert backup_position(tmp_path / "b") == (2, 0)
    assert align_backups(tmp_path / "b", [(2, 0), (1, 0)]) == (1, 0)
    assert backup_position(tmp_path / "b") == (1, 0)
    model.layers[0].kernel.assign(np.zeros((3, 2), "float32"))
    backup.on_train_begin()  # restores the state of epoch 1
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.layers[0].kernel), kernels[0])
    backup.save(2)  # the next save drops the abandoned state's file
    assert len([n for n in os.listdir(tmp_path / "b") if n.startswith("state-")]) == 2
    first = TrainingBackup(tmp_path / "c")
    first.set_model(model)
    first.save(1)
    assert align_backups(tmp_path / "c", [(1, 0), None]) is None  # back past its first save
    assert backup_position(tmp_path / "c") is None
