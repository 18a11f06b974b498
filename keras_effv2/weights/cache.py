"""Fetch a registered weight set once, convert it, keep it cached with a sha256 sidecar.

The first use of a tag downloads the upstream file (``keras.utils.get_file`` into
``$KERAS_HOME/models/keras_effv2/downloads``), converts it strictly into
``<cache>/<converted name>`` (:func:`keras_effv2.weights.convert.convert`, written
atomically) beside a ``.sha256`` sidecar, and deletes the download. Later uses verify the
sha256; a corrupted entry is removed and fetched once more, then a clear error is raised.
Processes loading the same tag at once share one entry: a lock file makes one of them
convert while the others wait.

``KERAS_EFFV2_WEIGHTS_MIRROR`` (a folder or URL prefix) replaces the upstream host: a file
``https://host/a/b/c`` is looked up at ``<mirror>/a/b/c``.

Example:
    >>> import os
    >>> os.environ["KERAS_EFFV2_WEIGHTS_MIRROR"] = "/data/effv2-mirror"  # offline
    >>> from keras_effv2.weights import cache, get_weights_spec
    >>> # path, converted_now = cache.ensure_cached(get_weights_spec("b0", "imagenet"))
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.parse
from pathlib import Path

from keras_effv2.weights.convert import convert
from keras_effv2.weights.errors import CheckpointError, PortingError, WeightsDownloadError
from keras_effv2.weights.lock import file_lock
from keras_effv2.weights.registry import WeightsSpec

MIRROR_ENV = "KERAS_EFFV2_WEIGHTS_MIRROR"
CACHE_SUBDIR = os.path.join("models", "keras_effv2")
logger = logging.getLogger("keras_effv2")


def cache_dir() -> str:
    """``$KERAS_HOME/models/keras_effv2`` (``~/.keras`` when ``KERAS_HOME`` is unset)."""
    home = os.path.expanduser(os.environ.get("KERAS_HOME", os.path.join("~", ".keras")))
    return os.path.join(home, CACHE_SUBDIR)


def cached_path(spec: WeightsSpec) -> str:
    """Where the converted file of ``spec`` lives in the cache (whether or not it exists)."""
    return os.path.join(cache_dir(), spec.converted_name)


def source_origin(url: str) -> str:
    """Where to download ``url`` from, honouring ``KERAS_EFFV2_WEIGHTS_MIRROR``."""
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return url
    path = urllib.parse.urlsplit(url).path.lstrip("/")
    if "://" in mirror:
        return mirror.rstrip("/") + "/" + path
    return Path(os.path.abspath(os.path.join(os.path.expanduser(mirror), path))).as_uri()


def sha256_file(path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def remove_paths(*paths) -> None:
    """Delete files that exist; missing ones are fine."""
    for p in paths:
        if os.path.lexists(p):
            os.remove(p)


def fetch_source(spec: WeightsSpec) -> str:
    """Download the upstream file of ``spec`` (mirror honoured); returns its local path.

    The file is named per process (``<key>.<pid>.<ext>``); the caller deletes it.
    """
    import keras

    ext = spec.file_extension
    origin = source_origin(spec.url)
    os.makedirs(os.path.join(cache_dir(), "downloads"), exist_ok=True)  # else Keras uses /tmp
    try:  # Keras writes straight to the target: one name per process, never shared
        return keras.utils.get_file(
            fname=f"{spec.key}.{os.getpid()}.{ext}", origin=origin, file_hash=spec.sha256,
            cache_dir=os.path.dirname(os.path.dirname(cache_dir())),
            cache_subdir=os.path.join(CACHE_SUBDIR, "downloads"),
        )
    except Exception as e:
        raise WeightsDownloadError(
            f"Could not fetch weights {spec.key!r} from {origin} ({type(e).__name__}: {e}). "
            f"For offline use, set {MIRROR_ENV} to a folder holding the file at "
            f"'{urllib.parse.urlsplit(spec.url).path.lstrip('/')}'."
        ) from e


def _write_sidecar(path: str) -> None:
    tmp = f"{path}.sha256.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(sha256_file(path) + "\n")
    os.replace(tmp, path + ".sha256")


def is_verified(path: str) -> bool:
    """Whether ``path`` exists and matches the sha256 in its ``.sha256`` sidecar."""
    try:
        with open(path + ".sha256") as f:
            expected = f.read().strip()
    except OSError:
        return False
    return os.path.isfile(path) and sha256_file(path) == expected


def ensure_cached(spec: WeightsSpec) -> tuple[str, bool]:
    """``(path, converted_now)``: the verified converted file of ``spec``, fetched and
    converted first if needed. Safe to call from several processes at once."""
    os.makedirs(cache_dir(), exist_ok=True)
    output = cached_path(spec)
    if is_verified(output):
        return output, False
    with file_lock(os.path.join(cache_dir(), f".{spec.converted_name}.lock")):
        return fetch_and_convert(spec, output)


def fetch_and_convert(spec: WeightsSpec, output: str) -> tuple[str, bool]:
    """Under the lock: reuse a verified ``output``, else fetch, convert and write the sidecar
    (one retry after a failure or a corrupted entry; nothing is left behind on failure)."""
    last_error = None
    for attempt in range(2):
        if os.path.exists(output) or os.path.exists(output + ".sha256"):
            if is_verified(output):
                return output, False
            logger.warning("keras_effv2: cached weights %s failed the sha256 check; "
                           "removing and fetching again.", output)
            remove_paths(output, output + ".sha256")
            if attempt:
                break
        source = None
        try:
            source = fetch_source(spec)
            convert(spec.variant, spec.source, source, output)
            _write_sidecar(output)
            return output, True
        except (CheckpointError, PortingError, WeightsDownloadError) as e:
            last_error = e
            logger.warning("keras_effv2: fetching %s failed (attempt %d): %s",
                           spec.key, attempt + 1, e)
        finally:
            if source is not None:
                remove_paths(source)
        remove_paths(output, output + ".sha256")
    raise WeightsDownloadError(
        f"Weights {spec.key!r} ({spec.url}) could not be fetched and verified after a retry; "
        f"nothing was left in the cache. Last error: {last_error}"
    ) from last_error
