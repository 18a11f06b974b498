"""``keras-effv2 train ...``: the training command line (``keras_effv2.train.main``).

Example:
    $ keras-effv2 train --help
"""

from __future__ import annotations

from keras_effv2.cli.delegate import run_delegate

HELP = "train or fine-tune a model (arguments: keras-effv2 train --help)"
MODULE = "keras_effv2.train"


def main(argv: list[str]) -> int:
    return run_delegate("train", MODULE, argv)
