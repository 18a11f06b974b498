"""Where the time goes: torch.profiler top ops of keras_effv2's fast path vs timm (torch backend).

    KERAS_BACKEND=torch python bench/profile_torch.py --size 224 --batch 16 --threads 1
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import keras_effv2  # noqa: E402
from bench.timm_contenders import timm_step  # noqa: E402
from keras_effv2.fast import make_predictor, optimize_for_inference  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x = np.random.default_rng(0).uniform(0, 255, (args.batch, args.size, args.size, 3))
    x = x.astype("float32")
    model = keras_effv2.EfficientNetV2B0(weights=None, input_shape=(args.size, args.size, 3))
    timm_forward = timm_step("b0", "forward", x, np.zeros(args.batch, "int64"))
    runs = {"keras_effv2 fast path": make_predictor(optimize_for_inference(model)),
            "keras_effv2 predict_on_batch": model.predict_on_batch,
            "timm channels_last": lambda _x: timm_forward()}
    for name, fn in runs.items():
        fn(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn(x)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
        print(f"### {name}\n{table}")


if __name__ == "__main__":
    main()
