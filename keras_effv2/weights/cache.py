"""Fetch a registered weight set once, convert it, keep it cached with a sha256 sidecar.

The first use of a tag fetches the upstream file (:mod:`keras_effv2.weights.download`: the
mirror, the Hugging Face Hub's own cache, or ``keras.utils.get_file`` into
``$KERAS_HOME/models/keras_effv2/downloads``; checked against its sha256 or the hash prefix in
its name), converts it strictly and tensor by tensor into ``<cache>/<converted name>``
(:func:`keras_effv2.weights.convert.convert`, written atomically) beside a ``.sha256``
sidecar, and deletes its own download (a Hub cache file stays, for timm and others). The
hosts of a weight set are tried in order (:func:`keras_effv2.weights.registry.upstreams`;
``KERAS_EFFV2_WEIGHTS_UPSTREAM=github`` prefers timm's GitHub release files); a host that
cannot be reached falls back to the next, a hash mismatch stops at once. Later uses verify
the sidecar's sha256; a corrupted entry is removed and fetched once more, then a clear error
is raised. Processes loading the same tag at once share one entry: a lock file makes one of
them convert while the others wait.

``KERAS_EFFV2_WEIGHTS_MIRROR`` (a folder or URL prefix) replaces the upstream host: a file
``https://host/a/b/c`` is looked up at ``<mirror>/a/b/c``.

Example:
    >>> import os
    >>> os.environ["KERAS_EFFV2_WEIGHTS_MIRROR"] = "/data/effv2-mirror"  # offline
    >>> from keras_effv2.weights import cache, get_weights_spec
    >>> # path, converted_now = cache.ensure_cached(get_weights_spec("b0", "imagenet"))
"""

from __future__ import annotations

import logging
import os

from keras_effv2.weights.convert import convert
from keras_effv2.weights.download import (
    MIRROR_ENV,
    Download,
    HashMismatchError,
    fetch,
    file_name,
    mirror_origin,
    sha256_file,
)
from keras_effv2.weights.errors import CheckpointError, PortingError, WeightsDownloadError
from keras_effv2.weights.lock import file_lock
from keras_effv2.weights.registry import WeightsSpec, upstreams

CACHE_SUBDIR = os.path.join("models", "keras_effv2")
logger = logging.getLogger("keras_effv2")
source_origin = mirror_origin  # the name earlier releases exported
__all__ = ["MIRROR_ENV", "HashMismatchError", "cache_dir", "cached_path", "discard_download",
           "ensure_cached", "fetch_source", "fetch_upstream", "is_verified", "remove_paths",
           "sha256_file", "source_origin"]


def cache_dir() -> str:
    """``$KERAS_HOME/models/keras_effv2`` (``~/.keras`` when ``KERAS_HOME`` is unset)."""
    home = os.path.expanduser(os.environ.get("KERAS_HOME", os.path.join("~", ".keras")))
    return os.path.join(home, CACHE_SUBDIR)


def cached_path(spec: WeightsSpec) -> str:
    """Where the converted file of ``spec`` lives in the cache (whether or not it exists)."""
    return os.path.join(cache_dir(), spec.converted_name)


def remove_paths(*paths) -> None:
    """Delete files that exist; missing ones are fine."""
    for p in paths:
        if os.path.lexists(p):
            os.remove(p)


def downloads_dir() -> str:
    """Where ``keras.utils.get_file`` downloads go (deleted after conversion)."""
    return os.path.join(cache_dir(), "downloads")


def fetch_upstream(spec: WeightsSpec) -> tuple[Download, str]:
    """Fetch ``spec``'s upstream file from the first host that serves it: ``(download, the
    format it is in)``. A hash mismatch is raised at once; an unreachable host falls back to
    the next (:func:`keras_effv2.weights.registry.upstreams`)."""
    failures = []
    for upstream in upstreams(spec):
        ext = "tgz" if upstream.source_format == "automl-tgz" else file_name(upstream.url).rsplit(
            ".", 1)[-1]
        try:
            download = fetch(upstream.url, f"{spec.key}.{os.getpid()}.{ext}", downloads_dir(),
                             upstream.sha256)
        except HashMismatchError:
            raise
        except WeightsDownloadError as e:
            failures.append(e)
            logger.warning("keras_effv2: %s: %s", spec.key, e)
            continue
        return download, upstream.source_format
    if len(failures) == 1:
        raise failures[0]
    raise WeightsDownloadError(f"Weights {spec.key!r}: no host could be reached:\n  "
                               + "\n  ".join(str(e) for e in failures)) from failures[-1]


def fetch_source(spec: WeightsSpec) -> str:
    """The local path of ``spec``'s upstream file (mirror honoured, hash checked). Give it
    back with :func:`discard_download` (which keeps files in the Hub's cache)."""
    return fetch_upstream(spec)[0].path


def discard_download(path) -> None:
    """Delete ``path`` if it is one of our downloads; files elsewhere (the Hub's cache) stay."""
    path = os.path.abspath(os.fspath(path))
    if os.path.dirname(path) == os.path.abspath(downloads_dir()):
        remove_paths(path)


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


def ensure_cached(spec: WeightsSpec, layout=None) -> tuple[str, bool]:
    """``(path, converted_now)``: the verified converted file of ``spec``, fetched and
    converted first if needed. Safe to call from several processes at once.

    ``layout``: a built keras_effv2 model of ``spec``'s variant (any head) whose layer
    structure tells where each weight goes in the file; without it conversion builds one.
    """
    os.makedirs(cache_dir(), exist_ok=True)
    output = cached_path(spec)
    if is_verified(output):
        return output, False
    with file_lock(os.path.join(cache_dir(), f".{spec.converted_name}.lock")):
        return fetch_and_convert(spec, output, layout)


def fetch_and_convert(spec: WeightsSpec, output: str, layout=None) -> tuple[str, bool]:
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
        download = None
        try:
            download, _ = fetch_upstream(spec)
            convert(spec.variant, spec.source, download.path, output, layout=layout)
            _write_sidecar(output)
            return output, True
        except HashMismatchError:
            raise
        except (CheckpointError, PortingError, WeightsDownloadError) as e:
            last_error = e
            logger.warning("keras_effv2: fetching %s failed (attempt %d): %s",
                           spec.key, attempt + 1, e)
        finally:
            if download is not None and download.owned:
                remove_paths(download.path)
        remove_paths(output, output + ".sha256")
    raise WeightsDownloadError(
        f"Weights {spec.key!r} ({spec.url}) could not be fetched and verified after a retry; "
        f"nothing was left in the cache. Last error: {last_error}"
    ) from last_error
