"""Throughput of keras_effv2 vs ``keras.applications`` EfficientNetV2 on the current backend.

A benchmark, not a test: both models (``weights=None``, ``include_preprocessing=True``, 1000
classes, same fixed input shape) are built in one process, warmed up, then timed in
alternating A/B rounds (the order flips every round). Each round yields one ratio,
``images/s ours / images/s keras.applications``; the report gives medians.

Forward uses ``model.predict_on_batch`` (compiled on TF and JAX, ``no_grad`` on torch), the
path users take for inference and, measured on CPU for B0, faster than ``model(x,
training=False)`` on all three backends; ``--forward call`` times the latter instead. The
training step is ``model.train_on_batch`` after ``compile(optimizer="adam",
loss="sparse_categorical_crossentropy")``.

Example:
    KERAS_BACKEND=torch python -m keras_effv2.bench --cases b0_fwd,b0_train --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_effv2  # noqa: E402


@dataclass(frozen=True)
class Case:
    variant: str
    size: int
    batch: int
    mode: str  # "forward" or "train"


CASES = {
    "b0_fwd": Case("b0", 224, 32, "forward"),
    "s_fwd": Case("s", 384, 8, "forward"),
    "b0_train": Case("b0", 224, 16, "train"),
}
QUICK_SIZE, QUICK_BATCH = 64, 2
BUILDERS = {
    "b0": (keras_effv2.EfficientNetV2B0, "EfficientNetV2B0"),
    "s": (keras_effv2.EfficientNetV2S, "EfficientNetV2S"),
}


def _build_pair(case: Case, size: int):
    ours_fn, reference_name = BUILDERS[case.variant]
    kwargs = dict(weights=None, include_preprocessing=True, classes=1000,
                  input_shape=(size, size, 3))
    models = {"ours": ours_fn(**kwargs),
              "keras_apps": getattr(keras.applications, reference_name)(**kwargs)}
    if case.mode == "train":
        for model in models.values():
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return models


def _step_fn(model, mode: str, forward: str, x, y):
    if mode == "train":
        return lambda: model.train_on_batch(x, y)
    if forward == "call":
        tensor = keras.ops.convert_to_tensor(x)
        return lambda: keras.ops.convert_to_numpy(model(tensor, training=False))
    return lambda: model.predict_on_batch(x)


def run_case(name: str, case: Case, repeats: int, iters: int, warmup: int,
             forward: str = "predict_on_batch", quick: bool = False) -> dict:
    """Time one case; returns images/s per model (medians) and the median per-round ratio."""
    size, batch = (QUICK_SIZE, QUICK_BATCH) if quick else (case.size, case.batch)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 1000, (batch,)).astype("int32")
    steps = {k: _step_fn(m, case.mode, forward, x, y) for k, m in _build_pair(case, size).items()}
    for step in steps.values():
        for _ in range(warmup):
            step()
    rates = {k: [] for k in steps}
    for r in range(repeats):
        for k in (("ours", "keras_apps") if r % 2 == 0 else ("keras_apps", "ours")):
            start = time.perf_counter()
            for _ in range(iters):
                steps[k]()
            rates[k].append(batch * iters / (time.perf_counter() - start))
    ratios = [o / a for o, a in zip(rates["ours"], rates["keras_apps"], strict=True)]
    return {
        "case": name, "backend": keras.backend.backend(), "variant": case.variant,
        "mode": case.mode, "forward": forward if case.mode == "forward" else None,
        "size": size, "batch": batch, "repeats": repeats, "iters": iters,
        "ours_img_s": statistics.median(rates["ours"]),
        "keras_apps_img_s": statistics.median(rates["keras_apps"]),
        "ratio": statistics.median(ratios), "ratios": ratios,
    }


def format_table(results: list[dict]) -> str:
    head = f"{'backend':<11}{'case':<10}{'ours img/s':>12}{'k.apps img/s':>14}{'ratio':>8}"
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(f"{r['backend']:<11}{r['case']:<10}{r['ours_img_s']:>12.2f}"
                    f"{r['keras_apps_img_s']:>14.2f}{r['ratio']:>8.3f}")
    return "\n".join(rows)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " +
                        ", ".join(CASES))
    parser.add_argument("--repeats", type=int, default=10, help="timed A/B rounds")
    parser.add_argument("--iters", type=int, default=1,
                        help="steps per timed run (1: A and B as close in time as possible)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model")
    parser.add_argument("--forward", choices=("predict_on_batch", "call"),
                        default="predict_on_batch")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK_SIZE}px, batch {QUICK_BATCH}, 1 round")
    args = parser.parse_args(argv)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    repeats, iters, warmup = (1, 1, 1) if args.quick else (args.repeats, args.iters, args.warmup)
    results = []
    for name in names:
        results.append(run_case(name, CASES[name], repeats, iters, warmup, args.forward,
                                args.quick))
        print(format_table(results[-1:]).splitlines()[-1], flush=True)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
