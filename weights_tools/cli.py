"""Command line: ``convert`` one upstream checkpoint, ``convert-all`` registered weight sets
with a manifest, ``evaluate`` a weight set's ImageNet-1k top-1/top-5, ``export`` a model's
weights as a timm or mmpretrain state dict.

Example:
    $ python -m weights_tools convert --source automl --variant b0 \\
        --checkpoint efficientnetv2-b0-21k/ --output b0.in21k.weights.h5 --no-ema
    $ python -m weights_tools convert-all --output converted/ --variants b0 b1
    $ python -m weights_tools evaluate --variant s --weights imagenet --data tfds --limit 1000
    $ python -m weights_tools convert --source mmpretrain --variant s --checkpoint epoch_30.pth \
        --output s.weights.h5 --verify
    $ python -m weights_tools export --weights s.weights.h5 --variant s --format mmpretrain \
        --output s.pth
"""

from __future__ import annotations

import argparse
import json
import sys

from keras_effv2.weights import SOURCES, CheckpointError, PortingError, convert
from weights_tools.verify import VerificationError, verifier


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m weights_tools")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="convert an upstream checkpoint to .weights.h5")
    c.add_argument("--source", required=True, choices=sorted(SOURCES))
    c.add_argument("--variant", required=True, help="b0 .. b3, s, m, l, xl")
    c.add_argument("--checkpoint", required=True,
                   help="timm .safetensors/.pth/.bin, automl checkpoint folder or prefix, "
                        "keras.applications .h5, or mmpretrain .pth (save_checkpoint output, "
                        "training snapshots included, or a flat state dict)")
    c.add_argument("--output", required=True, help="OUT.weights.h5 (written atomically)")
    c.add_argument("--verify", action="store_true",
                   help="compare logits with the source implementation: max|Δ logit| <= "
                        "1e-4 + 1e-5 * max|reference logit| (float32 rounding grows with the "
                        "logits; weights_tools.verify) and equal top-5")
    c.add_argument("--verify-size", type=int, default=128)
    c.add_argument("--no-ema", dest="ema", action="store_false",
                   help="automl: read raw variables, not the ExponentialMovingAverage shadows")

    a = sub.add_parser("convert-all", help="convert every registered weight set (filterable) "
                                           "into DIR, verified, with DIR/manifest.json")
    a.add_argument("--output", required=True, help="output folder")
    a.add_argument("--variants", nargs="+", help="only these variants (b0 .. xl)")
    a.add_argument("--tags", nargs="+", help="only these tags (in1k, in21k, in21k_ft_in1k or "
                                             "imagenet, imagenet21k, imagenet21k-ft1k; "
                                             "mmpretrain's 3rdparty_in1k, "
                                             "in21k-pre_3rdparty_in1k, 3rdparty_in21k)")
    a.add_argument("--verify-size", type=int, default=128)

    x = sub.add_parser("export", help="write a model's weights as a timm (.safetensors) or "
                                      "mmpretrain (.pth) state dict, loadable with strict=True")
    x.add_argument("--weights", required=True,
                   help="a .weights.h5 file (with --variant), a registered tag or mmpretrain "
                        "model-zoo name, or a .keras model file")
    x.add_argument("--variant", help="b0 .. b3, s, m, l, xl (read from a .keras model or a "
                                     "model-zoo name)")
    x.add_argument("--format", required=True, choices=["timm", "mmpretrain"])
    x.add_argument("--output", required=True,
                   help="OUT.safetensors (timm) or OUT.pth (mmpretrain), written atomically")

    e = sub.add_parser("evaluate", help="ImageNet-1k top-1/top-5 with the weight set's own "
                                        "eval preprocessing")
    e.add_argument("--variant", required=True)
    e.add_argument("--weights", required=True, help="registered tag, e.g. imagenet, in1k, "
                                                    "imagenet21k-ft1k")
    e.add_argument("--data", required=True,
                   help="'tfds' or 'tfds:DATA_DIR' (imagenet2012 validation), or a folder "
                        "DIR/<wnid>/*.JPEG")
    e.add_argument("--limit", type=int, help="evaluate this many images only")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--json", dest="json_out", help="also write the result to this JSON file")
    return parser


def _convert_all(args) -> int:
    from weights_tools.convert_all import convert_all

    entries = convert_all(args.output, args.variants, args.tags, verify_size=args.verify_size)
    failed = [e["key"] for e in entries if "error" in e]
    print(f"{len(entries) - len(failed)}/{len(entries)} converted into {args.output}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _evaluate(args) -> int:
    from weights_tools.evaluate import evaluate

    r = evaluate(args.variant, args.weights, args.data, limit=args.limit,
                 batch_size=args.batch_size)
    print(f"{r.key}: top-1 {100 * r.top1:.3f}%  top-5 {100 * r.top5:.3f}%  on {r.count} images "
          f"({r.eval_size}px, {r.crop_mode} crop_pct {r.crop_pct}, {r.interpolation})")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(r.as_dict(), f, indent=2)
    return 0


def _export(args) -> int:
    from weights_tools.export_weights import run

    try:
        path = run(args)
    except (CheckpointError, PortingError, ValueError, ImportError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({args.format} state dict)")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "export":
        return _export(args)
    if args.command in ("convert-all", "evaluate"):
        from weights_tools.evaluate import DatasetError

        try:
            return (_convert_all if args.command == "convert-all" else _evaluate)(args)
        except (DatasetError, ValueError, ImportError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    try:
        check = (verifier(args.source, args.variant, args.checkpoint, args.verify_size)
                 if args.verify else None)
        report = convert(args.variant, args.source, args.checkpoint, args.output, ema=args.ema,
                         verify=check).report
    except (CheckpointError, PortingError, VerificationError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    if report is not None:
        print(f"verified against {report.source}: max|Δ logit| = {report.max_abs_diff:.3g} "
              f"({report.max_rel_diff:.3g} relative; limit {report.limit:.3g}), "
              f"top-5 equal at {report.image_size}px")
    return 0
