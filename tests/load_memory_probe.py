"""Peak memory of loading weights into a built model (run as a fresh subprocess).

``python tests/load_memory_probe.py VARIANT DIR --first-use TAG`` measures the first use of a
registered tag instead: it writes a random upstream ``model.safetensors`` in timm's names and
layout (streamed to disk, one tensor at a time) into ``DIR/mirror`` at the tag's URL path, sets
``KERAS_EFFV2_WEIGHTS_MIRROR`` and ``KERAS_HOME=DIR/home``, builds the variant with
``weights=None`` and measures ``keras_effv2.weights.load(model, TAG)`` (download from the
mirror, conversion, cache, load). ``restored`` then says whether the model's weights sum to
the upstream tensors' sum (a transpose keeps the sum).

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
import os


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


def _source_shape(transform, target: tuple) -> tuple:
    """The upstream shape that ``transform`` (a transpose) turns into ``target``."""
    import numpy as np

    probe = (2, 3, 5, 7, 11)[: len(target)]
    perm = [probe.index(d) for d in transform(np.empty(probe)).shape]
    source = [0] * len(target)
    for j, p in enumerate(perm):
        source[p] = target[j]
    return tuple(source)


def write_random_timm_safetensors(model, variant: str, path: str) -> float:
    """A random timm-named ``.safetensors`` for ``model``'s shapes, written one tensor at a
    time (little memory); returns the float64 sum of its float tensors."""
    import json as _json
    import struct

    import numpy as np

    from keras_effv2.weights.porting.assign import model_weight_keys
    from keras_effv2.weights.porting.key_maps import timm_mapping

    variables = model_weight_keys(model)
    entries, offset = [], 0
    for key, m in timm_mapping(variant, include_top=True).items():
        shape = _source_shape(m.transform, tuple(variables[key].shape))
        entries.append((m.source, "F32", shape))
        if m.source.endswith(".running_var"):
            entries.append((m.source.replace("running_var", "num_batches_tracked"), "I64", ()))
    header, offset = {}, 0
    for name, dtype, shape in entries:
        size = int(np.prod(shape)) * (4 if dtype == "F32" else 8)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset,
                                                                             offset + size]}
        offset += size
    raw = _json.dumps(header).encode()
    rng, total = np.random.default_rng(0), 0.0
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _name, dtype, shape in entries:
            if dtype == "F32":
                value = rng.uniform(0.5, 1.5, size=shape).astype("float32")
                total += float(np.sum(value, dtype="float64"))
            else:
                value = np.zeros(shape, "int64")
            f.write(value.tobytes())
    return total


def first_use(args) -> None:
    import urllib.parse

    import keras
    import numpy as np

    import keras_effv2
    from keras_effv2.weights import get_weights_spec, load
    from keras_effv2.weights.memory import release_freed_memory

    spec = get_weights_spec(args.variant, args.first_use)
    gc.collect()
    before_build = status_kib("VmRSS")
    model = keras_effv2.EfficientNetV2(args.variant, weights=None, include_preprocessing=False,
                                       classifier_activation=None, classes=spec.num_classes)
    mirror = os.path.join(args.dir, "mirror")
    source = os.path.join(mirror, urllib.parse.urlsplit(spec.url).path.lstrip("/"))
    total = write_random_timm_safetensors(model, spec.variant, source)
    os.environ["KERAS_EFFV2_WEIGHTS_MIRROR"] = mirror
    os.environ["KERAS_HOME"] = os.path.join(args.dir, "home")
    gc.collect()
    release_freed_memory()
    before_load = status_kib("VmRSS")
    reset_peak()
    load(model, spec.tag)
    peak = status_kib("VmHWM")
    weight_bytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights)
    got = sum(float(np.sum(keras.ops.convert_to_numpy(v), dtype="float64"))
              for v in model.weights)
    print(json.dumps({"before_build_kib": before_build, "before_load_kib": before_load,
                      "peak_kib": peak, "weight_bytes": weight_bytes,
                      "restored": bool(abs(got - total) <= 1e-6 * abs(total)),
                      "source_bytes": os.path.getsize(source)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variant")
    parser.add_argument("dir")
    parser.add_argument("--first-use", metavar="TAG", help="measure the first use of TAG")
    args = parser.parse_args()
    if args.first_use:
        return first_use(args)

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
