"""``keras-effv2 export ...``: export a model (``keras_effv2.export.main``).

Example:
    $ keras-effv2 export --help
"""

from __future__ import annotations

from keras_effv2.cli.delegate import run_delegate

HELP = "export a model for serving (arguments: keras-effv2 export --help)"
MODULE = "keras_effv2.export"


def main(argv: list[str]) -> int:
    return run_delegate("export", MODULE, argv)
