"""`bladegpt prepare`: text files in, a dataset out, and a table of what was made."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from bladegpt.cli.app import app, console, friendly

@app.command()
@friendly
def prepare(
    inputs: Annotated[list[Path], typer.Argument(help="Text files, or folders of .txt files.")],
    tokenizer: Annotated[str, typer.Option(help="bpe (trained on this corpus), gpt2, or char.")] = "bpe",
    tokenizer_from: Annotated[Optional[str], typer.Option(help="Encode with this model's tokenizer instead, for train --init-from: a Hugging Face repo id or folder (GPT-2, Llama, SmolLM2, Mistral, Qwen2, Qwen3), a .gguf file, ollama:NAME[:TAG], or a BladeGPT run.")] = None,
    vocab_size: Annotated[Optional[int], typer.Option(help="BPE vocabulary size \\[default: sized to the text, at most 4096].")] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of the text kept for validation (its end).")] = 0.1,
    out: Annotated[Optional[Path], typer.Option(help="Dataset folder \\[default: datasets/NAME].")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the dataset already at the folder (earlier runs cannot resume on it).")] = False,
    speaker: Annotated[Optional[list[str]], typer.Option(help="Train only this speaker's lines, what comes before them kept as context the loss skips; repeat it for other spellings the files use for the same character (--speaker K --speaker \"OFFICER K\"). --list-speakers shows the names.", show_default=False)] = None,
    list_speakers: Annotated[bool, typer.Option("--list-speakers", help="Only list who speaks in the files (screenplays, Fountain, plays, transcripts, subtitles, EPUB or prose novels, WhatsApp/Telegram/Discord exports) and how much; writes nothing.")] = False,
) -> None:
    """Turn text into a dataset: a tokenizer, train/val token files and their metadata."""
    if list_speakers:
        from bladegpt.cli.speakers import show_speakers
        from bladegpt.errors import UserError

        unused = [flag for flag, given in (("--speaker", speaker), ("--out", out), ("--force", force),
                                           ("--tokenizer-from", tokenizer_from), ("--vocab-size", vocab_size),
                                           ("--tokenizer", tokenizer != "bpe"), ("--val-fraction", val_fraction != 0.1))
                  if given]
        if unused:
            raise UserError(f"--list-speakers only lists who speaks and writes nothing, so {', '.join(unused)} would "
                            "do nothing; run it alone first, then prepare without --list-speakers.")

        return show_speakers(inputs, console)
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from bladegpt.cli.tables import prepared_table
    from bladegpt.data.prepare import prepare as prepare_data

    progress = Progress(TextColumn("[bold]encode"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=console, transient=True)
    task = progress.add_task("encode", total=None)

    def encoded(done: int, total: int) -> None:  # the bar starts with the encoding: a mistake found before it
        if console.is_terminal:                    # leaves no blank line above its one-line error; into a pipe
            progress.start()                       # or a file, its stop wrote one blank line, error or not
        progress.update(task, completed=done, total=total)

    try:
        if speaker:
            from bladegpt.data.speaker import prepare_speaker

            result = prepare_speaker(inputs, speaker, out, tokenizer, vocab_size, val_fraction, force=force,
                                     tokenizer_from=tokenizer_from, progress=encoded)
        else:
            result = prepare_data(inputs, out, tokenizer, vocab_size, val_fraction, progress=encoded, force=force,
                                  tokenizer_from=tokenizer_from)
    finally:
        if progress.live.is_started:  # stopping one never started still prints a blank line
            progress.stop()
    for note in result.notes:
        console.print(note, style="yellow", highlight=False, soft_wrap=True, markup=False)
    console.print(prepared_table(result, vocab_sized=vocab_size is None))
    from bladegpt.data.dataset import DATASETS_DIR

    if result.out_dir.resolve().parent == DATASETS_DIR.resolve():  # train's default: the newest dataset there
        console.print("Next: [bold]bladegpt train[/] (it picks up this dataset).")
    else:
        console.print(f"Next: [bold]bladegpt train --data {escape(shlex.quote(str(result.out_dir)))}[/]",
                      highlight=False)
