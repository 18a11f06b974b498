"""BatchNorm over the global batch of a torch multi-process run (torch only).

While a multi-process run has joined (``keras_effv2.training.distribution`` calls
:func:`set_world`), a training-mode BatchNormalization normalises with the mean and *biased*
variance of the global batch, not of this process's slice: each process sums its slice per
channel (``x``, ``x**2`` and the count), one differentiable all-reduce (:class:`_AllReduceSum`,
public ``torch.distributed.all_reduce`` forward and backward; torch's own
``torch.distributed.nn.functional.all_reduce`` is deprecated in torch 2.14 for a private
module) adds the processes' sums, and the moving
statistics update with the global ones by Keras' rule
(``moving = moving * momentum + stat * (1 - momentum)``). Every process computes what one
process computes on the global batch and holds the same moving statistics. The all-reduce's
backward sums the statistics' gradients over the processes; with the weight gradients
averaged before the update, that is the gradient of the global batch's mean loss.

Used by the fast training step (``_torch_train._batch_norm``) and, for the plain model, by
``keras_effv2.training.torch_distributed.synced_batch_norm`` (Keras refuses
``BatchNormalization(synchronized=True)`` on torch).

Example:
    >>> from keras_effv2.fast import _torch_sync_bn  # KERAS_BACKEND=torch, after joining
    >>> _torch_sync_bn.set_world(2)  # doctest: +SKIP
    >>> y = _torch_sync_bn.batch_norm_train(bn_layer, x, axis=1)  # doctest: +SKIP
"""

from __future__ import annotations

import torch

_WORLD = 1  # processes whose batches BatchNorm pools (1: each process alone)


def set_world(num_processes: int) -> None:
    """Pool BatchNorm statistics over ``num_processes`` joined processes (1: stop pooling)."""
    global _WORLD
    _WORLD = int(num_processes)


def active() -> bool:
    """Whether training-mode BatchNorm pools statistics across processes now."""
    return _WORLD > 1


class _AllReduceSum(torch.autograd.Function):
    """The sum over the processes; its gradient is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, x):
        import torch.distributed as dist

        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def global_moments(x: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance per ``axis`` channel over the batches of all processes
    (differentiable; one all-reduce of ``[sum x, sum x**2, count]``)."""
    axes = [d for d in range(x.ndim) if d != axis]
    c = x.shape[axis]
    count = x.new_full((1,), x.numel() // c)
    total = _AllReduceSum.apply(torch.cat([x.sum(axes), (x * x).sum(axes), count]))
    n = total[-1]
    mean = total[:c] / n
    variance = (total[c:2 * c] / n - mean * mean).clamp_min(0.0)
    return mean, variance


def batch_norm_train(bn, x: torch.Tensor, axis: int) -> torch.Tensor:
    """Keras' training-mode ``BatchNormalization`` (``bn``) of float ``x`` with the global
    batch's statistics; updates ``bn``'s moving statistics (Keras' rule, biased variance)."""
    mean, variance = global_moments(x, axis)
    scale = torch.rsqrt(variance + bn.epsilon)
    if bn.scale:
        scale = scale * bn.gamma.value.to(x.dtype)
    shift = -mean * scale
    if bn.center:
        shift = shift + bn.beta.value.to(x.dtype)
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    m = bn.momentum
    with torch.no_grad():
        for moving, stat in ((bn.moving_mean.value, mean), (bn.moving_variance.value, variance)):
            moving.copy_(moving * m + stat.detach().to(moving.dtype) * (1.0 - m))
    return x * scale.view(shape) + shift.view(shape)
