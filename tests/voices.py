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


def screenplay_text(scenes: int = 30, seed: int = 0) -> str:
    """A plain-text screenplay in the industry layout: scene headings, action, cues over their dialogue; K
    speaks in every scene, last, answering JOI or MADAM (JOI more often), with a parenthetical now and then."""
    import random

    rng = random.Random(seed)
    places = ["INT. SPINNER - NIGHT", "EXT. ROOFTOP - DAY", "INT. PRECINCT - NIGHT", "EXT. FARM - DAWN"]
    asks = ["Where were you tonight", "Did you find the file", "Are you tired of the rain", "What did the old man say"]
    answers = ["I was out past the wall", "The file was empty", "The rain never stops here", "He said nothing at all"]
    lines = []
    for i in range(scenes):
        other = "JOI" if rng.random() < 0.7 else "MADAM"
        lines += [rng.choice(places), "", f"Scene {i}. The city hums below the glass.", "",
                  f"{' ' * 20}{other}", f"{' ' * 10}{rng.choice(asks)}, K?", ""]
        lines += [f"{' ' * 20}K"] + ([f"{' ' * 15}(quietly)"] if rng.random() < 0.3 else [])
        lines += [f"{' ' * 10}{rng.choice(answers)}, number {i}.", ""]
    return "\n".join(lines)
