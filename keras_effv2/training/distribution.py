"""Data-parallel training on several devices or processes: the only backend-specific training
module.

Modes (``MODES``):

- ``"data-parallel"``: the devices of this process. JAX: ``keras.distribution.DataParallel``
  over ``keras.distribution.list_devices()``; TensorFlow: ``tf.distribute.MirroredStrategy``
  over the visible GPUs (or CPUs if none).
- ``"multi-process"``: several processes (one per host, or several on one host), each on its
  own devices, one global batch. JAX: ``keras.distribution.initialize`` (``jax.distributed``,
  gloo collectives on CPU) + ``DataParallel`` over all processes' devices (Keras gives each
  process its slice of every global batch); TensorFlow: ``tf.distribute.
  MultiWorkerMirroredStrategy`` (``TF_CONFIG``, or the cluster built from the job addresses)
  with data sharding, so each process gets its part of every global batch. Process 0 is the
  chief (the one that writes files).
- torch (both modes, :mod:`keras_effv2.training.torch_distributed`): one process per device
  or host, ``torch.distributed`` ("gloo" on CPU, "nccl" on CUDA) joined from torchrun's
  variables (``torchrun --nproc-per-node N -m keras_effv2.train ...``; ``--nnodes`` and
  ``--rdzv-endpoint`` across hosts) or from the job addresses (``tcp://`` process 0's);
  ``"data-parallel"`` needs torchrun. Each process fits its slice of every global batch, the
  gradients (of the loss divided by the process count) are summed before each update,
  BatchNorm uses the global batch's statistics; evaluation runs whole on every process (the
  same weights give every process the one-process figures).

Build and compile the model *inside* ``data_parallel_scope`` and call ``fit`` there too, inside
``synchronized_training(model)`` (torch's gradient and BatchNorm synchronization; nothing on TF
and JAX). The global batch must be divisible by the number of replicas. For ``"multi-process"`` call
``initialize_multi_process`` before anything else runs on the backend (``run_recipe`` does it
first thing); every process runs the same program with its own ``process_id``.

Example:
    >>> initialize_multi_process("10.0.0.1:1234,10.0.0.2:1234", 2, process_id=0)  # doctest: +SKIP
    >>> with data_parallel_scope("multi-process") as replicas:  # doctest: +SKIP
    ...     model = build(); model.compile(...); model.fit(...)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os

import keras

MODES = ("none", "data-parallel", "multi-process")
ENV_ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"  # Keras' own variables (keras.distribution)
ENV_NUM_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The processes of a multi-process run; ``job_addresses[i]`` is process ``i``'s
    ``host:port`` (JAX needs only ``job_addresses[0]``, the coordinator)."""

    job_addresses: tuple
    num_processes: int
    process_id: int

    @property
    def is_chief(self) -> bool:
        return self.process_id == 0


_CLUSTER: Cluster | None = None
_STRATEGY = None  # the TensorFlow MultiWorkerMirroredStrategy, made once per process


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
TORCH_DATA_PARALLEL_LAUNCH = (
    "torchrun --nproc-per-node N -m keras_effv2.train ... --distribution data-parallel")


def _under_torchrun() -> bool:
    """torchrun (or another launcher) set the ``env://`` variables of torch.distributed."""
    return all(k in os.environ for k in TORCHRUN_VARIABLES)


def _torchrun_cluster() -> Cluster:
    env = os.environ
    try:
        return Cluster((f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}",), int(env["WORLD_SIZE"]),
                       int(env["RANK"]))
    except ValueError:
        raise ValueError(f"torchrun's RANK and WORLD_SIZE must be integers; got "
                         f"{env['RANK']!r} and {env['WORLD_SIZE']!r}.") from None


def _tf_config_cluster(tf_config: str) -> Cluster:
    """Process order of a ``TF_CONFIG``: the ``chief`` task (if any) first, then ``worker``s."""
    try:
        config = json.loads(tf_config)
        spec, task = config["cluster"], config["task"]
        addresses = list(spec.get("chief", [])) + list(spec.get("worker", []))
        offset = len(spec.get("chief", [])) if task["type"] == "worker" else 0
        if task["type"] not in ("chief", "worker") or not addresses:
            raise KeyError(task["type"])
        return Cluster(tuple(addresses), len(addresses), offset + int(task["index"]))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            'TF_CONFIG must look like {"cluster": {"worker": ["host0:port", "host1:port"]}, '
            '"task": {"type": "worker", "index": 0}} (a "chief" list is optional); got '
            f"{tf_config!r} ({type(e).__name__}: {e}).") from None


def resolve_cluster(job_addresses=None, num_processes=None, process_id=None) -> Cluster:
    """The cluster from the arguments, else Keras' ``KERAS_DISTRIBUTION_*`` variables, else
    (TensorFlow) ``TF_CONFIG``, (torch) torchrun's ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/
    ``MASTER_PORT``; checks it. ``job_addresses``: ``"host:port,host:port"`` or a
    list, process 0 first; on JAX the coordinator's address alone is enough."""
    env = os.environ
    if job_addresses is None and num_processes is None and process_id is None \
            and ENV_ADDRESSES not in env and "TF_CONFIG" in env \
            and keras.backend.backend() == "tensorflow":
        return _tf_config_cluster(env["TF_CONFIG"])
    if job_addresses is None and num_processes is None and process_id is None \
            and ENV_ADDRESSES not in env and keras.backend.backend() == "torch" \
            and _under_torchrun():
        return _torchrun_cluster()
    job_addresses = job_addresses if job_addresses is not None else env.get(ENV_ADDRESSES)
    num_processes = num_processes if num_processes is not None else env.get(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else env.get(ENV_PROCESS_ID)
    how = ("give the job addresses, the number of processes and this process's id "
           "(--job-addresses HOST:PORT[,HOST:PORT...] --num-processes N --process-id I, or "
           f"{ENV_ADDRESSES}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}; TF_CONFIG on tensorflow; "
           "on torch, or launch every process with torchrun)")
    if job_addresses is None or num_processes is None or process_id is None:
        raise ValueError(f"multi-process training needs the cluster: {how}; got job addresses "
                         f"{job_addresses!r}, {num_processes!r} processes, process id "
                         f"{process_id!r}.")
    if isinstance(job_addresses, str):
        job_addresses = [a.strip() for a in job_addresses.split(",")]
    addresses = tuple(job_addresses)
    try:
        num_processes, process_id = int(num_processes), int(process_id)
    except ValueError:
        raise ValueError(f"the number of processes and the process id must be integers; got "
                         f"{num_processes!r} and {process_id!r}.") from None
    for a in addresses:
        host, _, port = a.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"job address {a!r} is not HOST:PORT (e.g. 10.0.0.1:1234).")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"need num_processes >= 1 and 0 <= process_id < num_processes; got "
                         f"{num_processes} processes and process id {process_id}.")
    if len(addresses) not in (1, num_processes):
        raise ValueError(f"give the coordinator's address or one per process; got "
                         f"{len(addresses)} for {num_processes} processes.")
    if keras.backend.backend() == "tensorflow" and len(addresses) != num_processes:
        raise ValueError(f"tensorflow needs every process's HOST:PORT (process 0 first): "
                         f"{len(addresses)} address(es) {list(addresses)} for {num_processes} "
                         "processes.")
    return Cluster(addresses, num_processes, process_id)


def initialize_multi_process(job_addresses=None, num_processes=None,
                             process_id=None) -> Cluster:
    """Join the cluster (once per process; later calls return it). Call before the backend
    computes anything: JAX fixes its devices, TensorFlow its collectives at startup."""
    global _CLUSTER, _STRATEGY
    if _CLUSTER is not None:
        return _CLUSTER
    backend = keras.backend.backend()
    cluster = resolve_cluster(job_addresses, num_processes, process_id)
    if backend == "torch":
        from keras_effv2.training import torch_distributed

        from_env = (job_addresses, num_processes, process_id) == (None, None, None) \
            and ENV_ADDRESSES not in os.environ and _under_torchrun()
        try:
            torch_distributed.join(cluster, from_env)
        except (RuntimeError, ValueError) as e:
            raise RuntimeError(
                f"joining the torch.distributed process group failed ("
                f"{'torchrun variables' if from_env else 'tcp://' + cluster.job_addresses[0]},"
                f" process {cluster.process_id} of {cluster.num_processes}): {e}") from e
        _CLUSTER = cluster
        return cluster
    try:
        if backend == "jax":
            import jax

            if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") is None:
                jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU all-reduce
            keras.distribution.initialize(",".join(cluster.job_addresses),
                                          cluster.num_processes, cluster.process_id)
        else:
            import tensorflow as tf

            if "TF_CONFIG" in os.environ and job_addresses is None and \
                    ENV_ADDRESSES not in os.environ:
                resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
            else:
                resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
                    tf.train.ClusterSpec({"worker": list(cluster.job_addresses)}),
                    task_type="worker", task_id=cluster.process_id, rpc_layer="grpc")
            _STRATEGY = _multi_worker_strategy(resolver)
    except RuntimeError as e:
        raise RuntimeError(
            f"joining the cluster failed on {backend}: {e}. Multi-process mode must start "
            "before the backend computes anything (loading a dataset counts on TensorFlow): "
            "call initialize_multi_process first thing, or let run_recipe load the data.") from e
    _CLUSTER = cluster
    return cluster


def start_distribution(mode: str) -> Cluster | None:
    """Join the processes ``mode`` needs (first thing in a run; ``run_recipe`` calls it):
    ``"multi-process"`` everywhere, ``"data-parallel"`` on torch (one process per device, under
    torchrun). ``None`` where no processes join."""
    if mode == "multi-process":
        return initialize_multi_process()
    if mode == "data-parallel" and keras.backend.backend() == "torch":
        if _CLUSTER is None and not _under_torchrun():
            raise ValueError(
                "distribution='data-parallel' on torch runs one process per device: launch "
                f"every process with torchrun ({TORCH_DATA_PARALLEL_LAUNCH}; it sets "
                f"{', '.join(TORCHRUN_VARIABLES)}), and they are not all set here. Or use "
                "--distribution multi-process with --job-addresses.")
        return initialize_multi_process()
    return None


def leave_multi_process() -> None:
    """Leave the cluster where the backend needs it (torch: destroy the process group; TF and
    JAX keep theirs for the life of the process); ``process_info`` is ``(0, 1)`` again."""
    global _CLUSTER
    if _CLUSTER is not None and keras.backend.backend() == "torch":
        from keras_effv2.training import torch_distributed

        torch_distributed.leave()
        _CLUSTER = None


@contextlib.contextmanager
def synchronized_training(model):
    """Context in which to ``fit`` a compiled ``model`` built in ``data_parallel_scope``: on
    torch with several processes, gradients all-reduced and BatchNorm synchronized
    (:func:`keras_effv2.training.torch_distributed.synchronized_training`); elsewhere the
    strategy or distribution does it and this does nothing."""
    if keras.backend.backend() != "torch" or process_info()[1] == 1:
        yield
        return
    from keras_effv2.training import torch_distributed

    with torch_distributed.synchronized_training(model):
        yield


def process_info() -> tuple[int, int]:
    """``(process_id, num_processes)``; ``(0, 1)`` unless ``initialize_multi_process`` ran."""
    return (0, 1) if _CLUSTER is None else (_CLUSTER.process_id, _CLUSTER.num_processes)


def gather_from_processes(values) -> list[list[int]]:
    """Every process's ``values`` (a short list of ints, the same length everywhere), process
    0's first: a collective, so every process of a multi-process run must call it at the same
    point. Outside one, ``[values]``.

    Example (on process 1 of 2, where process 0 passed ``[1, 0]``):
        >>> gather_from_processes([2, 0])  # doctest: +SKIP
        [[1, 0], [2, 0]]
    """
    values = [int(v) for v in values]
    if _CLUSTER is None or _CLUSTER.num_processes == 1:
        return [values]
    backend = keras.backend.backend()
    if backend == "jax":
        import numpy as np
        from jax.experimental import multihost_utils

        rows = np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int64)))
        return [[int(v) for v in row] for row in rows.reshape(_CLUSTER.num_processes, -1)]
    if backend == "tensorflow":
        import tensorflow as tf

        local = _STRATEGY.experimental_distribute_values_from_function(
            lambda ctx: tf.constant([values], tf.int64))
        rows = _STRATEGY.gather(local, axis=0).numpy()  # one row per replica, in process order
        per_process = len(rows) // _CLUSTER.num_processes
        return [[int(v) for v in row] for row in rows[::per_process]]
    import torch.distributed as dist  # the torch engine's process group

    rows = [None] * _CLUSTER.num_processes
    dist.all_gather_object(rows, values)
    return rows


def _multi_worker_strategy(resolver):
    """A ``MultiWorkerMirroredStrategy`` whose ``reduce`` takes what Keras 3.15's ``fit``
    passes it (keras-team/keras#20585: plain MWMS fails there): a nested structure (the batch
    ``fit`` peeks to build the model) and per-replica scalars with ``axis=0`` (the step's
    logs). Each leaf is reduced across the replicas of all processes, over ``axis`` only where
    it has one."""
    import tensorflow as tf

    class KerasMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            def one(v):
                rank = self.experimental_local_results(v)[0].shape.rank
                return super(KerasMultiWorkerStrategy, self).reduce(
                    reduce_op, v, None if rank == 0 else axis)

            return tf.nest.map_structure(one, value)

    return KerasMultiWorkerStrategy(cluster_resolver=resolver)


def available_devices() -> list[str]:
    """The devices a data-parallel run uses (JAX: of all processes; TensorFlow: local)."""
    backend = keras.backend.backend()
    if backend == "jax":
        try:
            devices = keras.distribution.list_devices("gpu")
        except RuntimeError:  # no GPU backend in this jax install
            devices = []
        return list(devices or keras.distribution.list_devices())
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return []


def shard_for_workers(dataset, evaluation: bool = False):
    """Under TensorFlow multi-process, shard ``dataset`` by element (``AutoShardPolicy.DATA``):
    every process reads the same pipeline and keeps its slice of each global batch, so the
    processes together see exactly the batches one process would. Under torch multi-process,
    training batches: process ``i`` of ``N`` keeps rows ``[i*b/N, (i+1)*b/N)`` of each batch
    ``b``; ``evaluation`` batches stay whole (every process evaluates all). Otherwise
    unchanged."""
    if keras.backend.backend() == "torch" and _CLUSTER is not None:
        if evaluation or _CLUSTER.num_processes == 1:
            return dataset
        from keras_effv2.training.torch_distributed import batch_slice

        return batch_slice(dataset, _CLUSTER.process_id, _CLUSTER.num_processes)
    if _STRATEGY is None:
        return dataset
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def full_batches(dataset, batch_size: int, num_examples: int):
    """Evaluation batches for a distributed run: each ``(x, y)`` batch padded to ``batch_size``
    with zero images of weight 0, as ``(x, y, weight)``. Every batch then splits evenly over the
    replicas and processes (JAX cannot split a last batch of 40 over 2 processes' 32-example
    slices, Keras' multi-process sharding would silently mis-assemble it). Accuracy is exact;
    multiply the reported loss by the returned factor (padded / real example count).

    Example:
        >>> test, factor = full_batches(eval_ds, 64, 360)  # doctest: +SKIP
        >>> loss, acc = model.evaluate(test); loss *= factor  # doctest: +SKIP
    """
    import tensorflow as tf

    def pad(x, y):
        n = tf.shape(x)[0]
        weight = tf.concat([tf.ones([n]), tf.zeros([batch_size - n])], 0)
        x, y = (tf.pad(t, [[0, batch_size - n]] + [[0, 0]] * (len(t.shape) - 1))
                for t in (x, y))
        x.set_shape([batch_size, *x.shape[1:]])
        y.set_shape([batch_size, *y.shape[1:]])
        weight.set_shape([batch_size])
        return x, y, weight

    padded = -(-num_examples // batch_size) * batch_size
    return dataset.map(pad), padded / num_examples


@contextlib.contextmanager
def data_parallel_scope(mode: str = "none", batch_size: int | None = None):
    """Context in which to build, compile and fit; yields the number of replicas (all
    processes together)."""
    if mode not in MODES:
        raise ValueError(f"distribution must be one of {MODES}; got {mode!r}.")
    if mode == "none":
        yield 1
        return
    backend = keras.backend.backend()
    if backend == "torch":
        replicas = start_distribution(mode).num_processes
        if batch_size is not None and batch_size % replicas:
            raise ValueError(f"batch size {batch_size} is not divisible by the {replicas} "
                             "processes.")
        yield replicas
        return
    if mode == "multi-process":
        initialize_multi_process()
    devices = available_devices()
    if backend == "tensorflow" and mode == "multi-process":
        replicas = _STRATEGY.num_replicas_in_sync
        where = f"replicas of {_CLUSTER.num_processes} processes"
    else:
        replicas, where = len(devices), f"devices {devices}"
    if batch_size is not None and batch_size % replicas:
        raise ValueError(f"batch size {batch_size} is not divisible by the {replicas} "
                         f"{where}.")
    if backend == "jax":
        dist = keras.distribution.DataParallel(devices=devices)
        with dist.scope():
            yield replicas
        return
    import tensorflow as tf

    strategy = _STRATEGY if mode == "multi-process" else tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        yield strategy.num_replicas_in_sync
