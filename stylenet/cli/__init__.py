"""Command-line entry points (console scripts declared in pyproject.toml)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from stylenet.errors import StylenetError

#: ``error(message)``: report one failed input on stderr and go on with the others.
ErrorReporter = Callable[[str], None]


def measuring_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The parser of a command that measures models on held-out photos (``stylenet-report``,
    ``stylenet-stability``): its positional ``photos`` default to the demo data's held-out ones."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="*",
                        help="held-out photos (paths or demo:<name>); default: the demo data's held-out photos")
    return parser


def run_reporting_errors(prog: str, work: Callable[[ErrorReporter], int | None]) -> int:
    """Run ``work(error)`` and return the exit status: 1 if it reported any error (each one line,
    ``<prog>: error: ...``, the other inputs still processed) or raised a :class:`StylenetError`,
    130 on Ctrl-C, else what ``work`` returned (None: 0)."""
    failed = False

    def error(message: str) -> None:
        nonlocal failed
        failed = True
        print(f"{prog}: error: {message}", file=sys.stderr)

    try:
        status = work(error)
    except StylenetError as err:
        error(str(err))
        return 1
    except KeyboardInterrupt:  # one line, as stylenet-gatys and stylenet-prepare say it
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return status or int(failed)


def refuse_run_dir_file(prog: str, argv: list[str] | None = None) -> None:
    """Exit 2 with one line when ``hydra.run.dir=`` on the command line names an existing file: Hydra
    creates the run folder before any of our code runs, and reports the clash as a traceback."""
    for item in sys.argv[1:] if argv is None else argv:
        key, _, value = item.partition("=")
        if key.lstrip("+") == "hydra.run.dir" and value and Path(value).exists() and not Path(value).is_dir():
            print(f"{prog}: error: hydra.run.dir={value} is a file, not a folder", file=sys.stderr)
            sys.exit(2)
