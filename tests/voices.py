"""Helpers for the voice readers' tests: run `prepare --list-speakers` and check it wrote nothing."""

from pathlib import Path

from typer.testing import CliRunner

from bladegpt.cli import app


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder`, with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def list_speakers(folder: Path, *paths: Path):
    """`bladegpt prepare PATHS --list-speakers` run from `folder`, asserting the folder is unchanged."""
    before = snapshot(folder)
    result = CliRunner().invoke(app, ["prepare", *map(str, paths), "--list-speakers"])
    assert snapshot(folder) == before
    return result


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path
