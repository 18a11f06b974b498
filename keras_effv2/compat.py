"""The library versions keras_effv2 is tested with, and the Keras check run at import.

``KERAS_RANGE`` is the Keras range whose private internals keras_effv2 reads (behind feature
checks: ``keras_graph.py``, ``fast/_torch_optim.py``) and that the suite ran against;
``pyproject.toml`` declares the same (tests/test_guards.py keeps them equal). Importing
keras_effv2 under another Keras fails at once with a message naming the range, instead of
deep inside a training step.

Example:
    >>> from keras_effv2.compat import check_keras
    >>> check_keras("3.15.1")
    >>> check_keras("3.7.0")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ImportError: keras_effv2 supports Keras >=3.8,<3.16; this is Keras 3.7.0. ...
"""

from __future__ import annotations

import re

KERAS_RANGE = ((3, 8), (3, 16))  # >= first, < second (major, minor)
# Declared in pyproject.toml; the lowest are the oldest releases the features need, the upper
# bounds the next release after the one tested (torch 2.14, TensorFlow 2.21, JAX 0.10).
TORCH_RANGE = ((2, 2), (2, 15))
TENSORFLOW_RANGE = ((2, 16), (2, 22))
JAX_RANGE = ((0, 4, 30), (0, 11))


def spec(bounds) -> str:
    """``((3, 8), (3, 16))`` -> ``">=3.8,<3.16"``."""
    low, high = (".".join(map(str, b)) for b in bounds)
    return f">={low},<{high}"


def check_keras(version: str | None = None) -> None:
    """Raise ``ImportError`` unless ``version`` (default: the installed Keras) is in
    ``KERAS_RANGE``."""
    if version is None:
        import keras

        version = keras.__version__
    match = re.match(r"(\d+)\.(\d+)", str(version))
    found = (int(match.group(1)), int(match.group(2))) if match else None
    low, high = KERAS_RANGE
    if found is None or not low <= found < high:
        raise ImportError(
            f"keras_effv2 supports Keras {spec(KERAS_RANGE)}; this is Keras {version}. "
            f"Install a supported one: pip install 'keras{spec(KERAS_RANGE)}'.")


check_keras()  # at import of keras_effv2 (its __init__ imports this module first)
