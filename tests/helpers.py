"""Small helpers shared by the tests."""

from __future__ import annotations

import socket

import keras
import numpy as np


def to_numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def random_images(n: int, size: int, seed: int = 0, low: float = 0.0, high: float = 255.0):
    """Channels-last float32 images, uniform in ``[low, high]``."""
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, size=(n, size, size, 3)).astype("float32")


def normal_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Channels-last float32 images ~ N(0, 1) (already normalised inputs)."""
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype("float32")


def to_backend_layout(images_nhwc: np.ndarray) -> np.ndarray:
    """Channels-last images in the layout of ``keras.config.image_data_format()``."""
    if keras.config.image_data_format() == "channels_first":
        return np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))
    return images_nhwc


def top_k(logits: np.ndarray, k: int = 5) -> np.ndarray:
    return np.argsort(-logits, axis=-1)[:, :k]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on loopback (for multi-process tests)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports
