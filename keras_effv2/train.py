"""Fine-tune EfficientNetV2 with a recipe, optionally with progressive learning.

Writes into --output: model.keras, curves.png, log.csv, tensorboard/, result.json. A killed
run resumes from its last backup when the same command is run again (backup/ in --output).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

EXAMPLES = """examples:
  # the paper's Flowers-102 fine-tune of EfficientNetV2-S (ImageNet-1k init), plan only
  python -m keras_effv2.train --dataset oxford_flowers102 --model s --weights imagenet --dry-run
  # the same on one GPU / Colab: batch 64, lr scaled, mixed precision, progressive sizes
  python -m keras_effv2.train --recipe colab-oxford_flowers102 --progressive automl-s
  # CIFAR-10 with two JAX/TF devices, 2000 steps
  python -m keras_effv2.train --dataset cifar10 --distribution data-parallel --steps 2000
  # two hosts, one process each (same command on both, its own --process-id; process 0 writes)
  python -m keras_effv2.train --dataset cifar10 --distribution multi-process \
      --job-addresses 10.0.0.1:12345,10.0.0.2:12345 --num-processes 2 --process-id 0
  # torch: 4 GPUs of one host, one process each (torchrun sets RANK, WORLD_SIZE, ...)
  KERAS_BACKEND=torch torchrun --nproc-per-node 4 -m keras_effv2.train --dataset cifar10 \
      --distribution multi-process
  # your own images: one subfolder per class (or train/ and test/ subfolders)
  python -m keras_effv2.train --dataset folder:/data/pets --model b0 --batch-size 32
  # Stanford Cars: put the manual copy in DATA_DIR/downloads/manual/ (see docs/training.md)
  python -m keras_effv2.train --dataset cars196 --data-dir /data/tfds
  # the offline main job (B0 from scratch on scikit-learn digits, 3 stages)
  python -m keras_effv2.train --recipe digits --output runs/digits
  # progressive vs fixed size (--progressive none), 3 seeds, interleaved: mean and spread
  python -m keras_effv2.train --recipe digits --compare-fixed --seeds 0,1,2 --output runs/cmp
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
    p.add_argument("--distribution", choices=["none", "data-parallel", "multi-process"],
                   default="none",
                   help="data-parallel: this process's devices (keras.distribution.DataParallel "
                   "on jax, tf.distribute.MirroredStrategy on tensorflow); multi-process: one "
                   "process per host (jax.distributed + DataParallel on jax, "
                   "MultiWorkerMirroredStrategy on tensorflow, torch.distributed on torch: "
                   "launch with torchrun, or give --job-addresses; torch data-parallel: one "
                   "process per GPU under torchrun)")
    p.add_argument("--job-addresses", help="multi-process: HOST:PORT of every process, process "
                   "0 first, comma-separated (jax and torch need only process 0's, the "
                   "coordinator); default $KERAS_DISTRIBUTION_JOB_ADDRESSES, or TF_CONFIG on "
                   "tensorflow, or torchrun's variables on torch")
    p.add_argument("--num-processes", type=int,
                   help="multi-process: default $KERAS_DISTRIBUTION_NUM_PROCESSES")
    p.add_argument("--process-id", type=int, help="multi-process: this process, 0 .. N-1 "
                   "(0 writes the outputs); default $KERAS_DISTRIBUTION_PROCESS_ID")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic tf.data and TensorFlow ops (slower): reruns, and a "
                   "killed run resumed, end with the same weights as an uninterrupted run")
    p.add_argument("--no-fast-path", action="store_true",
                   help="train the plain Keras model; by default torch and JAX train through "
                   "keras_effv2.fast.optimize_for_training (same weights, faster step; "
                   "TensorFlow: the model itself is the fast path)")
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1,
                   help="1: progress bars (default), 2: one line per epoch, 0: silent")
    p.add_argument("--compare-fixed", action="store_true",
                   help="run this command with the recipe's progressive schedule and with "
                   "--progressive none (same steps), once per --seeds seed, each in its own "
                   "process, alternating; print accuracy and training time, mean and spread "
                   "(OUTPUT/compare.json)")
    p.add_argument("--seeds", default="0,1,2",
                   help="--compare-fixed: comma-separated seeds (default 0,1,2)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved recipe and per-stage schedule as JSON and exit")
    return p


_COMPARE_OWN = {"--compare-fixed": 0, "--seeds": 1, "--seed": 1, "--output": 1,
                "--progressive": 1}


def _compare_args(argv: list[str]) -> list[str]:
    """``argv`` without the options that ``--compare-fixed`` sets per run."""
    out, skip = [], 0
    for token in argv:
        if skip:
            skip -= 1
            continue
        name = token.split("=", 1)[0]
        if name in _COMPARE_OWN:
            skip = 0 if "=" in token else _COMPARE_OWN[name]
            continue
        out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.compare_fixed:
        from keras_effv2.training.compare import compare_fixed

        if args.progressive is not None or args.dry_run:
            print("error: --compare-fixed runs the recipe's own schedule against "
                  "--progressive none; drop --progressive/--dry-run.", file=sys.stderr)
            return 2
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            print(f"error: --seeds must be comma-separated integers; got {args.seeds!r}.",
                  file=sys.stderr)
            return 2
        try:
            compare_fixed(_compare_args(argv), seeds, args.output)
        except (ValueError, RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    from keras_effv2.training import make_plan, run_recipe
    from keras_effv2.training.distribution import (
        initialize_multi_process,
        leave_multi_process,
        resolve_cluster,
    )

    cluster = dict(job_addresses=args.job_addresses, num_processes=args.num_processes,
                   process_id=args.process_id)
    overrides = dict(
        model=args.model, batch_size=args.batch_size, learning_rate=args.learning_rate,
        total_steps=args.steps, progressive=args.progressive,
        mixed_precision=None if args.mixed_precision is None else args.mixed_precision == "on",
        weights=args.weights)
    try:
        if args.distribution != "multi-process" and any(v is not None for v in cluster.values()):
            raise ValueError("--job-addresses, --num-processes and --process-id are for "
                             "--distribution multi-process.")
        if args.dry_run:
            plan = make_plan(args.recipe, dataset=args.dataset, epochs=args.epochs,
                             steps_per_epoch=args.steps_per_epoch, **overrides)
            plan["distribution"] = args.distribution
            if args.distribution == "multi-process":  # checked, nothing started
                plan["cluster"] = dataclasses.asdict(resolve_cluster(**cluster))
            print(json.dumps(plan, indent=2))
            return 0
        if args.distribution == "multi-process":
            initialize_multi_process(**cluster)  # before anything runs on the backend
        result = run_recipe(
            args.recipe, dataset=args.dataset, output_dir=args.output, data_dir=args.data_dir,
            epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
            distribution=args.distribution, verbose=args.verbose, seed=args.seed,
            tensorboard=not args.no_tensorboard, deterministic=args.deterministic,
            fast_path=not args.no_fast_path,
            **overrides)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        leave_multi_process()  # torch: destroy the process group
    result.pop("model_object", None)
    summary = {k: result[k] for k in ("recipe", "dataset", "model", "backend", "test_accuracy",
                                      "paper_top1", "total_steps", "train_seconds",
                                      "fast_path")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
