"""OpenCV's bicubic resize (``cv2.resize(..., interpolation=cv2.INTER_CUBIC)``) in NumPy.

mmpretrain evaluates EfficientNetV2 with ``EfficientNetCenterCrop``, which resizes with cv2's
``INTER_CUBIC``: Keys' cubic kernel with ``A = -0.75``, sample positions
``(d + 0.5) * in / out - 0.5``, replicated borders and no antialiasing when shrinking. cv2
computes uint8 images in fixed point (coefficients in 1/2048); this float64 version rounds
once at the end, so it agrees with cv2 to within one grey level (tested against mmpretrain's
pipeline in ``tests/test_weights_mmpretrain.py``). OpenCV is not needed.

Example:
    >>> import numpy as np
    >>> from keras_effv2.cv2_resize import cv2_bicubic_resize
    >>> cv2_bicubic_resize(np.zeros((30, 40, 3), "uint8"), 16, 16).shape
    (16, 16, 3)
"""

from __future__ import annotations

import numpy as np

A = -0.75  # OpenCV's cubic coefficient (PIL and TensorFlow use -0.5)


def cubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` interpolation matrix of cv2's ``INTER_CUBIC`` along one axis."""
    if in_size == out_size:
        return np.eye(out_size)
    scale = in_size / out_size
    fx = (np.arange(out_size) + 0.5) * scale - 0.5
    sx = np.floor(fx)
    t = fx - sx
    w0 = ((A * (t + 1) - 5 * A) * (t + 1) + 8 * A) * (t + 1) - 4 * A
    w1 = ((A + 2) * t - (A + 3)) * t * t + 1
    w2 = ((A + 2) * (1 - t) - (A + 3)) * (1 - t) * (1 - t) + 1
    w3 = 1 - w0 - w1 - w2
    matrix = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    for k, w in enumerate((w0, w1, w2, w3)):
        cols = np.clip(sx.astype(np.int64) + k - 1, 0, in_size - 1)  # BORDER_REPLICATE
        np.add.at(matrix, (rows, cols), w)
    return matrix


def cv2_bicubic_resize(image, height: int, width: int) -> np.ndarray:
    """Resize an ``HxWxC`` image in ``[0, 255]`` to ``height x width`` as cv2's bicubic does
    for uint8 images: float32 output, rounded and clipped to ``[0, 255]``."""
    x = np.asarray(image, dtype=np.float64)
    out = np.einsum("oh,hwc->owc", cubic_matrix(x.shape[0], int(height)), x)
    out = np.einsum("pw,owc->opc", cubic_matrix(x.shape[1], int(width)), out)
    return np.clip(np.round(out), 0, 255).astype(np.float32)
