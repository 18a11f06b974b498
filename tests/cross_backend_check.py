"""Run under another KERAS_BACKEND: load files saved by the test's backend, compare outputs.

Usage: KERAS_BACKEND=jax python tests/cross_backend_check.py DIR
DIR holds model.keras, model.weights.h5 and io.npz (inputs, expected outputs); exits 1 on a
mismatch above 1e-4.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_effv2  # noqa: E402,F401  (registers the custom layers)


def main(directory: str) -> int:
    io = np.load(os.path.join(directory, "io.npz"))
    x, expected = io["inputs"], io["outputs"]
    rebuilt = keras_effv2.EfficientNetV2(
        "b0", weights=os.path.join(directory, "model.weights.h5"), include_preprocessing=False,
        classifier_activation=None,
    )
    loaded = keras.saving.load_model(os.path.join(directory, "model.keras"))
    worst = 0.0
    for name, model in (("weights.h5", rebuilt), (".keras", loaded)):
        got = keras.ops.convert_to_numpy(model(x, training=False))
        diff = float(np.abs(got - expected).max())
        worst = max(worst, diff)
        print(f"{keras.backend.backend()} {name}: max |diff| {diff:.2e}")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
