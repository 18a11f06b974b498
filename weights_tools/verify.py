"""Run the source implementation on the same normalised input and compare logits.

Fails (:class:`VerificationError`) when max |Δ logit| exceeds ``atol`` or the top-5 differ.

Example:
    >>> from weights_tools.verify import verify_against_source
    >>> # report = verify_against_source(model, "timm", "s", tensors, checkpoint_path)
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from keras_effv2.configs import get_variant

ATOL = 1e-4


class VerificationError(AssertionError):
    """The converted model disagrees with the source implementation."""


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    source: str
    max_abs_diff: float
    top5_equal: bool
    image_size: int


def timm_reference_logits(variant, tensors, num_classes, images_nhwc) -> np.ndarray:
    """timm ``tf_efficientnetv2_<v>`` with ``tensors`` loaded, float64, eval mode."""
    import timm
    import torch

    model = timm.create_model(f"tf_efficientnetv2_{get_variant(variant).name}",
                              pretrained=False, num_classes=num_classes or 0)
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in tensors.items()}
    model.load_state_dict(state, strict=True)
    model.eval().double()
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))).double()
        return model(x).numpy()


def keras_applications_logits(variant, checkpoint, num_classes, images_nhwc) -> np.ndarray:
    """keras.applications ``EfficientNetV2*`` with the legacy ``.h5`` loaded."""
    from keras.src.applications import efficientnet_v2 as kapp

    name = get_variant(variant).name
    ctor = getattr(kapp, f"EfficientNetV2{name.upper()}")
    model = ctor(weights=None, include_top=num_classes is not None, classes=num_classes or 1000,
                 include_preprocessing=False, classifier_activation=None,
                 input_shape=images_nhwc.shape[1:], pooling=None if num_classes else "avg")
    model.load_weights(checkpoint)
    return keras.ops.convert_to_numpy(model(images_nhwc, training=False))


def _ours(model, images_nhwc, pool: bool) -> np.ndarray:
    x = images_nhwc
    if keras.config.image_data_format() == "channels_first":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    out = keras.ops.convert_to_numpy(model(x, training=False))
    if pool:  # notop: compare globally pooled features
        channels_last = keras.config.image_data_format() == "channels_last"
        out = out.mean(axis=(1, 2) if channels_last else (2, 3))
    return out


def verify_against_source(model, source, variant, tensors, checkpoint, num_classes,
                          image_size: int = 128, atol: float = ATOL, seed: int = 0):
    """Compare ``model`` (logits, no preprocessing) with the source implementation."""
    images = np.random.default_rng(seed).normal(size=(2, image_size, image_size, 3))
    images = images.astype("float32")
    if source == "timm":
        expected = timm_reference_logits(variant, tensors, num_classes, images)
    elif source == "keras-applications":
        expected = keras_applications_logits(variant, checkpoint, num_classes, images)
    else:
        raise VerificationError(
            f"No {source} reference implementation is available to verify against; convert "
            "without --verify, or verify the same weights through timm."
        )
    got = _ours(model, images, pool=num_classes is None)
    diff = float(np.max(np.abs(got - expected)))
    top = min(5, got.shape[-1])
    top_equal = bool(np.array_equal(np.argsort(-got)[:, :top], np.argsort(-expected)[:, :top]))
    report = VerifyReport(source, diff, top_equal, image_size)
    if diff > atol or not top_equal:
        raise VerificationError(
            f"Converted {variant} disagrees with {source}: max|Δ logit| = {diff:.3g} "
            f"(limit {atol:g}), top-5 equal: {top_equal}."
        )
    return report
