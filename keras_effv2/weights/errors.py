"""The errors of the weights package, importable without TensorFlow, torch or h5py.

Example:
    >>> from keras_effv2.weights.errors import PortingError
    >>> issubclass(PortingError, ValueError)
    True
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or not in the expected format."""


class PortingError(ValueError):
    """Weights do not fit a model: missing, unknown, reused or mis-shaped tensors."""


class WeightsDownloadError(RuntimeError):
    """A registered weight set could not be fetched, converted or verified."""
