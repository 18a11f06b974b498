"""fast/_torch_optim.py: Keras' Adam update computed by torch's fused kernel.

The reference is Keras' own torch ``Adam``/``AdamW`` (``optimizer.apply`` without the fused
step) from the same weights, gradients and optimizer configuration, over three steps (the bias
corrections change every step). Tolerance: the two compute the same formula in a different
order (torch's ``eps / sqrt(1 - b2^t)`` form, ``lerp`` for the first moment), a few
float32 ulps per step: rtol 1e-5 plus 4 ulps of each array's largest magnitude.
``eps=1e-3`` makes the epsilon placement count: with Keras' epsilon passed to torch
unconverted, the weights end up to 0.016 off. A gradient in another memory layout than its
weight must take Keras' update (the fused kernel walks raw memory: 0.057 off if it does not).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers import to_numpy

TORCH = keras.backend.backend() == "torch"
pytestmark = pytest.mark.skipif(not TORCH, reason="the fused update is the torch backend's")

SHAPES = [(3, 3, 8, 16), (3, 3, 24, 1), (16,), (1, 1, 16, 4), (40, 10)]


def _strided(value):
    """``value`` (a torch tensor) re-laid out as _kernel_in_torch_layout lays out a kernel:
    same shape and values, memory order O, H, W, I."""
    if value.ndim != 4:
        return value
    return value.permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)


def _setup(make_optimizer, seed=0, strided=True):
    import torch

    rng = np.random.default_rng(seed)
    variables = [keras.Variable(rng.normal(size=s).astype("float32"), name=f"w{i}")
                 for i, s in enumerate(SHAPES)]
    if strided:
        for v in variables:
            v.value.data = _strided(v.value.detach())
    grads = [[torch.as_tensor(rng.normal(size=s).astype("float32")) for s in SHAPES]
             for _ in range(3)]
    if strided:
        grads = [[_strided(g) for g in step] for step in grads]
    return variables, grads, make_optimizer()


def _run(variables, grads, optimizer, fused):
    import torch

    from keras_effv2.fast._torch_optim import fused_adam

    for step in grads:
        with torch.no_grad():
            if fused:
                with fused_adam(optimizer):
                    optimizer.apply(step, variables)
            else:
                optimizer.apply(step, variables)
    return [to_numpy(v) for v in variables + list(optimizer.variables)]


def _count_fused_calls(monkeypatch):
    import torch

    from keras_effv2.fast._torch_optim import fused_adam_support

    fused_adam_support()  # the once-per-process feature check probes the kernel: not counted
    calls = []
    kernel = torch._fused_adam_
    monkeypatch.setattr(torch, "_fused_adam_", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    return calls


def _assert_close(got, ref):
    """Weights, then every optimizer variable: rtol 1e-5 plus 4 ulps of the array's largest
    magnitude (``w - update`` rounds at the weight's scale; the updates are ~lr = 0.01)."""
    for g, r in zip(got, ref, strict=True):
        atol = 4 * np.spacing(np.abs(r).max()) if r.dtype.kind == "f" else 0
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=atol)


OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(0.01, epsilon=1e-3),
    "adamw": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1, epsilon=1e-3),
    "amsgrad": lambda: keras.optimizers.Adam(0.01, epsilon=1e-3, amsgrad=True),
    "schedule_clipnorm": lambda: keras.optimizers.Adam(
        keras.optimizers.schedules.ExponentialDecay(0.01, 1, 0.5), epsilon=1e-3, clipnorm=1.0),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fused_update_equals_keras_adam_over_three_steps(name, monkeypatch):
    ref = _run(*_setup(OPTIMIZERS[name]), fused=False)
    calls = _count_fused_calls(monkeypatch)
    got = _run(*_setup(OPTIMIZERS[name]), fused=True)
    assert len(calls) == 3  # the fused kernel did the updates
    _assert_close(got, ref)
    start = _setup(OPTIMIZERS[name])[0]
    for v, r in zip(start, ref, strict=False):  # every weight really moved
        assert np.abs(r - to_numpy(v)).min() > 0


def test_strided_slots_follow_their_weight_and_other_layouts_take_keras_update(monkeypatch):
    """The kernel walks raw memory: a gradient in another layout than its weight must not
    reach it (torch computes garbage silently: 0.2 off in a direct call)."""
    import torch

    variables, grads, optimizer = _setup(OPTIMIZERS["adam"])
    ref = _run(*_setup(OPTIMIZERS["adam"]), fused=False)
    calls = _count_fused_calls(monkeypatch)
    # Contiguous gradients for strided weights: equal values, other strides.
    grads = [[g.contiguous() for g in step] for step in grads]
    assert any(g.stride() != v.value.stride() for g, v in zip(grads[0], variables, strict=True))
    got = _run(variables, grads, optimizer, fused=True)
    _assert_close(got, ref)
    assert calls == []  # Keras' update ran
    # With matching gradients the slots (built contiguous by Keras) took the weights' strides.
    variables, grads, optimizer = _setup(OPTIMIZERS["adam"])
    _run(variables, grads, optimizer, fused=True)
    for v in variables:
        for slot in (optimizer._momentums, optimizer._velocities):
            assert slot[optimizer._get_variable_index(v)].value.stride() == v.value.stride()
    assert isinstance(variables[0].value, torch.nn.Parameter)


def test_other_optimizers_are_untouched():
    from keras_effv2.fast._torch_optim import fused_adam

    for optimizer in (keras.optimizers.SGD(), keras.optimizers.Nadam()):
        method = type(optimizer)._parallel_update_step
        with fused_adam(optimizer):
            assert optimizer._parallel_update_step.__func__ is method
    adam = keras.optimizers.Adam()
    with fused_adam(adam):
        assert "_parallel_update_step" in vars(adam)
    assert "_parallel_update_step" not in vars(adam)
    scaled = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam())  # mixed_float16's
    with fused_adam(scaled):
        assert "_parallel_update_step" in vars(scaled.inner_optimizer)
    assert "_parallel_update_step" not in vars(scaled.inner_optimizer)
