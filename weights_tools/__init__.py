"""Tools for converting and verifying EfficientNetV2 weights (``keras-effv2 convert``).

Example:
    $ python -m weights_tools convert --source timm --variant s \\
        --checkpoint model.safetensors --output s.in1k.weights.h5 --verify
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# torchvision (pulled in by timm, mmpretrain) segfaults when imported after TensorFlow ran ops:
# import it first. Where TensorFlow is already imported (a notebook), leave it out: the
# reference forwards of --verify then run in a child process (weights_tools.verify).
import sys

if "tensorflow" not in sys.modules:
    try:  # pragma: no cover - depends on what is installed
        import torchvision  # noqa: F401
    except ImportError:  # pragma: no cover
        pass
