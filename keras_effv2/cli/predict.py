"""``keras-effv2 predict IMAGE...``: top-k ImageNet classes of photos with a pretrained model.

Each image is resized and cropped by its weight set's own eval transform (size, crop_pct,
crop mode, interpolation: :mod:`keras_effv2.eval_transforms`, with PIL as timm does); the
model normalises inside (``include_preprocessing=True``) and ends in a softmax.

Example:
    $ keras-effv2 predict cat.jpg --model s --weights imagenet --top 5
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

from keras_effv2.cli.errors import FAILURE, CliError

HELP = "classify images with a pretrained model (top-k ImageNet classes)"
DESCRIPTION = ("Classify images with pretrained EfficientNetV2 weights. Each image goes through "
               "the weight set's own evaluation resize/crop; scores are softmax probabilities.")
EXAMPLES = """examples:
  keras-effv2 predict cat.jpg dog.jpg --model s --weights imagenet
  keras-effv2 predict photo.jpg --model b0 --weights imagenet21k-ft1k --top 3
  keras-effv2 predict photo.jpg --model b3 --weights imagenet21k --json

variants: b0 b1 b2 b3 s m l xl; tags: imagenet (in1k), imagenet21k (in21k, 21843 classes),
imagenet21k-ft1k (in21k_ft_in1k); 'keras-effv2 info' lists which exist for each variant."""


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG...)")
    parser.add_argument("--model", default="s", help="variant: b0 b1 b2 b3 s m l xl (default s)")
    parser.add_argument("--weights", default="imagenet",
                        help="weight tag: imagenet, imagenet21k, imagenet21k-ft1k or the timm "
                             "tags in1k, in21k, in21k_ft_in1k (default imagenet)")
    parser.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")


def resolve(model: str, weights: str):
    """``WeightsSpec`` for the variant/tag; :class:`CliError` naming what is accepted."""
    from keras_effv2.configs import get_variant
    from keras_effv2.weights import get_weights_spec

    try:
        return get_weights_spec(get_variant(model).name, weights)
    except ValueError as e:
        raise CliError(str(e)) from e


def check_images(paths: list[str]) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise CliError(f"image file(s) not found: {', '.join(repr(p) for p in missing)}.")


def load_images(paths: list[str], transform):
    """Stacked ``(N, size, size, 3)`` float32 array in ``[0, 255]``."""
    import numpy as np

    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:
        raise CliError("predict reads images with Pillow: pip install pillow", FAILURE) from e
    out = []
    for path in paths:
        try:
            with Image.open(path) as image:
                out.append(transform(image))
        except (UnidentifiedImageError, OSError) as e:
            raise CliError(f"cannot read {path!r} as an image ({type(e).__name__}: {e}); "
                           "accepted: any format Pillow opens (JPEG, PNG, BMP, WebP...).") from e
    return np.stack(out)


def predict(paths: list[str], spec, top: int = 5) -> list[dict]:
    """``[{"image", "weights", "top": [{"rank", "wnid", "label", "score"}]}]`` per image."""
    from keras_effv2.eval_transforms import pil_eval_transform_for
    from keras_effv2.labels import decode_predictions
    from keras_effv2.model import build_efficientnetv2
    from keras_effv2.porting.assign import PortingError
    from keras_effv2.porting.readers import CheckpointError
    from keras_effv2.pretrained import WeightsDownloadError

    images = load_images(paths, pil_eval_transform_for(spec))
    try:  # download progress goes to stderr: stdout holds the results (maybe JSON) only
        with contextlib.redirect_stdout(sys.stderr):
            model = build_efficientnetv2(spec.variant, weights=spec.alias)
    except (WeightsDownloadError, PortingError, CheckpointError) as e:
        raise CliError(f"could not load weights {spec.key!r}: {e}", FAILURE) from e
    probs = model.predict(images, batch_size=8, verbose=0)
    results = []
    for path, row in zip(paths, decode_predictions(probs, top=top), strict=True):
        results.append({
            "image": path, "weights": spec.key, "eval_size": spec.eval_size,
            "top": [{"rank": i + 1, "wnid": w, "label": name, "score": score}
                    for i, (w, name, score) in enumerate(row)],
        })
    return results


def run(args) -> int:
    check_images(args.images)
    spec = resolve(args.model, args.weights)
    if not 1 <= args.top <= spec.num_classes:
        raise CliError(f"--top must be between 1 and {spec.num_classes}; got {args.top}.")
    results = predict(args.images, spec, args.top)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"{r['image']}  (EfficientNetV2-{spec.variant.upper()} {spec.key}, "
              f"{spec.eval_size}px)")
        for t in r["top"]:
            print(f"  {t['rank']:>2}. {t['score']:7.2%}  {t['label']}  ({t['wnid']})")
    return 0
