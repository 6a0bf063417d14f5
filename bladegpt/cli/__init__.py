"""The `bladegpt` command: everything a terminal sees. Each command parses its flags, makes one library call and
prints; they register on the app (app.py) in the order --help lists them. No torch at import."""

from __future__ import annotations

from bladegpt.cli import data, train, generate, serve, bench, runs, export  # noqa: F401  (registers the commands, in order)
from bladegpt.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
