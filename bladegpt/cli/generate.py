"""`bladegpt sample` and `bladegpt chat`: text from a checkpoint, streamed to the terminal."""

from __future__ import annotations

import random
import sys
from typing import Annotated, Optional

import typer

from bladegpt.cli.app import (
    ChatRepetitionOpt,
    CheckpointOpt,
    DecodeCompileOpt,
    DecodePrecisionOpt,
    DeviceOpt,
    MinPOpt,
    RepetitionOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    app,
    err_console,
    friendly,
)
from bladegpt.config import REPETITION_PENALTY
from bladegpt.errors import UserError

NoCopyOpt = Annotated[Optional[int], typer.Option("--no-copy", metavar="N", help="Never write a span of N characters (47 or more; 50 is the copy meter's span) found verbatim in the training text: a token that would is taken out and the rest renormalised \\[default: off].", show_default=False)]

@app.command()
@friendly
def sample(
    prompt: Annotated[str, typer.Argument(help="Text to continue.")] = "",
    checkpoint: CheckpointOpt = None,
    num_samples: Annotated[int, typer.Option(help="How many samples.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per sample.")] = 200,
    temperature: TemperatureOpt = 0.8,
    top_k: TopKOpt = 200,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    repetition_penalty: RepetitionOpt = REPETITION_PENALTY,
    seed: Annotated[Optional[int], typer.Option(help="Same seed, same text \\[default: random].")] = None,
    device: DeviceOpt = "auto",
    precision: DecodePrecisionOpt = "auto",
    compile: DecodeCompileOpt = "auto",
    no_copy: NoCopyOpt = None,
    copy_check: Annotated[Optional[bool], typer.Option("--copy-check/--no-copy-check", help="Say how much of the samples is copied verbatim from the training text \\[default: on where the run's dataset is at hand].", show_default=False)] = None,
) -> None:
    """Stream new text from a trained model (several samples are generated together, in one batch)."""
    from bladegpt.data import copymeter
    from bladegpt.encoding import read_typed
    from bladegpt.generate.sampler import Sampler
    from bladegpt.generate.settings import SampleSettings, check_samples

    seed = random.randrange(2**31) if seed is None else seed
    prompt, note = read_typed(prompt, "prompt")
    if note:
        err_console.print(note, style="yellow", highlight=False, soft_wrap=True, markup=False)
    check_samples(num_samples)
    settings = SampleSettings(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, no_copy)
    sampler = Sampler(checkpoint, device, precision, compile, say=lambda line: err_console.print(line, style="dim"))
    if not prompt:  # a speaker's voice opens a scene, up to their cue (prepare --speaker); others start blank
        from bladegpt.generate.chat import recorded_opening

        prompt = recorded_opening(sampler.checkpoint)
    err_console.print(f"[dim]{sampler.checkpoint} · seed {seed} · {sampler.precision}[/]", highlight=False)
    meter = copymeter.for_checkpoint(sampler.checkpoint) if copy_check is not False else None
    if copy_check and meter is None:
        err_console.print(f"No copy check: {sampler.checkpoint} is not in a run folder, so its training text is "
                          "not known.", style="dim", highlight=False, markup=False)
    current, texts = None, []
    for i, piece in sampler.samples(prompt, num_samples, settings):
        if i != current:
            if current is not None:
                sys.stdout.write("\n" + "-" * 40 + "\n")
            sys.stdout.write(prompt)
            current = i
            texts.append("")
        texts[-1] += piece
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    _forced_line(sampler)
    _closing_line(sampler.checkpoint, meter, texts)


def _forced_line(sampler) -> None:
    """--no-copy's one exception, said when it happened: a step where every token of the vocabulary copied."""
    if sampler.no_copy is not None and sampler.no_copy.forced:
        err_console.print(f"--no-copy: {sampler.no_copy.forced} token(s) copied, because every token of the "
                          "vocabulary would have.", style="yellow", highlight=False, markup=False)


def _closing_line(checkpoint, meter, texts: list[str]) -> None:
    """The copy meter's and the voice report's line after the samples, on stderr so that piped samples stay
    clean: the share copied, the loops, and the style distance from the held-out text (the base's beside it)."""
    from bladegpt.generate import voice

    parts = [_copied(meter, texts)] if meter is not None else []
    reference, base = voice.for_checkpoint(checkpoint)
    report = voice.report(texts, reference)
    parts.append(voice.describe(report["loops"], report["style"], base))
    err_console.print(" · ".join(parts), style="dim", highlight=False, markup=False, soft_wrap=True)


def _copied(meter, texts: list[str]) -> str:
    """The copy meter's part, waiting for its index where it is still being made."""
    index = meter.wait(timeout=1.0)
    if meter.busy:
        err_console.print("Indexing the training text for the copy check, once for this dataset "
                          "(--no-copy-check skips it)...", style="dim", highlight=False)
        index = meter.wait()
    return index.measure(texts).describe() if index is not None else f"No copy check: {meter.error}"


@app.command()
@friendly
def chat(
    checkpoint: CheckpointOpt = None,
    frame: Annotated[Optional[str], typer.Option(help="How the talk is written: quotes (\"...\" lines), play (NAME: lines) or lines \\[default: the corpus's, found when it was prepared].")] = None,
    speak_as: Annotated[Optional[str], typer.Option("--as", help="In the play frame, the speaker your lines are written as \\[default: for a voice prepared with --speaker, the one they talk with most; else YOU].", show_default=False)] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 200,
    temperature: TemperatureOpt = 0.8,
    top_k: TopKOpt = 200,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    repetition_penalty: ChatRepetitionOpt = None,
    no_copy: NoCopyOpt = None,
    seed: Annotated[Optional[int], typer.Option(help="Same seed and same lines, same conversation \\[default: random].")] = None,
    device: DeviceOpt = "auto",
    precision: DecodePrecisionOpt = "auto",
    compile: DecodeCompileOpt = "auto",
) -> None:
    """Talk with the voice: type a line, it answers in the text's voice. Ctrl-D or Ctrl-C ends."""
    from bladegpt.generate.chat import Conversation, recorded, recorded_frame
    from bladegpt.encoding import keep_typed_bytes, read_typed
    from bladegpt.data.frames import check_kind, choose, speaking_as
    from bladegpt.data.voices.turns import closest_names
    from bladegpt.generate.sampler import Sampler
    from bladegpt.generate.settings import SampleSettings

    seed = random.randrange(2**31) if seed is None else seed
    settings = SampleSettings(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, no_copy)
    check_kind(frame)  # before the model loads
    sampler = Sampler(checkpoint, device, precision, compile, say=lambda line: err_console.print(line, style="dim"))
    if no_copy is not None:
        sampler.copy_rule(no_copy)  # a training text that is not known: one line, before the talk starts
    chosen, source = choose(frame, recorded_frame(sampler.checkpoint), sampler.tokenizer.encode)
    if speak_as is not None:
        speaker = recorded(sampler.checkpoint, "speaker")
        cast = speaker.get("cast", []) if isinstance(speaker, dict) else []
        chosen = speaking_as(chosen, speak_as, cast)
        if cast and chosen.you not in cast:
            close = closest_names(speak_as, cast)
            err_console.print(f"{chosen.you} never speaks in the text the voice learnt from"
                              + (f" (the closest: {', '.join(close)})" if close else "") + "; talking as them anyway.",
                              style="yellow", highlight=False, soft_wrap=True, markup=False)
    talk = Conversation(sampler, chosen, settings)
    interactive = sys.stdin.isatty()
    keep_typed_bytes()
    err_console.print(f"{sampler.checkpoint} · frame {chosen.describe()} ({source}) · seed {seed}"
                      + (" · Ctrl-D to end" if interactive else ""), style="dim", highlight=False, markup=False)
    try:
        while True:
            try:
                line = input("> " if interactive else "")
            except EOFError:
                break
            if not line.strip():
                continue
            line, note = read_typed(line, "line")
            if note:
                err_console.print(note, style="yellow", highlight=False, soft_wrap=True, markup=False)
            try:
                pieces = talk.reply(line)
            except UserError as e:  # a line the tokenizer cannot take: say so, keep talking
                err_console.print(str(e), style="red", soft_wrap=True)
                continue
            for piece in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
    except KeyboardInterrupt:
        pass
    _forced_line(sampler)
    if interactive:
        sys.stdout.write("\n")
