"""Multi-process training on the torch backend with ``torch.distributed`` (torch only; the
backend-neutral entry points are in :mod:`keras_effv2.training.distribution`).

- :func:`join`: ``torch.distributed.init_process_group`` ("nccl" with CUDA, where the device is
  ``LOCAL_RANK``'s; "gloo" on CPU), from torchrun's variables (``env://``: ``RANK``,
  ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) or from the cluster's first address
  (``tcp://HOST:PORT``, process 0 listens). Training-mode BatchNorm then pools the global
  batch's statistics (:mod:`keras_effv2.fast._torch_sync_bn`).
- :func:`synchronized_training`: while a ``fit`` runs in it, every process starts from process
  0's weights; ``optimizer.scale_loss`` divides the loss by the number of processes and
  ``optimizer.apply`` first sums the gradients over the processes (one all-reduce per dtype and
  device; each gradient keeps its strides): the sum is the gradient of the global batch's mean
  loss, and each process's backward sees the per-example gradient magnitudes of one process on
  the global batch (float16 loss scaling overflows where one process's would; averaging
  half-batch gradients instead skipped a step one process did not, measured). The plain
  model's BatchNorm layers use the global batch's statistics as the fast step's do. Both hooks
  are the optimizer's public methods, shadowed on the instance, so loss scaling
  (``LossScaleOptimizer``), gradient accumulation and the fused Adam update stay as they are.
- :func:`batch_slice`: this process's rows of each global batch of a ``tf.data`` dataset.

Example (what ``run_recipe`` does; every process runs it):
    >>> join(cluster, from_env=True)  # doctest: +SKIP
    >>> with synchronized_training(model):  # doctest: +SKIP
    ...     model.fit(batch_slice(train_ds, 0, 2), ...)
"""

from __future__ import annotations

import atexit
import contextlib

import keras

from keras_effv2.keras_graph import nested_layers


def join(cluster, from_env: bool) -> None:
    """Join the process group of ``cluster`` (``from_env``: as torchrun set it up)."""
    import os

    import torch
    import torch.distributed as dist

    from keras_effv2.fast import _torch_sync_bn

    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed.")
    cuda = torch.cuda.is_available()
    if cuda:  # before Keras puts anything on "cuda" (the current device)
        torch.cuda.set_device(int(os.environ.get(
            "LOCAL_RANK", cluster.process_id % torch.cuda.device_count())))
    backend = "nccl" if cuda else "gloo"
    if from_env:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, init_method=f"tcp://{cluster.job_addresses[0]}",
                                rank=cluster.process_id, world_size=cluster.num_processes)
    _torch_sync_bn.set_world(dist.get_world_size())
    atexit.register(leave)


def leave() -> None:
    """Leave the process group (at exit, or when the CLI's run ends)."""
    import torch.distributed as dist

    from keras_effv2.fast import _torch_sync_bn

    _torch_sync_bn.set_world(1)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def batch_slice(dataset, process_id: int, num_processes: int):
    """Rows ``[i*b/N, (i+1)*b/N)`` of every batch ``b`` of ``dataset`` for process ``i``."""
    import tensorflow as tf

    def rows(*batch):
        per = tf.shape(tf.nest.flatten(batch)[0])[0] // num_processes
        part = tf.nest.map_structure(lambda t: t[process_id * per:(process_id + 1) * per],
                                     batch)
        return part if len(part) > 1 else part[0]

    return dataset.map(rows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def sum_gradients(grads: list) -> None:
    """Replace each gradient by its sum over the processes, in place (same strides)."""
    import torch
    import torch.distributed as dist

    groups: dict = {}
    for g in grads:
        if g is not None:
            groups.setdefault((g.dtype, g.device), []).append(g)
    with torch.no_grad():
        for group in groups.values():
            flat = torch.cat([g.reshape(-1) for g in group])
            dist.all_reduce(flat)
            offset = 0
            for g in group:
                g.copy_(flat[offset:offset + g.numel()].view(g.shape))
                offset += g.numel()


def _broadcast_weights(model) -> None:
    """Every process takes process 0's model variables (DDP's start)."""
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for v in model.variables:
            value = v.value
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                dist.broadcast(value.data, src=0)


def synced_batch_norm(bn):
    """A ``call`` for the Keras ``BatchNormalization`` ``bn`` that, in training mode, uses the
    global batch's statistics (as Keras' layer computes them otherwise)."""
    import torch

    from keras_effv2.fast import _torch_sync_bn

    keras_call = type(bn).call.__get__(bn)

    def call(inputs, training=None, mask=None):
        if not (training and bn.trainable) or mask is not None or bn.renorm:
            return keras_call(inputs, training=training, mask=mask)
        x = inputs if inputs.dtype in (torch.float32, torch.float64) else inputs.float()
        y = _torch_sync_bn.batch_norm_train(bn, x, bn.axis % x.ndim)
        return keras.ops.cast(y, bn.compute_dtype)

    return call


@contextlib.contextmanager
def synchronized_training(model: keras.Model):
    """Within the block, ``model`` (compiled) trains as one data-parallel program over the
    joined processes (see the module doc)."""
    import torch.distributed as dist

    _broadcast_weights(model)
    optimizer = model.optimizer
    keras_apply, keras_scale_loss = optimizer.apply, optimizer.scale_loss
    world = dist.get_world_size()

    def scale_loss(loss):
        return keras_scale_loss(loss) / world  # this process's share of the global mean

    def apply(grads, trainable_variables=None):
        grads = list(grads)
        sum_gradients(grads)
        return keras_apply(grads, trainable_variables)

    bns = [layer for layer in nested_layers(model)
           if isinstance(layer, keras.layers.BatchNormalization)]
    vars(optimizer)["apply"] = apply  # shadow the class's methods on this instance
    vars(optimizer)["scale_loss"] = scale_loss
    for bn in bns:
        vars(bn)["call"] = synced_batch_norm(bn)
    try:
        yield
    finally:
        vars(optimizer).pop("apply", None)
        vars(optimizer).pop("scale_loss", None)
        for bn in bns:
            vars(bn).pop("call", None)
