"""The ``keras-effv2`` command line: predict, info, convert, train/export delegation, errors.

Offline: ``predict`` loads b0.in1k from a folder mirror holding a random, well-conditioned
timm model, and its top-5 is checked against timm evaluating the same photo its own way: the
model's data config (``resolve_data_config(use_test_size=True)``, as timm's ``validate.py``),
timm's eval transform (``create_transform``: PIL resize, center crop, ``ToTensor``,
``Normalize``) and timm's forward in float64.
"""

import json
import os
import sys
import types
import urllib.parse

import helpers_timm
import keras
import numpy as np
import pytest
from sample_photos import sample_image_paths

from keras_effv2.applications import EfficientNetV2
from keras_effv2.cli import convert as cli_convert
from keras_effv2.cli.main import DELEGATED, PARSED, main
from keras_effv2.configs import VARIANTS
from keras_effv2.eval_transforms import eval_transform, pil_eval_transform, pil_eval_transform_for
from keras_effv2.labels import class_names
from keras_effv2.weights import MIRROR_ENV, WEIGHTS, cache_dir

pytest.importorskip("timm")
pytest.importorskip("safetensors")
import helpers_weights as hw  # noqa: E402
from helpers_timm import make_timm_model, timm_logits, timm_state_dict  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = WEIGHTS["b0.in1k"]


def url_path(url):
    return urllib.parse.urlsplit(url).path.lstrip("/")


one_torch_thread = helpers_timm.one_torch_thread_fixture()  # autouse, module scope


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``(timm_model, safetensors_path, mirror, keras_home)``; env set for the module."""
    model = make_timm_model("b0", image_size=64)
    mirror = tmp_path_factory.mktemp("mirror")
    st = mirror / url_path(SPEC.url)
    st.parent.mkdir(parents=True)
    hw.write_safetensors(timm_state_dict(model), st)
    home = tmp_path_factory.mktemp("keras_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_HOME", str(home))
        mp.setenv(MIRROR_ENV, str(mirror))
        yield model, st, mirror, home


def run_cli(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_console_script_and_help(capsys):
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        pyproject = f.read()
    assert '[project.scripts]\nkeras-effv2 = "keras_effv2.cli.main:main"\n' in pyproject
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in PARSED + DELEGATED:
        assert f"    {command} " in out or f"    {command}\n" in out, command
    assert "examples:" in out and "keras-effv2 predict cat.jpg" in out
    for command in PARSED:
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: keras-effv2 {command}") and "examples:" in out
    with pytest.raises(SystemExit) as e:  # no command: argparse usage error
        main([])
    assert e.value.code == 2


def expected_top5(timm_model, path):
    """timm's top-5 indices and probabilities for the photo, from timm's own pipeline."""
    import timm.data
    from PIL import Image

    config = timm.data.resolve_data_config({}, model=timm_model, use_test_size=True)
    with Image.open(path) as image:
        x = timm.data.create_transform(**config)(image.convert("RGB"))  # normalised, CHW
    logits = timm_logits(timm_model, x.permute(1, 2, 0).numpy()[None])[0]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    idx = np.argsort(-probs)[:5]
    return idx, probs[idx]


def test_predict_matches_timm_on_sample_photos(reference, capsys):
    timm_model = reference[0]
    paths = sample_image_paths()
    images = [paths["china"], paths["flower"]]
    code, out, _ = run_cli(["predict", *images, "--model", "b0", "--weights", "imagenet",
                            "--json"], capsys)
    assert code == 0
    results = json.loads(out)
    assert [r["image"] for r in results] == images
    names = class_names(1000)
    for r in results:
        idx, probs = expected_top5(timm_model, r["image"])
        assert r["weights"] == "b0.in1k" and r["eval_size"] == 224
        assert [t["rank"] for t in r["top"]] == [1, 2, 3, 4, 5]
        assert [(t["wnid"], t["label"]) for t in r["top"]] == [names[i] for i in idx]
        np.testing.assert_allclose([t["score"] for t in r["top"]], probs, atol=1e-5)
    # Text output, another tag spelling, --top; weights now come from the cache.
    code, out, _ = run_cli(["predict", images[1], "--model", "B0", "--weights", "in1k",
                            "--top", "3"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"{images[1]}  (EfficientNetV2-B0 b0.in1k, 224px)"
    idx, probs = expected_top5(timm_model, images[1])
    assert len(lines) == 4
    for rank, (line, i, p) in enumerate(zip(lines[1:], idx[:3], probs[:3], strict=True), 1):
        assert line == f"  {rank:>2}. {p:7.2%}  {names[i][1]}  ({names[i][0]})"


def test_pil_eval_transform_matches_tf_transform():
    from PIL import Image

    path = sample_image_paths()["china"]
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
        for spec in (WEIGHTS["b0.in1k"], WEIGHTS["m.in1k"], WEIGHTS["b0.in21k"]):
            ours = pil_eval_transform_for(spec)(image)
            pp = spec.preprocessing
            tf_x = np.asarray(eval_transform(rgb, spec.eval_size, pp.crop_pct, pp.crop_mode,
                                             pp.interpolation))
            assert ours.shape == tf_x.shape == (spec.eval_size, spec.eval_size, 3)
            # Same geometry; PIL's and TF's antialiased kernels differ by rounding only.
            assert np.abs(ours - tf_x).mean() < 0.5 and np.abs(ours - tf_x).max() <= 8


@pytest.mark.parametrize("argv, message", [
    (["predict", "missing.jpg"], "image file(s) not found: 'missing.jpg'"),
    (["predict", "{img}", "--model", "b9"], "Unknown EfficientNetV2 variant 'b9'. Accepted: "
                                            "b0, b1, b2, b3, s, m, l, xl."),
    (["predict", "{img}", "--model", "xl"], "No 'imagenet' weights for EfficientNetV2-XL. "
                                            "Valid tags: 'imagenet21k' (in21k)"),
    (["predict", "{img}", "--model", "b0", "--weights", "imagenet-22k"],
     "Valid tags: 'imagenet' (in1k), 'imagenet21k' (in21k), 'imagenet21k-ft1k'"),
    (["predict", "{img}", "--model", "b0", "--top", "0"], "--top must be between 1 and 1000"),
    (["predict", "{txt}", "--model", "b0"], "cannot read '{txt}' as an image"),
    (["info", "--variant", "q"], "Unknown EfficientNetV2 variant 'q'"),
])
def test_bad_input_exits_2_with_message(argv, message, tmp_path, capsys):
    img = sample_image_paths()["flower"]
    txt = tmp_path / "notes.txt"
    txt.write_text("not an image")
    argv = [a.format(img=img, txt=txt) for a in argv]
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith("keras-effv2: error: ") and message.format(txt=txt) in err


# ---------------------------------------------------------------- predict from weight files

@pytest.fixture(scope="module")
def b0_random(tmp_path_factory):
    """``(model, weights_h5, logits_keras)``: a random B0 (seeded Keras init; the classifier
    scaled x1000 so its top-5 are well separated, not a near-uniform softmax) saved with
    ``save_weights``, and the same weights as a 64 px ``.keras`` model without normalisation
    layer or softmax."""
    keras.utils.set_random_seed(7)
    model = EfficientNetV2("b0")
    head = model.get_layer("predictions")
    head.kernel.assign(keras.ops.convert_to_numpy(head.kernel) * 1000)
    d = tmp_path_factory.mktemp("b0_random")
    model.save_weights(str(d / "b0.weights.h5"))
    bare = EfficientNetV2("b0", input_shape=(64, 64, 3), include_preprocessing=False,
                                classifier_activation=None)
    bare.set_weights(model.get_weights())
    bare.save(str(d / "b0_logits.keras"))
    return model, str(d / "b0.weights.h5"), str(d / "b0_logits.keras")


def in_memory_top5(model, images, transform):
    """Top-5 ``[(wnid, name)]`` and scores per image of ``model`` on ``transform``ed photos."""
    from PIL import Image

    x = []
    for path in images:
        with Image.open(path) as image:
            x.append(transform(image))
    probs = keras.ops.convert_to_numpy(model(np.stack(x), training=False))
    idx = np.argsort(-probs, axis=-1)[:, :5]
    names = class_names(1000)
    return [[names[i] for i in row] for row in idx], np.take_along_axis(probs, idx, -1)


def assert_same_top5(results, expected):
    names, scores = expected
    assert [[(t["wnid"], t["label"]) for t in r["top"]] for r in results] == names
    np.testing.assert_allclose([[t["score"] for t in r["top"]] for r in results], scores,
                               rtol=1e-4, atol=1e-6)


def test_predict_weights_file_matches_in_memory_model(b0_random, capsys):
    model, weights, _ = b0_random
    paths = sample_image_paths()
    images = [paths["china"], paths["flower"]]
    code, out, err = run_cli(["predict", *images, "--model", "b0", "--weights", weights,
                              "--json"], capsys)
    assert code == 0, err
    results = json.loads(out)
    assert [(r["image"], r["weights"], r["preprocessing"], r["eval_size"]) for r in results] == [
        (i, weights, "b0.in1k", 224) for i in images]
    default = in_memory_top5(model, images, pil_eval_transform_for(SPEC))
    assert_same_top5(results, default)
    assert default[1][:, 0].min() > 0.01  # a real ranking, not ties of a uniform softmax
    assert err.startswith(f"note: {weights!r} records no preprocessing; using the variant's "
                          "built-in default, b0.in1k's (mean (0.485, 0.456, 0.406)")
    # --preprocessing: another weight set's mean/std and eval resize/crop, no note.
    spec = WEIGHTS["b0.in21k_ft_in1k"]
    code, out, err = run_cli(["predict", *images, "--model", "b0", "--weights", weights,
                              "--preprocessing", "imagenet21k-ft1k", "--json"], capsys)
    assert code == 0 and "note:" not in err
    results = json.loads(out)
    assert {r["preprocessing"] for r in results} == {"b0.in21k_ft_in1k"}
    other = EfficientNetV2("b0", include_preprocessing=spec.preprocessing)
    other.set_weights(model.get_weights())
    expected = in_memory_top5(other, images, pil_eval_transform_for(spec))
    assert_same_top5(results, expected)
    assert not np.allclose(expected[1], default[1], rtol=1e-3)  # the option changed the inputs
    code, out, _ = run_cli(["predict", images[1], "--model", "b0", "--weights", weights,
                            "--top", "2"], capsys)
    assert code == 0
    assert out.splitlines()[0] == (f"{images[1]}  (EfficientNetV2-B0 {weights}, "
                                   "preprocessing b0.in1k, 224px)")


def test_predict_keras_model_file(b0_random, capsys):
    model, _, path = b0_random
    images = [sample_image_paths()["china"]]
    code, out, err = run_cli(["predict", *images, "--weights", path, "--json"], capsys)
    assert code == 0, err
    results = json.loads(out)
    assert (results[0]["weights"], results[0]["eval_size"]) == (path, 64)
    pp = SPEC.preprocessing  # the model's name gives b0; b0.in1k's crop and mean/std
    expected = in_memory_top5(model, images, lambda im: pil_eval_transform(
        im, 64, pp.crop_pct, pp.crop_mode, pp.interpolation))
    assert_same_top5(results, expected)
    assert "has no normalisation layer: images are normalised with b0.in1k's mean/std" in err
    assert "outputs logits: scores are their softmax" in err


@pytest.mark.parametrize("argv, message", [
    (["--weights", "{w}"], "{w!r} holds weights only: name its variant with --model"),
    (["--model", "s", "--weights", "{w}"],
     "{w!r} does not fit EfficientNetV2-S: it holds 21 blocks, a 32-channel stem and a "
     "1280-channel head, which is EfficientNetV2-B0 (--model b0)."),
    (["--model", "s", "--weights", "{k}"],
     "{k!r} is EfficientNetV2-B0 (model name 'efficientnetv2_b0'), not --model 's'."),
    (["--model", "b0", "--weights", "{w}", "--preprocessing", "imagenet-1k"],
     "No 'imagenet-1k' weights for EfficientNetV2-B0. Valid tags:"),
    (["--model", "b0", "--preprocessing", "imagenet21k"],
     "--preprocessing applies to a .weights.h5 or .keras file; the weight tag 'imagenet'"),
    (["--model", "b0", "--weights", "{d}/missing.weights.h5"],
     ".weights.h5 file '{d}/missing.weights.h5' not found; accepted: a registered tag"),
    (["--model", "b0", "--weights", "{d}/missing.keras"], ".keras file '{d}/missing.keras' "
                                                          "not found; accepted:"),
    (["--model", "b0", "--weights", "{d}/b0.h5"],
     "--weights '{d}/b0.h5' is neither a registered tag nor a file ending in '.weights.h5' or "
     "'.keras'; accepted: a registered tag"),
    (["--model", "b0", "--weights", "{d}/text.weights.h5"],
     "cannot read '{d}/text.weights.h5' as a Keras .weights.h5 file"),
    (["--weights", "{d}/text.keras"], "cannot load '{d}/text.keras' as a Keras model"),
])
def test_predict_bad_weights_file_exits_2(b0_random, argv, message, tmp_path, capsys):
    for name in ("b0.h5", "text.weights.h5", "text.keras"):
        (tmp_path / name).write_text("not a model")
    fill = dict(w=b0_random[1], k=b0_random[2], d=tmp_path)
    argv = ["predict", sample_image_paths()["flower"], *(a.format(**fill) for a in argv)]
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == "", err
    assert err.startswith("keras-effv2: error: ") and message.format(**fill) in err


def test_predict_download_failure_exits_1(reference, capsys):
    # The mirror holds b0.in1k only: b1.in1k cannot be fetched, and nothing is left cached.
    code, out, err = run_cli(["predict", sample_image_paths()["china"], "--model", "b1"],
                             capsys)
    assert code == 1 and out == ""
    assert "could not load weights 'b1.in1k'" in err and MIRROR_ENV in err
    assert not os.path.exists(os.path.join(cache_dir(), WEIGHTS["b1.in1k"]
                                           .converted_name))


def test_info(reference, capsys):
    main(["predict", sample_image_paths()["china"], "--model", "b0"])  # b0.in1k is cached
    capsys.readouterr()
    code, out, _ = run_cli(["info", "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["backend"] == keras.backend.backend()
    assert info["cache"]["dir"] == os.path.join(str(reference[3]), "models", "keras_effv2")
    assert info["cache"]["mirror"] == str(reference[2]) and info["cache"]["files"] == 1
    assert [v["name"] for v in info["variants"]] == list(VARIANTS)
    for v in info["variants"]:
        spec = VARIANTS[v["name"]]
        assert (v["params_total"], v["blocks"], v["eval_size"]) == (
            spec.params_total, spec.num_blocks, spec.eval_size)
    assert info["variants"][-1]["tags"] == ["imagenet21k", "imagenet21k-ft1k",
                                            "efficientnetv2-xl_in21k-pre_3rdparty_in1k",
                                            "efficientnetv2-xl_3rdparty_in21k"]
    assert sorted(w["key"] for w in info["weights"]) == sorted(WEIGHTS)
    assert [w["key"] for w in info["weights"] if w["cached"]] == ["b0.in1k"]
    s = next(w for w in info["weights"] if w["key"] == "s.in1k")
    assert s["url"] == WEIGHTS["s.in1k"].url and s["preprocessing"]["crop_pct"] == 1.0
    code, out, _ = run_cli(["info", "--variant", "s"], capsys)
    assert code == 0
    assert f"backend: {keras.backend.backend()}" in out and info["cache"]["dir"] in out
    assert "  s      21,612,360     40   300   384  imagenet, imagenet21k, imagenet21k-ft1k" in out
    assert WEIGHTS["s.in21k"].url in out and "b0.in1k" not in out


def test_convert_argv_mapping():
    assert cli_convert.to_weights_tools_argv(["--source", "timm"]) == ["convert", "--source",
                                                                       "timm"]
    assert cli_convert.to_weights_tools_argv(["--all", "--output", "d"]) == [
        "convert-all", "--output", "d"]


def test_convert_timm_checkpoint(reference, tmp_path, capfd):
    timm_model, st = reference[0], reference[1]
    out_path = tmp_path / "b0.weights.h5"
    code = main(["convert", "--source", "timm", "--variant", "b0", "--checkpoint", str(st),
                 "--output", str(out_path)])
    out, err = capfd.readouterr()
    assert code == 0, err[-2000:]
    assert f"wrote {out_path}" in out
    from keras_effv2 import EfficientNetV2B0

    model = EfficientNetV2B0(weights=str(out_path), include_preprocessing=False,
                             classifier_activation=None)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    ours = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(ours, timm_logits(timm_model, x), atol=1e-4)
    # The converted file predicts as the registered tag it came from (same upstream weights).
    image = sample_image_paths()["china"]
    runs = [["--weights", "imagenet"], ["--weights", str(out_path), "--preprocessing", "in1k"]]
    outs = []
    for extra in runs:
        assert main(["predict", image, "--model", "b0", "--json", *extra]) == 0
        outs.append(json.loads(capfd.readouterr().out)[0])
    assert outs[1]["weights"] == str(out_path) and outs[1]["preprocessing"] == "b0.in1k"
    assert [t["wnid"] for t in outs[0]["top"]] == [t["wnid"] for t in outs[1]["top"]]
    np.testing.assert_allclose([t["score"] for t in outs[0]["top"]],
                               [t["score"] for t in outs[1]["top"]], rtol=1e-4, atol=1e-6)
    assert main(["convert"]) == 2  # no arguments: usage on stderr
    assert "usage: keras-effv2 convert" in capfd.readouterr().err


@pytest.mark.parametrize("command, module", [("train", "keras_effv2.train"),
                                             ("export", "keras_effv2.export")])
def test_delegation(command, module, monkeypatch, capsys):
    calls = []
    fake = types.ModuleType(module)
    fake.main = lambda argv: calls.append(argv) or 3
    monkeypatch.setitem(sys.modules, module, fake)
    argv = ["--dataset", "cifar10", "--model", "b0", "--help-me", "-x"]
    assert main([command, *argv]) == 3
    assert calls == [argv]
    fake.main = lambda argv: None
    assert main([command]) == 0
    del fake.main
    code, _, err = run_cli([command], capsys)
    assert code == 1 and f"{module!r} has no main(argv)" in err


@pytest.mark.parametrize("command, module", [("train", "keras_effv2.train"),
                                             ("export", "keras_effv2.export")])
def test_delegation_module_missing(command, module, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ModuleNotFoundError
    code, out, err = run_cli([command, "--help"], capsys)
    assert code == 1 and out == ""
    assert f"'keras-effv2 {command}' needs the module {module!r}" in err
