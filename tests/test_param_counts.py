"""Exact parameter counts (docs/architecture.md §5.1), built on the current backend."""

import keras
import numpy as np
import pytest

import keras_effv2

# variant: (trainable 1000, total 1000, notop trainable, notop total, trainable 21843)
COUNTS = {
    "b0": (7_139_704, 7_200_312, 5_858_704, 5_919_312, 33_839_587),
    "b1": (8_141_052, 8_212_124, 6_860_052, 6_931_124, 34_840_935),
    "b2": (10_096_086, 10_178_374, 8_687_086, 8_769_374, 39_463_873),
    "b3": (14_358_406, 14_467_622, 12_821_406, 12_930_622, 46_394_097),
    "s": (21_458_488, 21_612_360, 20_177_488, 20_331_360, 48_158_371),
    "m": (54_139_356, 54_431_388, 52_858_356, 53_150_388, 80_839_239),
    "l": (118_515_272, 119_027_848, 117_234_272, 117_746_848, 145_215_155),
    "xl": (208_119_808, 208_896_832, 206_838_808, 207_615_832, 234_819_691),
}


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# A count is the same on every backend (one Keras graph); building L and XL three times each
# costs ~2 min per leg, so they are built on the TensorFlow leg only.
_ONE_LEG = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                              reason="backend-independent count; L/XL built on the TF leg")


@pytest.mark.parametrize("variant", [pytest.param(v, marks=_ONE_LEG) if v in ("l", "xl") else v
                                     for v in COUNTS])
def test_parameter_counts(variant):
    trainable, total, notop_trainable, notop_total, trainable_21k = COUNTS[variant]
    spec = keras_effv2.get_variant(variant)
    assert (spec.params_trainable, spec.params_total) == (trainable, total)

    top = keras_effv2.EfficientNetV2(variant, weights=None)
    assert (_trainable(top), top.count_params()) == (trainable, total)
    notop = keras_effv2.EfficientNetV2(variant, include_top=False, weights=None)
    assert (_trainable(notop), notop.count_params()) == (notop_trainable, notop_total)
    head_21k = keras_effv2.EfficientNetV2(variant, weights=None, classes=21843)
    assert _trainable(head_21k) == trainable_21k
