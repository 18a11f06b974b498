"""mmpretrain in and out, checked against mmpretrain 1.2.0 and timm themselves.

* the mmpretrain key map equals the name-by-name, shape-by-shape alignment of mmpretrain's and
  timm's own models, all eight variants (built on torch's meta device: no memory);
* checkpoints written by mmengine's ``save_checkpoint`` from mmpretrain's own ``get_model``
  (random, BN-calibrated, logits ~10), plain, as a training snapshot and flat/backbone-only,
  convert to logits within 1e-4 of mmpretrain's float64 forward;
* the seed's 15 weight sets equal the installed metafile and configs; their eval transform
  matches mmpretrain's test pipeline on the sample photos; the model-zoo name converts on
  first use from a mirror and predicts as mmpretrain's own pipeline does;
* export round trips: ours -> timm / mmpretrain (strict=True) -> the same logits;
* negative controls: a swapped same-shape pair breaks parity; a wrong variant, a truncated
  file, and a tensor-less state-dict entry are refused, named, nothing written; a pickled
  ``posix.system`` call is never run.
"""

import dataclasses
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import types
import urllib.parse

import keras
import numpy as np
import pytest
from helpers import normal_images, to_backend_layout, to_numpy

import keras_effv2
from keras_effv2.weights import WEIGHTS, CheckpointError, cache, convert, export
from keras_effv2.weights.convert import port, read_checkpoint
from keras_effv2.weights.mmpretrain_zoo import MMPRETRAIN_ZOO
from keras_effv2.weights.porting.mmpretrain import timm_to_mmpretrain_names

pytest.importorskip("mmpretrain")
pytest.importorskip("timm")
import helpers_timm  # noqa: E402
from helpers_mmpretrain import (  # noqa: E402
    make_mmpretrain_model,
    mmpretrain_logits,
    save_mm_checkpoint,
)
from sample_photos import sample_image_paths  # noqa: E402

from weights_tools.cli import main as cli  # noqa: E402

SIZE = 64
TOL = 1e-4
BROKEN = 100 * TOL
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MM_PACKAGE = os.path.dirname(__import__("mmpretrain").__file__)
CONFIGS = os.path.join(MM_PACKAGE, ".mim", "configs", "efficientnet_v2")

one_torch_thread = helpers_timm.one_torch_thread_fixture()  # autouse, module scope


@pytest.fixture(scope="module")
def mm_b0():
    return make_mmpretrain_model("b0", image_size=SIZE)


@pytest.fixture(scope="module")
def images():
    return normal_images(2, SIZE, seed=5)


@pytest.fixture(scope="module")
def expected(mm_b0, images):
    return mmpretrain_logits(mm_b0, images)


@pytest.fixture(scope="module")
def files(mm_b0, tmp_path_factory):
    d = tmp_path_factory.mktemp("mm")
    return {"plain": save_mm_checkpoint(mm_b0, d / "b0.pth"),
            "snapshot": save_mm_checkpoint(mm_b0, d / "epoch_3.pth", snapshot=True)}


def predict(model, x):
    return to_numpy(model(to_backend_layout(x), training=False))


def ours(path, variant="b0", **kwargs):
    return keras_effv2.EfficientNetV2(variant, weights=path, include_preprocessing=False,
                                      classifier_activation=None, **kwargs)


# ------------------------------------------------------------------ key map vs both libraries

def test_key_map_is_the_alignment_of_mmpretrain_and_timm_models(monkeypatch):
    """Every variant: mmpretrain's ``EfficientNetV2`` backbone (its arch table has all eight,
    though its configs have no B in21k / XL in1k) and timm's model, name by name in order,
    have equal shapes, and our map pairs exactly those names; the head is ``head.fc``."""
    import timm
    import torch
    from mmpretrain.models.backbones import EfficientNetV2

    linspace = torch.linspace  # mmpretrain reads its drop-path ramp with .item(): on the CPU
    monkeypatch.setattr(torch, "linspace", lambda *a, **k: linspace(*a, **{**k, "device": "cpu"}))
    for v in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl"):
        with torch.device("meta"):  # shapes only: no memory, no init
            tm = timm.create_model(f"tf_efficientnetv2_{v}").state_dict()
            mm = {f"backbone.{k}": t for k, t in EfficientNetV2(arch=v).state_dict().items()}
        mm.update({"head.fc.weight": tm["classifier.weight"],
                   "head.fc.bias": tm["classifier.bias"]})
        assert len(mm) == len(tm), v
        assert all(mm[a].shape == tm[b].shape for a, b in zip(mm, tm, strict=True)), v
        assert timm_to_mmpretrain_names(v) == dict(zip(tm, mm, strict=True)), v


# ------------------------------------------------------------------ conversion parity

def test_convert_cli_verify_and_parity(files, tmp_path, images, expected, capsys):
    out = str(tmp_path / "b0.weights.h5")
    rc = cli(["convert", "--source", "mmpretrain", "--variant", "b0", "--checkpoint",
              files["plain"], "--output", out, "--verify", "--verify-size", str(SIZE)])
    assert rc == 0, capsys.readouterr().err
    assert "verified against mmpretrain" in capsys.readouterr().out
    got = predict(ours(out), images)
    assert np.abs(expected).max() > 5
    print(f"B0 max|logit| {np.abs(expected).max():.3g}, max|Δ| {np.abs(got - expected).max():.3g}")
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)
    assert os.listdir(tmp_path) == ["b0.weights.h5"]


def test_training_snapshot_reads_without_its_classes(files):
    """The snapshot's tensors are the plain file's, read without mmengine's classes (torch's
    weights-only loader refuses the file); it converts in test_zoo_name_first_use_and_predict
    and, after TensorFlow ran ops, in test_convert_verify_export_after_tensorflow_ran_ops."""
    import torch

    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(files["snapshot"], weights_only=True)  # mmengine objects in the pickle
    a = read_checkpoint("mmpretrain", files["plain"], "b0")[0]
    b = read_checkpoint("mmpretrain", files["snapshot"], "b0")[0]
    assert len(a) == 420 and list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_snapshot_refused_by_name_when_torch_lacks_its_rebuild_function(files, monkeypatch):
    """Feature check of the restricted unpickler: a torch whose ``torch._utils`` lacks
    ``_rebuild_tensor_v2`` (simulated where the unpickler looks it up) leaves each tensor an
    inert placeholder, and the file is refused naming the entry and the missing function."""
    import torch

    from keras_effv2.weights.porting import mmpretrain as reader

    real = reader._torch_utils()
    without = types.SimpleNamespace(**{k: getattr(real, k) for k in dir(real)
                                       if k != "_rebuild_tensor_v2" and not k.startswith("__")})
    monkeypatch.setattr(reader, "_torch_utils", lambda: without)
    with pytest.raises(CheckpointError, match=r"backbone\.layers\.0\.conv\.weight "
                                              r"\(torch\._utils\._rebuild_tensor_v2\)"):
        read_checkpoint("mmpretrain", files["snapshot"], "b0")
    assert torch.load(files["plain"], weights_only=True)  # torch's own loader is untouched


# S costs ~10 s more per leg (mmpretrain's S and ours): behind --run-large.
@pytest.mark.parametrize("variant", ["b0", pytest.param("s", marks=pytest.mark.large)])
def test_flat_backbone_only(variant, mm_b0, tmp_path, images):
    """A backbone saved flat (``model.backbone.state_dict()``: no ``backbone.`` prefix, no
    head) -> include_top=False; pooled features vs mmpretrain's."""
    import torch

    mm = mm_b0 if variant == "b0" else make_mmpretrain_model(variant, image_size=SIZE)
    path = str(tmp_path / "backbone.pth")
    torch.save(mm.backbone.state_dict(), path)
    result = convert(variant, "mmpretrain", path, tmp_path / "bb.weights.h5")
    assert result.classes is None
    got = predict(ours(result.output, variant, include_top=False, pooling="avg"), images)
    np.testing.assert_allclose(got, mmpretrain_logits(mm, images, features=True), rtol=0,
                               atol=TOL)


# ------------------------------------------------------------------ negative controls

def test_swapped_pair_breaks_parity(files, images, expected):
    tensors, extra = read_checkpoint("mmpretrain", files["plain"], "b0")
    a, b = (f"backbone.layers.6.{i}.linear_conv.conv.weight" for i in (2, 3))
    assert tensors[a].shape == tensors[b].shape
    tensors[a], tensors[b] = tensors[b], tensors[a]
    diff = np.abs(predict(port("b0", "mmpretrain", tensors, extra), images) - expected).max()
    print(f"swapped pair: max|Δ| {diff:.3g}")
    assert diff > BROKEN, diff


def test_wrong_variant_truncated_and_non_tensor_refused(files, tmp_path, capsys):
    import torch

    out = tmp_path / "out" / "x.weights.h5"
    rc = cli(["convert", "--source", "mmpretrain", "--variant", "b1", "--checkpoint",
              files["plain"], "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "missing from the mmpretrain checkpoint" in err
    assert "s0_b01/project_conv/kernel <- backbone.layers.1.1.conv.weight" in err
    data = open(files["plain"], "rb").read()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth.*(zip|central directory)"):
        convert("b0", "mmpretrain", tmp_path / "cut.pth", out)
    # A pickled call (posix.system) is never run: outside the weights it is an inert
    # placeholder, among the weights the file is refused, naming the class.
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    state = dict(torch.load(files["plain"], weights_only=True)["state_dict"])
    torch.save({"meta": {"hook": Evil()}, "state_dict": state}, tmp_path / "evil_meta.pth")
    assert len(read_checkpoint("mmpretrain", tmp_path / "evil_meta.pth", "b0")[0]) == 420
    state["backbone.layers.0.conv.weight"] = Evil()
    torch.save({"state_dict": state}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"backbone\.layers\.0\.conv\.weight "
                                              r"\(posix\.system\)"):
        convert("b0", "mmpretrain", tmp_path / "evil.pth", out)
    assert not marker.exists() and not out.parent.exists()


# ------------------------------------------------------------------ the seed's weight sets

def _config(name):
    from mmengine.config import Config

    return Config.fromfile(os.path.join(CONFIGS, name))


def test_zoo_entries_equal_installed_metafile_and_configs():
    import yaml

    with open(os.path.join(CONFIGS, "metafile.yml")) as f:
        models = {m["Name"]: m for m in yaml.safe_load(f)["Models"]}
    assert len(models) == len(MMPRETRAIN_ZOO) == 15
    for (v, tag), e in MMPRETRAIN_ZOO.items():
        meta = models[e.name]
        w = WEIGHTS[f"{v}.{tag}"]
        assert (w.url, w.alias, w.num_classes, w.source) == (
            meta["Weights"], e.name, e.num_classes, "mmpretrain"), e.name
        metrics = (meta["Results"] or [{"Metrics": {}}])[0]["Metrics"]
        assert (w.top1, w.top5) == (metrics.get("Top 1 Accuracy"),
                                    metrics.get("Top 5 Accuracy")), e.name
        assert meta["Config"] == f"configs/efficientnet_v2/{e.config}"
        cfg = _config(e.config)
        crop = [t for t in cfg.test_pipeline if t["type"] == "EfficientNetCenterCrop"]
        assert crop == [dict(type="EfficientNetCenterCrop", crop_size=w.eval_size,
                             crop_padding=0)], e.name
        train = cfg.train_pipeline[1]
        assert train.get("scale") == w.train_size, e.name
        pp = cfg.data_preprocessor
        np.testing.assert_allclose(np.array(w.preprocessing.mean) * 255, pp["mean"])
        np.testing.assert_allclose(np.array(w.preprocessing.std) * 255, pp["std"])
        assert pp["to_rgb"] and cfg.model.head.num_classes == w.num_classes, e.name
        assert (w.preprocessing.crop_mode, w.preprocessing.crop_pct,
                w.preprocessing.interpolation) == ("crop_resize", 1.0, "cv2_bicubic")
        assert cfg.model.backbone.arch == v


def test_eval_transform_matches_mmpretrain_pipeline():
    """Ours (PIL decoding, NumPy cv2-bicubic) vs LoadImageFromFile (cv2) +
    EfficientNetCenterCrop, BGR -> RGB: <= 1 grey level (JPEG decoders, cv2's fixed point);
    on the same decoded pixels, <= 1 on under 1e-4 of them. tf.data path == NumPy path."""
    from mmcv.transforms import LoadImageFromFile
    from mmpretrain.datasets.transforms import EfficientNetCenterCrop
    from PIL import Image

    from keras_effv2.eval_transforms import crop_resize, eval_transform, pil_eval_transform

    worst = 0.0
    for path in sample_image_paths().values():
        loaded = LoadImageFromFile()({"img_path": path})
        rgb = loaded["img"][..., ::-1]
        for size in (224, 384):
            ref = EfficientNetCenterCrop(crop_size=size, crop_padding=0)(dict(loaded))["img"]
            ref = ref[..., ::-1].astype("float32")
            with Image.open(path) as im:
                got = pil_eval_transform(im, size, 1.0, "crop_resize", "cv2_bicubic")
            worst = max(worst, float(np.abs(got - ref).max()))
            same = crop_resize(rgb, size, 1.0)  # cv2 rounds in fixed point (1/2048), we once
            assert np.abs(same - ref).max() <= 1 and np.mean(same != ref) < 1e-4
        tf_out = np.asarray(eval_transform(np.ascontiguousarray(rgb), 224, 1.0, "crop_resize",
                                           "cv2_bicubic"))
        np.testing.assert_array_equal(tf_out, crop_resize(rgb, 224, 1.0))
    print(f"eval transform vs mmpretrain pipeline: max {worst} grey level")
    assert worst <= 1.0, worst


def test_zoo_name_first_use_and_predict(mm_b0, files, tmp_path, monkeypatch, capfd):
    """``efficientnetv2-b0_3rdparty_in1k`` from a mirror: converted on first use, with
    ImageNet mean/std; ``keras-effv2 predict`` gives mmpretrain's own pipeline's top-5."""
    import torch
    from mmcv.transforms import LoadImageFromFile
    from mmpretrain.datasets.transforms import EfficientNetCenterCrop

    from keras_effv2.cli.main import main

    # The registry's URL names the real file's sha256 prefix (9ef6e736), which the download
    # check enforces; the random fixture gets a URL named by its own prefix.
    real = WEIGHTS["b0.3rdparty_in1k"]
    prefix = real.url.rsplit("-", 1)[1].split(".")[0]
    own = hashlib.sha256(open(files["snapshot"], "rb").read()).hexdigest()[:len(prefix)]
    spec = dataclasses.replace(real, url=real.url.replace(f"-{prefix}.", f"-{own}."))
    monkeypatch.setitem(WEIGHTS, "b0.3rdparty_in1k", spec)
    mirror = tmp_path / "mirror" / urllib.parse.urlsplit(spec.url).path.lstrip("/")
    mirror.parent.mkdir(parents=True)
    shutil.copy(files["snapshot"], mirror)
    monkeypatch.setenv(cache.MIRROR_ENV, str(tmp_path / "mirror"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    model = keras_effv2.EfficientNetV2B0(weights="efficientnetv2-b0_3rdparty_in1k",
                                         classifier_activation=None)
    assert tuple(model.get_layer("preprocessing").mean) == spec.preprocessing.mean
    with pytest.raises(ValueError, match="EfficientNetV2-B0's mmpretrain weight set, not "
                                         "EfficientNetV2-S's"):
        keras_effv2.EfficientNetV2S(weights="efficientnetv2-b0_3rdparty_in1k")
    path = sample_image_paths()["flower"]
    data = EfficientNetCenterCrop(crop_size=224, crop_padding=0)(
        LoadImageFromFile()({"img_path": path}))
    x = torch.from_numpy(np.ascontiguousarray(data["img"].transpose(2, 0, 1)))[None]
    with torch.no_grad():
        x = mm_b0.data_preprocessor({"inputs": x})["inputs"]  # BGR -> RGB, mean/std
        probs = torch.softmax(mm_b0(x, mode="tensor").double(), -1)[0].numpy()
    capfd.readouterr()  # the download's progress
    assert main(["predict", path, "--weights", "efficientnetv2-b0_3rdparty_in1k", "--json"]) == 0
    import json

    result = json.loads(capfd.readouterr().out)[0]
    assert result["preprocessing"] == "b0.3rdparty_in1k" and result["eval_size"] == 224
    top = np.argsort(-probs)[:5]
    assert [t["score"] for t in result["top"]] == pytest.approx(probs[top], abs=2e-3)
    from keras_effv2.labels import decode_predictions

    wnids = [w for w, _, _ in decode_predictions(probs[None], top=5)[0]]
    assert [t["wnid"] for t in result["top"]] == wnids


# ------------------------------------------------------------------ export round trips

@pytest.fixture(scope="module")
def tuned(files, tmp_path_factory):
    """Our B0 with the converted backbone and a fresh 10-class head (logits of a few units)."""
    path = convert("b0", "mmpretrain", files["plain"],
                   tmp_path_factory.mktemp("t") / "b0.weights.h5").output
    return path, ours(path, classes=10)


def test_export_round_trips_strict(tuned, tmp_path, images):
    import mmpretrain
    import timm
    import torch
    from safetensors.torch import load_file

    _, model = tuned
    got = predict(model, images)
    st = export(model, tmp_path / "b0_10.safetensors", format="timm")
    pth = export(model, tmp_path / "b0_10.pth", format="mmpretrain")
    assert sorted(os.listdir(tmp_path)) == ["b0_10.pth", "b0_10.safetensors"]
    t = timm.create_model("tf_efficientnetv2_b0", num_classes=10)
    t.load_state_dict(load_file(st), strict=True)
    ref = helpers_timm.timm_logits(t.eval(), images)
    print(f"export: max|logit| {np.abs(got).max():.3g}, timm max|Δ| {np.abs(ref - got).max():.3g}")
    np.testing.assert_allclose(ref, got, rtol=0, atol=TOL)
    ckpt = torch.load(pth, weights_only=True)
    assert ckpt["meta"]["num_classes"] == 10 and ckpt["meta"]["arch"] == "b0"
    mm = mmpretrain.get_model("efficientnetv2-b0_3rdparty_in1k", head=dict(num_classes=10))
    mm.load_state_dict(ckpt["state_dict"], strict=True)
    ref = mmpretrain_logits(mm.eval(), images)
    print(f"export: mmpretrain max|Δ| {np.abs(ref - got).max():.3g}")
    np.testing.assert_allclose(ref, got, rtol=0, atol=TOL)


def test_export_backbone_only_cli(tuned, tmp_path, images, capsys):
    import mmpretrain
    import timm
    import torch
    from safetensors.torch import load_file

    path, _ = tuned
    notop = ours(path, include_top=False, pooling="avg")
    got = predict(notop, images)
    notop.save_weights(tmp_path / "notop.weights.h5")
    export(notop, tmp_path / "bb.safetensors", format="timm")
    rc = cli(["export", "--weights", str(tmp_path / "notop.weights.h5"), "--variant", "b0",
              "--format", "mmpretrain", "--output", str(tmp_path / "bb.pth")])
    assert rc == 0, capsys.readouterr().err
    t = timm.create_model("tf_efficientnetv2_b0", num_classes=0)
    t.load_state_dict(load_file(tmp_path / "bb.safetensors"), strict=True)
    np.testing.assert_allclose(helpers_timm.timm_logits(t.eval(), images), got, rtol=0, atol=TOL)
    state = torch.load(tmp_path / "bb.pth", weights_only=True)["state_dict"]
    mm = mmpretrain.get_model("efficientnetv2-b0_3rdparty_in1k")
    mm.backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in state.items()},
                                strict=True)
    np.testing.assert_allclose(mmpretrain_logits(mm.eval(), images, features=True), got,
                               rtol=0, atol=TOL)
    with pytest.raises(ValueError, match=r"A timm export is a '\.safetensors' file"):
        export(notop, tmp_path / "x.pth", format="timm")
    assert not (tmp_path / "x.pth").exists()


# ------------------------------------------------------------------ after TensorFlow ran ops

# One child process of ~30-60 s (TensorFlow, Keras, two model builds, and mmpretrain in a
# grandchild): run on the TensorFlow leg, the backend a notebook that runs TensorFlow ops uses.
@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="runs on the TensorFlow leg (one child process, ~30-60 s)")
def test_convert_verify_export_after_tensorflow_ran_ops(files, tmp_path):
    """As in a notebook: Keras imported, TensorFlow runs ops; then a training snapshot converts
    (no mmengine import), ``--verify`` runs mmpretrain in a child process, and both exports
    work; none of torchvision, timm, mmpretrain, mmengine, torch._dynamo is imported after
    the ops (Keras' torch backend imports torch._dynamo itself, at ``import keras``)."""
    script = textwrap.dedent(f"""
        import sys
        import keras  # a notebook imported Keras (and its backend: torch imports torch._dynamo)
        import tensorflow as tf
        assert float(tf.reduce_sum(tf.ones((2, 2)))) == 4.0
        before = set(sys.modules)
        from keras_effv2.weights import convert, export
        from weights_tools.verify import verifier
        check, models = verifier("mmpretrain", "b0", {files['snapshot']!r}, 64), []
        r = convert("b0", "mmpretrain", {files['snapshot']!r}, {str(tmp_path / 'a.weights.h5')!r},
                    verify=lambda model, tensors: models.append(model) or check(model, tensors))
        m = models[0]  # the converted model
        export(m, {str(tmp_path / 'a.safetensors')!r}, format="timm")
        export(m, {str(tmp_path / 'a.pth')!r}, format="mmpretrain")
        bad = [n for n in ("torchvision", "mmengine", "mmpretrain", "timm", "torch._dynamo")
               if n in set(sys.modules) - before]
        print("OK", r.report.max_abs_diff, bad)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OK" in done.stdout and done.stdout.strip().endswith("[]"), done.stdout
    assert sorted(os.listdir(tmp_path)) == ["a.pth", "a.safetensors", "a.weights.h5"]
