"""The JAX fast training path trains the same weights as the plain model, on its variables.

References: the plain Keras model's ``train_on_batch`` (XLA's own convolutions and their
autodiff gradients) from identical weights, BN statistics and seed-generator states; for the
depthwise gradient alone, ``jax.grad`` of ``keras.ops.depthwise_conv`` (``lax`` grouped conv).
Tolerances: the fast graph sums the same float32 products in another order (k*k shifted
slices, per-image filter-gradient sums, matmuls for 1x1 convs), ~1e-6 relative per op;
measured max |fast - plain| after one step 1.2e-7 (SGD and Adam).
Negative controls (2026-12-03): tap 0 of the depthwise filter gradient zeroed -> the SGD case
fails (s2_b00/dw_conv/kernel off by 3.3e-3) and the layer test (filter gradient off by 13.5);
tap 0 of the fused convs' filter gradient zeroed -> s0_b00/project_conv/kernel off by 5.6e-3.
2026-12-07: the filter-gradient scan over the sharded batch axis restored -> the data-parallel
test finds an all-gather in the depthwise gradient's program.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
from helpers import normal_images, to_numpy
from test_fast_path import randomize_batchnorm

from keras_effv2.configs import VARIANTS, _stages
from keras_effv2.fast import optimize_for_training
from keras_effv2.model import build_efficientnetv2

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="keras_effv2.fast._jax_train (custom JAX gradients) is the JAX backend's training "
           "path; torch's is tested in test_fast_training.py, TensorFlow returns the model")

# Small (cheap XLA compile) but every case the fast path rewrites: FusedMBConv expand 1 with a
# residual and expand 4 (dense convs kept), MBConv with 1x1 expand/project as matmuls, a 5x5
# stride-2 depthwise on an even map (asymmetric "same" pads), a 5x5 and a 3x3 stride-1
# depthwise with residual + stochastic depth, SE, dropout in the head.
TINY = dataclasses.replace(VARIANTS["s"], width=1.0, depth=1.0, stages=_stages(
    "fused r1 k3 s1 e1 i16 o16", "fused r1 k3 s2 e4 i16 o24",
    "mbconv r2 k5 s2 e4 i24 o32 se0.25", "mbconv r2 k3 s2 e4 i32 o40 se0.25"))
SIZE = 64


def _pair():
    """(plain, fast view of an identical twin): same weights, BN statistics, seed states."""
    models = []
    for _ in range(2):
        keras.utils.set_random_seed(3)
        model = build_efficientnetv2(TINY, input_shape=(SIZE, SIZE, 3),
                                     classes=10, dropout_rate=0.3, drop_path_rate=0.3)
        models.append(randomize_batchnorm(model, seed=3))
    return models[0], optimize_for_training(models[1])


def _values(model):  # "variables" includes the seed-generator states
    return [to_numpy(v).copy() for v in model.variables]


# Adam runs the same gradients through an elementwise update: the SGD case guards the
# gradients in the default suite, Adam (two more XLA compiles, ~80 s here) with --run-large.
@pytest.mark.parametrize("optimizer", ["sgd", pytest.param("adam", marks=pytest.mark.large)])
def test_one_training_step_updates_every_variable_as_the_plain_model(optimizer):
    plain, fast = _pair()
    x, y = normal_images(4, SIZE, seed=4), np.array([1, 3, 5, 7])
    before = _values(plain)
    # Adam's first step is lr * g / (|g| + eps): with the default eps=1e-7 a weight whose
    # gradient is float noise moves by +-lr at random; eps=1e-3 keeps it smooth in g.
    opt = {"sgd": lambda: keras.optimizers.SGD(0.5),
           "adam": lambda: keras.optimizers.Adam(epsilon=1e-3)}[optimizer]
    losses = []
    for model in (plain, fast):
        model.compile(optimizer=opt(), loss=keras.losses.SparseCategoricalCrossentropy(True))
        losses.append(float(model.train_on_batch(x, y)))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    trainable = {id(v) for v in plain.trainable_variables}
    moving = {id(v) for v in plain.non_trainable_variables if "moving" in v.path}
    changed, worst = {"trainable": 0, "moving": 0}, 0.0
    for v, b, p, f in zip(plain.variables, before, _values(plain), _values(fast), strict=True):
        np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-5, err_msg=v.path)
        worst = max(worst, float(np.abs(f - p).max()))
        if optimizer == "sgd" and id(v) in trainable:
            # 1e-3 of the update's scale, plus the rounding of w - lr*g (a few ulps of w).
            tol = 1e-3 * np.abs(p - b).max() + 8 * np.spacing(np.abs(b).max())
            assert np.abs((f - b) - (p - b)).max() <= tol, v.path
        for kind, ids in (("trainable", trainable), ("moving", moving)):
            changed[kind] += id(v) in ids and not np.allclose(f, b, rtol=1e-6, atol=0)
    assert changed["trainable"] > 0.9 * len(trainable)  # a real step moved nearly every weight
    assert changed["moving"] == len(moving)
    print(f"{optimizer}: max |fast - plain| over the updated variables {worst:.2e}")
    ref = to_numpy(plain.predict_on_batch(x))  # inference mode (BN moving statistics)
    assert np.abs(ref).max() > 0.05
    np.testing.assert_allclose(to_numpy(fast.predict_on_batch(x)), ref, rtol=1e-4, atol=1e-5)


def test_fast_model_shares_variables_names_and_head():
    model = build_efficientnetv2(TINY, input_shape=(SIZE, SIZE, 3), classes=10)
    fast = optimize_for_training(model)
    assert [id(v) for v in fast.variables] == [id(v) for v in model.variables]
    assert [layer.name for layer in fast.layers] == [layer.name for layer in model.layers]
    for name in ("head_dropout", "predictions"):  # progressive_fit finds them by name
        assert fast.get_layer(name) is model.get_layer(name)
    assert fast.input.shape == model.input.shape and fast.output.shape == model.output.shape
    with pytest.raises(TypeError, match="functional"):
        optimize_for_training(keras.Sequential([keras.layers.Dense(2)]))


@pytest.mark.parametrize("fmt,k,s,size", [
    ("channels_last", 3, 1, 7), ("channels_last", 3, 2, 8), ("channels_last", 5, 2, 9),
    ("channels_last", 5, 2, 8), ("channels_first", 3, 2, 7)])
def test_depthwise_values_and_gradients_match_the_library_conv(fmt, k, s, size):
    import jax

    from keras_effv2.fast._jax_train import depthwise

    rng = np.random.default_rng(14)
    shape = (3, size, size, 5) if fmt == "channels_last" else (3, 5, size, size)
    x = rng.normal(size=shape).astype("float32")
    w = rng.normal(size=(k, k, 5, 1)).astype("float32")

    def ref_fn(x, w):
        return keras.ops.depthwise_conv(x, w, s, "same", fmt)

    def fast_fn(x, w):
        return depthwise(x, w, s, fmt)

    ref = jax.jit(ref_fn)(x, w)
    cot = rng.normal(size=ref.shape).astype("float32")
    np.testing.assert_allclose(jax.jit(fast_fn)(x, w), ref, atol=1e-5)
    want, got = [jax.jit(jax.grad(lambda x, w, f=f: (f(x, w) * cot).sum(), (0, 1)))(x, w)
                 for f in (ref_fn, fast_fn)]
    for name, g, r in zip(("input", "filter"), got, want, strict=True):
        assert np.abs(r).max() > 1.0
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5, err_msg=name)


SHARDED_FILTER_GRADIENTS = """
import json, os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, keras, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from keras_effv2.fast._jax_train import dense_conv, depthwise
mesh = Mesh(np.array(jax.devices()), ("batch",))
rng, out = np.random.default_rng(5), {}
cases = [("depthwise", depthwise, "channels_last", 5, 1), ("depthwise", depthwise,
         "channels_first", 5, 1), ("dense_conv", dense_conv, "channels_last", 5, 4)]
with keras.distribution.DataParallel(devices=keras.distribution.list_devices()).scope():
    for name, fn, fmt, cin, cout in cases:
        x = rng.normal(size=(4, 8, 8, cin) if fmt == "channels_last" else (4, cin, 8, 8))
        w = rng.normal(size=(3, 3, cin, cout)).astype("float32")
        ref_fn = ((lambda x, w: keras.ops.depthwise_conv(x, w, 2, "same", fmt))
                  if name == "depthwise" else (lambda x, w: keras.ops.conv(x, w, 2, "same", fmt)))
        cot = rng.normal(size=ref_fn(x.astype("float32"), w).shape).astype("float32")
        grads = [jax.jit(jax.grad(lambda x, w, f=f: (f(x, w) * cot).sum(), (0, 1)))
                 for f in (lambda x, w: fn(x, w, 2, fmt), ref_fn)]
        sharded = jax.device_put(x.astype("float32"), NamedSharding(mesh, PartitionSpec("batch")))
        hlo = grads[0].lower(sharded, w).compile().as_text()
        got, want = grads[0](sharded, w), grads[1](x.astype("float32"), w)
        out[f"{name} {fmt}"] = {
            "all-gather": hlo.count(" all-gather("), "all-reduce": hlo.count(" all-reduce("),
            "errors": [float(np.abs(np.asarray(g) - np.asarray(r)).max()) for g, r in
                       zip(got, want)], "scale": [float(np.abs(np.asarray(r)).max()) for r in want]}
print("RESULT" + json.dumps(out))
"""


def test_filter_gradients_stay_on_each_device_under_data_parallel():
    """On a batch sharded over 2 devices (``keras.distribution.DataParallel``), each device
    sums its own images' filter gradient and the parts are added by one all-reduce: no
    all-gather of the activations (a scan over the sharded batch axis itself gathered ``x``,
    and the output gradient where it is sharded too, to every device, which then summed the
    whole batch). Gradients as the library convolution's on the unsharded batch."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "KERAS_BACKEND": "jax",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(
               [root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SHARDED_FILTER_GRADIENTS], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    for case, found in json.loads(line[len("RESULT"):]).items():
        assert found["all-gather"] == 0 and found["all-reduce"] >= 1, (case, found)
        for name, err, scale in zip(("input", "filter"), found["errors"], found["scale"],
                                    strict=True):
            assert scale > 1.0 and err <= 1e-5 * scale, (case, name, err, scale)
