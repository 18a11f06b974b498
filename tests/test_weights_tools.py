"""weights_tools: ``evaluate`` (eval transforms, image folder, tfds), ``convert-all``, and
two processes loading the same tag into one cache at once."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse

import numpy as np
import pytest
from helpers import to_backend_layout, to_numpy

import keras_effv2
from keras_effv2.eval_transforms import eval_geometry, eval_transform
from keras_effv2.labels import class_names
from keras_effv2.weights import WEIGHTS, cache, registry
from weights_tools import cli, verify
from weights_tools import evaluate as ev

pytest.importorskip("timm")
pytest.importorskip("safetensors")
import helpers_weights as hw  # noqa: E402
from helpers_timm import make_timm_model, timm_state_dict  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def url_path(url):
    return urllib.parse.urlsplit(url).path.lstrip("/")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """timm's float64 reference forward with 2+ intra-op threads can take minutes on a busy
    machine (thread oversubscription) and 0.1 s with one thread."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A folder mirror with b0.in1k (timm safetensors) and b0.in21k_ft_in1k (automl .tgz)
    made from one random, well-conditioned timm model."""
    state = timm_state_dict(make_timm_model("b0", image_size=64))
    root = tmp_path_factory.mktemp("mirror")
    st = root / url_path(WEIGHTS["b0.in1k"].url)
    st.parent.mkdir(parents=True)
    hw.write_safetensors(state, st)
    ckpt = hw.write_automl_checkpoint(state, "b0", tmp_path_factory.mktemp("ck") / "ckpt")
    tgz = root / url_path(WEIGHTS["b0.in21k_ft_in1k"].url)
    tgz.parent.mkdir(parents=True)
    hw.write_tgz(ckpt, tgz)
    return root


@pytest.fixture
def keras_home(tmp_path, monkeypatch, mirror):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv(cache.MIRROR_ENV, str(mirror))
    return tmp_path / "keras_home"


CHILD = r"""
import os, sys, time
import keras_effv2
from keras_effv2.weights import WEIGHTS, ensure_cached
ready = sys.argv[1]
open(ready + "." + sys.argv[2], "w").close()
deadline = time.time() + 120
while not all(os.path.exists(f"{ready}.{i}") for i in (0, 1)) and time.time() < deadline:
    time.sleep(0.01)
path, converted = ensure_cached(WEIGHTS["b0.in1k"])
print("CONVERTED" if converted else "CACHED", path)
"""


def test_two_processes_load_same_tag_at_once(keras_home, tmp_path, monkeypatch):
    path = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    ready = str(tmp_path / "ready")
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, ready, str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    outs = sorted(out.split()[-2] for out, _ in results)
    assert outs == ["CACHED", "CONVERTED"], results
    root = keras_home / "models" / "keras_effv2"
    name = WEIGHTS["b0.in1k"].converted_name
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [name, name + ".sha256"]
    assert (root / (name + ".sha256")).read_text().strip() == cache.sha256_file(root / name)
    monkeypatch.delenv(cache.MIRROR_ENV)  # no mirror: loads from the cache
    keras_effv2.EfficientNetV2B0(weights="imagenet")


def test_stale_lock_is_broken(keras_home, monkeypatch):
    """A lock left by a dead process does not block; a live one is waited for."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    spec = WEIGHTS["b0.in1k"]
    root = keras_home / "models" / "keras_effv2"
    root.mkdir(parents=True)
    lock = root / f".{spec.converted_name}.lock"
    lock.write_text(f"{socket.gethostname()} {dead.pid} 0\n")
    calls = []
    monkeypatch.setattr(cache, "fetch_and_convert",
                        lambda s, o, layout=None: calls.append(o) or (o, 1))
    assert cache.ensure_cached(spec)[1] == 1 and not lock.exists()
    lock.write_text(f"{socket.gethostname()} {os.getpid()} {time.time()}\n")
    with pytest.raises(TimeoutError):
        with _timeout(0.5):
            cache.ensure_cached(spec)
    assert lock.exists() and len(calls) == 1


class _timeout:
    """Raise TimeoutError in the main thread after ``s`` seconds (SIGALRM)."""

    def __init__(self, s):
        self.s = s

    def __enter__(self):
        import signal

        def fire(*_):
            raise TimeoutError

        self.old = signal.signal(signal.SIGALRM, fire)
        signal.setitimer(signal.ITIMER_REAL, self.s)

    def __exit__(self, *exc):
        import signal

        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.old)


# ---------------------------------------------------------------- eval transforms

def test_eval_geometry_by_hand():
    # B0: crop_pct 0.875 at 224 -> short side 256 (= floor(224 / 0.875)), center crop 224.
    assert eval_geometry(300, 400, 224, 0.875, "center") == (256, 341, 16, 58)  # 256*400//300
    assert eval_geometry(400, 300, 224, 0.875, "center") == (341, 256, 58, 16)
    assert eval_geometry(256, 256, 224, 0.875, "center") == (256, 256, 16, 16)
    assert eval_geometry(375, 500, 384, 1.0, "center") == (384, 512, 0, 64)  # S: resize only
    assert eval_geometry(300, 400, 480, 1.0, "squash") == (480, 480, 0, 0)  # M/L: squash
    # b3.in21k_ft_in1k: squash at 300 / 0.9 = 333, crop 300; offset round(16.5) = 16.
    assert eval_geometry(300, 400, 300, 0.9, "squash") == (333, 333, 16, 16)
    assert eval_geometry(500, 375, 240, 0.882, "center") == (362, 272, 61, 16)
    with pytest.raises(ValueError, match="crop_mode"):
        eval_geometry(10, 10, 8, 1.0, "border")


def _smooth(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    img = 127 + 100 * np.sin(xx / 17.0) * np.cos(yy / 23.0)
    return np.repeat(img[..., None], 3, axis=-1).astype(np.uint8)


def test_eval_transform_numerics():
    import tensorflow as tf
    from PIL import Image

    # Already at the resize size: the output is exactly the hand-computed center crop.
    img = np.random.default_rng(0).integers(0, 256, (256, 341, 3)).astype(np.uint8)
    np.testing.assert_array_equal(eval_transform(img, 224, 0.875).numpy(), img[16:240, 58:282])
    # Against PIL (what timm evaluates with), within one grey level.
    sm = _smooth(300, 400)
    for interp, pil in (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)):
        for mode, pct in (("center", 0.875), ("squash", 1.0), ("squash", 0.9)):
            rh, rw, t, le = eval_geometry(300, 400, 224, pct, mode)
            ref = np.asarray(Image.fromarray(sm).resize((rw, rh), pil), np.float32)
            got = eval_transform(sm, 224, pct, mode, interp).numpy()
            assert got.shape == (224, 224, 3)
            assert np.abs(got - ref[t:t + 224, le:le + 224]).max() <= 1.0, (interp, mode, pct)
    # Squash of a constant image is constant; dynamic shapes work inside tf.data.
    ds = tf.data.Dataset.from_generator(
        lambda: (np.full((h, w, 3), 77, np.uint8) for h, w in ((50, 90), (120, 33))),
        output_signature=tf.TensorSpec((None, None, 3), tf.uint8))
    outs = list(ds.map(lambda x: eval_transform(x, 64, 1.0, "squash")).as_numpy_iterator())
    assert [o.shape for o in outs] == [(64, 64, 3)] * 2 and all((o == 77).all() for o in outs)


# ---------------------------------------------------------------- evaluate

WNIDS = [w for w, _ in class_names(1000)]


def _write_jpegs(n, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        h, w = int(rng.integers(60, 120)), int(rng.integers(60, 120))
        base = _smooth(h, w).astype(np.float32) * rng.uniform(0.3, 1.0, 3)
        images.append(Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0,
                                              255).astype(np.uint8)))
    return images


def _layout(root, images, wnids):
    for i, (img, wnid) in enumerate(zip(images, wnids, strict=True)):
        (root / wnid).mkdir(parents=True, exist_ok=True)
        img.save(root / wnid / f"img_{i}.JPEG", quality=95)
    return root


def _own_rankings(model, root, spec):
    """Each image's classes ranked by ``model`` through the same decode + eval transform."""
    import tensorflow as tf

    paths = sorted(root.rglob("*.JPEG"))
    pp = spec.preprocessing
    x = np.stack([eval_transform(
        tf.io.decode_image(tf.io.read_file(str(p)), channels=3, expand_animations=False),
        spec.eval_size, pp.crop_pct, pp.crop_mode, pp.interpolation).numpy() for p in paths])
    logits = to_numpy(model(to_backend_layout(x), training=False))
    return {p.name: np.argsort(-row, kind="stable") for p, row in zip(paths, logits, strict=True)}


def test_evaluate_image_folder_counts(keras_home, tmp_path, monkeypatch, capsys):
    # b0.in1k's eval settings (center crop_pct 0.875, bicubic) at 64px instead of 224 (speed).
    spec = dataclasses.replace(WEIGHTS["b0.in1k"], eval_size=64)
    monkeypatch.setitem(registry.WEIGHTS, spec.key, spec)
    images = _write_jpegs(6)
    probe = _layout(tmp_path / "probe", images, [WNIDS[0], WNIDS[1], WNIDS[2]] * 2)
    model = keras_effv2.EfficientNetV2B0(weights="imagenet", classifier_activation=None)
    ranks = _own_rankings(model, probe, spec)
    # Label each image with the class its prediction ranks r-th: top-1 hits for r = 0,
    # top-5 hits for r < 5. Expected: top-1 3/6, top-5 5/6.
    r = [0, 2, 0, 4, 0, 10]
    wnids = [WNIDS[ranks[f"img_{i}.JPEG"][r[i]]] for i in range(6)]
    data = _layout(tmp_path / "val", images, wnids)
    out = tmp_path / "result.json"
    assert cli.main(["evaluate", "--variant", "b0", "--weights", "imagenet", "--data", str(data),
                     "--batch-size", "6", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result["count"], result["top1"], result["top5"]) == (6, 0.5, 5 / 6)
    assert (result["eval_size"], result["crop_pct"], result["crop_mode"]) == (64, 0.875, "center")
    assert "top-1 50.000%  top-5 83.333%  on 6 images" in capsys.readouterr().out
    # Labels = the model's own top-1: exactly 100%; --limit evaluates a subset.
    own = _layout(tmp_path / "own", images, [WNIDS[ranks[f"img_{i}.JPEG"][0]] for i in range(6)])
    res = ev.evaluate("b0", "in1k", str(own), limit=4, batch_size=6, model=model)  # padded
    assert (res.count, res.top1, res.top5) == (4, 1.0, 1.0)


def test_evaluate_errors(tmp_path, capsys):
    assert cli.main(["evaluate", "--variant", "b0", "--weights", "imagenet21k",
                     "--data", str(tmp_path)]) == 1
    assert "not an ImageNet-1k classifier" in capsys.readouterr().err
    (tmp_path / "cats").mkdir()
    with pytest.raises(ev.DatasetError, match="not ImageNet-1k synsets"):
        ev.evaluate("b0", "imagenet", str(tmp_path))
    with pytest.raises(ev.DatasetError, match=r"ILSVRC2012_img_val\.tar.*downloads.manual"):
        ev.tfds_dataset(str(tmp_path / "tfds"), limit=2)


class _LookupModel:
    """Fake classifier: logits rank ``answers[image bytes]`` first (a known label)."""

    def __init__(self, answers):
        self.answers = answers

    def __call__(self, x, training=False):
        x = to_numpy(x)
        if x.shape[1] == 3:  # channels_first
            x = x.transpose(0, 2, 3, 1)
        logits = np.zeros((len(x), 1000), np.float32)
        for i, img in enumerate(x):
            key = img.astype(np.uint8).tobytes()
            if key in self.answers:  # else: padding of the last batch
                logits[i, self.answers[key]] = 1.0
        return logits


def test_evaluate_tfds_imagenet2012_mock():
    """tfds.testing.mock_data works offline for imagenet2012 (random images and labels)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    spec = WEIGHTS["b0.in1k"]
    with tfds.testing.mock_data(num_examples=7):
        examples = list(ev.tfds_dataset(None).take(5).as_numpy_iterator())
        answers = {}
        for i, (img, label) in enumerate(examples):  # right for 0, 2, 4: top-1 = 3/5
            x = eval_transform(img, spec.eval_size, spec.preprocessing.crop_pct,
                               spec.preprocessing.crop_mode, spec.preprocessing.interpolation)
            answers[x.numpy().astype(np.uint8).tobytes()] = (label + i % 2) % 1000
        res = ev.evaluate("b0", "imagenet", "tfds", limit=5, batch_size=2,
                          model=_LookupModel(answers))
    assert (res.count, res.top1, res.top5) == (5, 0.6, 0.6)


# ---------------------------------------------------------------- convert-all

def test_convert_all_manifest(keras_home, tmp_path, monkeypatch, capsys):
    keys = ("b0.in1k", "b0.in21k_ft_in1k")
    monkeypatch.setattr(registry, "WEIGHTS", {k: WEIGHTS[k] for k in keys})
    out = tmp_path / "converted"
    assert cli.main(["convert-all", "--output", str(out), "--variants", "b0",
                     "--verify-size", "32"]) == 0
    assert "2/2 converted" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    entries = {e["key"]: e for e in manifest["entries"]}
    assert sorted(entries) == sorted(keys)
    for key, e in entries.items():
        spec = WEIGHTS[key]
        path = out / e["file"]
        assert e["file"] == spec.converted_name and e["source_url"] == spec.url
        assert e["source_format"] == spec.source_format
        assert e["sha256"] == cache.sha256_file(path) and e["size"] == path.stat().st_size
    parity = entries["b0.in1k"]["parity"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["top5_equal"] is True
    assert (parity["atol"], parity["rtol"]) == (1e-4, 1e-5)
    scale = parity["max_abs_diff"] / parity["max_rel_diff"]  # max|reference logit|
    assert scale > 0 and parity["limit"] == pytest.approx(1e-4 + 1e-5 * scale)
    assert entries["b0.in21k_ft_in1k"]["parity"].startswith("not verified: ")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", *(e["file"] for e in entries.values())])
    # A filtered re-run keeps the other entries; a bad download is recorded, no file written.
    src = cache.source_origin(WEIGHTS["b0.in1k"].url)
    monkeypatch.setenv(cache.MIRROR_ENV, str(tmp_path / "empty"))
    assert cli.main(["convert-all", "--output", str(out), "--tags", "imagenet"]) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    entries = {e["key"]: e for e in manifest["entries"]}
    assert "WeightsDownloadError" in entries["b0.in1k"]["error"] and src
    assert "sha256" in entries["b0.in21k_ft_in1k"]


# ---------------------------------------------------------------- verification limit

def reference_logits(scale, seed=0):
    """``(2, 1000)`` float64 logits of magnitude ``scale`` with well separated top-5."""
    return np.random.default_rng(seed).normal(size=(2, 1000)) * scale


def test_scaled_limit_passes_float32_rounding_of_large_logits():
    ref = reference_logits(100.0)  # logits in the hundreds, as an unconditioned random S
    scale = np.abs(ref).max()
    # The reference rounded to float32 twice over, plus the 5.2e-4 measured on that S.
    got = ref.astype("float32").astype("float64")
    got[0, np.argmin(np.abs(ref[0]))] += 5.2e-4
    c = verify.check_logits(got, ref, "b0")
    assert c.max_abs_diff == pytest.approx(5.2e-4, rel=1e-3) and c.max_abs_diff > 1e-4
    assert c.max_rel_diff == pytest.approx(c.max_abs_diff / scale)
    assert c.limit == pytest.approx(1e-4 + 1e-5 * scale) and c.top5_equal
    with pytest.raises(verify.VerificationError):  # what the old absolute limit did
        verify.check_logits(got, ref, "b0", rtol=0.0)


@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_wrong_ports_still_fail(scale):
    ref = reference_logits(scale)
    rng = np.random.default_rng(1)
    wrong = {
        "1e-2 relative": ref * (1 + 1e-2 * rng.normal(size=ref.shape)),
        "permuted classes": ref[:, rng.permutation(ref.shape[1])],
        "5e-4 on small logits" if scale == 1.0 else "1e-4 relative (10x rtol)": (
            ref + 5e-4 if scale == 1.0 else ref * (1 + 1e-4 * rng.normal(size=ref.shape))),
    }
    for what, got in wrong.items():
        c = verify.compare_logits(got, ref)
        assert not c.passed and c.max_abs_diff > c.limit, what
        with pytest.raises(verify.VerificationError, match=r"max\|Δ logit\| = .* of max\|logit\|"):
            verify.check_logits(got, ref, what)
    swapped = ref.copy()  # small difference, but two of the top-5 swap places
    top = np.argsort(-ref[0])[:5]
    swapped[0, top[[1, 2]]] = ref[0, top[[2, 1]]]
    c = verify.compare_logits(swapped, ref)
    assert not c.top5_equal and not c.passed


def test_verify_against_source_reports_and_raises(monkeypatch):
    ref = reference_logits(200.0)
    monkeypatch.setattr(verify, "timm_reference_logits", lambda *a: ref)
    monkeypatch.setattr(verify, "_ours", lambda model, images, pool: model)
    near = ref + 8e-4 * np.sign(ref)  # 4e-6 relative: float32-level
    r = verify.verify_against_source(near, "timm", "s", None, None, 1000, image_size=32)
    scale = np.abs(ref).max()
    assert (r.source, r.image_size, r.top5_equal, r.atol, r.rtol) == (
        "timm", 32, True, 1e-4, 1e-5)
    assert r.max_abs_diff == pytest.approx(8e-4) and r.max_rel_diff == pytest.approx(8e-4 / scale)
    assert r.limit == pytest.approx(1e-4 + 1e-5 * scale)
    far = ref * 1.01
    with pytest.raises(verify.VerificationError) as e:
        verify.verify_against_source(far, "timm", "s", None, None, 1000, image_size=32)
    msg = str(e.value)
    assert msg.startswith("Converted s disagrees with timm: max|Δ logit| = ")
    assert f"limit 0.0001 + 1e-05 * {scale:.3g} = {1e-4 + 1e-5 * scale:.3g}" in msg
