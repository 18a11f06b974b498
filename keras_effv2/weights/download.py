"""Fetch one upstream file (mirror, Hugging Face Hub or ``keras.utils.get_file``), checked.

Where the file comes from, first rule that applies:

1. ``KERAS_EFFV2_WEIGHTS_MIRROR`` set (a folder or URL prefix): ``https://host/a/b/c`` is
   fetched from ``<mirror>/a/b/c`` with ``keras.utils.get_file``;
2. a ``https://huggingface.co/<repo>/resolve/<revision>/<file>`` URL and ``huggingface_hub``
   installed: ``huggingface_hub.hf_hub_download`` (its cache, reused by timm and others and
   kept after conversion; ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HOME`` /
   ``HF_HUB_CACHE`` and the token ``HF_TOKEN`` / ``hf auth login`` apply as everywhere in
   the Hub's tools);
3. otherwise ``keras.utils.get_file`` into ``$KERAS_HOME/models/keras_effv2/downloads``
   (deleted by the caller after conversion).

Every file is then checked: against the full ``sha256`` where the registry records one, else
against the hash prefix in its file name (torch hub's convention ``<name>-<8+ hex>.<ext>``: the
hex digits start the file's sha256; timm's GitHub release files and OpenMMLab's follow it). A
mismatch deletes the file and raises :class:`HashMismatchError` naming both hashes.

Example:
    >>> from keras_effv2.weights.download import expected_sha256
    >>> expected_sha256("https://github.com/rwightman/pytorch-image-models/releases/download/"
    ...                 "v0.1-effv2-weights/tf_efficientnetv2_b0-c7cc451f.pth")
    'c7cc451f'
    >>> expected_sha256("https://huggingface.co/timm/x/resolve/main/model.safetensors") is None
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import urllib.parse
from pathlib import Path

from keras_effv2.weights.errors import WeightsDownloadError

MIRROR_ENV = "KERAS_EFFV2_WEIGHTS_MIRROR"
HUB_HOST = "huggingface.co"
# torch.hub's convention (``torch.hub.HASH_REGEX``), anchored at the file name's end.
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
_HUB_PATH = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)")
logger = logging.getLogger("keras_effv2")


class HashMismatchError(WeightsDownloadError):
    """A downloaded file's sha256 is not the one its URL or the registry promises."""


def sha256_file(path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_name(url: str) -> str:
    """The last path component of ``url``."""
    return urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]


def expected_sha256(url: str, sha256: str | None = None) -> str | None:
    """The full ``sha256`` if given, else the hash prefix in ``url``'s file name, else
    ``None`` (nothing to check against)."""
    if sha256:
        return sha256.lower()
    match = HASH_IN_NAME.search(file_name(url))
    return match.group(1) if match else None


def check_sha256(path: str, url: str, sha256: str | None = None) -> str | None:
    """Check ``path`` (downloaded from ``url``); on a mismatch delete it and raise
    :class:`HashMismatchError` naming both hashes. Returns the file's sha256 when checked."""
    expected = expected_sha256(url, sha256)
    if expected is None:
        return None
    actual = sha256_file(path)
    if actual.startswith(expected):
        return actual
    _remove_download(path)
    what = "sha256" if sha256 else f"sha256 prefix (from the file name {file_name(url)!r})"
    raise HashMismatchError(
        f"{url}: the downloaded file's sha256 is {actual}, but its {what} is {expected}. "
        "The file was deleted and nothing was cached; the host or mirror serves a different "
        "or damaged file."
    )


def _remove_download(path: str) -> None:
    """Delete a downloaded file; for a Hub cache symlink also the blob it points to."""
    real = os.path.realpath(path)
    for p in {path, real}:
        if os.path.lexists(p):
            os.remove(p)


def mirror_origin(url: str) -> str:
    """Where to download ``url`` from, honouring ``KERAS_EFFV2_WEIGHTS_MIRROR``."""
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return url
    path = urllib.parse.urlsplit(url).path.lstrip("/")
    if "://" in mirror:
        return mirror.rstrip("/") + "/" + path
    return Path(os.path.abspath(os.path.join(os.path.expanduser(mirror), path))).as_uri()


@dataclasses.dataclass(frozen=True)
class HubFile:
    """A file on the Hugging Face Hub: ``hf_hub_download(repo_id, filename, revision=...)``."""

    repo_id: str
    revision: str
    filename: str


def hub_file(url: str) -> HubFile | None:
    """``url`` as a :class:`HubFile` when it is a ``huggingface.co/.../resolve/...`` URL."""
    parts = urllib.parse.urlsplit(url)
    match = _HUB_PATH.fullmatch(parts.path)
    if parts.netloc != HUB_HOST or not match:
        return None
    return HubFile(match["repo"], match["revision"], match["file"])


def _hub_download():
    """``huggingface_hub.hf_hub_download``, or ``None`` when huggingface_hub is missing."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    return hf_hub_download


@dataclasses.dataclass(frozen=True)
class Download:
    """A fetched file: its ``path``, whether the caller must delete it after use (``owned``;
    ``False`` for a file in the Hub's cache) and the route it took."""

    path: str
    owned: bool
    route: str


def fetch(url: str, fname: str, folder: str, sha256: str | None = None) -> Download:
    """Fetch ``url`` by the rules of the module docstring and check its hash.

    Args:
        url: the upstream URL (as in the registry).
        fname: the local file name for a ``get_file`` download, unique per process.
        folder: where ``get_file`` writes (``$KERAS_HOME/models/keras_effv2/downloads``).
        sha256: the file's full sha256 when recorded.

    Raises:
        HashMismatchError: the file is not the promised one (deleted).
        WeightsDownloadError: it could not be fetched (naming the origin and the mirror rule).
    """
    hub = hub_file(url)
    download = _hub_download() if hub and not os.environ.get(MIRROR_ENV) else None
    if download is not None:
        try:
            path = download(hub.repo_id, hub.filename, revision=hub.revision)
        except Exception as e:
            raise WeightsDownloadError(
                f"Could not fetch {url} through huggingface_hub ({type(e).__name__}: {e}). "
                f"Its cache, HF_ENDPOINT, HF_HUB_OFFLINE and HF_TOKEN apply; for offline use, "
                f"set {MIRROR_ENV} to a folder holding the file at "
                f"'{urllib.parse.urlsplit(url).path.lstrip('/')}'."
            ) from e
        result = Download(os.fspath(path), owned=False, route="huggingface_hub")
    else:
        result = _get_file(url, fname, folder)
    check_sha256(result.path, url, sha256)
    return result


def _get_file(url: str, fname: str, folder: str) -> Download:
    import keras

    origin = mirror_origin(url)
    os.makedirs(folder, exist_ok=True)  # else Keras falls back to /tmp
    try:  # Keras writes straight to the target: one name per process, never shared
        path = keras.utils.get_file(fname=fname, origin=origin, cache_dir=os.path.dirname(folder),
                                    cache_subdir=os.path.basename(folder))
    except Exception as e:
        raise WeightsDownloadError(
            f"Could not fetch {url} from {origin} ({type(e).__name__}: {e}). For offline use, "
            f"set {MIRROR_ENV} to a folder holding the file at "
            f"'{urllib.parse.urlsplit(url).path.lstrip('/')}'."
        ) from e
    return Download(path, owned=True, route="mirror" if origin != url else "get_file")
