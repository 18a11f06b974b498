"""Run another module's ``main(argv) -> int`` as a subcommand, imported only when used.

Example:
    >>> from keras_effv2.cli.delegate import run_delegate
    >>> run_delegate("train", "keras_effv2.train", ["--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

from keras_effv2.cli.errors import FAILURE, CliError


def load_main(command: str, module: str):
    """``module.main``; a clear :class:`CliError` when the module is not installed."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise  # the module exists but one of its own imports is missing: show that
        raise CliError(
            f"'keras-effv2 {command}' needs the module {module!r}, which this installation "
            f"of keras_effv2 does not have. Update keras-effv2 (pip install -U keras-effv2) "
            f"or, from a source checkout, run 'pip install -e .'.", FAILURE) from e
    entry = getattr(mod, "main", None)
    if not callable(entry):
        raise CliError(f"{module!r} has no main(argv) entry point for 'keras-effv2 {command}'.",
                       FAILURE)
    return entry


def run_delegate(command: str, module: str, argv: list[str]) -> int:
    """Call ``module.main(argv)`` and return its exit code (``None`` counts as 0)."""
    code = load_main(command, module)(list(argv))
    return 0 if code is None else int(code)
