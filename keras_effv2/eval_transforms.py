"""Evaluation resizing per weight set (timm's eval transform), for ``tf.data`` and PIL images.

A weight set's :class:`~keras_effv2.preprocessing.PreprocessingSpec` says how it was
evaluated (docs/architecture.md §2.3), at its ``eval_size``:

* ``crop_mode="center"``: resize the short side to ``floor(eval_size / crop_pct)`` (the long
  side keeps the aspect ratio, truncated), then center-crop ``eval_size`` x ``eval_size``
  (B0 at 224 with crop_pct 0.875: short side 256, crop 224);
* ``crop_mode="squash"``: resize the whole image to ``floor(eval_size / crop_pct)`` square
  (no aspect ratio kept), then center-crop ``eval_size`` (with crop_pct 1: just resize to
  ``eval_size``).

* ``crop_mode="crop_resize"`` (mmpretrain's ``EfficientNetCenterCrop``, the seed's eval):
  crop the centred square of side ``crop_pct * short side`` (offsets ``round((size - side) /
  2)``), then resize it to ``eval_size`` (``interpolation="cv2_bicubic"``: OpenCV's bicubic,
  :mod:`keras_effv2.cv2_resize`; or a PIL method). Done in NumPy (``tf.numpy_function`` in
  ``tf.data``).

Offsets follow torchvision's ``CenterCrop`` (``round((size - crop) / 2)``, half to even).
Resizing uses the spec's interpolation with antialiasing, and the result is rounded and
clipped to ``[0, 255]`` as PIL's uint8 output (which timm evaluates with) is. Normalisation
is *not* applied: models built with ``include_preprocessing=True`` do it.

:func:`pil_eval_transform` is the same transform on a PIL image with NumPy (no TensorFlow
needed), as timm's own eval transform does it with PIL.

Example:
    >>> from keras_effv2.eval_transforms import eval_geometry
    >>> eval_geometry(300, 400, 224, crop_pct=0.875)  # (resize_h, resize_w, top, left)
    (256, 341, 16, 58)
"""

from __future__ import annotations

import math

CROP_MODES = ("center", "squash", "crop_resize")
CV2_BICUBIC = "cv2_bicubic"  # crop_resize only
PIL_METHODS = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "NEAREST",
               "area": "BOX", "lanczos": "LANCZOS"}
TF_METHODS = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest",
              "area": "area", "lanczos": "lanczos3"}


def scale_size(eval_size: int, crop_pct: float) -> int:
    """The resize target before cropping: ``floor(eval_size / crop_pct)`` (timm)."""
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1]; got {crop_pct}.")
    return int(math.floor(eval_size / crop_pct))


def eval_geometry(height: int, width: int, eval_size: int, crop_pct: float = 1.0,
                  crop_mode: str = "center") -> tuple[int, int, int, int]:
    """``(resize_h, resize_w, crop_top, crop_left)`` for an image of ``height x width``."""
    scale = scale_size(eval_size, crop_pct)
    if crop_mode == "crop_resize":
        raise ValueError("crop_mode 'crop_resize' crops before resizing: use crop_resize_box.")
    if crop_mode == "center":
        if height <= width:
            rh, rw = scale, scale * width // height
        else:
            rh, rw = scale * height // width, scale
    elif crop_mode == "squash":
        rh = rw = scale
    else:
        raise ValueError(f"crop_mode must be one of {CROP_MODES}; got {crop_mode!r}.")
    return rh, rw, round((rh - eval_size) / 2), round((rw - eval_size) / 2)


def crop_resize_box(height: int, width: int, crop_pct: float = 1.0) -> tuple[int, int, int, int]:
    """``(top, left, crop_h, crop_w)`` of mmpretrain's ``EfficientNetCenterCrop`` (crop side
    ``crop_pct * short side``, ``crop_pct = crop_size / (crop_size + crop_padding)``).

    Example:
        >>> crop_resize_box(427, 640, 1.0)
        (0, 106, 427, 427)
    """
    side = crop_pct * min(height, width)
    top = max(0, int(round((height - side) / 2.0)))
    left = max(0, int(round((width - side) / 2.0)))
    bottom = min(int(top + side - 1), height - 1)  # mmcv.imcrop: int32 box, clipped
    right = min(int(left + side - 1), width - 1)
    return top, left, bottom - top + 1, right - left + 1


def crop_resize(image, eval_size: int, crop_pct: float = 1.0,
                interpolation: str = CV2_BICUBIC):
    """``crop_mode="crop_resize"`` on an ``HxWx3`` array in ``[0, 255]``: float32
    ``eval_size x eval_size x 3``, integer valued."""
    import numpy as np

    image = np.asarray(image)
    top, left, h, w = crop_resize_box(image.shape[0], image.shape[1], crop_pct)
    crop = image[top:top + h, left:left + w]
    if interpolation == CV2_BICUBIC:
        from keras_effv2.cv2_resize import cv2_bicubic_resize

        return cv2_bicubic_resize(crop, eval_size, eval_size)
    if interpolation not in PIL_METHODS:
        raise ValueError(f"interpolation must be one of {sorted(PIL_METHODS) + [CV2_BICUBIC]}; "
                         f"got {interpolation!r}.")
    from PIL import Image

    resample = getattr(Image.Resampling, PIL_METHODS[interpolation])
    crop = Image.fromarray(np.clip(np.round(crop), 0, 255).astype("uint8"))
    return np.asarray(crop.resize((eval_size, eval_size), resample=resample), "float32")


def eval_transform(image, eval_size: int, crop_pct: float = 1.0, crop_mode: str = "center",
                   interpolation: str = "bicubic"):
    """Resize and crop one ``HxWx3`` image (any dtype, ``[0, 255]``) as a ``tf.data`` map.

    Returns a float32 ``eval_size x eval_size x 3`` tensor in ``[0, 255]`` (integer valued).
    Works on dynamic shapes (inside ``Dataset.map``) and eagerly.
    """
    import tensorflow as tf

    if crop_mode not in CROP_MODES:
        raise ValueError(f"crop_mode must be one of {CROP_MODES}; got {crop_mode!r}.")
    if crop_mode == "crop_resize":
        x = tf.numpy_function(lambda im: crop_resize(im, eval_size, crop_pct, interpolation),
                              [image], tf.float32, stateful=False)
        return tf.ensure_shape(x, (eval_size, eval_size, None))
    if interpolation not in TF_METHODS:
        raise ValueError(f"interpolation must be one of {sorted(TF_METHODS)}; "
                         f"got {interpolation!r}.")
    scale = scale_size(eval_size, crop_pct)
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.int64), tf.cast(shape[1], tf.int64)
    if crop_mode == "center":
        rh = tf.where(h <= w, tf.constant(scale, tf.int64), scale * h // w)
        rw = tf.where(h <= w, scale * w // h, tf.constant(scale, tf.int64))
    else:
        rh = rw = tf.constant(scale, tf.int64)
    x = tf.image.resize(tf.cast(image, tf.float32), tf.cast(tf.stack([rh, rw]), tf.int32),
                        method=TF_METHODS[interpolation], antialias=True)
    x = tf.clip_by_value(tf.round(x), 0.0, 255.0)
    top = tf.cast(tf.round(tf.cast(rh - eval_size, tf.float64) / 2), tf.int32)
    left = tf.cast(tf.round(tf.cast(rw - eval_size, tf.float64) / 2), tf.int32)
    x = x[top:top + eval_size, left:left + eval_size, :]
    return tf.ensure_shape(x, (eval_size, eval_size, None))


def eval_transform_for(weights_spec):
    """``image -> eval_transform(image, ...)`` with a ``WeightsSpec``'s eval settings."""
    pp = weights_spec.preprocessing

    def transform(image):
        return eval_transform(image, weights_spec.eval_size, pp.crop_pct, pp.crop_mode,
                              pp.interpolation)

    return transform


def pil_eval_transform(image, eval_size: int, crop_pct: float = 1.0, crop_mode: str = "center",
                       interpolation: str = "bicubic"):
    """:func:`eval_transform` on a PIL image with PIL's resampling (timm's own eval path).

    Returns a float32 ``eval_size x eval_size x 3`` NumPy array in ``[0, 255]``.

    Example:
        >>> from PIL import Image
        >>> pil_eval_transform(Image.new("RGB", (400, 300)), 224, 0.875).shape
        (224, 224, 3)
    """
    import numpy as np
    from PIL import Image

    if crop_mode == "crop_resize":
        return crop_resize(np.asarray(image.convert("RGB")), eval_size, crop_pct, interpolation)
    if interpolation not in PIL_METHODS:
        raise ValueError(f"interpolation must be one of {sorted(PIL_METHODS)}; "
                         f"got {interpolation!r}.")
    image = image.convert("RGB")
    rh, rw, top, left = eval_geometry(image.height, image.width, eval_size, crop_pct, crop_mode)
    resample = getattr(Image.Resampling, PIL_METHODS[interpolation])
    image = image.resize((rw, rh), resample=resample)
    image = image.crop((left, top, left + eval_size, top + eval_size))
    return np.asarray(image, dtype="float32")


def pil_eval_transform_for(weights_spec):
    """``pil_image -> pil_eval_transform(pil_image, ...)`` with a ``WeightsSpec``'s settings."""
    pp = weights_spec.preprocessing

    def transform(image):
        return pil_eval_transform(image, weights_spec.eval_size, pp.crop_pct, pp.crop_mode,
                                  pp.interpolation)

    return transform
