"""Every private Keras/torch/TensorFlow internal keras_effv2 reads sits behind one feature check
with a public fallback (issue 19); each fallback is exercised here by simulating the missing
internal, and must give the plain path's numbers.

- ``fast/_torch_optim.py`` (torch leg): Keras' torch optimizer module gone, ``torch._fused_adam_``
  gone, or a ``_fused_adam_`` with another signature: the fast model's Adam step runs Keras'
  own update (the kernel is never called) and every variable equals the plain model's after
  one step, within test_fast_training.py's tolerances (rtol 1e-4, atol 1e-5).
- ``fast/_tensorflow.py`` (TensorFlow leg): no graph freezer: ``make_predictor`` warns and
  predicts with ``freeze=False``, equal to the model's own ``predict_on_batch``; an explicit
  ``freeze=True`` says what is missing.
- ``keras_graph.py`` (every leg): a Keras that renamed ``_get_operation_for_node``: the public paths
  find the same sublayers and chain inputs, BN folding gives the same numbers, JAX's
  ``optimize_for_training`` returns the model itself, torch's ``make_predictor`` runs
  ``predict_on_batch``.
- ``compat.py``: an unsupported Keras fails at ``import keras_effv2`` naming the range, and
  the range equals pyproject's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from helpers import random_images, to_numpy
from test_fast_recipe import TINY
from test_fast_training import _pair, _step, _values

import keras_effv2
from keras_effv2 import keras_graph
from keras_effv2.compat import (
    JAX_RANGE,
    KERAS_RANGE,
    TENSORFLOW_RANGE,
    TORCH_RANGE,
    check_keras,
    spec,
)
from keras_effv2.fast import make_predictor, optimize_for_inference, optimize_for_training
from keras_effv2.model import build_efficientnetv2

BACKEND = keras.backend.backend()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(weights=None, **kwargs):
    return build_efficientnetv2(TINY, **kwargs)


# ---- fast/_torch_optim.py ----------------------------------------------------------------

def _missing_keras_optimizers(monkeypatch):
    """A Keras that moved its torch optimizer module (Keras' own code keeps working)."""
    import importlib

    from keras_effv2.fast import _torch_optim

    real = importlib.import_module

    def moved(name, *args):
        if name.startswith(_torch_optim._KERAS_OPTIMIZERS):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(_torch_optim.importlib, "import_module", moved)


def _missing_kernel(monkeypatch):
    import torch

    monkeypatch.delattr(torch, "_fused_adam_")


def _other_signature(monkeypatch):
    import torch

    monkeypatch.setattr(torch, "_fused_adam_", lambda params, grads, lr: None)


@pytest.mark.skipif(BACKEND != "torch", reason="the fused Adam update is the torch backend's")
@pytest.mark.parametrize("simulate", [_missing_keras_optimizers, _missing_kernel,
                                      _other_signature])
def test_fused_adam_falls_back_to_keras_update(simulate, monkeypatch):
    import torch

    from keras_effv2.fast import _torch_optim

    plain, fast = _pair(_tiny, input_shape=(48, 48, 3), classes=10, dropout_rate=0.3,
                        drop_path_rate=0.3)
    simulate(monkeypatch)
    _torch_optim.fused_adam_support.cache_clear()
    calls = []
    kernel = getattr(torch, "_fused_adam_", None)
    if kernel is not None:
        monkeypatch.setattr(torch, "_fused_adam_",
                            lambda *a, **k: calls.append(1) or kernel(*a, **k))
    try:
        with pytest.warns(RuntimeWarning, match="Keras' own step"):
            assert _torch_optim.fused_adam_support() == ()
        x, y = random_images(4, 48, seed=4), np.array([1, 3, 5, 7])
        losses = [_step(m, x, y, keras.optimizers.Adam(epsilon=1e-3)) for m in (plain, fast)]
        assert calls == [] or simulate is _other_signature and len(calls) == 1  # the probe
    finally:
        _torch_optim.fused_adam_support.cache_clear()
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    before = _pair(_tiny, input_shape=(48, 48, 3), classes=10, dropout_rate=0.3,
                   drop_path_rate=0.3)[0]
    moved = 0
    for v, b, p, f in zip(plain.variables, _values(before), _values(plain), _values(fast),
                          strict=True):
        np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-5, err_msg=v.path)
        moved += not np.array_equal(b, f)
    assert moved > 0.9 * len(plain.variables)  # a real step: weights, BN statistics, seeds


@pytest.mark.skipif(BACKEND != "torch", reason="the fused Adam update is the torch backend's")
def test_fused_adam_support_is_found_here():
    """The control: with this Keras and torch the fused update is in use."""
    from keras_effv2.fast import _torch_optim

    _torch_optim.fused_adam_support.cache_clear()
    assert {c.__name__ for c in _torch_optim.fused_adam_support()} == {"Adam", "AdamW"}


# ---- fast/_tensorflow.py -----------------------------------------------------------------

@pytest.mark.skipif(BACKEND != "tensorflow", reason="graph freezing is the TensorFlow path")
def test_predictor_falls_back_to_predict_on_batch_without_graph_freezing(monkeypatch):
    from keras_effv2.fast import _tensorflow

    model = keras_effv2.EfficientNetV2B0(weights=None, input_shape=(32, 32, 3), classes=10)
    x = random_images(3, 32, seed=3)
    frozen = make_predictor(model)(x)  # the frozen graph, available here
    # A TensorFlow release that moved the private freezer.
    monkeypatch.setattr(_tensorflow, "FREEZER", ("tensorflow.python.framework.moved_in_tf_x",
                                                 "convert_variables_to_constants_v2"))
    _tensorflow._freezer.cache_clear()
    try:
        assert not _tensorflow.freezing_available()
        with pytest.warns(RuntimeWarning, match="freeze=False"):
            predict = make_predictor(model)
        got = predict(x)
        with pytest.raises(RuntimeError, match="no graph freezer"):
            make_predictor(model, freeze=True)(x)
    finally:
        _tensorflow._freezer.cache_clear()
    np.testing.assert_allclose(got, to_numpy(model.predict_on_batch(x)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got, frozen, rtol=1e-4, atol=1e-6)


# ---- keras_graph.py ----------------------------------------------------------------------

def test_graph_helpers_take_public_paths_with_the_same_answers(monkeypatch):
    # Every block kind, one each: JAX jit-compiles the predictor (B0 took 150 s there).
    model = _tiny(input_shape=(32, 32, 3), classes=10)
    keras_graph.graph_internals.cache_clear()
    assert keras_graph.graph_internals()
    nested = {id(x) for x in keras_graph.nested_layers(model)}
    inbound = {layer.name: [id(t) for t in keras_graph.inbound_tensors(layer)]
               for layer in model.layers[1:]}
    x = random_images(2, 32, seed=2)
    fused_ref = to_numpy(optimize_for_inference(model)(x, training=False))
    # A Keras release that renamed the attribute (Keras' own code keeps working).
    monkeypatch.setitem(keras_graph.PRIVATE_ATTRS, "operation_for_node", "_renamed_in_keras_x")
    keras_graph.graph_internals.cache_clear()
    try:
        assert not keras_graph.graph_internals()
        assert {id(x) for x in keras_graph.nested_layers(model)} == nested
        assert {layer.name: [id(t) for t in keras_graph.inbound_tensors(layer)]
                for layer in model.layers[1:]} == inbound
        assert not keras_graph.is_functional(model)
        # BN folding walks the chain through the public path: the same function.
        fused = to_numpy(optimize_for_inference(model)(x, training=False))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            predicted = make_predictor(model)(x)
            trained = optimize_for_training(model)
        if BACKEND == "jax":
            assert trained is model  # the plain model: the public path
        if BACKEND in ("jax", "torch"):
            assert any("private graph attributes" in str(w.message) for w in caught)
    finally:
        keras_graph.graph_internals.cache_clear()
    np.testing.assert_allclose(fused, fused_ref, rtol=1e-6, atol=1e-6)
    ref = to_numpy(model(x, training=False))
    np.testing.assert_allclose(predicted, ref, rtol=1e-4, atol=1e-5)


# ---- compat.py ---------------------------------------------------------------------------

def test_supported_keras_range_is_checked_and_declared():
    check_keras("3.8.0")
    check_keras(keras.__version__)  # the one installed here, tested
    for bad in ("3.7.9", "3.16.0", "4.0.0", "nightly"):
        with pytest.raises(ImportError, match=re.escape(spec(KERAS_RANGE))):
            check_keras(bad)
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        pyproject = f.read()
    assert f'"keras{spec(KERAS_RANGE)}"' in pyproject
    for extra, bounds in (("torch", TORCH_RANGE), ("tensorflow", TENSORFLOW_RANGE),
                          ("tensorflow-cpu", TENSORFLOW_RANGE), ("jax[cpu]", JAX_RANGE)):
        assert f'"{extra}{spec(bounds)}"' in pyproject, (extra, spec(bounds))


def test_import_fails_at_once_under_an_unsupported_keras():
    code = "import keras; keras.__version__ = '3.16.0'; import keras_effv2"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "ImportError: keras_effv2 supports Keras >=3.8,<3.16; this is Keras 3.16.0. "
        "Install a supported one: pip install 'keras>=3.8,<3.16'.")
