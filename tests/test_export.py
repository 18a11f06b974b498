"""Export: SavedModel / TFLite / ONNX artifacts reproduce the Keras outputs (dynamic batch)."""

import os

import keras
import numpy as np
import pytest
from helpers import normal_images, to_backend_layout

import keras_effv2
from keras_effv2 import export
from keras_effv2.weights import TIMM_IGNORED_SUFFIXES, assign_weights, timm_mapping

pytest.importorskip("timm")
from helpers_timm import make_timm_model, timm_state_dict  # noqa: E402

BACKEND = keras.backend.backend()
SIZE = 64
# Dynamic-range int8 is optional (issue 5) and costs another ~20 s conversion: --run-large.
SUPPORTED = [
    pytest.param(f, marks=pytest.mark.large) if f.quantization == "dynamic-int8" else f
    for f in export.FORMATS.values() if BACKEND in f.backends
]
FIRST = next(f for f in export.FORMATS.values() if BACKEND in f.backends)
UNSUPPORTED = [f for f in export.FORMATS.values() if BACKEND not in f.backends]


@pytest.fixture(scope="module")
def logits_model():
    """A ported, well-conditioned B0 returning logits (std about 2), fixed 64 px input."""
    reference = make_timm_model("b0", num_classes=10, image_size=SIZE)
    shape = (SIZE, SIZE, 3) if keras.config.image_data_format() == "channels_last" else (
        3, SIZE, SIZE)
    model = keras_effv2.EfficientNetV2B0(
        weights=None, classes=10, include_preprocessing=False, classifier_activation=None,
        input_shape=shape,
    )
    assign_weights(model, timm_state_dict(reference), timm_mapping("b0"),
                   ignored_suffixes=TIMM_IGNORED_SUFFIXES)
    return model


def _needs(fmt):
    if fmt.name == "onnx":
        pytest.importorskip("onnxruntime", reason="onnx export needs the export extra")


@pytest.mark.parametrize("fmt", SUPPORTED, ids=lambda f: f.name)
def test_export_matches_keras(fmt, logits_model, tmp_path):
    _needs(fmt)
    target = tmp_path / f"b0{fmt.suffix}"
    images = to_backend_layout(normal_images(2, SIZE, seed=11))
    result = export.export_model(logits_model, target, fmt.name, sample=images)
    assert os.path.exists(target) and result.path == str(target)
    assert os.listdir(tmp_path) == [target.name]  # no temporary left behind
    assert result.batch_sizes == (1, 2, 3)  # dynamic batch
    # Independent re-check on a fresh batch of 3, including the format's stated bound.
    x = to_backend_layout(normal_images(3, SIZE, seed=12))
    expected = keras.ops.convert_to_numpy(logits_model(x, training=False))
    got = export.load_artifact(str(target), fmt)(x)
    diff = float(np.abs(got - expected).max())
    bound = fmt.atol + fmt.rtol * float(np.abs(expected).max())
    print(f"{BACKEND} {fmt.name}: max |diff| {diff:.3g} (bound {bound:.3g}), "
          f"logit range {np.abs(expected).max():.3g}")
    assert diff <= bound
    if fmt.quantization is None:
        assert diff < 1e-4  # float32 formats: float rounding only
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    with pytest.raises(FileExistsError, match="overwrite"):
        export.export_model(logits_model, target, fmt.name, sample=images)


def test_unsupported_format_names_backend(logits_model, tmp_path):
    for fmt in export.FORMATS.values():
        for backend in {"tensorflow", "jax", "torch"} - set(fmt.backends):
            with pytest.raises(export.ExportError, match=f"KERAS_BACKEND={fmt.backends[0]}"):
                export.check_backend(fmt, backend)
    for fmt in UNSUPPORTED:  # and on this backend, nothing is written
        with pytest.raises(export.ExportError, match=f"KERAS_BACKEND={fmt.backends[0]}"):
            export.export_model(logits_model, tmp_path / "x", fmt.name)
        assert export.main(["b0", "-f", fmt.name, "-o", str(tmp_path / "y")]) == 1
    assert not os.listdir(tmp_path)


def _tiny_model():
    """A two-layer conv net: the export plumbing without B0's 20 s conversions."""
    inputs = keras.Input((16, 16, 3), name="input")
    x = keras.layers.Conv2D(4, 3, strides=2, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="predictions")(x), name="tiny")


def test_failed_verification_leaves_nothing(tmp_path, monkeypatch):
    _needs(FIRST)
    monkeypatch.setattr(export, "load_artifact", lambda path, f: lambda x: np.zeros((len(x), 3)))
    with pytest.raises(export.ExportError, match="differs from the Keras model"):
        export.export_model(_tiny_model(), tmp_path / f"m{FIRST.suffix}", FIRST.name)
    assert os.listdir(tmp_path) == []


def test_bad_arguments(logits_model, tmp_path):
    with pytest.raises(ValueError, match="Unknown export format"):
        export.export_model(logits_model, tmp_path / "a", "pb")
    feats = keras_effv2.EfficientNetV2B0(features_only=True, out_indices=(3, 4))
    with pytest.raises(ValueError, match="single-output"):
        export.export_model(feats, tmp_path / "b", FIRST.name)
    with pytest.raises(SystemExit):
        export.main(["b0", "-f", "gif", "-o", "x"])


def test_cli_exports_and_reports(tmp_path, capsys):
    _needs(FIRST)
    if keras.config.image_data_format() != "channels_last":
        pytest.skip(reason="the tiny CLI model is channels_last")
    saved = tmp_path / "tiny.keras"
    _tiny_model().save(saved)
    out = tmp_path / f"tiny_out{FIRST.suffix}"
    assert export.main(["--model", str(saved), "-f", FIRST.name, "-o", str(out)]) == 0
    msg = capsys.readouterr().out
    assert f"exported tiny as {FIRST.name}" in msg and "batch sizes 1, 2, 3" in msg
    assert os.path.exists(out)
    assert export.main(["--model", str(saved), "-f", FIRST.name, "-o", str(out)]) == 1
    assert "overwrite" in capsys.readouterr().err
    assert export.main(["--model", str(saved), "-f", FIRST.name, "-o", str(out),
                        "--overwrite"]) == 0
