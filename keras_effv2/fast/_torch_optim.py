"""Keras' Adam/AdamW update on torch in one fused pass (``torch._fused_adam_``), CPU only.

Keras' torch ``Adam`` updates the weights with ten ``torch._foreach_*`` passes, five of them
allocating a temporary per weight (B0, one CPU thread: 41 ms a step); torch's fused CPU kernel
reads and writes every tensor once (8 ms; ``torch.optim.Adam``'s default for-loop: 18 ms).
The formula is Keras': its ``alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)``,
``w -= alpha * m / (sqrt(v) + eps)`` is torch's ``w -= lr / (1 - b1^t) * m / (sqrt(v) /
sqrt(1 - b2^t) + eps')`` with ``eps' = eps / sqrt(1 - b2^t)``; AMSGrad keeps Keras' running
maximum of ``v``.

Only the arithmetic of one update is replaced (the optimizer's ``_parallel_update_step``, for the
duration of a ``with`` block): learning-rate schedules, clipping, AdamW's weight decay, EMA,
gradient accumulation, loss scaling and the iteration count stay Keras'. The kernel walks raw
memory, so a weight is fused only when its gradient and slots have its exact strides (a slot
still in Keras' default layout is re-laid out like its weight, once); anything else (a subclass,
a GPU tensor, mixed dtypes) takes Keras' own update.

Private internals, behind one feature check (:func:`fused_adam_support`, run once): Keras'
torch optimizer classes (``keras.src.backend.torch.optimizers``) with the private members read
here (``_parallel_update_step``, ``_get_variable_index``, ``_momentums``, ``_velocities``), and
``torch._fused_adam_`` called with these keywords on a one-element probe whose result must be
Keras' formula. When any of it is missing or differs (another Keras or torch release), the
block leaves the optimizer alone: Keras' own update runs (tested by simulating each).

Example:
    >>> from keras_effv2.fast._torch_optim import fused_adam  # KERAS_BACKEND=torch only
    >>> with fused_adam(model.optimizer):  # doctest: +SKIP
    ...     model.train_on_batch(x, y)
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import warnings

import keras
import torch

_FLOATS = (torch.float32, torch.float64)
_KERAS_OPTIMIZERS = "keras.src.backend.torch.optimizers"  # private Keras
_OPTIMIZER_MEMBERS = ("_parallel_update_step", "_get_variable_index")
_SLOT_MEMBERS = ("_momentums", "_velocities")


def _keras_classes() -> tuple:
    """Keras' torch Adam/AdamW classes (exact: a subclass may change the update), or ``()``."""
    try:
        classes = tuple(getattr(importlib.import_module(f"{_KERAS_OPTIMIZERS}.{module}"), name)
                        for module, name in (("torch_adam", "Adam"), ("torch_adamw", "AdamW")))
    except (ImportError, AttributeError):
        return ()
    if not all(hasattr(c, m) for c in classes for m in _OPTIMIZER_MEMBERS):
        return ()
    return classes


def _kernel_matches_keras() -> bool:
    """``torch._fused_adam_`` exists, takes the keywords used here, and computes Keras'
    update (with the epsilon conversion) on a one-element probe, step 1."""
    kernel = getattr(torch, "_fused_adam_", None)
    if kernel is None:
        return False
    w, g = torch.tensor([0.5]), torch.tensor([0.25])
    m, v = torch.tensor([0.1]), torch.tensor([0.02])
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-3
    try:
        kernel([w], [g], [m], [v], [], [torch.tensor(1.0)], lr=lr, beta1=b1, beta2=b2,
               weight_decay=0.0, eps=eps / math.sqrt(1.0 - b2), amsgrad=False, maximize=False)
    except (TypeError, RuntimeError):
        return False
    m_ref, v_ref = 0.9 * 0.1 + 0.1 * 0.25, 0.999 * 0.02 + 0.001 * 0.25 ** 2
    alpha = lr * math.sqrt(1 - b2) / (1 - b1)
    w_ref = 0.5 - alpha * m_ref / (math.sqrt(v_ref) + eps)
    return all(math.isclose(float(t), r, rel_tol=1e-5)
               for t, r in ((w, w_ref), (m, m_ref), (v, v_ref)))


@functools.cache
def fused_adam_support() -> tuple:
    """The Keras classes the fused update applies to; ``()`` when the private Keras or torch
    internals it needs are missing or differ (then Keras' own update runs; a warning says so).
    The one feature check of this module, run once per process."""
    classes = _keras_classes()
    problem = None if classes else ("Keras' torch optimizer internals "
                                    "(keras.src.backend.torch.optimizers) are missing or differ")
    if classes and not _kernel_matches_keras():
        classes, problem = (), "torch._fused_adam_ is missing or differs"
    if problem:
        warnings.warn(f"keras_effv2.fast: {problem} in Keras {keras.__version__} / torch "
                      f"{torch.__version__}; Adam/AdamW update through Keras' own step "
                      "(same result, slower).", RuntimeWarning, stacklevel=2)
    return classes


def _same_dense_layout(ref: torch.Tensor, *others: torch.Tensor) -> bool:
    if ref.device.type != "cpu" or ref.dtype not in _FLOATS or not _dense(ref):
        return False
    return all(not t.is_sparse and t.device == ref.device and t.dtype == ref.dtype
               and t.shape == ref.shape and t.stride() == ref.stride() for t in others)


def _dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: some permutation of ``t`` is contiguous."""
    order = sorted(range(t.ndim), key=lambda d: -t.stride(d))
    return t.permute(order).is_contiguous()


def _follow_layout(slot, weight: torch.Tensor) -> torch.Tensor:
    """``slot``'s value, re-laid out with ``weight``'s strides if they differ (same values)."""
    value = slot.value
    if value.stride() != weight.stride() and value.shape == weight.shape and _dense(weight):
        value.data = torch.empty_like(weight, dtype=value.dtype).copy_(value.detach())
    return value


def fused_update_step(optimizer, grads, variables, learning_rate) -> bool:
    """Apply one Keras Adam update to ``variables`` in a fused pass; False (nothing done)
    when some weight does not qualify, in which case Keras' own update must run."""
    if not all(hasattr(optimizer, m) for m in _SLOT_MEMBERS):  # built by the first step
        return False
    index = [optimizer._get_variable_index(v) for v in variables]
    weights = [v.value for v in variables]
    slots = [optimizer._momentums, optimizer._velocities]
    if optimizer.amsgrad:
        slots.append(optimizer._velocity_hats)
    per_slot = [[_follow_layout(kind[i], w) for i, w in zip(index, weights, strict=True)]
                for kind in slots]
    for j, (w, g) in enumerate(zip(weights, grads, strict=True)):
        if g is None or not _same_dense_layout(w, g, *(s[j] for s in per_slot)):
            return False
    step = float(optimizer.iterations.value) + 1.0
    beta_1, beta_2 = float(optimizer.beta_1), float(optimizer.beta_2)
    eps = float(optimizer.epsilon) / math.sqrt(1.0 - beta_2 ** step)
    steps = [torch.tensor(step, dtype=torch.float32)] * len(weights)
    torch._fused_adam_(weights, list(grads), per_slot[0], per_slot[1],
                       per_slot[2] if optimizer.amsgrad else [], steps,
                       lr=float(keras.ops.convert_to_numpy(learning_rate)), beta1=beta_1,
                       beta2=beta_2, weight_decay=0.0, eps=eps,
                       amsgrad=bool(optimizer.amsgrad), maximize=False)
    return True


@contextlib.contextmanager
def fused_adam(optimizer):
    """Within the block, ``optimizer`` (a Keras ``Adam``/``AdamW``, or a ``LossScaleOptimizer``
    around one) updates through :func:`fused_update_step`; any other optimizer is untouched."""
    target = getattr(optimizer, "inner_optimizer", optimizer)
    if type(target) not in fused_adam_support():
        yield
        return
    keras_step = target._parallel_update_step

    def update_step(grads, variables, learning_rate):
        with torch.no_grad():
            if not fused_update_step(target, grads, variables, learning_rate):
                keras_step(grads, variables, learning_rate)

    vars(target)["_parallel_update_step"] = update_step  # shadows the class's method
    try:
        yield
    finally:
        vars(target).pop("_parallel_update_step", None)
