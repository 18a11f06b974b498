"""Check the fast inference path against the model on this machine's device (GPU runs).

Builds B0 and S with non-trivial BatchNorm statistics, runs ``model(x, training=False)`` and
``make_predictor(optimize_for_inference(model))`` on the backend's default device, and exits 1
when max |Δ| exceeds 1e-4 (float32) or 1 % of the float32 output scale (mixed_float16).

    KERAS_BACKEND=torch python bench/fast_parity.py
"""

from __future__ import annotations

import os
import sys

import keras
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_fast_path import randomize_batchnorm  # noqa: E402

import keras_effv2  # noqa: E402
from keras_effv2.fast import make_predictor, optimize_for_inference  # noqa: E402


def check(variant: str, size: int, policy: str, reference, x):
    """(model output, passed) for one policy; ``reference`` = (float32 output, weights)."""
    keras.config.set_dtype_policy(policy)
    model = getattr(keras_effv2, f"EfficientNetV2{variant}")(
        weights=None, input_shape=(size, size, 3), classifier_activation=None)
    if reference is None:
        randomize_batchnorm(model, seed=1)
    else:
        model.set_weights(reference[1])
    plain = keras.ops.convert_to_numpy(model.predict_on_batch(x)).astype("float32")
    fast = make_predictor(optimize_for_inference(model))(x)
    ref = plain if reference is None else reference[0]
    limit = 1e-4 if policy == "float32" else 0.01 * float(np.abs(ref).max())
    err = float(np.abs(fast - ref).max())
    print(f"{keras.backend.backend()} {variant} {size}px {policy}: fast vs float32 model "
          f"max|Δ| {err:.2e} (limit {limit:.1e}, output scale {np.abs(ref).max():.3f})")
    keras.config.set_dtype_policy("float32")
    return (plain, model.get_weights()), err <= limit


def main() -> int:
    ok = True
    for variant, size in (("B0", 224), ("S", 384)):
        x = np.random.default_rng(0).uniform(0, 255, (4, size, size, 3)).astype("float32")
        ref, passed = check(variant, size, "float32", None, x)
        ok &= passed
        ok &= check(variant, size, "mixed_float16", ref, x)[1]
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
