"""Parity with timm: a well-conditioned random timm tf_efficientnetv2_<v>, ported, same logits."""

import keras
import numpy as np
import pytest
from helpers import normal_images, to_backend_layout, to_numpy, top_k

import keras_effv2
from keras_effv2.weights import TIMM_IGNORED_SUFFIXES, PortingError, assign_weights, timm_mapping

pytest.importorskip("timm")
from helpers_timm import make_timm_model, timm_logits, timm_state_dict  # noqa: E402

TOLERANCE = 1e-4
# B0-B3 at their eval size; S, M, L and XL at 128 by default (the same weights and code at a
# quarter to a fourteenth of the pixels), their eval size under --run-large.
CASES = [
    ("b0", 224), ("b1", 240), ("b2", 260), ("b3", 300), ("s", 128), ("m", 128),
    ("l", 128), ("xl", 128),
    pytest.param("s", 384, marks=pytest.mark.large),
    pytest.param("m", 480, marks=pytest.mark.large),
    pytest.param("l", 480, marks=pytest.mark.large),
    pytest.param("xl", 512, marks=pytest.mark.large),
]


def ported_model(variant, size, num_classes=1000):
    reference = make_timm_model(variant, num_classes=num_classes, image_size=size)
    model = keras_effv2.EfficientNetV2(
        variant, weights=None, classes=num_classes, include_preprocessing=False,
        classifier_activation=None,
    )
    assign_weights(model, timm_state_dict(reference), timm_mapping(variant),
                   ignored_suffixes=TIMM_IGNORED_SUFFIXES)
    return model, reference


def assert_parity(model, reference, images):
    expected = timm_logits(reference, images)
    assert 1.0 < expected.std() < 10.0, "reference logits are not well-conditioned"
    got = to_numpy(model(to_backend_layout(images), training=False))
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(top_k(got), top_k(expected))


@pytest.mark.parametrize("variant,size", CASES)
def test_logits_match_timm(variant, size):
    model, reference = ported_model(variant, size)
    assert_parity(model, reference, normal_images(2, size, seed=1))


def test_logits_match_timm_channels_first():
    keras.config.set_image_data_format("channels_first")
    model, reference = ported_model("b0", 96)
    assert model.input_shape == (None, 3, None, None)
    assert_parity(model, reference, normal_images(2, 96, seed=2))


def test_logits_match_timm_odd_size_and_21k_head():
    model, reference = ported_model("b0", 67, num_classes=21843)
    assert_parity(model, reference, normal_images(2, 67, seed=3))


def test_wrong_checkpoint_lists_unmatched_keys():
    reference = make_timm_model("b0", image_size=64)
    model = keras_effv2.EfficientNetV2("b1", weights=None)
    before = [to_numpy(w).copy() for w in model.weights[:3]]
    with pytest.raises(PortingError, match=r"missing from the checkpoint \(\d+\): s0_b01"):
        assign_weights(model, timm_state_dict(reference), timm_mapping("b1"),
                       ignored_suffixes=TIMM_IGNORED_SUFFIXES)
    for w, b in zip(model.weights[:3], before, strict=True):  # nothing half-loaded
        np.testing.assert_array_equal(to_numpy(w), b)


def test_extra_and_misshaped_tensors_are_reported():
    state = timm_state_dict(make_timm_model("b0", image_size=64))
    state["extra.weight"] = np.zeros(3, "float32")
    state["classifier.weight"] = state["classifier.weight"][:10]
    model = keras_effv2.EfficientNetV2("b0", weights=None)
    with pytest.raises(PortingError) as err:
        assign_weights(model, state, timm_mapping("b0"), ignored_suffixes=TIMM_IGNORED_SUFFIXES)
    assert "left unused (1): extra.weight" in str(err.value)
    assert "predictions/kernel (1280, 1000) <- classifier.weight (1280, 10)" in str(err.value)
