"""`prepare --list-speakers`: who speaks in a screenplay, play, subtitle file, novel or chat export, as tables."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from bladegpt.data.voices import FileVoices, Speaker, list_speakers

SHOWN = 40  # speakers listed; the rest summed in one row


def files_table(files: list[FileVoices]) -> Table:
    table = Table(title="Read as")
    for col in ("file", "format", "turns", "speech with a speaker"):
        table.add_column(col, justify="left" if col in ("file", "format") else "right", overflow="fold")
    for f in files:
        table.add_row(str(f.path), f.format, f"{f.turns:,}", f"{f.attributed:,}")
    return table


def speakers_table(speakers: list[Speaker]) -> Table:
    total = sum(s.lines for s in speakers) or 1
    table = Table(title=f"{len(speakers):,} speaker{'s' if len(speakers) != 1 else ''}, most lines first")
    table.add_column("speaker", overflow="fold")  # a long name folds, whole, never cut to "…"
    for col in ("lines", "share", "words"):
        table.add_column(col, justify="right", no_wrap=True)
    for s in speakers[:SHOWN]:
        table.add_row(s.name, f"{s.lines:,}", f"{100 * s.lines / total:.1f}%", f"{s.words:,}")
    rest = speakers[SHOWN:]
    if rest:
        table.add_row(f"{len(rest):,} more", f"{sum(s.lines for s in rest):,}",
                      f"{100 * sum(s.lines for s in rest) / total:.1f}%", f"{sum(s.words for s in rest):,}")
    return table


def show_speakers(inputs: list[Path], console: Console) -> None:
    """Print the files' formats and their speakers; writes nothing."""
    files, speakers = list_speakers(inputs)
    console.print(files_table(files))
    for f in files:
        if f.note():  # under the table, whole: in a column it wraps to a word a line
            console.print(f"{f.path}: {f.note()}.", style="yellow", highlight=False, soft_wrap=True, markup=False)
    if speakers:
        console.print(speakers_table(speakers))
    else:
        console.print("No speaker is named in these files.", style="yellow")
