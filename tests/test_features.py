"""Feature extraction: P1..P5 endpoints, shapes/strides per variant, values, timm parity."""

import keras
import numpy as np
import pytest
from helpers import normal_images, random_images, to_backend_layout, to_numpy

import keras_effv2
from keras_effv2.features import LEVELS, feature_endpoints, feature_extractor, grad_cam_model
from keras_effv2.weights import TIMM_IGNORED_SUFFIXES, assign_weights, timm_mapping

timm = pytest.importorskip("timm")
from helpers_timm import TIMM_NAME, make_timm_model, timm_state_dict  # noqa: E402

ALL_VARIANTS = tuple(keras_effv2.VARIANTS)
# Building the symbolic graph is slow on JAX (jax.eval_shape per layer: 10-40 s a variant on
# this 2-core CPU): there only B0 and S run by default, the rest with --run-large. The graph
# code is backend-independent and every variant runs on TensorFlow and torch; every variant's
# endpoints are also checked against timm as data (test_endpoints_match_timm_feature_info).
_SLOW_ON_JAX = ("b1", "b2", "b3", "m", "l", "xl")
SHAPE_CASES = [
    pytest.param(v, marks=pytest.mark.large)
    if keras.backend.backend() == "jax" and v in _SLOW_ON_JAX else v
    for v in ALL_VARIANTS
]


def _feature_layout(shape):
    """(H, W, C) of a feature-map shape in the current data format."""
    if keras.config.image_data_format() == "channels_first":
        return shape[2], shape[3], shape[1]
    return shape[1], shape[2], shape[3]


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_endpoints_match_timm_feature_info(variant):
    info = _timm_feature_info(variant)
    ours = feature_endpoints(variant)
    assert [e.level for e in ours] == list(LEVELS)
    assert [e.reduction for e in ours] == [d["reduction"] for d in info] == [2, 4, 8, 16, 32]
    assert [e.channels for e in ours] == [d["num_chs"] for d in info]
    # timm's module "blocks.<stage>" is our stage index; the endpoint is its last block.
    assert [int(e.layer[1:e.layer.index("_")]) for e in ours] == [
        int(d["module"].split(".")[1]) for d in info
    ]


def _timm_feature_info(variant):
    """timm's feature_info without allocating weights (L/XL are 120-210M parameters)."""
    import torch

    with torch.device("meta"):
        model = timm.create_model(
            TIMM_NAME.format(variant), features_only=True, pretrained=False, num_classes=0
        )
    return model.feature_info.get_dicts()


@pytest.mark.parametrize("variant", SHAPE_CASES)
def test_feature_shapes_every_variant(variant):
    height, width = 64, 96
    with keras.StatelessScope():  # shapes only: no weight initialisation
        model = keras_effv2.EfficientNetV2(
            variant, weights=None, features_only=True, input_shape=_input_shape(height, width)
        )
    assert set(model.output) == set(LEVELS)
    for e in feature_endpoints(variant):
        h, w, c = _feature_layout(model.output[e.level].shape)
        assert (h, w, c) == (height // e.reduction, width // e.reduction, e.channels), e


def _input_shape(h, w):
    if keras.config.image_data_format() == "channels_first":
        return (3, h, w)
    return (h, w, 3)


@pytest.fixture(scope="module")
def b0_full():
    keras.utils.set_random_seed(3)
    return keras_effv2.EfficientNetV2B0(weights=None, classes=10)


def _manual_intermediates(model, images):
    """Run the chain of layers one by one; return every layer's output by name."""
    x, outs = images, {}
    for layer in model.layers[1:]:
        x = layer(x, training=False)
        outs[layer.name] = to_numpy(x)
    return outs


def test_feature_values_equal_intermediate_tensors(b0_full):
    images = to_backend_layout(random_images(2, 72, seed=4))  # 72: odd sizes at P4/P5
    feats = feature_extractor(b0_full, out_indices=(0, 1, 2, 3, 4))
    got = {k: to_numpy(v) for k, v in feats(images, training=False).items()}
    expected = _manual_intermediates(b0_full, images)
    for e in feature_endpoints("b0"):
        np.testing.assert_allclose(got[e.level], expected[e.layer], rtol=1e-5, atol=1e-5)
        h, w, _ = _feature_layout(got[e.level].shape)
        assert (h, w) == (-(-72 // e.reduction),) * 2
    cam = grad_cam_model(b0_full)(images, training=False)
    np.testing.assert_allclose(to_numpy(cam["head_act"]), expected["head_act"], atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(cam["predictions"]), to_numpy(b0_full(images, training=False)), atol=1e-6
    )
    assert _feature_layout(cam["head_act"].shape)[2] == 1280


def test_out_indices_selection_and_names(b0_full):
    sub = feature_extractor(b0_full, out_indices=(4, 2, "P4"))
    assert list(sub.output) == ["P3", "P4", "P5"]
    assert sub.name == "efficientnetv2_b0_features"
    assert sub.count_params() < b0_full.count_params()  # head layers are not part of it
    for bad in [(5,), ("P6",), (1, 1), (), (True,)]:
        with pytest.raises(ValueError, match="out_indices"):
            feature_extractor(b0_full, out_indices=bad)
    with pytest.raises(ValueError, match="pooling must be None"):
        keras_effv2.EfficientNetV2B0(features_only=True, pooling="avg")
    with pytest.raises(ValueError, match="only used with features_only"):
        keras_effv2.EfficientNetV2B0(out_indices=(1,))
    with pytest.raises(ValueError, match="no keras_effv2 blocks"):
        feature_extractor(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))


def test_features_only_loads_weights_by_name(tmp_path, b0_full):
    """features_only shares layer names, so weights saved from the backbone load strictly."""
    backbone = keras_effv2.EfficientNetV2B0(weights=None, include_top=False)
    for src, dst in zip(b0_full.layers, backbone.layers, strict=False):  # no head in dst
        dst.set_weights(src.get_weights())
    path = str(tmp_path / "b0_backbone.weights.h5")
    backbone.save_weights(path)
    feats = keras_effv2.EfficientNetV2B0(
        include_top=False, features_only=True, out_indices=(2, 3, 4), weights=path
    )
    assert list(feats.output) == ["P3", "P4", "P5"]
    images = to_backend_layout(random_images(1, 64, seed=5))
    expected = feature_extractor(b0_full, (2, 3, 4))(images, training=False)
    got = feats(images, training=False)
    for k in ("P3", "P4", "P5"):
        np.testing.assert_allclose(to_numpy(got[k]), to_numpy(expected[k]), atol=1e-6)


@pytest.mark.parametrize("variant,size", [
    ("b0", 32),
    # S: ~70 s on JAX and torch here (timm calibration + our forward); TF runs it by default.
    pytest.param("s", 32, marks=[pytest.mark.large] if keras.backend.backend() != "tensorflow"
                 else []),
])
def test_feature_maps_match_timm_features_only(variant, size):
    import torch

    reference = make_timm_model(variant, image_size=size)
    timm_feats = timm.create_model(TIMM_NAME.format(variant), features_only=True)
    missing, _ = timm_feats.load_state_dict(reference.state_dict(), strict=False)
    assert not missing
    model = keras_effv2.EfficientNetV2(
        variant, weights=None, include_preprocessing=False, classifier_activation=None
    )
    assign_weights(model, timm_state_dict(reference), timm_mapping(variant),
                   ignored_suffixes=TIMM_IGNORED_SUFFIXES)
    images = normal_images(2, size, seed=6)
    with torch.no_grad():
        expected = timm_feats.double().eval()(torch.from_numpy(images.transpose(0, 3, 1, 2))
                                               .double())
    got = feature_extractor(model)(to_backend_layout(images), training=False)
    for level, ref in zip(LEVELS, expected, strict=True):
        ref = ref.numpy()
        if keras.config.image_data_format() == "channels_last":
            ref = ref.transpose(0, 2, 3, 1)
        scale = float(np.abs(ref).max())
        assert scale > 0.1, "reference features are degenerate"
        np.testing.assert_allclose(to_numpy(got[level]), ref, rtol=0, atol=1e-4 * scale)
