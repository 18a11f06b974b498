"""Convert every registered weight set (filterable) into a folder, with a manifest.

Each entry is fetched through the same path as ``weights="..."`` (``keras.utils.get_file``,
``KERAS_EFFV2_WEIGHTS_MIRROR`` honoured), converted strictly, verified against the source
implementation where it is installed (timm for the timm sources, mmpretrain for the
mmpretrain model-zoo files), and written
atomically as ``DIR/<converted name>``. ``DIR/manifest.json`` (written atomically; entries
from earlier runs with other filters are kept) records per entry: key, file, sha256, size,
source url and format, and parity figures or ``"not verified: <reason>"``; a failed entry
records ``error`` and writes no file.

Example:
    $ python -m weights_tools convert-all --output converted/ --variants b0 s --tags in1k
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import tempfile

from keras_effv2.configs import get_variant
from keras_effv2.weights import (
    CheckpointError,
    PortingError,
    WeightsDownloadError,
    convert,
    fetch_source,
    normalize_tag,
    registry,
)
from keras_effv2.weights.cache import discard_download, sha256_file
from weights_tools.verify import VerificationError, verifier

MANIFEST = "manifest.json"


def select(variants=None, tags=None) -> list:
    """Registered ``WeightsSpec`` s, optionally only some variants and/or tags."""
    v = {get_variant(x).name for x in variants} if variants else None
    t = {normalize_tag(x) for x in tags} if tags else None
    chosen = [w for w in registry.WEIGHTS.values()
              if (v is None or w.variant in v) and (t is None or w.tag in t)]
    if not chosen:
        raise ValueError(f"No registered weight set matches variants={variants} tags={tags}; "
                         f"registered: {', '.join(registry.WEIGHTS)}.")
    return chosen


def _parity_check(spec, source: str, verify_size: int):
    """``(verify or None, reason it is not verified)`` for ``convert``."""
    if spec.source not in ("timm", "mmpretrain"):
        return None, ("not verified: no reference implementation of google/automl's TF "
                      "checkpoints is installed (timm has no B0-B2 21k weights to compare with)")
    if importlib.util.find_spec(spec.source) is None:
        return None, f"not verified: {spec.source} is not installed"
    return verifier(spec.source, spec.variant, source, verify_size), None


def _parity(spec, report) -> dict:
    import importlib

    lib = importlib.import_module(spec.source)
    model = (f"efficientnetv2-{spec.variant}_3rdparty_in1k" if spec.source == "mmpretrain"
             else f"tf_efficientnetv2_{spec.variant}")
    return {"reference": f"{spec.source} {lib.__version__} {model}",
            "max_abs_diff": report.max_abs_diff, "max_rel_diff": report.max_rel_diff,
            "limit": report.limit, "atol": report.atol, "rtol": report.rtol,
            "top5_equal": report.top5_equal, "image_size": report.image_size}


def convert_one(spec, output_dir: str, verify_size: int = 128) -> dict:
    """Fetch, convert (verified where the reference is installed) and describe one set."""
    entry = {"key": spec.key, "variant": spec.variant, "tag": spec.tag,
             "source_url": spec.url, "source_format": spec.source_format,
             "num_classes": spec.num_classes}
    source = None
    try:
        source = fetch_source(spec)
        entry["source_sha256"] = sha256_file(source)
        check, reason = _parity_check(spec, source, verify_size)
        path = os.path.join(output_dir, spec.converted_name)
        report = convert(spec.variant, spec.source, source, path, verify=check).report
        entry["parity"] = _parity(spec, report) if check else reason
        entry.update(file=spec.converted_name, sha256=sha256_file(path),
                     size=os.path.getsize(path))
    except (CheckpointError, PortingError, VerificationError, WeightsDownloadError) as e:
        entry["error"] = f"{type(e).__name__}: {e}"
    finally:
        if source is not None:
            discard_download(source)  # ours only: a Hub cache file stays
    return entry


def _write_json_atomic(obj, path: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def convert_all(output_dir, variants=None, tags=None, verify_size: int = 128, log=print):
    """Convert the selected weight sets into ``output_dir``; returns the manifest entries."""
    output_dir = os.path.abspath(os.fspath(output_dir))
    specs = select(variants, tags)
    os.makedirs(output_dir, exist_ok=True)
    manifest_path = os.path.join(output_dir, MANIFEST)
    previous = {}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            previous = {e["key"]: e for e in json.load(f).get("entries", [])}
    entries = []
    for spec in specs:
        entry = convert_one(spec, output_dir, verify_size)
        entries.append(entry)
        previous[spec.key] = entry
        parity = entry.get("parity")
        if "error" in entry:
            log(f"{spec.key}: FAILED: {entry['error']}")
        elif isinstance(parity, dict):
            log(f"{spec.key}: wrote {entry['file']} (max|Δ logit| {parity['max_abs_diff']:.3g}, "
                f"{parity['max_rel_diff']:.3g} relative, limit {parity['limit']:.3g}, vs "
                f"{parity['reference']}, top-5 equal)")
        else:
            log(f"{spec.key}: wrote {entry['file']} ({parity})")
        _write_json_atomic(_manifest(previous), manifest_path)  # progress survives a crash
    return entries


def _manifest(entries: dict) -> dict:
    from keras_effv2.version import __version__

    order = list(registry.WEIGHTS)
    keys = sorted(entries, key=lambda k: (order.index(k) if k in order else len(order), k))
    return {"keras_effv2": __version__,
            "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "entries": [entries[k] for k in keys]}
