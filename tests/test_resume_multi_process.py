"""A multi-process run with one process SIGKILLed mid-stage resumes, when every process's command
is rerun, to the weights and optimizer state of an uninterrupted run.

tests/resume_multi_process_job.py (2 processes on loopback, ``run_recipe`` with
``distribution="multi-process"``, 3 epochs of 2 steps in 2 progressive stages, a backup after
every epoch) runs uninterrupted, and, beside it, as a chain of crashes: process 1 (a worker)
kills itself in the first batch of stage 2 (its backup, like the chief's, is the stage
boundary), the survivor is killed by the harness as a cluster manager would (it hangs or fails
in the next collective), every command is rerun; in the rerun process 0 (the chief) kills
itself in the first batch of stage 2's second epoch (backups mid-stage), and the second rerun
completes. Every model and optimizer variable of both processes, BatchNorm moving statistics
included, must equal the uninterrupted run's (rtol 1e-5 / atol 1e-6; measured exact,
docs/distribution.md), and the last rerun must have resumed (2 of 6 batches trained, stage 1
skipped, 2 batches of stage 2 skipped), so a rerun from scratch cannot pass.

The torch case runs the same harness; it needs the torch multi-process engine.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_effv2.training.backup import read_backup
from keras_effv2.training.distribution import ENV_ADDRESSES, ENV_NUM_PROCESSES, ENV_PROCESS_ID

pytest.importorskip("tensorflow", reason="the tf.data pipelines need tensorflow")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = os.path.join(ROOT, "tests", "resume_multi_process_job.py")
BACKEND = keras.backend.backend()
BN = "sync" if BACKEND == "tensorflow" else "plain"  # as in test_training_distribution.py
RTOL, ATOL = 1e-5, 1e-6
TIMEOUT = 480  # a hung collective fails the test instead of hanging CI
GRACE = 3.0  # seconds the survivor of a kill gets to fail on its own before it is killed


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


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

    def crash(self, victim):
        """Wait for process ``victim`` to SIGKILL itself; then kill the survivor, unless it
        failed on its own within ``GRACE`` seconds."""
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
            survivor = self.procs[1 - victim]
            try:
                survivor.wait(timeout=GRACE)
            except subprocess.TimeoutExpired:
                pass
            # it cannot have finished: the run needs the killed process's gradients
            assert survivor.returncode != 0, self.text(1 - victim)[-4000:]
        finally:
            self.kill_all()


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


def test_killed_multi_process_run_resumes_to_the_uninterrupted_result(tmp_path):
    def addresses():
        return ",".join(f"127.0.0.1:{p}" for p in _free_ports(2))

    reference = Cluster(tmp_path, "reference", tmp_path / "reference", addresses())
    run_dir, run_addresses = tmp_path / "run", addresses()

    # Crash 1: the worker, in the first batch of stage 2 (epoch 1); both backups at the boundary.
    Cluster(tmp_path, "crash1", run_dir, run_addresses, kill_at=(1, "1:0")).crash(1)
    assert _backup_epochs(run_dir) == [(1, 0), (1, 0)]
    assert not (run_dir / "result.json").exists()
    # Crash 2 (every command rerun): the chief, in stage 2's second epoch; backups mid-stage.
    Cluster(tmp_path, "crash2", run_dir, run_addresses, kill_at=(0, "2:0")).crash(0)
    assert _backup_epochs(run_dir) == [(2, 0), (2, 0)]
    # Every command rerun once more: the run completes.
    resumed = Cluster(tmp_path, "resumed", run_dir, run_addresses).finish()
    want, want_info = reference.finish()[0]

    for i, (arrays, info) in enumerate(resumed):
        print(f"{BACKEND}: max |delta| resumed process {i} vs uninterrupted: "
              f"{_max_delta(arrays, want):.3g}")
        # it resumed: trained the last epoch only, on the batches the crash left over
        assert info["batches_trained"] == 2 and want_info["batches_trained"] == 6
        assert info["stages"] == [{"skipped_by_resume": True, "skipped_batches": 0},
                                  {"skipped_by_resume": False, "skipped_batches": 2}]
        assert info["iterations"] == want_info["iterations"] == 6
        assert info["processes"] == 2
        _assert_same_state(arrays, want, f"process {i}, resumed vs uninterrupted")
    assert sorted(os.listdir(run_dir)) == ["curves.png", "log.csv", "model.keras",
                                           "result.json"]  # backups removed at the end
    with open(run_dir / "log.csv") as f:  # every epoch logged once across the three runs
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["0", "1", "2"]
