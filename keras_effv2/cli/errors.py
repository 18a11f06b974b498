"""The error a subcommand raises for bad input; ``main`` prints it and exits with ``code``.

Example:
    >>> raise CliError("image file not found: 'x.jpg'")  # doctest: +SKIP
"""

from __future__ import annotations

USAGE = 2  # bad input (as argparse's own usage errors)
FAILURE = 1  # valid input, but the work failed (download, conversion, missing module)


class CliError(Exception):
    """A message for the user (what was wrong, what is accepted) and an exit code."""

    def __init__(self, message: str, code: int = USAGE):
        super().__init__(message)
        self.code = code
