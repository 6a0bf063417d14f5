"""The Typer app every command registers on, the options several commands share, and `friendly`: a user's
mistake is one red line and exit code 1. No torch at import, so `bladegpt --help` stays instant."""

from __future__ import annotations

import errno
import functools
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from bladegpt import __version__
from bladegpt.errors import UserError

app = typer.Typer(
    help="Train a small GPT on text you love, on the machine you have, and sample in its voice.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

# Options several commands share (sample, chat, export, bench).
CheckpointOpt = Annotated[Optional[Path], typer.Option(help="A .safetensors file or run folder \\[default: latest run's best].")]
TemperatureOpt = Annotated[float, typer.Option(help="0 is greedy; higher is wilder.")]
TopKOpt = Annotated[Optional[int], typer.Option(help="Sample only from the k likeliest tokens.")]
TopPOpt = Annotated[Optional[float], typer.Option(help="Sample only from the smallest set with this much probability.")]
MinPOpt = Annotated[Optional[float], typer.Option(help="Sample only tokens at least this share as likely as the likeliest, e.g. 0.05.")]
RepetitionOpt = Annotated[float, typer.Option(help="Discourage ids already in the text: their logits divided (or, if negative, multiplied) by this (CTRL's); 1 turns it off. The default measured fewer loops and samples closer to the text (docs/benchmarks/voice-report.md).")]
ChatRepetitionOpt = Annotated[Optional[float], typer.Option("--repetition-penalty", help="Discourage ids already in the conversation: their logits divided (or, if negative, multiplied) by this, e.g. 1.1 (CTRL's; off by default in chat: the frame's own turn endings recur every turn).")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")]
DecodePrecisionOpt = Annotated[str, typer.Option(help="auto (the fastest here for generation, measured), bf16, fp32, int8 (weights in int8, a quarter of fp32's bytes) or int4 (an eighth, CPU only; it can round away much of a fine-tune, docs/benchmarks.md).")]
DecodeCompileOpt = Annotated[str, typer.Option(help="auto (compile the decode step when the tokens asked for repay it), on or off.")]


# Options that take one word of a fixed list (or, as --block and --device, words of one): read in any case.
CHOICES = {"tokenizer", "preset", "block", "optimizer", "sampling", "device", "precision", "attention", "compile",
           "tracker", "lora_base_dtype", "frame", "format", "dtype"}


def friendly(command):
    """Read the CHOICES options' words in lower case; turn a UserError, or a file the system refused
    (permissions, a full disk), into one red line and exit code 1; Ctrl-C before work began into one line
    and 130. Anything else is a bug and keeps its traceback. Under torchrun only the job's first process to
    stop says it; the others exit as quietly with 1 (130), whatever stopped them."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        kwargs = {name: value.lower() if name in CHOICES and isinstance(value, str) else value
                  for name, value in kwargs.items()}
        try:
            return command(*args, **kwargs)
        except UserError as e:
            fail(str(e))
        except KeyboardInterrupt:
            if speaks():
                err_console.print("Stopped.", highlight=False)
            raise typer.Exit(code=130) from None
        except typer.Exit:
            raise
        except Exception as e:
            if isinstance(e, BrokenPipeError):  # the reader went away (`bladegpt runs --json | head`): Typer
                raise  # ends it quietly, as every Unix tool does; it is not a disk's failure
            if (isinstance(e, OSError) and e.filename is not None and e.errno in (errno.EEXIST, errno.ENOTDIR)
                    and e.strerror == os.strerror(e.errno)):  # the system's words (mkdir's), not a line of ours
                fail(f"Cannot make {e.filename}: a file (or a link) stands where a folder is needed on that path; "
                     "move it away, or name another path.")
            if isinstance(e, OSError) and e.filename is not None:
                fail(f"Cannot write or read {e.filename}: {e.strerror}. Check its permissions and the free space "
                     "on its disk, then run the command again.")
            if isinstance(e, OSError):  # a writer's short write on a full disk names no file (numpy's tofile)
                fail(f"A read or write failed ({e}). Check the free space on the disk and the permissions of the "
                     "files named in the command, then run it again.")
            if speaks():
                raise
            raise typer.Exit(code=1) from None  # a peer of this torchrun job stopped first and said why

    return wrapper


def fail(message: str) -> None:
    message = " ".join(message.split())  # one line even where a library's text inside it spans several
    if speaks():
        err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # one line, however narrow the terminal
    raise typer.Exit(code=1) from None


def under_torchrun() -> bool:
    """Whether this process is one of several a torchrun job started (its WORLD_SIZE), read without torch."""
    return os.environ.get("WORLD_SIZE", "1") != "1"


def speaks() -> bool:
    """Whether this process says why it stopped: always, but under torchrun only the job's first to stop
    (train/distributed.py), so a mistake every rank makes, or a rank's broken collective after a peer left,
    is said once. torch is imported only under torchrun, so an error here stays instant."""
    if not under_torchrun():
        return True
    from bladegpt.train.distributed import first_to_stop

    return first_to_stop()


def _version(value: bool) -> None:
    if value:
        console.print(f"bladegpt {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        Optional[bool], typer.Option("--version", help="Show the version and exit.", callback=_version, is_eager=True)
    ] = None,
) -> None:
    """Train a small GPT on text you love, on the machine you have, and sample in its voice."""
    from bladegpt.encoding import show_any_name

    show_any_name()  # a file name that is not UTF-8, or a terminal that cannot show a character, never fails a print
