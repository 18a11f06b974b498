"""Command line: convert an upstream checkpoint to a keras_effv2 ``.weights.h5``.

Example:
    $ python -m weights_tools convert --source automl --variant b0 \\
        --checkpoint efficientnetv2-b0-21k/ --output b0.in21k.weights.h5 --no-ema
"""

from __future__ import annotations

import argparse
import sys

from keras_effv2.porting.assign import PortingError
from keras_effv2.porting.convert import SOURCES, port_tensors, read_checkpoint, save_weights_atomic
from keras_effv2.porting.readers import CheckpointError
from weights_tools.readers import read_timm_checkpoint
from weights_tools.verify import VerificationError, verify_against_source


def convert(source, variant, checkpoint, output, verify=False, ema=True, verify_size=128):
    """Read, port strictly, optionally verify, then write ``output`` atomically."""
    if source == "timm":
        tensors, extra = read_timm_checkpoint(checkpoint), {}
    else:
        tensors, extra = read_checkpoint(source, checkpoint, ema=ema)
    model = port_tensors(variant, source, tensors, extra)
    report = None
    if verify:
        top = any(w.path.startswith("predictions/") for w in model.weights)
        classes = model.output_shape[-1] if top else None
        report = verify_against_source(model, source, variant, tensors, checkpoint, classes,
                                       image_size=verify_size)
    save_weights_atomic(model, output)
    return model, report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m weights_tools")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="convert an upstream checkpoint to .weights.h5")
    c.add_argument("--source", required=True, choices=sorted(SOURCES))
    c.add_argument("--variant", required=True, help="b0 .. b3, s, m, l, xl")
    c.add_argument("--checkpoint", required=True,
                   help="timm .safetensors/.pth/.bin, automl checkpoint folder or prefix, "
                        "or keras.applications .h5")
    c.add_argument("--output", required=True, help="OUT.weights.h5 (written atomically)")
    c.add_argument("--verify", action="store_true",
                   help="compare logits with the source implementation (max|Δ| 1e-4, top-5)")
    c.add_argument("--verify-size", type=int, default=128)
    c.add_argument("--no-ema", dest="ema", action="store_false",
                   help="automl: read raw variables, not the ExponentialMovingAverage shadows")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _, report = convert(args.source, args.variant, args.checkpoint, args.output,
                            verify=args.verify, ema=args.ema, verify_size=args.verify_size)
    except (CheckpointError, PortingError, VerificationError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    if report is not None:
        print(f"verified against {report.source}: max|Δ logit| = {report.max_abs_diff:.3g}, "
              f"top-5 equal at {report.image_size}px")
    return 0
