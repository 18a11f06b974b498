"""Registry, tag resolution, mirror/cache download, conversion on first use, head handling."""

import dataclasses
import logging
import os
import shutil
import urllib.parse

import numpy as np
import pytest
from helpers import to_backend_layout, to_numpy

import keras_effv2
from keras_effv2 import applications
from keras_effv2.preprocessing import AUTOML_128, IMAGENET, INCEPTION
from keras_effv2.weights import WEIGHTS, WeightsDownloadError, cache, get_weights_spec, load
from keras_effv2.weights.download import HashMismatchError, expected_sha256, file_name

pytest.importorskip("timm")
pytest.importorskip("safetensors")
import helpers_weights as hw  # noqa: E402
from helpers_timm import make_timm_model, timm_logits, timm_state_dict  # noqa: E402

SIZE = 64
TOL = 1e-4
MATRIX = {
    "b0": ("in1k", "in21k", "in21k_ft_in1k"), "b1": ("in1k", "in21k", "in21k_ft_in1k"),
    "b2": ("in1k", "in21k", "in21k_ft_in1k"), "b3": ("in1k", "in21k", "in21k_ft_in1k"),
    "s": ("in1k", "in21k", "in21k_ft_in1k"), "m": ("in1k", "in21k", "in21k_ft_in1k"),
    "l": ("in1k", "in21k", "in21k_ft_in1k"), "xl": ("in21k", "in21k_ft_in1k"),
}
# What automl trained each family with (docs/architecture.md §2.1; automl preprocessing.py,
# preprocess_legacy.py, datasets.py), in [0, 1]-scale mean/std: y = (x / 255 - mean) / std.
AUTOML_NORMALISATION = {
    "b in1k": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # effnetv1_autoaug (legacy)
    "s/m/l in1k": ((128 / 255,) * 3, (128 / 255,) * 3),  # randaug: (x - 128) / 128
    "in21k": ((128 / 255,) * 3, (128 / 255,) * 3),  # ImageNet21k, augname None
    "in21k_ft_in1k": ((0.5,) * 3, (0.5,) * 3),  # ImagenetFt, augname 'ft'
}


def family(w):
    if w.tag == "in1k":
        return "b in1k" if w.variant.startswith("b") else "s/m/l in1k"
    return w.tag


def url_path(url):
    return urllib.parse.urlsplit(url).path.lstrip("/")


# The seed's mmpretrain weight sets are tested against mmpretrain in test_weights_mmpretrain.py.
OURS = {k: w for k, w in WEIGHTS.items() if w.source_format != "mmpretrain-pth"}


def test_registry_matrix_and_metadata():
    assert sorted(OURS) == sorted(f"{v}.{t}" for v, tags in MATRIX.items() for t in tags)
    for key, w in OURS.items():
        assert w.num_classes == (21843 if w.tag == "in21k" else 1000), key
        automl = w.variant in ("b0", "b1", "b2") and w.tag != "in1k"
        assert w.source_format == ("automl-tgz" if automl else "timm-safetensors"), key
        assert w.url.startswith("https://") and w.url.endswith(".tgz" if automl else
                                                               "/model.safetensors")
        pp = w.preprocessing
        assert (pp.mean, pp.std) == AUTOML_NORMALISATION[family(w)], key
        assert pp.source.startswith("mean/std: automl ") and "; resize/crop: " in pp.source
        assert w.train_size < w.eval_size or w.tag == "in21k"
    assert WEIGHTS["b0.in21k"].url.endswith("/efficientnetv2-b0-21k.tgz")
    assert WEIGHTS["s.in21k_ft_in1k"].url == (
        "https://huggingface.co/timm/tf_efficientnetv2_s.in21k_ft_in1k/resolve/main/"
        "model.safetensors")
    assert len(keras_effv2.list_weights()) == 23 + 15
    assert keras_effv2.list_weights("l")[2]["top1"] == 86.9
    assert keras_effv2.list_weights("l")[3]["alias"] == "efficientnetv2-l_3rdparty_in1k"


def test_timm_entries_follow_timms_pretrained_cfg():
    """Eval resize/crop, sizes and head of every timm-sourced set are timm's own (the installed
    timm's ``pretrained_cfg``), and so is the normalisation up to (x - 128) / 128 against
    timm's (x - 127.5) / 127.5 where automl trained with the former."""
    from timm.models import get_pretrained_cfg

    timm_keys = [k for k, w in WEIGHTS.items() if w.source_format == "timm-safetensors"]
    assert len(timm_keys) == 17
    for key in timm_keys:
        w, cfg = WEIGHTS[key], get_pretrained_cfg(f"tf_efficientnetv2_{key}")
        pp = w.preprocessing
        assert cfg.hf_hub_id == f"timm/tf_efficientnetv2_{key}", key
        assert (pp.crop_pct, pp.crop_mode, pp.interpolation) == (
            cfg.crop_pct, cfg.crop_mode, cfg.interpolation), key
        assert (w.train_size, w.eval_size) == (cfg.input_size[1], cfg.test_input_size[1]), key
        assert w.num_classes == cfg.num_classes, key
        assert pp.source.endswith(f"resize/crop: timm pretrained_cfg tf_efficientnetv2_{key}")
        if (pp.mean, pp.std) != (tuple(cfg.mean), tuple(cfg.std)):
            assert cfg.mean == cfg.std == (0.5,) * 3 and pp.mean == pp.std == (128 / 255,) * 3
            assert family(w) in ("s/m/l in1k", "in21k"), key


def test_automl_entries_follow_automls_eval():
    """B0-B2 21k sets exist only as automl checkpoints: automl's own eval (datasets.py,
    preprocessing.py). 21k pretraining: 224 px, center crop 224 / (224 + 32), bilinear;
    21k-ft1k ('ft' path): the whole image resized to the eval size, bilinear."""
    for v, eval_size in (("b0", 224), ("b1", 240), ("b2", 260)):
        w = WEIGHTS[f"{v}.in21k"]
        assert (w.train_size, w.eval_size, w.preprocessing.crop_pct, w.preprocessing.crop_mode,
                w.preprocessing.interpolation) == (224, 224, 224 / (224 + 32), "center",
                                                   "bilinear")
        assert "ImageNet21k" in w.preprocessing.source
        w = WEIGHTS[f"{v}.in21k_ft_in1k"]
        assert (w.eval_size, w.preprocessing.crop_pct, w.preprocessing.crop_mode,
                w.preprocessing.interpolation) == (eval_size, 1.0, "squash", "bilinear")
        assert "preprocess_for_finetune" in w.preprocessing.source


def test_tags_and_errors():
    assert get_weights_spec("s", "imagenet21k-ft1k") is WEIGHTS["s.in21k_ft_in1k"]
    assert get_weights_spec("B3", "in21k") is WEIGHTS["b3.in21k"]
    with pytest.raises(ValueError, match=r"No 'imagenet' weights for EfficientNetV2-XL\. "
                                         r"Valid tags: 'imagenet21k'"):
        keras_effv2.EfficientNetV2XL(weights="imagenet")
    with pytest.raises(ValueError, match="Valid tags: 'imagenet' .in1k."):
        keras_effv2.EfficientNetV2B0(weights="imagenet-22k")


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return tmp_path / "keras_home"


def cache_files(home):
    root = home / "models" / "keras_effv2"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_every_entry_resolves_through_folder_mirror(tmp_path, keras_home, monkeypatch):
    mirror = tmp_path / "mirror"
    for w in WEIGHTS.values():
        (mirror / url_path(w.url)).parent.mkdir(parents=True, exist_ok=True)
        (mirror / url_path(w.url)).write_bytes(w.key.encode())
    monkeypatch.setenv(cache.MIRROR_ENV, str(mirror))
    prefixed = 0
    for w in WEIGHTS.values():
        if expected_sha256(w.url, w.sha256) is not None:
            # The mmpretrain files name their sha256 prefix: the placeholder bytes are refused
            # (the primary host's file is checked, not passed to the next host).
            with pytest.raises(HashMismatchError, match=file_name(w.url)):
                cache.fetch_source(w)
            prefixed += 1
            continue
        path = cache.fetch_source(w)
        assert path.startswith(str(keras_home)) and open(path, "rb").read() == w.key.encode()
    assert prefixed == 15  # the seed's model zoo; the timm and automl primaries carry none
    assert not os.listdir(cache.downloads_dir()) or all(
        not f.startswith(tuple(k for k in WEIGHTS if "3rdparty" in k))
        for f in os.listdir(cache.downloads_dir()))
    monkeypatch.setenv(cache.MIRROR_ENV, mirror.as_uri() + "/")
    assert cache.source_origin(WEIGHTS["xl.in21k"].url) == (
        mirror.as_uri() + "/timm/tf_efficientnetv2_xl.in21k/resolve/main/model.safetensors")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """Reference logits on ``Z``, and a folder mirror holding b0.in1k (timm) and
    b0.in21k_ft_in1k (automl .tgz) fixtures made from the same random timm model."""
    reference = make_timm_model("b0", image_size=SIZE)
    state = timm_state_dict(reference)
    mirror = tmp_path_factory.mktemp("mirror")
    st = mirror / url_path(WEIGHTS["b0.in1k"].url)
    st.parent.mkdir(parents=True)
    hw.write_safetensors(state, st)
    ckpt = hw.write_automl_checkpoint(state, "b0", tmp_path_factory.mktemp("ck") / "ckpt", 0.05)
    tgz = mirror / url_path(WEIGHTS["b0.in21k_ft_in1k"].url)
    tgz.parent.mkdir(parents=True)
    hw.write_tgz(ckpt, tgz)
    return timm_logits(reference, Z), mirror


Z = np.random.default_rng(3).normal(size=(2, SIZE, SIZE, 3)).astype("float32")


def raw_images(spec):
    """``[0, 255]``-scale images that ``spec`` normalises to ``Z`` (N(0, 1), as the fixture
    expects), so one float64 timm forward serves every weight set."""
    pp = spec.preprocessing
    return ((Z * np.array(pp.std) + np.array(pp.mean)) * 255.0).astype("float32")


def predict(model, images):
    return to_numpy(model(to_backend_layout(images), training=False))


def test_imagenet_tag_end_to_end(upstream, tmp_path, keras_home, monkeypatch):
    reference, mirror = upstream
    local = tmp_path / "mirror"
    shutil.copytree(mirror, local)
    monkeypatch.setenv(cache.MIRROR_ENV, str(local))
    spec = WEIGHTS["b0.in1k"]
    images = raw_images(spec)
    expected = reference
    model = keras_effv2.EfficientNetV2B0(weights="imagenet", classifier_activation=None)
    np.testing.assert_allclose(predict(model, images), expected, rtol=0, atol=TOL)
    assert cache_files(keras_home) == [spec.converted_name, spec.converted_name + ".sha256"]
    # weights.load on a built model: the variant is read off its blocks.
    built = keras_effv2.EfficientNetV2("b0", weights=None, classifier_activation=None)
    load(built, "imagenet")
    np.testing.assert_allclose(predict(built, images), expected, rtol=0, atol=TOL)
    # Cached: works without the mirror; a corrupted entry is re-fetched once.
    cached = keras_home / "models" / "keras_effv2" / spec.converted_name
    with open(cached, "r+b") as f:
        f.seek(5000)
        f.write(b"corrupt!")
    model = keras_effv2.EfficientNetV2B0(weights="imagenet", classifier_activation=None)
    np.testing.assert_allclose(predict(model, images), expected, rtol=0, atol=TOL)
    shutil.rmtree(local)
    model = keras_effv2.EfficientNetV2B0(weights="imagenet", classifier_activation=None)
    np.testing.assert_allclose(predict(model, images), expected, rtol=0, atol=TOL)
    cached.write_bytes(b"garbage")
    with pytest.raises(WeightsDownloadError, match="after a retry"):
        keras_effv2.EfficientNetV2B0(weights="imagenet")
    assert cache_files(keras_home) == []


def test_automl_tgz_through_url_mirror_and_fresh_head(upstream, keras_home, monkeypatch, caplog):
    reference, mirror = upstream
    monkeypatch.setenv(cache.MIRROR_ENV, mirror.as_uri())
    spec = WEIGHTS["b0.in21k_ft_in1k"]
    images = raw_images(spec)
    full = keras_effv2.EfficientNetV2B0(weights="imagenet21k-ft1k", classifier_activation=None)
    np.testing.assert_allclose(predict(full, images), reference, rtol=0, atol=TOL)
    assert full.get_layer("preprocessing").mean == INCEPTION.mean
    with caplog.at_level(logging.WARNING, logger="keras_effv2"):
        tuned = keras_effv2.EfficientNetV2B0(weights="imagenet21k-ft1k", classes=10)
    assert "classes=10" in caplog.text and tuned.output_shape == (None, 10)
    notop = keras_effv2.EfficientNetV2B0(weights="imagenet21k-ft1k", include_top=False,
                                         pooling="avg")
    for m in (tuned, notop):
        for a, b in zip(m.get_layer("head_bn").weights, full.get_layer("head_bn").weights,
                        strict=True):
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert cache_files(keras_home) == [spec.converted_name, spec.converted_name + ".sha256"]


def test_21k_tag_defaults_classes_and_preprocessing(monkeypatch):
    calls = []
    monkeypatch.setattr(applications, "load",
                        lambda m, weights, variant: calls.append((variant, weights, m.name)))
    model = keras_effv2.EfficientNetV2B0(weights="imagenet21k")
    assert model.output_shape == (None, 21843) and calls == [("b0", "in21k", "efficientnetv2_b0")]
    assert model.get_layer("preprocessing").mean == AUTOML_128.mean  # 21k: (x - 128) / 128
    model = keras_effv2.EfficientNetV2B0(weights="imagenet21k-ft1k", name="ft")
    assert calls[-1] == ("b0", "in21k_ft_in1k", "ft") and model.output_shape == (None, 1000)
    assert model.get_layer("preprocessing").mean == INCEPTION.mean
    model = keras_effv2.EfficientNetV2S(weights="imagenet", include_top=False)
    assert calls[-1] == ("s", "in1k", "efficientnetv2_s") and len(model.output_shape) == 4
    assert model.get_layer("preprocessing").mean == AUTOML_128.mean


@pytest.mark.parametrize("problem", ["truncated", "wrong_variant"])
def test_bad_download_leaves_no_cache_entry(upstream, tmp_path, keras_home, monkeypatch,
                                            problem):
    _, mirror = upstream
    src = mirror / url_path(WEIGHTS["b0.in1k"].url)
    target = WEIGHTS["b0.in1k" if problem == "truncated" else "b1.in1k"]
    dst = tmp_path / "mirror" / url_path(target.url)
    dst.parent.mkdir(parents=True)
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2] if problem == "truncated" else data)
    monkeypatch.setenv(cache.MIRROR_ENV, str(tmp_path / "mirror"))
    build = keras_effv2.EfficientNetV2B0 if problem == "truncated" else keras_effv2.EfficientNetV2B1
    message = "truncated" if problem == "truncated" else "missing from the timm checkpoint"
    with pytest.raises(WeightsDownloadError, match=message):
        build(weights="imagenet")
    assert cache_files(keras_home) == []
    assert not [p for p in os.listdir(keras_home / "models" / "keras_effv2") if p.startswith(".")]


def test_preprocess_input_and_decode_predictions():
    x = np.full((1, 2, 2, 3), 255.0, "float32")
    np.testing.assert_allclose(keras_effv2.preprocess_input(x, weights="xl.imagenet21k-ft1k"), 1.0)
    np.testing.assert_allclose(
        keras_effv2.preprocess_input(x, weights=WEIGHTS["b0.in1k"])[0, 0, 0],
        (1 - np.array(IMAGENET.mean)) / np.array(IMAGENET.std), rtol=1e-6)
    p = np.zeros((1, 21843))
    p[0, 2] = 1.0
    assert keras_effv2.decode_predictions(p, top=1)[0][0][0] == "n00006024"
    assert keras_effv2.decode_predictions(np.eye(1000)[[207]], top=1)[0][0][1].startswith(
        "golden retriever")
    with pytest.raises(ValueError, match="ImageNet-1k .1000. and ImageNet-21k .21843."):
        keras_effv2.decode_predictions(np.zeros((1, 10)))


def test_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        WEIGHTS["b0.in1k"].num_classes = 3
