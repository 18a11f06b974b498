"""Peak memory of loading a ``.weights.h5`` into a built model (run as a fresh subprocess).

``python tests/load_memory_probe.py VARIANT DIR`` (``KERAS_BACKEND`` picks the backend)
builds the variant with ``weights=None`` (logits, no preprocessing), saves its weights to
``DIR/probe.weights.h5`` (what the cache holds) and zeroes every variable; then, with no free
heap left (``malloc_trim``) and the kernel's peak-RSS mark reset (``/proc/self/clear_refs``),
loads the file back with ``keras_effv2.weights.load_file``. Prints one JSON line: RSS before
the build and before the load, the peak during the load (KiB), the model's weight bytes, and
whether every variable got its saved value back. One model in the process: its weights are
the baseline.
"""

from __future__ import annotations

import argparse
import gc
import json


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> None:
    """Set VmHWM to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variant")
    parser.add_argument("dir")
    args = parser.parse_args()

    import os

    import keras
    import numpy as np

    import keras_effv2
    from keras_effv2.weights import load_file
    from keras_effv2.weights.memory import release_freed_memory

    gc.collect()
    before_build = status_kib("VmRSS")
    model = keras_effv2.EfficientNetV2(args.variant, weights=None, include_preprocessing=False,
                                       classifier_activation=None)
    path = os.path.join(args.dir, "probe.weights.h5")
    model.save_weights(path)
    sums = [float(np.sum(keras.ops.convert_to_numpy(v), dtype="float64")) for v in model.weights]
    for v in model.weights:
        v.assign(np.zeros(v.shape, v.dtype))
    gc.collect()
    release_freed_memory()  # no free heap left over from the build to absorb the load
    before_load = status_kib("VmRSS")
    reset_peak()
    load_file(model, path)
    peak = status_kib("VmHWM")
    os.remove(path)
    weight_bytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights)
    restored = all(float(np.sum(keras.ops.convert_to_numpy(v), dtype="float64")) == s
                   for v, s in zip(model.weights, sums, strict=True))
    print(json.dumps({"before_build_kib": before_build, "before_load_kib": before_load,
                      "peak_kib": peak, "weight_bytes": weight_bytes, "restored": restored}))


if __name__ == "__main__":
    main()
