"""The `bladegpt` command: everything a terminal sees. Each command parses its flags, makes one library call and
prints; they register on the app (app.py) in the order --help lists them. No torch at import."""

from __future__ import annotations

import sys

import typer

from bladegpt.cli import data, train, generate, serve, bench, runs, export  # noqa: F401  (registers the commands, in order)
from bladegpt.cli.app import app, speaks, under_torchrun

__all__ = ["app", "main"]


def main() -> None:
    """The CLI. Under torchrun every rank reads the same command line: a mistake in it is said by the job's
    first rank to stop only (app.speaks), in click's plain words, with click's exit code 2."""
    if not under_torchrun():
        app()
        return
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as e:  # click's own: an unknown option, a value that is not a number
        if speaks():
            e.show()
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
