"""``keras-effv2 export-weights ...``: a model's weights as a timm or mmpretrain state dict.

Runs ``python -m weights_tools export ARGS`` in a fresh process (as ``keras-effv2 convert``
does), which calls :func:`keras_effv2.weights.export`: ``--format timm`` writes
``.safetensors`` for ``timm.create_model("tf_efficientnetv2_<v>", num_classes=N)``,
``--format mmpretrain`` a ``.pth`` (``state_dict`` + ``meta``) for
``mmpretrain.get_model("efficientnetv2-<v>_3rdparty_in1k", head=dict(num_classes=N))``; both
load with ``strict=True``. A model without its top exports the backbone.

Example:
    $ keras-effv2 export-weights --weights pets.weights.h5 --variant b0 --format timm \\
        --output pets.safetensors
"""

from __future__ import annotations

import subprocess
import sys

from keras_effv2.cli.convert import weights_tools_command

HELP = "write a model's weights as a timm (.safetensors) or mmpretrain (.pth) state dict"


def main(argv: list[str]) -> int:
    command, env = weights_tools_command(["export", *argv])
    sys.stdout.flush()
    return subprocess.call(command, env=env)
