"""Checked downloads, alternative upstreams and the Hugging Face Hub route, all offline.

* Hash checks: the registry's GitHub release names carry timm's hash prefixes (checked against
  timm's own ``default_cfgs``); a file whose sha256 does not start with its name's prefix, or
  differs from a recorded full sha256, is refused naming both hashes, deleted, nothing cached.
* Upstreams: timm's GitHub ``.pth`` (a real ``torch.save`` file, named with its own hash
  prefix) serves a tag when the Hugging Face file is missing, or first with
  ``KERAS_EFFV2_WEIGHTS_UPSTREAM=github``; the cached file equals the direct conversion.
* The Hub: with ``huggingface_hub`` installed a ``huggingface.co`` file is fetched by
  ``hf_hub_download`` from ``HF_ENDPOINT`` (a local ``http.server`` on 127.0.0.1 answering as
  the Hub does: ``X-Repo-Commit`` and ``ETag`` headers), with ``HF_TOKEN`` sent, into
  ``HF_HUB_CACHE`` (kept), and later found there with ``HF_HUB_OFFLINE=1``; with
  ``huggingface_hub`` hidden the same URL goes through ``keras.utils.get_file``.
"""

import dataclasses
import functools
import hashlib
import http.server
import importlib
import os
import sys
import threading
import urllib.parse

import keras
import numpy as np
import pytest

import keras_effv2
from keras_effv2.weights import WEIGHTS, WeightsDownloadError, cache, convert, load, registry
from keras_effv2.weights.download import HashMismatchError, expected_sha256, sha256_file

pytest.importorskip("timm")
pytest.importorskip("torch")
import helpers_weights as hw  # noqa: E402
from helpers_timm import make_timm_model, timm_state_dict  # noqa: E402

SIZE = 64
SPEC = WEIGHTS["b0.in1k"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def url_path(url):
    return urllib.parse.urlsplit(url).path.lstrip("/")


@pytest.fixture(scope="module")
def timm_b0(tmp_path_factory):
    """``(None, safetensors path, .pth path)`` of one random timm B0."""
    model = make_timm_model("b0", image_size=SIZE)
    d = tmp_path_factory.mktemp("timm")
    return (None, hw.write_safetensors(timm_state_dict(model), d / "model.safetensors"),
            hw.write_pth(model, d / "b0.pth"))


@pytest.fixture(scope="module")
def b0():
    """One B0 (with preprocessing, logits) that every test loads into."""
    return keras_effv2.EfficientNetV2B0(weights=None, classifier_activation=None)


@pytest.fixture(scope="module")
def expected_file(timm_b0, b0, tmp_path_factory):
    """The datasets of the fixture converted directly (the conversion itself is checked
    against timm's forward in test_weights_convert.py): what a fetched and converted tag must
    cache."""
    out = tmp_path_factory.mktemp("direct") / "b0.weights.h5"
    return datasets(convert("b0", "timm", timm_b0[1], out, layout=b0).output)


def datasets(path) -> dict:
    import h5py

    out = {}
    with h5py.File(path) as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset)
                     else None)
    return out


def assert_cached(home, expected_file):
    """The cache holds exactly the converted file (and its sidecar), equal to the direct
    conversion."""
    assert files_under(home) == [SPEC.converted_name, SPEC.converted_name + ".sha256"]
    got = datasets(home / SPEC.converted_name)
    assert sorted(got) == sorted(expected_file)
    for name, value in expected_file.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv(cache.MIRROR_ENV, raising=False)
    monkeypatch.delenv(registry.UPSTREAM_ENV, raising=False)
    return tmp_path / "keras_home" / "models" / "keras_effv2"


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) \
        if root.exists() else []


def place(path, root, url):
    target = root / url_path(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(open(path, "rb").read())
    return target


# ------------------------------------------------------------------ hashes and upstreams

def test_github_files_are_timms_with_hash_prefixes():
    import timm

    for key, spec in WEIGHTS.items():
        if spec.source_format != "timm-safetensors":
            assert spec.alternatives == ()
            continue
        github = [u for u in spec.alternatives if u.name == "github"]
        cfg_url = timm.models.get_pretrained_cfg(f"tf_efficientnetv2_{key}").url or None
        assert [u.url for u in github] == ([cfg_url] if cfg_url else []), key
        for u in github:
            assert u.source_format == "timm-pth" and len(expected_sha256(u.url)) == 8
    assert expected_sha256(SPEC.url) is None  # the Hub's model.safetensors has no prefix
    assert expected_sha256("https://x/efficientnetv2-b0_3rdparty_in1k_20221221-9ef6e736.pth") \
        == "9ef6e736"  # OpenMMLab's names


def test_upstream_order(monkeypatch):
    monkeypatch.delenv(registry.UPSTREAM_ENV, raising=False)
    assert [u.name for u in registry.upstreams(WEIGHTS["s.in1k"])] == ["huggingface", "github"]
    assert [u.name for u in registry.upstreams(WEIGHTS["b3.in21k"])] == ["huggingface"]
    monkeypatch.setenv(registry.UPSTREAM_ENV, "GitHub")
    assert [u.name for u in registry.upstreams(WEIGHTS["s.in1k"])] == ["github", "huggingface"]
    assert [u.name for u in registry.upstreams(WEIGHTS["b0.in21k"])] == ["automl"]
    monkeypatch.setenv(registry.UPSTREAM_ENV, "gitlab")
    with pytest.raises(ValueError, match="'gitlab': expected one of automl, github, huggingface"):
        registry.upstreams(SPEC)


def test_hash_prefix_mismatch_is_refused_and_nothing_cached(timm_b0, b0, home, tmp_path,
                                                            monkeypatch):
    """The registry's b0.in1k GitHub file name promises c7cc451f; the mirror serves another
    file (our random .pth)."""
    _, _, pth = timm_b0
    github = SPEC.alternatives[0]
    place(pth, tmp_path / "mirror", github.url)
    monkeypatch.setenv(cache.MIRROR_ENV, str(tmp_path / "mirror"))
    monkeypatch.setenv(registry.UPSTREAM_ENV, "github")
    actual = sha256_file(pth)
    with pytest.raises(HashMismatchError) as e:
        load(b0, "imagenet")
    assert f"sha256 is {actual}" in str(e.value) and "is c7cc451f" in str(e.value)
    assert "tf_efficientnetv2_b0-c7cc451f.pth" in str(e.value)
    assert files_under(home) == []  # no download, no converted file, no sidecar, no lock


def test_full_sha256_is_checked(timm_b0, b0, expected_file, home, tmp_path, monkeypatch):
    _, st, _ = timm_b0
    place(st, tmp_path / "mirror", SPEC.url)
    monkeypatch.setenv(cache.MIRROR_ENV, str(tmp_path / "mirror"))
    wrong = dataclasses.replace(SPEC, sha256="0" * 64)
    with pytest.raises(HashMismatchError, match=f"sha256 is {sha256_file(st)}, but its sha256 "
                                                f"is {'0' * 64}"):
        cache.ensure_cached(wrong, layout=b0)
    assert files_under(home) == []
    right = dataclasses.replace(SPEC, sha256=sha256_file(st).upper())
    path, converted = cache.ensure_cached(right, layout=b0)
    assert converted
    assert_cached(home, expected_file)


def github_spec(pth):
    """b0.in1k with a GitHub alternative named by the fixture file's own hash prefix."""
    url = ("https://github.com/rwightman/pytorch-image-models/releases/download/"
           f"v0.1-effv2-weights/tf_efficientnetv2_b0-{sha256_file(pth)[:8]}.pth")
    return dataclasses.replace(SPEC, alternatives=(registry.Upstream("github", url, "timm-pth"),))


def test_github_pth_serves_when_the_hub_file_is_missing(timm_b0, b0, expected_file, home,
                                                        tmp_path, monkeypatch, caplog):
    _, _, pth = timm_b0
    spec = github_spec(pth)
    place(pth, tmp_path / "mirror", spec.alternatives[0].url)  # the mirror lacks model.safetensors
    monkeypatch.setenv(cache.MIRROR_ENV, str(tmp_path / "mirror"))
    path, converted = cache.ensure_cached(spec, layout=b0)
    assert converted and "model.safetensors" in caplog.text  # the Hub file was tried first
    assert_cached(home, expected_file)
    # Neither host serves it: both failures are named.
    monkeypatch.setenv(cache.MIRROR_ENV, str(tmp_path / "empty"))
    os.remove(path)
    with pytest.raises(WeightsDownloadError, match=r"(?s)model\.safetensors.*-"
                                                   f"{sha256_file(pth)[:8]}\\.pth"):
        cache.ensure_cached(spec, layout=b0)


# ------------------------------------------------------------------ the Hugging Face Hub

class _HubHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder as the Hub's ``/<repo>/resolve/<revision>/<file>`` does (the headers
    ``hf_hub_download`` requires), recording each request's Authorization header."""

    seen: list = []

    def end_headers(self):
        path = self.translate_path(self.path)
        if os.path.isfile(path):
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{sha256_file(path)}"')
        super().end_headers()

    def send_head(self):
        self.seen.append((self.command, self.path, self.headers.get("Authorization")))
        return super().send_head()

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_server(tmp_path, timm_b0):
    root = tmp_path / "served"
    place(timm_b0[1], root, SPEC.url)
    handler = functools.partial(_HubHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _HubHandler.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def hf_env(monkeypatch):
    """Set HF_* variables as a user would; huggingface_hub reads them at import, so its
    constants module is reloaded (and restored afterwards)."""
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    def setenv(**env):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        importlib.reload(constants)

    yield setenv
    monkeypatch.undo()
    importlib.reload(constants)


def test_hub_files_go_through_huggingface_hub(timm_b0, b0, expected_file, home, tmp_path,
                                              hub_server, hf_env):
    hf_cache = tmp_path / "hf_cache"
    hf_env(HF_ENDPOINT=hub_server, HF_HUB_CACHE=str(hf_cache), HF_TOKEN="hf_test_token",
           HF_HUB_OFFLINE="0")
    load(b0, "imagenet")
    assert_cached(home, expected_file)
    resolve = f"/{url_path(SPEC.url)}"
    fetched = [(c, a) for c, p, a in _HubHandler.seen if p == resolve]
    assert ("GET", "Bearer hf_test_token") in fetched
    assert {a for _, a in fetched} == {"Bearer hf_test_token"}
    snapshot = (hf_cache / "models--timm--tf_efficientnetv2_b0.in1k" / "snapshots" / COMMIT
                / "model.safetensors")
    assert sha256_file(snapshot) == sha256_file(timm_b0[1])  # kept in the Hub's cache
    # Offline: the Hub's cache serves the next conversion, no request is made.
    for name in files_under(home):
        os.remove(home / name)
    _HubHandler.seen = []
    hf_env(HF_HUB_OFFLINE="1")
    load(b0, "imagenet")
    assert_cached(home, expected_file)
    assert not [p for _, p, _ in _HubHandler.seen if p == resolve]
    # Offline with an empty Hub cache: a clear error, nothing cached.
    for name in files_under(home):
        os.remove(home / name)
    hf_env(HF_HUB_CACHE=str(tmp_path / "empty_hf_cache"))
    hub_only = dataclasses.replace(SPEC, alternatives=())  # no GitHub fallback (no network)
    with pytest.raises(WeightsDownloadError, match="through huggingface_hub.*HF_HUB_OFFLINE"):
        cache.ensure_cached(hub_only)
    assert files_under(home) == []


def test_without_huggingface_hub_get_file_fetches(timm_b0, b0, expected_file, home, tmp_path,
                                                  hub_server, monkeypatch):
    """``huggingface_hub`` hidden: the Hub URL itself goes to ``keras.utils.get_file`` (here
    redirected to the loopback server, the only host this test may reach)."""
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import raises ImportError
    real_get_file, origins = keras.utils.get_file, []

    def get_file(fname, origin, **kwargs):
        origins.append(origin)
        return real_get_file(fname, origin.replace("https://huggingface.co", hub_server),
                             **kwargs)

    monkeypatch.setattr(keras.utils, "get_file", get_file)
    load(b0, "imagenet")
    assert origins == [SPEC.url]
    assert_cached(home, expected_file)
    assert [(p, a) for _, p, a in _HubHandler.seen] == [(f"/{url_path(SPEC.url)}", None)]


def test_sha256_helper_matches_hashlib(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(os.urandom(3 << 20))
    assert sha256_file(p) == hashlib.sha256(p.read_bytes()).hexdigest()
