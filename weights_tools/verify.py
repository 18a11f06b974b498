"""Run the source implementation on the same normalised input and compare logits.

Fails (:class:`VerificationError`) when the top-5 differ or when

    max|Δ logit| > atol + rtol * max|reference logit|

with ``atol = 1e-4`` and ``rtol = 1e-5``. The limit scales with the logits because float32
rounding does: each product/sum rounds with relative error ``eps = 2**-24 ~ 6e-8``, and a
forward pass (~100 convolutions/BN/SE reductions of up to ~10k terms each, in a different
summation order than the float64 reference) accumulates ``O(sqrt(terms * layers)) * eps``
relative to the magnitudes involved, a few 1e-6 of the largest logit in practice (an
unconditioned random S checkpoint with logits in the hundreds differed by 5.2e-4, i.e. at most
~5e-6 of its largest logit). ``rtol = 1e-5`` (~170 eps) covers that; a wrong port (a transposed or
misassigned tensor, a missing BN epsilon, permuted classes) is off by 1e-2 of the logits or
more, three orders of magnitude above the limit, and usually changes the top-5 as well.
Well-conditioned checkpoints (logits of order 1-10) keep the 1e-4 absolute floor.

Example:
    >>> import numpy as np
    >>> from weights_tools.verify import compare_logits
    >>> ref = np.array([[300.0, -120.0, 5.0, 1.0, 0.5, 0.1]])
    >>> compare_logits(ref + 5e-4, ref).passed  # 5e-4 <= 1e-4 + 1e-5 * 300
    True
    >>> # report = verify_against_source(model, "timm", "s", tensors, checkpoint_path)
    >>> # convert("s", "timm", path, out, verify=verifier("timm", "s", path))
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np

from keras_effv2.configs import get_variant

ATOL = 1e-4
RTOL = 1e-5


class VerificationError(AssertionError):
    """The converted model disagrees with the source implementation."""


@dataclasses.dataclass(frozen=True)
class LogitComparison:
    """Errors of ``got`` against ``expected`` and the limit they are held to.

    ``max_rel_diff`` is ``max_abs_diff / max|expected|``; ``limit`` is
    ``atol + rtol * max|expected|``.
    """

    max_abs_diff: float
    max_rel_diff: float
    max_abs_logit: float
    limit: float
    atol: float
    rtol: float
    top5_equal: bool

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.limit and self.top5_equal

    def describe(self) -> str:
        return (f"max|Δ logit| = {self.max_abs_diff:.3g} ({self.max_rel_diff:.3g} of "
                f"max|logit| {self.max_abs_logit:.3g}; limit {self.atol:g} + {self.rtol:g} * "
                f"{self.max_abs_logit:.3g} = {self.limit:.3g}), top-5 equal: {self.top5_equal}")


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    source: str
    max_abs_diff: float
    top5_equal: bool
    image_size: int
    max_rel_diff: float
    limit: float
    atol: float
    rtol: float


def compare_logits(got, expected, atol: float = ATOL, rtol: float = RTOL) -> LogitComparison:
    """Absolute and relative max error, the scale-aware limit and whether the top-5 agree."""
    got, expected = np.asarray(got, "float64"), np.asarray(expected, "float64")
    if got.shape != expected.shape:
        raise VerificationError(f"Converted model outputs shape {got.shape}; the reference "
                                f"outputs {expected.shape}.")
    diff = float(np.max(np.abs(got - expected)))
    scale = float(np.max(np.abs(expected)))
    top = min(5, got.shape[-1])
    top_equal = bool(np.array_equal(np.argsort(-got)[:, :top], np.argsort(-expected)[:, :top]))
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    return LogitComparison(diff, rel, scale, atol + rtol * scale, atol, rtol, top_equal)


def check_logits(got, expected, what: str, atol: float = ATOL,
                 rtol: float = RTOL) -> LogitComparison:
    """:func:`compare_logits`, raising :class:`VerificationError` with the numbers on failure."""
    c = compare_logits(got, expected, atol, rtol)
    if not c.passed:
        raise VerificationError(f"{what}: {c.describe()}.")
    return c


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


MMPRETRAIN_MODEL = "efficientnetv2-{}_3rdparty_in1k"


def mmpretrain_reference_logits(variant, tensors, num_classes, images_nhwc) -> np.ndarray:
    """mmpretrain's own ``get_model("efficientnetv2-<v>_3rdparty_in1k")`` with ``tensors``
    loaded strictly, float64, eval mode: logits, or the pooled backbone features (its
    ``GlobalAveragePooling`` neck) for a file without ``head.fc``."""
    import mmpretrain
    import torch

    name = MMPRETRAIN_MODEL.format(get_variant(variant).name)
    model = mmpretrain.get_model(name, pretrained=False,
                                 head=dict(num_classes=num_classes or 1000))
    state = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
    if num_classes is None:
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
    model.load_state_dict(state, strict=True)
    model.eval().double()
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))).double()
        if num_classes is None:
            return model.extract_feat(x)[-1].numpy()
        return model(x, mode="tensor").numpy()


# Reference implementations that import torchvision (timm, mmpretrain): importing it after
# TensorFlow ran ops kills the process (SIGSEGV) on this project's CI machine.
# (Looked up by name at call time.)
TORCHVISION_REFERENCES = {"timm": "timm_reference_logits",
                          "mmpretrain": "mmpretrain_reference_logits"}


def torchvision_import_is_safe() -> bool:
    """Whether this process may import torchvision: already imported, or TensorFlow not."""
    return "torchvision" in sys.modules or "tensorflow" not in sys.modules


def reference_logits(source, variant, tensors, checkpoint, num_classes, images_nhwc):
    """``source``'s logits for ``images_nhwc``, in this process when torchvision may be
    imported here, else in a child process (``python -m weights_tools.reference``) that
    reads ``checkpoint`` itself."""
    fn = globals()[TORCHVISION_REFERENCES[source]]
    if torchvision_import_is_safe() or checkpoint is None:
        return fn(variant, tensors, num_classes, images_nhwc)
    with tempfile.TemporaryDirectory(prefix="effv2-reference-") as tmp:
        inp, out = os.path.join(tmp, "images.npy"), os.path.join(tmp, "logits.npy")
        np.save(inp, images_nhwc)
        cmd = [sys.executable, "-m", "weights_tools.reference", source, get_variant(variant).name,
               os.fspath(checkpoint), str(num_classes or 0), inp, out]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, KERAS_BACKEND="torch")  # the child needs torch only
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise VerificationError(f"The {source} reference process failed (exit "
                                    f"{done.returncode}): {done.stderr.strip()[-2000:]}")
        return np.load(out)


def keras_applications_logits(variant, checkpoint, num_classes, images_nhwc) -> np.ndarray:
    """keras.applications ``EfficientNetV2*`` with the legacy ``.h5`` loaded (Keras' loader)."""
    name = get_variant(variant).name
    ctor = getattr(keras.applications, f"EfficientNetV2{name.upper()}")
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
                          image_size: int = 128, atol: float = ATOL, seed: int = 0,
                          rtol: float = RTOL):
    """Compare ``model`` (logits, no preprocessing) with the source implementation."""
    images = np.random.default_rng(seed).normal(size=(2, image_size, image_size, 3))
    images = images.astype("float32")
    if source in TORCHVISION_REFERENCES:
        expected = reference_logits(source, variant, tensors, checkpoint, num_classes, images)
    elif source == "keras-applications":
        expected = keras_applications_logits(variant, checkpoint, num_classes, images)
    else:
        raise VerificationError(
            f"No {source} reference implementation is available to verify against; convert "
            "without --verify, or verify the same weights through timm."
        )
    got = _ours(model, images, pool=num_classes is None)
    c = check_logits(got, expected, f"Converted {variant} disagrees with {source}", atol, rtol)
    return VerifyReport(source, c.max_abs_diff, c.top5_equal, image_size, c.max_rel_diff,
                        c.limit, c.atol, c.rtol)


def model_classes(model) -> int | None:
    """The classifier width of a converted logits model, ``None`` without the top."""
    return model.output_shape[-1] if len(model.output_shape) == 2 else None


def verifier(source, variant, checkpoint, image_size: int = 128):
    """``verify(model, tensors) -> VerifyReport`` for ``keras_effv2.weights.convert``."""
    def verify(model, tensors):
        return verify_against_source(model, source, variant, tensors, checkpoint,
                                     model_classes(model), image_size=image_size)

    return verify
