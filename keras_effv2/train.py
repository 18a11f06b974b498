"""Fine-tune EfficientNetV2 with a recipe, optionally with progressive learning.

Writes into --output: model.keras, curves.png, log.csv, tensorboard/, result.json. A killed
run resumes from its last backup when the same command is run again (backup/ in --output).
"""

from __future__ import annotations

import argparse
import json
import sys

EXAMPLES = """examples:
  # the paper's Flowers-102 fine-tune of EfficientNetV2-S (ImageNet-1k init), plan only
  python -m keras_effv2.train --dataset oxford_flowers102 --model s --weights imagenet --dry-run
  # the same on one GPU / Colab: batch 64, lr scaled, mixed precision, progressive sizes
  python -m keras_effv2.train --recipe colab-oxford_flowers102 --progressive automl-s
  # CIFAR-10 with two JAX/TF devices, 2000 steps
  python -m keras_effv2.train --dataset cifar10 --distribution data-parallel --steps 2000
  # your own images: one subfolder per class (or train/ and test/ subfolders)
  python -m keras_effv2.train --dataset folder:/data/pets --model b0 --batch-size 32
  # Stanford Cars: put the manual copy in DATA_DIR/downloads/manual/ (see the README)
  python -m keras_effv2.train --dataset cars196 --data-dir /data/tfds
  # the offline main job (B0 from scratch on scikit-learn digits, 3 stages)
  python -m keras_effv2.train --recipe digits --output runs/digits
  # a custom progressive schedule
  python -m keras_effv2.train --dataset cifar100 --progressive stages=3,size=128:224,randaug=5:10
"""


def build_parser() -> argparse.ArgumentParser:
    from keras_effv2.training import PRESETS, RECIPES

    p = argparse.ArgumentParser(
        prog="python -m keras_effv2.train", description=__doc__,
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help="cifar10, cifar100, oxford_flowers102, cars196, digits, "
                   "folder:PATH (default: the recipe's dataset)")
    p.add_argument("--recipe", help=f"one of {', '.join(sorted(RECIPES))} (default: "
                   "paper-<dataset>)")
    p.add_argument("--model", help="variant: b0, b1, b2, b3, s, m, l, xl (default: recipe's)")
    p.add_argument("--weights", help="imagenet, imagenet21k, imagenet21k-ft1k, a .weights.h5 "
                   "path, or 'none' for random init (default: recipe's)")
    p.add_argument("--progressive", help=f"'none', a preset ({', '.join(sorted(PRESETS))}) or "
                   "a spec 'stages=3,size=128:224,randaug=5:10,mixup=0:0.2,dropout=0.1:0.3'")
    p.add_argument("--batch-size", type=int, help="global batch; the learning rate is scaled "
                   "linearly unless --learning-rate is given")
    p.add_argument("--learning-rate", type=float)
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=int, help="total training steps (default: recipe's)")
    steps.add_argument("--epochs", type=int, help="total epochs, split over the stages")
    p.add_argument("--steps-per-epoch", type=int, help="default: train examples // batch")
    p.add_argument("--mixed-precision", choices=["on", "off"], help="default: recipe's")
    p.add_argument("--output", default="runs/train", help="output folder (default runs/train)")
    p.add_argument("--data-dir", help="tensorflow-datasets data_dir")
    p.add_argument("--distribution", choices=["none", "data-parallel"], default="none",
                   help="data-parallel: keras.distribution.DataParallel on jax, "
                   "tf.distribute.MirroredStrategy on tensorflow; not offered on torch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic tf.data and TensorFlow ops (slower): reruns, and a "
                   "killed run resumed, end with the same weights as an uninterrupted run")
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1,
                   help="1: progress bars (default), 2: one line per epoch, 0: silent")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved recipe and per-stage schedule as JSON and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    from keras_effv2.training import make_plan, run_recipe

    overrides = dict(
        model=args.model, batch_size=args.batch_size, learning_rate=args.learning_rate,
        total_steps=args.steps, progressive=args.progressive,
        mixed_precision=None if args.mixed_precision is None else args.mixed_precision == "on",
        weights=args.weights)
    try:
        if args.dry_run:
            plan = make_plan(args.recipe, dataset=args.dataset, epochs=args.epochs,
                             steps_per_epoch=args.steps_per_epoch, **overrides)
            plan["distribution"] = args.distribution
            print(json.dumps(plan, indent=2))
            return 0
        result = run_recipe(
            args.recipe, dataset=args.dataset, output_dir=args.output, data_dir=args.data_dir,
            epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
            distribution=args.distribution, verbose=args.verbose, seed=args.seed,
            tensorboard=not args.no_tensorboard, deterministic=args.deterministic,
            **overrides)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result.pop("model_object", None)
    summary = {k: result[k] for k in ("recipe", "dataset", "model", "backend", "test_accuracy",
                                      "paper_top1", "total_steps", "train_seconds")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
