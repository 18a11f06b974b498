"""Fetch, convert, cache and load registered weight sets (no torch needed).

The first use of a tag downloads the upstream file (``keras.utils.get_file`` into
``$KERAS_HOME/models/keras_effv2``), converts it strictly into a ``.weights.h5`` written
atomically beside a ``.sha256`` sidecar, and deletes the download. Later uses verify the
sha256; a corrupted entry is removed and fetched once more, then a clear error is raised.

``KERAS_EFFV2_WEIGHTS_MIRROR`` (a folder or URL prefix) replaces the upstream host: a file
``https://host/a/b/c`` is looked up at ``<mirror>/a/b/c``.

Example:
    >>> import os
    >>> os.environ["KERAS_EFFV2_WEIGHTS_MIRROR"] = "/data/effv2-mirror"  # offline
    >>> import keras_effv2
    >>> # model = keras_effv2.EfficientNetV2B0(weights="imagenet")
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

from keras_effv2.porting.assign import PortingError, model_weight_keys
from keras_effv2.porting.convert import build_for_checkpoint, convert_checkpoint
from keras_effv2.porting.readers import CheckpointError
from keras_effv2.weights import WeightsSpec

MIRROR_ENV = "KERAS_EFFV2_WEIGHTS_MIRROR"
CACHE_SUBDIR = os.path.join("models", "keras_effv2")
# A lock older than this whose owner cannot be checked (another host) is taken as stale.
LOCK_STALE_S = 6 * 3600
logger = logging.getLogger("keras_effv2")


class WeightsDownloadError(RuntimeError):
    """A registered weight set could not be fetched, converted or verified."""


def cache_dir() -> str:
    """``$KERAS_HOME/models/keras_effv2`` (``~/.keras`` when ``KERAS_HOME`` is unset)."""
    home = os.path.expanduser(os.environ.get("KERAS_HOME", os.path.join("~", ".keras")))
    return os.path.join(home, CACHE_SUBDIR)


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
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _remove(*paths) -> None:
    for p in paths:
        if os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        elif os.path.lexists(p):
            os.remove(p)


def fetch_source(spec: WeightsSpec) -> str:
    """Download the upstream file of ``spec`` (mirror honoured); returns its local path."""
    import keras

    ext = "tgz" if spec.source_format == "automl-tgz" else "safetensors"
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


def _extract_tgz(path: str, into: str) -> str:
    try:
        with tarfile.open(path, "r:gz") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CheckpointError(f"{path!r} is not a readable .tgz archive: {e}") from e
    return into


def convert_source(spec: WeightsSpec, path: str, output: str):
    """Convert a downloaded upstream file into ``output`` (atomic); returns the model."""
    if spec.source_format == "timm-safetensors":
        return convert_checkpoint(spec.variant, "timm", path, output)
    tmp = tempfile.mkdtemp(prefix=".extract-", dir=os.path.dirname(output))
    try:
        return convert_checkpoint(spec.variant, "automl", _extract_tgz(path, tmp), output)
    finally:
        _remove(tmp)


def _write_sidecar(path: str) -> None:
    tmp = f"{path}.sha256.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(sha256_file(path) + "\n")
    os.replace(tmp, path + ".sha256")


def _verified(path: str) -> bool:
    try:
        with open(path + ".sha256") as f:
            expected = f.read().strip()
    except OSError:
        return False
    return os.path.isfile(path) and sha256_file(path) == expected


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_is_stale(content: str, mtime: float) -> bool:
    parts = content.split()
    if len(parts) >= 2 and parts[0] == socket.gethostname() and parts[1].isdigit():
        return not _pid_alive(int(parts[1]))
    return time.time() - mtime > LOCK_STALE_S  # another host, or not yet written


def _break_if_stale(path: str) -> bool:
    """Remove ``path`` if its owner is gone; ``True`` when the caller should retry now."""
    try:
        mtime = os.stat(path).st_mtime
        with open(path) as f:
            content = f.read()
    except OSError:
        return True  # released meanwhile
    if not _lock_is_stale(content, mtime):
        return False
    aside = f"{path}.stale-{os.getpid()}"
    try:
        os.rename(path, aside)  # atomic: only one breaker wins
    except OSError:
        return True
    try:
        with open(aside) as f:
            if f.read() != content:  # a fresh lock was taken meanwhile: put it back
                try:
                    os.link(aside, path)
                except OSError:
                    pass
            else:
                logger.warning("keras_effv2: removed stale lock %s (%s)", path, content.strip())
    finally:
        _remove(aside)
    return True


@contextmanager
def _file_lock(path: str, poll_s: float = 0.1):
    """Exclusive lock across processes: ``path`` created with ``O_CREAT | O_EXCL``."""
    token = f"{socket.gethostname()} {os.getpid()} {time.time():.6f}\n"
    announced = False
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _break_if_stale(path):
                continue
            if not announced:
                logger.info("keras_effv2: waiting for %s (another process is converting)", path)
                announced = True
            time.sleep(poll_s)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(token)
        break
    try:
        yield
    finally:
        try:
            with open(path) as f:
                ours = f.read() == token
            if ours:
                os.remove(path)
        except OSError:
            pass


def cached_weights(spec: WeightsSpec):
    """Path of the verified converted file for ``spec`` and, if just converted, the model.

    Safe to call from several processes at once (see the module docstring).

    Returns:
        ``(path, model_or_None)``.
    """
    os.makedirs(cache_dir(), exist_ok=True)
    output = os.path.join(cache_dir(), spec.converted_name)
    if _verified(output):
        return output, None
    with _file_lock(os.path.join(cache_dir(), f".{spec.converted_name}.lock")):
        return _fetch_and_convert(spec, output)


def _fetch_and_convert(spec: WeightsSpec, output: str):
    last_error = None
    for attempt in range(2):
        if os.path.exists(output) or os.path.exists(output + ".sha256"):
            if _verified(output):
                return output, None
            logger.warning("keras_effv2: cached weights %s failed the sha256 check; "
                           "removing and fetching again.", output)
            _remove(output, output + ".sha256")
            if attempt:
                break
        source = None
        try:
            source = fetch_source(spec)
            model = convert_source(spec, source, output)
            _write_sidecar(output)
            return output, model
        except (CheckpointError, PortingError, WeightsDownloadError) as e:
            last_error = e
            logger.warning("keras_effv2: fetching %s failed (attempt %d): %s",
                           spec.key, attempt + 1, e)
        finally:
            if source is not None:
                _remove(source)
        _remove(output, output + ".sha256")
    raise WeightsDownloadError(
        f"Weights {spec.key!r} ({spec.url}) could not be fetched and verified after a retry; "
        f"nothing was left in the cache. Last error: {last_error}"
    ) from last_error


def load_pretrained(model, spec: WeightsSpec, load_head: bool) -> None:
    """Fill ``model`` from the registered weight set: backbone always, head if ``load_head``.

    Every non-head weight of ``model`` must exist in the weight set with the same shape.
    """
    import keras

    path, donor = cached_weights(spec)
    if donor is None:
        donor = build_for_checkpoint(spec.variant, spec.num_classes)
        donor.load_weights(path)
    source = model_weight_keys(donor)
    target = model_weight_keys(model)
    values, problems = {}, []
    for key, var in target.items():
        if key.startswith("predictions/") and not load_head:
            continue
        if key not in source or tuple(source[key].shape) != tuple(var.shape):
            problems.append(key)
            continue
        values[key] = source[key]
    if problems:
        raise PortingError(
            f"Model {model.name!r} does not fit weights {spec.key!r}; nothing was loaded. "
            f"Mismatched weights ({len(problems)}): {', '.join(problems[:20])}"
        )
    for key, var in values.items():
        target[key].assign(keras.ops.convert_to_numpy(var))
