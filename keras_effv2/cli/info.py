"""``keras-effv2 info``: variants, weight sets, the weights cache and the Keras backend.

Example:
    $ keras-effv2 info --variant s
    $ keras-effv2 info --json
"""

from __future__ import annotations

import json
import os

from keras_effv2.cli.errors import CliError

HELP = "list variants, weight sets (tags, URLs, preprocessing), the cache and the backend"
DESCRIPTION = ("Show the variants (parameters, blocks, image sizes), the registered weight sets "
               "(tag, classes, preprocessing, published top-1, URL, whether cached), where the "
               "weights cache is and which Keras backend is active.")
EXAMPLES = """examples:
  keras-effv2 info
  keras-effv2 info --variant s
  KERAS_BACKEND=jax keras-effv2 info --json"""


def add_arguments(parser) -> None:
    parser.add_argument("--variant", help="only this variant (b0 b1 b2 b3 s m l xl)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")


def _pp(w) -> str:
    pp = w["preprocessing"]
    mean = "/".join(f"{m:.3f}" for m in pp["mean"])
    std = "/".join(f"{s:.3f}" for s in pp["std"])
    return (f"mean {mean} std {std}, {pp['crop_mode']} crop_pct {pp['crop_pct']}, "
            f"{pp['interpolation']}")


def collect(variant: str | None = None) -> dict:
    """Everything ``info`` prints, as a JSON-serialisable dict."""
    import keras

    from keras_effv2.configs import VARIANTS, get_variant
    from keras_effv2.version import __version__
    from keras_effv2.weights import MIRROR_ENV, WEIGHTS, cache_dir, list_weights

    try:
        names = [get_variant(variant).name] if variant else list(VARIANTS)
    except ValueError as e:
        raise CliError(str(e)) from e
    cache = cache_dir()
    cached = set(os.listdir(cache)) if os.path.isdir(cache) else set()
    weights = []
    for v in names:
        for w in list_weights(v):
            w["cached"] = WEIGHTS[w["key"]].converted_name in cached
            weights.append(w)
    variants = [{
        "name": v, "params_total": VARIANTS[v].params_total,
        "params_trainable": VARIANTS[v].params_trainable, "blocks": VARIANTS[v].num_blocks,
        "train_size": VARIANTS[v].train_size, "eval_size": VARIANTS[v].eval_size,
        "tags": [w["alias"] for w in weights if w["variant"] == v],
    } for v in names]
    size = sum(os.path.getsize(os.path.join(cache, f)) for f in cached
               if os.path.isfile(os.path.join(cache, f)))
    return {
        "version": __version__, "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "cache": {"dir": cache, "files": sum(w["cached"] for w in weights), "bytes": size,
                  "mirror": os.environ.get(MIRROR_ENV)},
        "variants": variants, "weights": weights,
    }


def run(args) -> int:
    info = collect(args.variant)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = info["cache"]
    print(f"keras_effv2 {info['version']}  backend: {info['backend']} "
          f"(keras {info['keras_version']}; set KERAS_BACKEND to change)")
    print(f"weights cache: {c['dir']}  ({c['files']} converted weight sets shown cached, "
          f"{c['bytes'] / 2**20:.1f} MiB in the folder)")
    print(f"mirror: {c['mirror'] or 'none (KERAS_EFFV2_WEIGHTS_MIRROR unset: upstream hosts)'}")
    print("\nvariants:")
    print(f"  {'name':<4} {'params':>12} {'blocks':>6} {'train':>5} {'eval':>5}  tags")
    for v in info["variants"]:
        print(f"  {v['name']:<4} {v['params_total']:>12,} {v['blocks']:>6} {v['train_size']:>5} "
              f"{v['eval_size']:>5}  {', '.join(v['tags'])}")
    print("\nweight sets:")
    for w in info["weights"]:
        top1 = f"top-1 {w['top1']}" if w["top1"] else "top-1 n/a"
        print(f"  {w['key']:<17} {w['alias']:<17} {w['num_classes']:>5} classes  "
              f"{w['train_size']}/{w['eval_size']}px  {top1:<11} "
              f"{'cached' if w['cached'] else 'not cached'}")
        print(f"      {_pp(w)}")
        print(f"      source: {w['preprocessing']['source']}")
        print(f"      {w['url']}")
    return 0
