"""Tools for converting and verifying EfficientNetV2 weights (``keras-effv2 convert``).

Example:
    $ python -m weights_tools convert --source timm --variant s \\
        --checkpoint model.safetensors --output s.in1k.weights.h5 --verify
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# torchvision (pulled in by timm) segfaults when imported after TensorFlow: import it first.
try:  # pragma: no cover - depends on what is installed
    import torchvision  # noqa: F401
except ImportError:  # pragma: no cover
    pass
