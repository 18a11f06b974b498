"""Data-parallel training gives one device's weights.

2 virtual CPU devices in one process (TF ``MirroredStrategy``, JAX ``DataParallel``) and 2
processes on loopback (TF ``MultiWorkerMirroredStrategy``, JAX ``jax.distributed`` +
``DataParallel``) train the run of tests/helpers_distribution.py (6 SGD steps, global batch 8,
2 progressive stages) through ``run_recipe``; every model and optimizer variable, BatchNorm
moving statistics included, must match an in-process one-device run to float32 tolerance.
TensorFlow's model uses ``BatchNormalization(synchronized=True)``: a strategy otherwise keeps
per-replica batch statistics (measured 5e-3 off; docs/distribution.md). On torch (one process
per device, torch.distributed with gloo) 2 processes launched by torchrun train with the fast
step and then the plain model, each against its own one-process run (the ``--job-addresses``
2-process case is ``large`` on torch). On JAX a two-block EfficientNetV2 of our own blocks
(``--model twoblock``: the fast step's fused-conv tap matmuls, shifted-slice depthwise with
its per-image ``lax.scan`` filter gradient and 1x1 matmuls) trains through the fast step on 2
devices (2 processes: ``large``) to the one-device fast run's weights, which equal the
one-device plain model's. The subprocesses are needed because device counts and the cluster
are fixed when the backend starts.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import free_ports
from helpers_distribution import GLOBAL_BATCH, STEPS, train_state

from keras_effv2.training import data_parallel_scope
from keras_effv2.training.distribution import (
    ENV_ADDRESSES,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    full_batches,
    initialize_multi_process,
    process_info,
    resolve_cluster,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(ROOT, "tests", "helpers_distribution.py")
BACKEND = keras.backend.backend()
SYNC_BN = BACKEND == "tensorflow"
RTOL, ATOL = 1e-5, 1e-6  # float32; measured |delta| <= 7e-8 (docs/distribution.md)
# The two-block EfficientNetV2 (6 BatchNorms): test_fast_recipe.py's fast-vs-plain parity
# tolerance, atol relative to the array's largest magnitude where that exceeds 1. Float32
# summation order alone (one step: <= 1.2e-7 apart) grows over 6 steps to 2.5e-5 on a moving
# variance of 5.6 (2 vs 1 devices, plain model and fast step alike; docs/distribution.md).
PARITY_RTOL, PARITY_ATOL = 1e-4, 1e-5
TIMEOUT = 480  # a hung collective fails the test instead of hanging CI

needs_fit = pytest.mark.skipif(BACKEND == "torch", reason="torch runs one process per device "
                               "(the two-process tests cover it)")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The one-device run, and the negative control: the same run on half of each batch (what
    a replica that applied only its local gradient would follow)."""
    root = tmp_path_factory.mktemp("reference")
    ref = train_state("none", output_dir=str(root / "ref"), sync_bn=SYNC_BN)
    control, _ = train_state("none", output_dir=str(root / "half"),
                             batch_size=GLOBAL_BATCH // 2, sync_bn=SYNC_BN)
    return ref, control


def _max_delta(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float(np.max(np.abs(a[k].astype("float64") - b[k]))) for k in a)


def _assert_same_state(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    assert any("moving_mean" in k for k in want) and any("momentum" in k for k in want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=ATOL, err_msg=key)


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "TF_CONFIG", ENV_ADDRESSES, ENV_NUM_PROCESSES,
                        ENV_PROCESS_ID)}
    env.update(PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
               TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    return env


def _launch(tmp_path, name, *args, launcher=()):
    """Start the helper; output goes to files (a full pipe would block a collective)."""
    log = open(tmp_path / f"{name}.log", "w")  # closed in _finish
    proc = subprocess.Popen([sys.executable, *launcher, HELPER, BACKEND, *args], env=_env(),
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    return proc, log


def _finish(procs):
    """Wait for all (``TIMEOUT`` in all), kill any left; returns each ``RESULT`` dict."""
    try:
        for proc, _ in procs:
            proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    results = []
    for proc, log in procs:
        with open(log.name) as f:
            text = f.read()
        lines = [x for x in text.splitlines() if x.startswith("RESULT")]
        assert proc.returncode == 0 and lines, f"{log.name}: rc {proc.returncode}\n{text[-4000:]}"
        results.extend(json.loads(x[len("RESULT"):]) for x in lines)  # torchrun: one a process
    return results


def _bn_args():
    return ["--bn", "sync" if SYNC_BN else "plain"]


def _load(path):
    with np.load(path) as f:
        return dict(f)


@needs_fit
def test_two_devices_give_one_devices_weights(reference, tmp_path):
    (ref, ref_info), control = reference
    out = tmp_path / "dp.npz"
    [info] = _finish([_launch(tmp_path, "dp", "data-parallel", str(out), str(tmp_path / "run"),
                              "--devices", "2", *_bn_args())])
    assert info["replicas"] == 2 and info["devices"] == 2  # variables live on both devices
    assert info["iterations"] == ref_info["iterations"] == STEPS
    # TF: each replica trains on half of each global batch; JAX: one program on all of it
    assert info["batch"] == (GLOBAL_BATCH // 2 if BACKEND == "tensorflow" else GLOBAL_BATCH)
    assert ref_info["batch"] == GLOBAL_BATCH
    got = _load(out)
    delta, control_delta = _max_delta(got, ref), _max_delta(control, ref)
    print(f"max |delta| 2 devices vs 1: {delta:.2g}; half-batch control: {control_delta:.2g}")
    _assert_same_state(got, ref)
    # evaluation (zero-weight padding to full batches) reports the one-device figures
    assert info["test_accuracy"] == ref_info["test_accuracy"]
    assert info["test_loss"] == pytest.approx(ref_info["test_loss"], abs=2e-4)
    # the negative control is far outside the tolerance: the comparison can tell
    assert control_delta > 1e-3 > 100 * delta


@pytest.fixture(scope="module")
def plain_reference(tmp_path_factory):
    """torch: the one-process run of the plain model (``fast_path=False``)."""
    return train_state("none", output_dir=str(tmp_path_factory.mktemp("plain") / "ref"),
                       fast_path=False)


@(pytest.mark.large if BACKEND == "torch" else lambda test: test)
def test_two_processes_give_one_process_weights(reference, tmp_path):
    """``--job-addresses`` (torch: the fast training step, behind --run-large: the torchrun
    test below covers it, the tcp:// join is tested in-process)."""
    (ref, ref_info), control = reference
    addresses = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    procs = [_launch(tmp_path, f"worker{i}", "multi-process", str(tmp_path / f"w{i}.npz"),
                     str(tmp_path / "run"), "--job-addresses", addresses, "--process-id",
                     str(i), *_bn_args()) for i in range(2)]
    _check_two_processes(tmp_path, _finish(procs), ref, ref_info, fast_path=True)
    # the comparison can tell: one process on half of each batch is far outside the tolerance
    assert _max_delta(control, ref) > 1e-3 > 100 * _max_delta(_load(tmp_path / "w0.npz"), ref)


def _worst_parity(got: dict, want: dict) -> tuple[float, str]:
    """The largest ``|got - want| / (PARITY_RTOL |want| + PARITY_ATOL max(1, max|want|))``
    over every array (<= 1: equal within the parity tolerance) and its key."""
    assert sorted(got) == sorted(want)
    worst = {}
    for key, w in want.items():
        g, w = got[key].astype("float64"), w.astype("float64")
        scale = max(1.0, float(np.abs(w).max(initial=0.0)))
        worst[key] = float(np.max(np.abs(g - w) / (PARITY_RTOL * np.abs(w) + PARITY_ATOL * scale),
                                  initial=0.0))
    key = max(worst, key=worst.get)
    return worst[key], key


needs_jax = pytest.mark.skipif(BACKEND != "jax", reason="JAX: the fast step's own convolutions "
                               "under a sharded batch (torch's fast step is the torchrun test's)")


@pytest.fixture(scope="module")
def two_block_reference(tmp_path_factory):
    """The two-block EfficientNetV2 on one device: the fast step, the plain model
    (``fast_path=False``) and the negative control (the fast step on half of each batch)."""
    root = tmp_path_factory.mktemp("twoblock")
    fast = train_state("none", output_dir=str(root / "fast"), model="twoblock")
    plain = train_state("none", output_dir=str(root / "plain"), model="twoblock",
                        fast_path=False)
    control, _ = train_state("none", output_dir=str(root / "half"), model="twoblock",
                             batch_size=GLOBAL_BATCH // 2)
    return fast, plain, control


def _check_two_block(got, infos, two_block_reference, devices):
    (ref, ref_info), (plain, plain_info), control = two_block_reference
    # the one-device fast step trains what the plain Keras model trains
    assert ref_info["fast_path"] is True and plain_info["fast_path"] is False
    assert "optimize_for_training" in ref_info["trained_by"]
    vs_plain, vs_plain_key = _worst_parity(ref, plain)
    assert vs_plain <= 1.0, (vs_plain, vs_plain_key)
    # the sharded fast step trains what the one-device fast step trains
    worst, worst_key = _worst_parity(got, ref)
    control_worst, _ = _worst_parity(control, ref)
    print(f"two-block, {devices} devices vs 1: max |delta| {_max_delta(got, ref):.2g}, worst "
          f"normalised {worst:.3g} ({worst_key}); 1-device fast vs plain: max |delta| "
          f"{_max_delta(ref, plain):.2g}, worst normalised {vs_plain:.3g} ({vs_plain_key}); "
          f"half-batch control: max |delta| {_max_delta(control, ref):.2g}, worst normalised "
          f"{control_worst:.3g}")
    assert any("moving_mean" in k for k in ref) and any("momentum" in k for k in ref)
    assert worst <= 1.0, (worst, worst_key)
    for info in infos:
        assert info["fast_path"] is True and info["trained_by"] == ref_info["trained_by"]
        assert info["replicas"] == info["devices"] == devices
        assert info["iterations"] == ref_info["iterations"] == STEPS
        assert info["batch"] == ref_info["batch"] == GLOBAL_BATCH  # one program on all of it
        assert info["test_accuracy"] == ref_info["test_accuracy"]
        assert info["test_loss"] == pytest.approx(ref_info["test_loss"], abs=2e-4)
    # the comparison can tell: training on half of each batch is far outside the tolerance
    assert control_worst > 100 and _max_delta(control, ref) > 1e-3


@needs_jax
def test_fast_step_blocks_on_two_devices_give_one_devices_weights(two_block_reference,
                                                                   tmp_path):
    """The fast step's rewrites (FusedMBConv, MBConv + SE, 1x1 matmuls) on a batch sharded
    over 2 devices: the one-device fast run's weights, which are the plain model's."""
    from helpers_distribution import MODELS

    from keras_effv2.fast import _jax_train, optimize_for_training

    # every rewrite is in the fast graph: a tap-matmul 3x3 conv, shifted-slice depthwise,
    # 1x1 convs as matmuls (in the blocks and the head)
    fast = optimize_for_training(MODELS["twoblock"](10, False))
    fused, mbconv = fast.get_layer("s0_b00"), fast.get_layer("s1_b00")
    assert isinstance(fused, _jax_train.FastBlock) and isinstance(mbconv, _jax_train.FastBlock)
    assert isinstance(fast.get_layer("head_conv"), _jax_train.PointwiseConv)
    assert mbconv.source.se is not None
    for convs, layer in ((fused._convs, fused.source), (mbconv._convs, mbconv.source)):
        for conv, name in zip(convs, ("expand_conv", "dw_conv", "project_conv"), strict=True):
            if getattr(layer, name, None) is not None:  # a function now, not the Keras layer
                assert not isinstance(conv, keras.layers.Layer), name
    out = tmp_path / "dp.npz"
    [info] = _finish([_launch(tmp_path, "dp", "data-parallel", str(out), str(tmp_path / "run"),
                              "--devices", "2", "--model", "twoblock")])
    _check_two_block(_load(out), [info], two_block_reference, devices=2)


@needs_jax
@pytest.mark.large
def test_fast_step_blocks_on_two_processes_give_one_devices_weights(two_block_reference,
                                                                     tmp_path):
    """The same over 2 processes (jax.distributed on loopback; ~50 s more, so ``large``)."""
    addresses = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    procs = [_launch(tmp_path, f"worker{i}", "multi-process", str(tmp_path / f"w{i}.npz"),
                     str(tmp_path / "run"), "--job-addresses", addresses, "--process-id",
                     str(i), "--model", "twoblock") for i in range(2)]
    infos = _finish(procs)
    w0, w1 = _load(tmp_path / "w0.npz"), _load(tmp_path / "w1.npz")
    _assert_same_state(w1, w0)
    assert all(info["processes"] == 2 for info in infos)
    _check_two_block(w0, infos, two_block_reference, devices=2)


@pytest.mark.skipif(BACKEND != "torch", reason="torchrun launches torch processes")
def test_torchrun_two_processes_give_one_process_weights(reference, plain_reference, tmp_path):
    """torch: 2 processes launched by torchrun (its RANK/WORLD_SIZE/MASTER_* variables,
    ``env://``), the fast training step then the plain model (``fast_path=False``), each
    against its one-process run."""
    [port] = free_ports(1)
    procs = [_launch(tmp_path, "torchrun", "multi-process", str(tmp_path / "w{rank}.npz"),
                     str(tmp_path / "run"), "--paths", "fast,plain",
                     launcher=("-m", "torch.distributed.run", "--nproc-per-node", "2",
                               "--master-addr", "127.0.0.1", "--master-port", str(port)))]
    infos = _finish(procs)
    assert sorted((info["path"], info["rank"]) for info in infos) == [
        ("fast", 0), ("fast", 1), ("plain", 0), ("plain", 1)]
    for path, (ref, ref_info) in (("fast", reference[0]), ("plain", plain_reference)):
        _check_two_processes(tmp_path, [i for i in infos if i["path"] == path], ref, ref_info,
                             fast_path=path == "fast", suffix=f"-{path}")


@pytest.mark.skipif(BACKEND != "torch", reason="torch.distributed")
def test_torch_joins_by_job_addresses_and_leaves():
    """The ``tcp://`` join of ``--job-addresses`` (one process), then leaving."""
    import torch.distributed as dist

    from keras_effv2.fast import _torch_sync_bn
    from keras_effv2.training.distribution import leave_multi_process

    cluster = initialize_multi_process(f"127.0.0.1:{free_ports(1)[0]}", 1, 0)
    try:
        assert process_info() == (0, 1) and cluster.is_chief
        assert dist.is_initialized() and dist.get_world_size() == 1
        assert dist.get_backend() == "gloo" and not _torch_sync_bn.active()
        with data_parallel_scope("data-parallel", batch_size=8) as replicas:
            assert replicas == 1  # the joined group (torchrun's variables not needed then)
        # the gradient sum writes into each gradient, keeping its strides (fused Adam)
        import torch

        from keras_effv2.training.torch_distributed import sum_gradients

        g = torch.arange(24.0).reshape(2, 3, 2, 2).contiguous(memory_format=torch.channels_last)
        grads = [g, None, torch.ones(3, dtype=torch.float64)]
        strides, ptr = g.stride(), g.data_ptr()
        sum_gradients(grads)
        assert g.stride() == strides and g.data_ptr() == ptr and grads[1] is None
        np.testing.assert_array_equal(g.numpy(), np.arange(24.0).reshape(2, 3, 2, 2))
    finally:
        leave_multi_process()
    assert not dist.is_initialized() and process_info() == (0, 1)


def _check_two_processes(tmp_path, infos, ref, ref_info, fast_path, suffix=""):
    run_dir = tmp_path / f"run{suffix}"  # shared on purpose: only process 0 may write into it
    w0, w1 = _load(tmp_path / f"w0{suffix}.npz"), _load(tmp_path / f"w1{suffix}.npz")
    print(f"max |delta| 2 processes vs 1: {_max_delta(w0, ref):.2g}, process 1 vs 0: "
          f"{_max_delta(w1, w0):.2g}")
    _assert_same_state(w1, w0)
    _assert_same_state(w0, ref)
    assert len(infos) == 2
    for info in infos:
        assert info["processes"] == 2 and info["replicas"] == 2
        assert info["iterations"] == STEPS
        assert info["fast_path"] == fast_path == ref_info["fast_path"]
        # TF and torch: each process trains on half of each global batch; JAX: one program
        assert info["batch"] == (GLOBAL_BATCH if BACKEND == "jax" else GLOBAL_BATCH // 2)
        assert info["test_accuracy"] == ref_info["test_accuracy"]
        assert info["test_loss"] == pytest.approx(ref_info["test_loss"], abs=2e-4)
    assert sorted(os.listdir(run_dir)) == ["curves.png", "log.csv", "model.keras",
                                           "result.json"]  # no worker files, no backups
    with open(run_dir / "log.csv") as f:
        assert len(f.read().splitlines()) == 1 + 2  # header, 2 epochs: one process logged
    with open(run_dir / "result.json") as f:
        assert json.load(f)["processes"] == 2


def test_resolve_cluster(monkeypatch):
    for k in (ENV_ADDRESSES, ENV_NUM_PROCESSES, ENV_PROCESS_ID, "TF_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    two = "10.0.0.1:1234,10.0.0.2:1234"
    c = resolve_cluster(two, 2, 1)
    assert c.job_addresses == ("10.0.0.1:1234", "10.0.0.2:1234") and not c.is_chief
    monkeypatch.setenv(ENV_ADDRESSES, two)
    monkeypatch.setenv(ENV_NUM_PROCESSES, "2")
    monkeypatch.setenv(ENV_PROCESS_ID, "0")
    assert resolve_cluster().is_chief and resolve_cluster().num_processes == 2
    assert resolve_cluster(process_id=1).process_id == 1  # arguments win
    for k in (ENV_ADDRESSES, ENV_NUM_PROCESSES, ENV_PROCESS_ID):
        monkeypatch.delenv(k)
    with pytest.raises(ValueError, match="needs the cluster.*--job-addresses"):
        resolve_cluster()
    with pytest.raises(ValueError, match="'10.0.0.1' is not HOST:PORT"):
        resolve_cluster("10.0.0.1", 2, 0)
    with pytest.raises(ValueError, match="0 <= process_id < num_processes; got 2 processes and "
                                         "process id 2"):
        resolve_cluster(two, 2, 2)
    with pytest.raises(ValueError, match="must be integers"):
        resolve_cluster(two, "two", 0)
    with pytest.raises(ValueError, match="coordinator's address or one per process"):
        resolve_cluster(two + ",10.0.0.3:1", 2, 0)
    if BACKEND == "tensorflow":
        with pytest.raises(ValueError, match="tensorflow needs every process's HOST:PORT"):
            resolve_cluster("10.0.0.1:1234", 2, 1)
        monkeypatch.setenv("TF_CONFIG", json.dumps(
            {"cluster": {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"]},
             "task": {"type": "worker", "index": 1}}))
        c = resolve_cluster()
        assert (c.job_addresses, c.num_processes, c.process_id) == (("h0:1", "h1:1", "h2:1"),
                                                                    3, 2)
        monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
        with pytest.raises(ValueError, match="TF_CONFIG must look like"):
            resolve_cluster()
    elif BACKEND == "jax":
        assert resolve_cluster("10.0.0.1:1234", 2, 1).job_addresses == ("10.0.0.1:1234",)


def test_full_batches():
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((np.arange(13, dtype="float32")[:, None] + 1,
                                             np.ones((13, 2), "float32"))).batch(5)
    padded, factor = full_batches(ds, 5, 13)
    batches = list(padded.as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(5, 1)] * 3 and factor == pytest.approx(15 / 13)
    x, y, w = (np.concatenate(parts) for parts in zip(*batches, strict=True))
    np.testing.assert_array_equal(w, [1] * 13 + [0] * 2)
    np.testing.assert_array_equal(x[:, 0], list(range(1, 14)) + [0, 0])
    assert y[13:].sum() == 0


def test_distribution_bad_input(monkeypatch):
    with pytest.raises(ValueError, match="distribution must be one of"):
        with data_parallel_scope("model-parallel"):
            pass
    if BACKEND == "torch":
        import torch.distributed as dist

        for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", ENV_ADDRESSES):
            monkeypatch.delenv(k, raising=False)
        with pytest.raises(ValueError, match="data-parallel' on torch runs one process per "
                                             "device: launch every process with torchrun "
                                             r"\(torchrun --nproc-per-node N -m "):
            with data_parallel_scope("data-parallel"):
                pass
        with pytest.raises(ValueError, match="needs the cluster.*launch every process with "
                                             "torchrun"):
            with data_parallel_scope("multi-process"):
                pass
        assert process_info() == (0, 1) and not dist.is_initialized()  # nothing half-joined
    else:
        from keras_effv2.training.distribution import available_devices

        with data_parallel_scope("data-parallel") as replicas:
            assert replicas == len(available_devices()) >= 1


@needs_fit
def test_multi_process_must_start_first():
    import tensorflow as tf

    keras.ops.convert_to_numpy(keras.ops.ones(2) + 1)  # the backend has computed something
    float(tf.constant(1.0) + 1)
    with pytest.raises(RuntimeError, match=f"joining the cluster failed on {BACKEND}: .*must "
                                           "start before the backend computes anything"):
        initialize_multi_process(f"127.0.0.1:{free_ports(1)[0]}", 1, 0)
    assert process_info() == (0, 1)  # nothing half-joined


def test_cli_multi_process_flags(capsys):
    from keras_effv2.train import main

    common = ["--dataset", "digits", "--dry-run"]
    assert main([*common, "--process-id", "1"]) == 2
    assert "are for --distribution multi-process" in capsys.readouterr().err
    assert main([*common, "--distribution", "multi-process", "--job-addresses",
                 "127.0.0.1:1,127.0.0.1:2", "--num-processes", "2", "--process-id", "1"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["cluster"] == {"job_addresses": ["127.0.0.1:1", "127.0.0.1:2"],
                               "num_processes": 2, "process_id": 1}
    assert main(["--dataset", "digits", "--distribution", "multi-process", "--job-addresses",
                 "127.0.0.1:1,127.0.0.1:2", "--num-processes", "2", "--process-id", "2"]) == 2
    assert "0 <= process_id < num_processes" in capsys.readouterr().err
