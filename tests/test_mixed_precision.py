"""Mixed precision: mixed_float16 / mixed_bfloat16 outputs, dtypes and training on each backend."""

import dataclasses

import keras
import numpy as np
import pytest
from helpers import normal_images, random_images, to_backend_layout, to_numpy

import keras_effv2
from keras_effv2.configs import VARIANTS, _stages
from keras_effv2.model import build_efficientnetv2
from keras_effv2.weights import TIMM_IGNORED_SUFFIXES, assign_weights, timm_mapping

pytest.importorskip("timm")
from helpers_timm import make_timm_model, timm_state_dict  # noqa: E402

# Max |logit error| against float32, as a fraction of the float32 logits' std (about 2 here:
# a random but well-conditioned B0 at 64 px; at 32 px the 1x1 last stage makes the random
# BN statistics ill-conditioned and errors 10x larger). Measured on CPU (TF): float16
# 0.008-0.013, bfloat16 (8-bit mantissa) 0.07-0.09.
TOLERANCE = {"mixed_float16": 0.05, "mixed_bfloat16": 0.25}
COMPUTE = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
POLICIES = list(TOLERANCE)
# float16 on the CPU is slow on torch and JAX (measured on the loaded 2-core machine: 8 B0
# training steps at 64 px took 309 s on torch, 214 s on JAX, vs 122 s / 97 s for bfloat16):
# there that case runs with --run-large; TensorFlow runs it by default.
_CPU_FP16_SLOW = keras.backend.backend() in ("torch", "jax")
TRAIN_POLICIES = [
    pytest.param("mixed_float16", marks=[pytest.mark.large] if _CPU_FP16_SLOW else []),
    "mixed_bfloat16",
]
SIZE = 32
PARITY_SIZE = 64


@pytest.fixture
def policy(request):
    keras.config.set_dtype_policy(request.param)
    yield request.param
    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="module")
def float32_reference():
    reference = make_timm_model("b0", num_classes=10, image_size=PARITY_SIZE)
    images = normal_images(4, PARITY_SIZE, seed=7)
    model = _ported(reference)
    return timm_state_dict(reference), images, to_numpy(model(to_backend_layout(images)))


def _ported(reference_or_state):
    state = (reference_or_state if isinstance(reference_or_state, dict)
             else timm_state_dict(reference_or_state))
    model = keras_effv2.EfficientNetV2B0(
        weights=None, classes=10, include_preprocessing=False, classifier_activation=None
    )
    assign_weights(model, state, timm_mapping("b0"), ignored_suffixes=TIMM_IGNORED_SUFFIXES)
    return model


@pytest.mark.parametrize("policy", POLICIES, indirect=True)
def test_outputs_close_to_float32_and_dtypes(policy, float32_reference):
    state, images, expected = float32_reference
    model = _ported(state)
    compute = COMPUTE[policy]
    assert model.dtype_policy.name == policy
    assert {v.dtype for v in model.weights} == {"float32"}  # variables stay float32
    for name in ("stem_conv", "s0_b00", "s3_b00", "head_act"):
        assert model.get_layer(name).compute_dtype == compute, name
    assert model.get_layer("s3_b00").se.compute_dtype == compute
    head = model.get_layer("predictions")
    assert (head.compute_dtype, head.variable_dtype) == ("float32", "float32")
    out = model(to_backend_layout(images), training=False)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    err = np.abs(to_numpy(out) - expected).max() / expected.std()
    assert err < TOLERANCE[policy], f"{policy}: max error {err:.4f} x logit std"
    if policy == "mixed_float16":  # bfloat16's error can swap two close logits
        np.testing.assert_array_equal(to_numpy(out).argmax(-1), expected.argmax(-1))
    # The backbone without the head keeps the compute dtype.
    trunk = keras.Model(model.inputs, model.get_layer("head_act").output)
    assert keras.backend.standardize_dtype(trunk(to_backend_layout(images[:1])).dtype) == compute


@pytest.mark.parametrize("policy", TRAIN_POLICIES, indirect=True)
def test_input_normalization_and_softmax_in_mixed_policy(policy):
    model = keras_effv2.EfficientNetV2B0(weights=None, classes=10, input_shape=(SIZE, SIZE, 3)
                                         if keras.config.image_data_format() == "channels_last"
                                         else (3, SIZE, SIZE))
    assert model.get_layer("preprocessing").compute_dtype == COMPUTE[policy]
    probs = to_numpy(model(to_backend_layout(random_images(2, SIZE, seed=8)), training=False))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("policy", TRAIN_POLICIES, indirect=True)
def test_training_steps_finite_loss_and_loss_scaling(policy):
    rng = np.random.default_rng(9)
    # 64 px: at 32 px the last stage is 1x1, and training-mode BN over 2 values has a
    # variance gradient (var + eps)**-1.5 ~ 3e4 that overflows float16 (measured on TF).
    # float16: 8 steps (see below); bfloat16 needs no loss scale: 2 steps (emulated on CPU,
    # bfloat16 ran 200 s for 8 eager JAX steps on the CI machine).
    n = 16 if policy == "mixed_float16" else 4
    x = to_backend_layout(rng.normal(size=(n, 64, 64, 3)).astype("float32"))
    y = rng.integers(0, 4, size=n)
    # Our stem, a Fused-MBConv, an MBConv with SE and the head, two stages instead of B0's six
    # (eager B0 steps under emulated bfloat16 took 315 s of the JAX leg on the CI machine).
    model = build_efficientnetv2(dataclasses.replace(
        VARIANTS["b0"], width=1.0, depth=1.0, stages=_stages(
            "fused r1 k3 s1 e1 i16 o16", "mbconv r2 k3 s2 e4 i16 o24 se0.25")),
        classes=4)
    model.compile(optimizer=keras.optimizers.SGD(0.01), run_eagerly=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False))
    # Keras wraps the optimizer in a LossScaleOptimizer for mixed_float16 (float16 gradients
    # underflow); bfloat16 has float32's exponent range and needs none.
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")
    before = to_numpy(model.get_layer("stem_conv").kernel).copy()
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    kernel = model.get_layer("stem_conv").kernel
    assert keras.backend.standardize_dtype(kernel.dtype) == "float32"
    assert np.isfinite(to_numpy(kernel)).all()
    changed = not np.array_equal(to_numpy(kernel), before)
    # A float16 step whose scaled gradients overflow is skipped and halves the scale (2**15
    # at the start): 8 steps leave room for that.
    assert changed
