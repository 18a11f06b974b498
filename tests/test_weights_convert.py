"""Conversion from every upstream format, checked against the upstream implementations.

* timm ``.safetensors`` / ``.pth``: our logits against timm's (float64) forward;
* google/automl TF checkpoints named by automl's own naming rules (``automl_naming``, not our
  key map), both model scopes: against timm's forward of the same tensors;
* keras.applications legacy ``.h5`` files written by hand in the tf.keras 2 layout: against
  keras.applications' own forward of the model the file was written from.

Each source also has negative controls: a swapped pair of same-shape tensors converts but
breaks parity; a wrong name or a missing layer is refused, naming what is wrong.
"""

import os

import helpers_timm
import keras
import numpy as np
import pytest
from helpers import normal_images, to_backend_layout, to_numpy, top_k

import keras_effv2
from keras_effv2.weights import CheckpointError, PortingError, convert
from keras_effv2.weights.convert import port, read_checkpoint
from keras_effv2.weights.porting.readers import legacy_h5_classes, read_safetensors

pytest.importorskip("timm")
pytest.importorskip("safetensors")
import helpers_weights as hw  # noqa: E402
from helpers_timm import make_timm_model, timm_logits, timm_state_dict  # noqa: E402

from weights_tools.cli import main as cli  # noqa: E402

TOL = 1e-4
SIZE = 64
# A wrong port moves the logits by far more than float32 rounding (<= TOL here).
BROKEN = 100 * TOL


one_torch_thread = helpers_timm.one_torch_thread_fixture()  # autouse, module scope


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
    return {
        "safetensors": hw.write_safetensors(state, d / "model.safetensors"),
        "pth": hw.write_pth(model, d / "b0.pth"),
        "automl": hw.write_automl_checkpoint(state, "b0", d / "efficientnetv2-b0", 0.05),
        "automl-legacy-scope": hw.write_automl_checkpoint(
            state, "b0", d / "eff_net_v2_model", 0.05, scope="eff_net_v2_model"),
    }


def predict(model, images):
    return to_numpy(model(to_backend_layout(images), training=False))


def logits_of(path, images, variant="b0", include_top=True):
    model = keras_effv2.EfficientNetV2(variant, weights=path, include_top=include_top,
                                       include_preprocessing=False, classifier_activation=None)
    return predict(model, images)


def assert_close(got, expected):
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)
    np.testing.assert_array_equal(top_k(got), top_k(expected))


@pytest.mark.parametrize("fmt,source,flags", [
    ("safetensors", "timm", ["--verify"]),
    ("pth", "timm", ["--verify"]),
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


def test_automl_ema_flag_and_scope(files, tmp_path, images, expected, timm_b0):
    # automl's older releases scope the model 'eff_net_v2_model'.
    tensors, extra = read_checkpoint("automl", files["automl-legacy-scope"], "b0")
    assert extra == {"prefix": "eff_net_v2_model"}
    assert_close(predict(port("b0", "automl", tensors, extra), images), expected)
    out = str(tmp_path / "raw.weights.h5")
    assert cli(["convert", "--source", "automl", "--variant", "b0", "--checkpoint",
                files["automl"], "--output", out, "--no-ema"]) == 0
    assert np.max(np.abs(logits_of(out, images) - expected)) > BROKEN  # raw != EMA weights
    # A checkpoint of another variant's scope is refused before any model is built.
    other = hw.write_automl_checkpoint(timm_b0[1], "s", tmp_path / "s_scope")
    with pytest.raises(CheckpointError, match=r"scope 'efficientnetv2-s', not "
                                              r"EfficientNetV2-B0's \(accepted: "
                                              r"'efficientnetv2-b0', 'eff_net_v2_model'\)"):
        convert("b0", "automl", other, tmp_path / "x.weights.h5")


def test_timm_and_automl_give_identical_files(files, tmp_path):
    import h5py

    a = convert("b0", "timm", files["safetensors"], tmp_path / "a.weights.h5").output
    b = convert("b0", "automl", files["automl"], tmp_path / "b.weights.h5").output
    with h5py.File(a) as fa, h5py.File(b) as fb:
        names = []
        fa.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert len(names) == 361
        for n in names:
            np.testing.assert_array_equal(fa[n][()], fb[n][()], err_msg=n)


def h5_datasets(path) -> dict:
    """``{dataset path: (value, dtype, its group's 'name' attribute)}`` of an HDF5 file."""
    import h5py

    out = {}
    with h5py.File(path) as f:
        f.visititems(lambda n, o: out.__setitem__(n, (o[()], o.dtype, o.parent.attrs.get("name")))
                     if isinstance(o, h5py.Dataset) else None)
    return out


@pytest.fixture(scope="module")
def keras_written(files, tmp_path_factory):
    """The reference file: a model filled with the whole timm checkpoint (``port``), written
    by Keras' own ``Model.save_weights``. (timm's and automl's files of the same tensors give
    identical files: ``test_timm_and_automl_give_identical_files``.)"""
    tensors, extra = read_checkpoint("timm", files["safetensors"], "b0")
    reference = str(tmp_path_factory.mktemp("keras") / "keras.weights.h5")
    port("b0", "timm", tensors, extra).save_weights(reference)
    return h5_datasets(reference)


@pytest.mark.parametrize("fmt,source,layout", [
    ("safetensors", "timm", "notop"), ("pth", "timm", None), ("automl", "automl", "10")])
def test_streamed_file_equals_keras_save_weights(files, keras_written, fmt, source, layout,
                                                 tmp_path, images, expected):
    """The streaming writer's file holds exactly the datasets (names, dtypes, values, group
    names) that Keras' own ``Model.save_weights`` writes for a model filled with the whole
    checkpoint; Keras' own ``load_weights`` reads it back to timm's logits. ``layout``: the
    user's model that gives the layout on first use (no top; a 10-class head), or none."""
    user = None if layout is None else keras_effv2.EfficientNetV2B0(
        weights=None, include_top=layout != "notop", classes=10 if layout == "10" else 1000)
    out = convert("b0", source, files[fmt], tmp_path / "streamed.weights.h5", layout=user).output
    got = h5_datasets(out)
    assert sorted(got) == sorted(keras_written) and len(got) == 361
    for name, (value, dtype, group) in keras_written.items():
        assert got[name][1] == dtype and got[name][2] == group, name
        np.testing.assert_array_equal(got[name][0], value, err_msg=name)
    assert os.listdir(tmp_path) == ["streamed.weights.h5"]
    if layout == "notop":
        fresh = keras_effv2.EfficientNetV2B0(weights=None, include_preprocessing=False,
                                             classifier_activation=None)
        fresh.load_weights(out)  # Keras' own reader
        assert_close(predict(fresh, images), expected)


def _same_shape_pair(tensors, contains):
    """Two different entries whose names contain ``contains``, of the same shape."""
    by_shape = {}
    for name in sorted(tensors):
        if contains in name and np.ndim(tensors[name]) == 4:
            by_shape.setdefault(np.shape(tensors[name]), []).append(name)
    return next(names[:2] for names in by_shape.values() if len(names) > 1)


@pytest.mark.parametrize("source,fmt", [("timm", "safetensors"), ("automl", "automl")])
def test_swapped_tensor_breaks_parity(files, source, fmt, images, expected):
    tensors, extra = read_checkpoint(source, files[fmt], "b0")  # converts to timm's logits above
    a, b = _same_shape_pair(tensors, "conv_pwl" if source == "timm" else "/conv2d_1/")
    tensors[a], tensors[b] = tensors[b], tensors[a]
    swapped = predict(port("b0", source, tensors, extra), images)
    assert np.max(np.abs(swapped - expected)) > BROKEN, (a, b)


@pytest.mark.parametrize("source,fmt,old,new", [
    ("timm", "safetensors", "blocks.3.0.bn2.weight", "blocks.3.0.bn4.weight"),
    ("automl", "automl", "blocks_5/tpu_batch_normalization_2/gamma",
     "blocks_5/tpu_batch_normalization_3/gamma"),
])
def test_wrong_name_is_refused(files, source, fmt, old, new, tmp_path):
    tensors, extra = read_checkpoint(source, files[fmt], "b0")
    full = next(k for k in tensors if k.endswith(old))
    tensors[full.replace(old, new)] = tensors.pop(full)
    with pytest.raises(PortingError) as e:
        port("b0", source, tensors, extra)
    assert f"<- {full}" in str(e.value) and full.replace(old, new) in str(e.value)


# ------------------------------------------------------------ keras.applications legacy .h5

def kapp_reference(variant, include_top, images):
    """keras.applications' model (random weights), its tf.keras 2 file layers and logits
    (features pooled by nothing: the last feature map without the top)."""
    model = hw.keras_applications_model(variant, include_top, size=SIZE)
    return hw.tf_keras2_layers(model), to_numpy(model(images, training=False))


def assert_matches_kapp(got, ref):
    """Both are Keras float32 forwards; float32 rounding grows with the output's scale."""
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= TOL + 1e-5 * scale, (np.abs(got - ref).max(), scale)


def test_keras_applications_b0_file(tmp_path, images, capsys):
    layers, ref = kapp_reference("b0", True, images)
    path = hw.write_tf_keras2_h5(layers, tmp_path / "efficientnetv2-b0.h5")
    assert legacy_h5_classes(path) == 1000
    out = str(tmp_path / "ours.weights.h5")
    rc = cli(["convert", "--source", "keras-applications", "--variant", "b0", "--checkpoint",
              path, "--output", out, "--verify", "--verify-size", str(SIZE)])
    assert rc == 0, capsys.readouterr().err
    assert_matches_kapp(logits_of(out, images), ref)


# S, M and L cost 0.5-2 minutes each on the CI CPU (two models' first forwards: S took 70 s on
# torch and 130 s on JAX, measured on a busy machine): behind --run-large.
@pytest.mark.parametrize("variant", [
    "b0", *(pytest.param(v, marks=pytest.mark.large) for v in ("s", "m", "l"))])
def test_keras_applications_notop_file(variant, tmp_path, images):
    layers, ref = kapp_reference(variant, False, images)
    path = hw.write_tf_keras2_h5(layers, tmp_path / f"efficientnetv2-{variant}_notop.h5")
    assert legacy_h5_classes(path) is None
    tensors, extra = read_checkpoint("keras-applications", path, variant)
    got = predict(port(variant, "keras-applications", tensors, extra), images)
    if keras.config.image_data_format() == "channels_first":
        got = got.transpose(0, 2, 3, 1)
    assert_matches_kapp(got, ref)
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def kapp_b0(images):
    return kapp_reference("b0", True, images)


def test_keras_applications_names_in_file_do_not_matter(kapp_b0, tmp_path, images):
    """Keras' legacy loader goes by layer order, as for keras.applications' own weights."""
    layers, ref = kapp_b0
    renamed = [(f"tf2_{name}", [(f"tf2_{w}", v) for w, v in weights]) for name, weights in layers]
    path = hw.write_tf_keras2_h5(renamed, tmp_path / "renamed.h5")
    tensors, _ = read_checkpoint("keras-applications", path, "b0")
    assert_matches_kapp(predict(port("b0", "keras-applications", tensors), images), ref)


def test_keras_applications_negative_controls(kapp_b0, tmp_path, images):
    layers, ref = kapp_b0
    # Two same-shape kernels swapped in the file: it loads, parity breaks.
    swapped = [(name, list(weights)) for name, weights in layers]
    i, j = [k for k, (name, _) in enumerate(swapped)
            if name in ("block6b_expand_conv", "block6c_expand_conv")]
    (wi, vi), (wj, vj) = swapped[i][1][0], swapped[j][1][0]
    assert vi.shape == vj.shape
    swapped[i][1][0], swapped[j][1][0] = (wi, vj), (wj, vi)
    path = hw.write_tf_keras2_h5(swapped, tmp_path / "swapped.h5")
    tensors, _ = read_checkpoint("keras-applications", path, "b0")
    got = predict(port("b0", "keras-applications", tensors), images)
    assert np.abs(got - ref).max() > BROKEN
    # A layer missing from the file: Keras' loader counts the layers and refuses.
    missing = [(n, w) for n, w in layers if n != "block6b_se_reduce"]
    path = hw.write_tf_keras2_h5(missing, tmp_path / "missing.h5")
    with pytest.raises(CheckpointError, match=r"missing\.h5' does not load into "
                                              r"keras\.applications EfficientNetV2B0 .*[Ll]ayer"):
        read_checkpoint("keras-applications", path, "b0")


# ------------------------------------------------------------ errors and edge cases

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
        convert("b0", "timm", path, out)
    assert not out.exists()


def test_notop_checkpoint(timm_b0, tmp_path, images):
    import torch

    state = {k: v for k, v in timm_b0[1].items() if not k.startswith("classifier.")}
    path = hw.write_safetensors(state, tmp_path / "notop.safetensors")
    result = convert("b0", "timm", path, tmp_path / "notop.weights.h5")
    assert result.classes is None
    feats = logits_of(result.output, images, include_top=False)
    if keras.config.image_data_format() == "channels_first":
        feats = feats.transpose(0, 2, 3, 1)
    timm_model = timm_b0[0].double()
    with torch.no_grad():  # timm's last feature map (after its head conv, BN and SiLU)
        x = torch.from_numpy(images.transpose(0, 3, 1, 2)).double()
        ref = timm_model.forward_features(x).numpy().transpose(0, 2, 3, 1)
    timm_model.float()
    np.testing.assert_allclose(feats, ref, rtol=0, atol=TOL)
