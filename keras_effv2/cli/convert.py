"""``keras-effv2 convert ...``: the weights_tools converter.

``keras-effv2 convert ARGS`` runs ``python -m weights_tools convert ARGS`` (one upstream
checkpoint to ``.weights.h5`` through ``keras_effv2.weights.convert``, the function the
weight cache uses too); ``keras-effv2 convert --all ARGS`` runs ``convert-all`` (every
registered weight set, verified, with a manifest).

Example:
    $ keras-effv2 convert --source timm --variant b0 --checkpoint model.safetensors \\
        --output b0.weights.h5 --verify
    $ keras-effv2 convert --all --output converted/ --variants b0 --tags imagenet
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from keras_effv2.cli.errors import FAILURE, CliError

HELP = ("convert timm/automl/keras.applications/mmpretrain checkpoints to .weights.h5 "
        "(weights_tools)")
MODULE = "weights_tools"
USAGE = """usage: keras-effv2 convert --source {automl,keras-applications,mmpretrain,timm} \\
           --variant V --checkpoint PATH --output OUT.weights.h5 [--verify] [--no-ema]
       keras-effv2 convert --all --output DIR [--variants V ...] [--tags T ...]

Convert one upstream checkpoint, or (--all) download and convert every registered weight set.

examples:
  keras-effv2 convert --source timm --variant b0 --checkpoint model.safetensors \\
      --output b0.weights.h5 --verify
  keras-effv2 convert --source automl --variant b0 --checkpoint efficientnetv2-b0-21k/ \\
      --output b0.in21k.weights.h5
  keras-effv2 convert --source mmpretrain --variant s --checkpoint epoch_30.pth \\
      --output s.weights.h5 --verify
  keras-effv2 convert --all --output converted/ --variants b0 --tags imagenet

The options of the underlying weights_tools command follow.
"""


def to_weights_tools_argv(argv: list[str]) -> list[str]:
    """``[--all] ARGS`` -> ``["convert-all", ARGS]`` or ``["convert", ARGS]``."""
    rest = [a for a in argv if a != "--all"]
    return ["convert-all" if len(rest) != len(argv) else "convert", *rest]


def weights_tools_command(wt_argv: list[str]) -> tuple[list[str], dict]:
    """``(command, env)`` running ``python -m weights_tools WT_ARGV`` in a fresh process.

    A separate process because weights_tools imports torchvision, which must come before
    TensorFlow in a process, and ``keras_effv2`` has imported Keras (and its backend) already.
    """
    spec = importlib.util.find_spec(MODULE)
    if spec is None or spec.origin is None:
        raise CliError("'keras-effv2 convert' needs the weights_tools package (installed with "
                       "keras-effv2, or run from a source checkout).", FAILURE)
    root = os.path.dirname(os.path.dirname(spec.origin))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", MODULE, *wt_argv], env


def main(argv: list[str]) -> int:
    wt_argv = to_weights_tools_argv(argv)
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        wt_argv = [wt_argv[0], "--help"]
    command, env = weights_tools_command(wt_argv)
    sys.stdout.flush()
    return subprocess.call(command, env=env)
