"""``keras-effv2 predict IMAGE...``: top-k ImageNet classes of photos with a pretrained model.

Each image is resized and cropped by its weight set's own eval transform (size, crop_pct,
crop mode, interpolation: :mod:`keras_effv2.eval_transforms`, with PIL as timm does); the
model normalises inside (``include_preprocessing=True``) and ends in a softmax. ``--weights``
may also name a ``.weights.h5`` or ``.keras`` file (:mod:`keras_effv2.cli.weights_source`).

Example:
    $ keras-effv2 predict cat.jpg --model s --weights imagenet --top 5
    $ keras-effv2 predict cat.jpg --model b0 --weights b0.weights.h5 --preprocessing imagenet
"""

from __future__ import annotations

import json
import os
import sys

from keras_effv2.cli.errors import FAILURE, CliError
from keras_effv2.cli.weights_source import Source, resolve

HELP = "classify images with a pretrained model (top-k ImageNet classes)"
DESCRIPTION = ("Classify images with pretrained EfficientNetV2 weights. Each image goes through "
               "the weight set's own evaluation resize/crop; scores are softmax probabilities.")
EXAMPLES = """examples:
  keras-effv2 predict cat.jpg dog.jpg --model s --weights imagenet
  keras-effv2 predict photo.jpg --model b0 --weights imagenet21k-ft1k --top 3
  keras-effv2 predict photo.jpg --model b3 --weights imagenet21k --json
  keras-effv2 predict photo.jpg --model b0 --weights b0.weights.h5 --preprocessing imagenet
  keras-effv2 predict photo.jpg --weights my_model.keras
  keras-effv2 predict photo.jpg --weights efficientnetv2-b0_3rdparty_in1k

variants: b0 b1 b2 b3 s m l xl; tags: imagenet (in1k), imagenet21k (in21k, 21843 classes),
imagenet21k-ft1k (in21k_ft_in1k), and the seed's mmpretrain model-zoo names
(efficientnetv2-<v>_3rdparty_in1k, _in21k-pre_3rdparty_in1k, _3rdparty_in21k; the name gives
the variant); 'keras-effv2 info' lists which exist for each variant.

weight files: a .weights.h5 file (from 'keras-effv2 convert' or model.save_weights) holds
weights only: --model names its variant, and its head (1000 or 21843 classes) is read from the
file. It records no preprocessing: --preprocessing TAG uses that weight set's mean/std and eval
resize/crop; without it the variant's built-in default (e.g. b0.in1k's, as
include_preprocessing=True builds) is used and a note on stderr says so. A .keras model file
keeps its own normalisation layer (else the chosen set's mean/std is applied), its fixed input
size and its head; its variant comes from --model or its name (efficientnetv2_<variant>)."""


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG...)")
    parser.add_argument("--model", default=None,
                        help="variant: b0 b1 b2 b3 s m l xl (default s with a tag; required "
                             "with a .weights.h5 file)")
    parser.add_argument("--weights", default="imagenet",
                        help="weight tag: imagenet, imagenet21k, imagenet21k-ft1k or the timm "
                             "tags in1k, in21k, in21k_ft_in1k (default imagenet), an mmpretrain "
                             "model-zoo name (efficientnetv2-s_3rdparty_in1k...); or a path to "
                             "a .weights.h5 file or a .keras model file")
    parser.add_argument("--preprocessing", metavar="TAG", default=None,
                        help="with a .weights.h5/.keras file: the weight tag whose mean/std and "
                             "eval resize/crop to use (default: the variant's built-in, with a "
                             "note)")
    parser.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")


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


def predict(paths: list[str], source: Source, top: int = 5) -> list[dict]:
    """``[{"image", "weights", "preprocessing", "eval_size", "top": [...]}]`` per image;
    ``top`` rows are ``{"rank", "wnid", "label", "score"}``."""
    import numpy as np

    from keras_effv2.labels import decode_predictions

    images = load_images(paths, source.transform)
    if source.normalize:
        images = source.spec.preprocessing.normalize(images)
    model = source.load()
    probs = np.asarray(model.predict(images, batch_size=8, verbose=0))
    if source.softmax:
        probs = np.exp(probs - probs.max(axis=-1, keepdims=True), dtype="float64")
        probs /= probs.sum(axis=-1, keepdims=True)
    results = []
    for path, row in zip(paths, decode_predictions(probs, top=top), strict=True):
        results.append({
            "image": path, "weights": source.name, "preprocessing": source.spec.key,
            "eval_size": source.eval_size,
            "top": [{"rank": i + 1, "wnid": w, "label": name, "score": score}
                    for i, (w, name, score) in enumerate(row)],
        })
    return results


def run(args) -> int:
    check_images(args.images)
    source = resolve(args.weights, args.model, args.preprocessing)
    if not 1 <= args.top <= source.num_classes:
        raise CliError(f"--top must be between 1 and {source.num_classes}; got {args.top}.")
    for note in source.notes:
        print(f"note: {note}", file=sys.stderr)
    results = predict(args.images, source, args.top)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    what = source.name if source.name == source.spec.key else (
        f"{source.name}, preprocessing {source.spec.key}")
    for r in results:
        print(f"{r['image']}  (EfficientNetV2-{source.variant.upper()} {what}, "
              f"{source.eval_size}px)")
        for t in r["top"]:
            print(f"  {t['rank']:>2}. {t['score']:7.2%}  {t['label']}  ({t['wnid']})")
    return 0
