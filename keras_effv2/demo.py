"""The main job, offline: progressive learning of EfficientNetV2-B0 on scikit-learn's digits.

The 1,797 8x8 handwritten digits that ship with scikit-learn (no download) are upscaled to
64x64 RGB and split 80/20 (stratified, seed 0). EfficientNetV2-B0 is trained from scratch with
the ``digits`` recipe (``keras_effv2.training.RECIPES["digits"]``): three progressive stages
(image 32 -> 48 -> 64 px, RandAugment magnitude 1 -> 5, mixup 0 -> 0.1, dropout 0.1 -> 0.3),
AdamW with warmup + cosine decay, label smoothing 0.1. Each stage's settings and the final
test accuracy are printed; the model, the curves and result.json go to ``--output``.

Example:
    python -m keras_effv2.demo --output runs/demo
"""

from __future__ import annotations

import argparse
import json
import time


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/demo")
    parser.add_argument("--epochs", type=int, default=None,
                        help="total epochs over the 3 stages (default: the recipe's steps)")
    parser.add_argument("--verbose", type=int, default=2, choices=[0, 1, 2])
    args = parser.parse_args(argv)

    from keras_effv2.training import run_recipe

    start = time.time()
    result = run_recipe("digits", output_dir=args.output, epochs=args.epochs,
                        verbose=args.verbose, tensorboard=False)
    result.pop("model_object")
    summary = {k: result[k] for k in ("backend", "test_accuracy", "test_examples",
                                      "train_seconds", "epochs", "total_steps")}
    summary["wall_seconds"] = round(time.time() - start, 1)
    summary["stages"] = [{k: s[k] for k in ("image_size", "randaug_magnitude", "mixup_alpha",
                                            "dropout_rate", "initial_epoch", "epochs")}
                         for s in result["stages"]]
    print(json.dumps(summary))
    return result


if __name__ == "__main__":
    main()
