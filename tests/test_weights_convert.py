"""Offline conversion from every upstream format, against the source implementations."""

import os

import keras
import numpy as np
import pytest
from helpers import normal_images, to_backend_layout, to_numpy, top_k

import keras_effv2
from keras_effv2.porting import PortingError
from keras_effv2.porting.convert import convert_checkpoint
from keras_effv2.porting.readers import CheckpointError, read_legacy_h5, read_safetensors

pytest.importorskip("timm")
pytest.importorskip("safetensors")
import helpers_weights as hw  # noqa: E402
from helpers_timm import make_timm_model, timm_logits, timm_state_dict  # noqa: E402

from weights_tools.cli import main as cli  # noqa: E402

TOL = 1e-4
SIZE = 64


@pytest.fixture(scope="module")
def timm_b0():
    model = make_timm_model("b0", image_size=SIZE)
    return model, timm_state_dict(model)


@pytest.fixture(scope="module")
def images():
    return normal_images(2, SIZE, seed=5)


@pytest.fixture(scope="module")
def expected(timm_b0, images):
    return timm_logits(timm_b0[0], images)


@pytest.fixture(scope="module")
def files(timm_b0, tmp_path_factory):
    model, state = timm_b0
    d = tmp_path_factory.mktemp("upstream")
    kapp = hw.keras_applications_model("b0", state, 1000, SIZE)
    return {
        "safetensors": hw.write_safetensors(state, d / "model.safetensors"),
        "pth": hw.write_pth(model, d / "b0.pth"),
        "automl": hw.write_automl_checkpoint(state, "b0", d / "efficientnetv2-b0", 0.05),
        "kapp": hw.write_legacy_h5(kapp, d / "efficientnetv2-b0.h5"),
    }


def logits_of(path, images):
    model = keras_effv2.EfficientNetV2B0(weights=path, include_preprocessing=False,
                                         classifier_activation=None)
    return to_numpy(model(to_backend_layout(images), training=False))


def assert_close(got, expected):
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)
    np.testing.assert_array_equal(top_k(got), top_k(expected))


@pytest.mark.parametrize("fmt,source,flags", [
    ("safetensors", "timm", ["--verify"]),
    ("pth", "timm", ["--verify"]),
    ("kapp", "keras-applications", ["--verify", "--verify-size", "64"]),
    ("automl", "automl", []),
])
def test_convert_cli_matches_timm(files, fmt, source, flags, tmp_path, images, expected, capsys):
    out = str(tmp_path / "b0.weights.h5")
    rc = cli(["convert", "--source", source, "--variant", "b0", "--checkpoint", files[fmt],
              "--output", out, *flags])
    assert rc == 0, capsys.readouterr().err
    if flags:
        assert "verified against" in capsys.readouterr().out
    assert_close(logits_of(out, images), expected)
    assert os.listdir(tmp_path) == ["b0.weights.h5"]  # no temp files left


def test_automl_ema_flag(files, tmp_path, images, expected):
    out = str(tmp_path / "raw.weights.h5")
    assert cli(["convert", "--source", "automl", "--variant", "b0", "--checkpoint",
                files["automl"], "--output", out, "--no-ema"]) == 0
    assert np.max(np.abs(logits_of(out, images) - expected)) > 1e-2  # raw != EMA weights


def test_two_sources_give_identical_weights(files, tmp_path):
    a = convert_checkpoint("b0", "timm", files["safetensors"], tmp_path / "a.weights.h5")
    b = convert_checkpoint("b0", "automl", files["automl"], tmp_path / "b.weights.h5")
    c = convert_checkpoint("b0", "keras-applications", files["kapp"], tmp_path / "c.weights.h5")
    for wa, wb, wc in zip(a.weights, b.weights, c.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(wa), to_numpy(wb))
        np.testing.assert_array_equal(to_numpy(wa), to_numpy(wc))


def test_legacy_h5_names(files):
    names = read_legacy_h5(files["kapp"])
    assert names["block4a_dwconv2/kernel"].shape == (3, 3, 192, 1)
    assert "predictions/bias" in names


def test_wrong_variant_fails_and_writes_nothing(files, tmp_path, capsys):
    out = tmp_path / "b1.weights.h5"
    rc = cli(["convert", "--source", "timm", "--variant", "b1", "--checkpoint",
              files["safetensors"], "--output", str(out)])
    assert rc == 1
    assert "missing from the timm checkpoint" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_truncated_safetensors(files, tmp_path):
    data = open(files["safetensors"], "rb").read()
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_safetensors(bad)
    with pytest.raises(CheckpointError, match="not a safetensors"):
        bad.write_bytes(b"\x05\x00")
        read_safetensors(bad)


def test_missing_key_listed(timm_b0, tmp_path):
    state = dict(timm_b0[1])
    del state["blocks.3.0.conv_dw.weight"]
    path = hw.write_safetensors(state, tmp_path / "model.safetensors")
    out = tmp_path / "x.weights.h5"
    with pytest.raises(PortingError, match=r"s3_b00/dw_conv/kernel <- blocks\.3\.0\.conv_dw"):
        convert_checkpoint("b0", "timm", path, out)
    assert not out.exists()


def test_notop_checkpoint(timm_b0, tmp_path, images):
    state = {k: v for k, v in timm_b0[1].items() if not k.startswith("classifier.")}
    path = hw.write_safetensors(state, tmp_path / "notop.safetensors")
    model = convert_checkpoint("b0", "timm", path, tmp_path / "notop.weights.h5")
    assert model.output_shape[-1] == 1280 and len(model.output_shape) == 4
    keras.backend.clear_session()
