"""The ``longreach`` command line: passkey, perplexity, compare, report, generate, info, serve.

``parser`` builds the arguments (nothing heavy imported: ``--help`` answers at once), ``checks``
turns every misuse into one line with exit code 2 before the model loads where it can, and
``commands`` loads the model and hands the work to the library (``longreach.eval.evaluate``
for the evaluations), showing progress and tables through ``ui``.
"""

from __future__ import annotations

import sys

from longreach.cli.checks import UsageError
from longreach.cli.parser import build_parser

__all__ = ["UsageError", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (2 for a misuse, reported in one line)."""
    from longreach.cli.ui import console, error

    given = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(given)
        args.argv = given
        from longreach.cli import commands

        return getattr(commands, args.run)(args)
    except UsageError as problem:
        error(str(problem))
        return 2
    except KeyboardInterrupt:
        console.print("\ninterrupted; finished results are saved: rerun the same command to go on", highlight=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())
