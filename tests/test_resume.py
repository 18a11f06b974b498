"""A training process killed with SIGKILL mid-stage resumes to exactly the uninterrupted result.

``tests/resume_job.py`` (a deterministic 2-stage ``run_recipe`` with EMA, dropout and stochastic
depth) is killed twice: in the first batch of stage 2 (its backup is the stage boundary, after
Keras assigned the EMA weights) and in the first batch of stage 2's second epoch (its backup is
mid-stage: the rerun skips the batches already consumed). Each rerun must restore, value by
value, the state the killed process had after its last finished epoch, and the final weights
and optimizer state must equal those of an uninterrupted run bit for bit.

By default on torch and TensorFlow; JAX runs it with ``--run-large`` (measured beside a running
JAX suite on the 2-core CI machine: TensorFlow 37 s, JAX 63 s, and the JAX leg is the suite's
longest). The restore goes through each backend's variables, optimizer and seed generators
(JAX keeps them in its own state inside ``fit``). Torch has the most state outside the model
(Keras draws ``Dropout`` masks from torch's global generator, and its ``DataLoader`` draws from
it as well).
The uninterrupted reference runs in parallel with the killed sequence (two cores).
On torch and JAX the job's model is a tiny EfficientNetV2 (``resume_job.py --model effv2``),
which the recipe trains through the fast training step (issue 19): the resume is the fast
step's; on TensorFlow the model itself is the fast path and the tiny CNN keeps its cost low.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the tf.data pipelines need tensorflow")
import keras  # noqa: E402

pytestmark = [pytest.mark.large] if keras.backend.backend() == "jax" else []

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = os.path.join(ROOT, "tests", "resume_job.py")
TIMEOUT = 600
MODEL = "cnn" if keras.backend.backend() == "tensorflow" else "effv2"


def start(out, dumps, *extra):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, JOB, str(out), str(dumps), "--model", MODEL,
                             *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc):
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, out[-3000:]
    return out


def kill_when_hanging(proc, dumps):
    """SIGKILL the job once it signals that it stands at its --hang-at batch."""
    marker = dumps / "hanging"
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the job ended before its kill point:\n{proc.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, "the job never reached its kill point"
        time.sleep(0.05)
    assert int(marker.read_text()) == proc.pid
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL


def load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def assert_same_state(got, want, what):
    assert list(got) == list(want), what
    differ = {k: float(np.max(np.abs(got[k].astype("float64") - want[k].astype("float64"))))
              for k in want if not np.array_equal(got[k], want[k])}
    assert not differ, f"{what}: {len(differ)} of {len(want)} arrays differ (max |diff|): {differ}"


def backup_epoch(out):
    with open(out / "backup" / "training_metadata.json") as f:
        return json.load(f)["epoch"]


def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path):
    out, dumps = tmp_path / "run", [tmp_path / f"dumps{i}" for i in range(3)]
    reference = start(tmp_path / "reference", tmp_path / "reference_dumps")

    # Kill 1: first batch of stage 2 (epoch 1); the backup is the end of stage 1.
    kill_when_hanging(start(out, dumps[0], "--hang-at", "1:0"), dumps[0])
    assert backup_epoch(out) == 1
    assert sorted(p.name for p in out.iterdir()) == ["backup", "log.csv"]  # nothing else yet
    # Kill 2: first batch of stage 2's second epoch; the backup is mid-stage.
    kill_when_hanging(start(out, dumps[1], "--hang-at", "2:0"), dumps[1])
    assert backup_epoch(out) == 2
    log = finish(start(out, dumps[2]))
    assert "stages skipped by resume: [True, False]" in log
    assert "fast path: True" in log  # torch/JAX: the fast step; TensorFlow: the model itself

    # Each rerun restored what the killed process had after its last finished epoch.
    assert_same_state(load(dumps[1] / "restored1.npz"), load(dumps[0] / "epoch1.npz"),
                      "restored at the stage boundary")
    assert_same_state(load(dumps[2] / "restored2.npz"), load(dumps[1] / "epoch2.npz"),
                      "restored mid-stage")
    # ... and ended where the uninterrupted run ends: weights, BN statistics, seed states,
    # optimizer moments, EMA copies, step count.
    finish(reference)
    final, want = load(dumps[2] / "final.npz"), load(tmp_path / "reference_dumps" / "final.npz")
    assert_same_state(final, want, "final state, resumed vs uninterrupted")
    iterations = [k for k in final if k.endswith("|iteration")]
    assert len(iterations) == 1 and int(final[iterations[0]]) == 6
    with open(out / "result.json") as f:
        resumed = json.load(f)
    with open(tmp_path / "reference" / "result.json") as f:
        uninterrupted = json.load(f)
    assert resumed["fast_path"] is uninterrupted["fast_path"] is True
    for key in ("test_accuracy", "test_loss", "optimizer_iterations"):
        assert resumed[key] == uninterrupted[key], key
    assert [s["skipped_batches"] for s in resumed["stages"][1:]] == [2]
    with open(out / "log.csv") as f:  # every epoch logged once across the three processes
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "log.csv", "model.keras",
                                                     "result.json"]
