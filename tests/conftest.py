"""Shared test setup. The suite runs once per Keras backend (``KERAS_BACKEND``)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# torchvision (pulled in by timm) segfaults when imported after TensorFlow; import it first.
try:
    import torchvision  # noqa: F401
except ImportError:  # pragma: no cover - the dev extra installs it
    pass

import keras  # noqa: E402
import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--run-large", action="store_true", help="run full-size L/XL parity (slow)")


def pytest_configure(config):
    config.addinivalue_line("markers", "large: full-resolution L/XL cases; run with --run-large")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-large"):
        return
    skip = pytest.mark.skip(reason="large case: pass --run-large (make test-large) to run it")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _reset_keras_state():
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_image_data_format("channels_last")
