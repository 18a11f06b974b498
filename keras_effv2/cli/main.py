"""Entry point of the ``keras-effv2`` console script: parse, dispatch, map errors to exit codes.

``predict`` and ``info`` are parsed here; ``convert``, ``train``, ``export`` and
``export-weights`` hand their arguments unparsed to the module that owns them
(``weights_tools.cli``, ``keras_effv2.train``, ``keras_effv2.export``, ``weights_tools``
``export``), imported only when used.

Example:
    >>> from keras_effv2.cli.main import main
    >>> main(["info", "--json"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import importlib
import sys

from keras_effv2.cli.errors import CliError

PROG = "keras-effv2"
# Subcommands with their own argparse here: module with add_arguments(parser) and run(args).
PARSED = ("predict", "info")
# Subcommands whose module's main(argv) -> int parses the rest of the command line.
DELEGATED = ("convert", "train", "export", "export-weights")
EPILOG = """examples:
  keras-effv2 predict cat.jpg dog.jpg --model s --weights imagenet
  keras-effv2 predict photo.jpg --model b0 --weights imagenet21k --top 10 --json
  keras-effv2 info
  keras-effv2 convert --source timm --variant b0 --checkpoint model.safetensors \\
      --output b0.weights.h5 --verify
  keras-effv2 train --help
  keras-effv2 export --help
  keras-effv2 export-weights --weights b0.weights.h5 --variant b0 --format timm \\
      --output b0.safetensors

'keras-effv2 COMMAND --help' describes each command. Weights download once into the Keras
cache (see 'keras-effv2 info'); set KERAS_EFFV2_WEIGHTS_MIRROR to use a local mirror.
Exit codes: 0 success, 1 the work failed, 2 bad input."""


def _module(command: str):
    return importlib.import_module(f"keras_effv2.cli.{command.replace('-', '_')}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="EfficientNetV2 for Keras 3 (TensorFlow, JAX, PyTorch).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from keras_effv2.version import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in PARSED + DELEGATED:
        mod = _module(command)
        if command in PARSED:
            p = sub.add_parser(command, help=mod.HELP, description=mod.DESCRIPTION,
                               epilog=mod.EXAMPLES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
            mod.add_arguments(p)
        else:  # listed for --help; main() hands the arguments over before parsing
            sub.add_parser(command, help=mod.HELP, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the exit code (0 ok, 1 failure, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in DELEGATED:
            return _module(argv[0]).main(argv[1:])
        args = build_parser().parse_args(argv)
        return _module(args.command).run(args)
    except CliError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
