"""`bladegpt serve`: the voice behind OpenAI's API and a chat page, until Ctrl-C or SIGTERM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bladegpt.cli.app import DecodePrecisionOpt, DeviceOpt, app, err_console, friendly
from bladegpt.errors import UserError


@app.command()
@friendly
def serve(
    checkpoint: Annotated[Optional[Path], typer.Argument(help="A run folder or .safetensors file \\[default: latest run's best].", show_default=False)] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; another than this machine's own only when you mean it (add --api-key).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(help="Require 'Authorization: Bearer KEY' on the API \\[default: none].", show_default=False)] = None,
    frame: Annotated[Optional[str], typer.Option(help="How chat messages are written: quotes, play or lines \\[default: the corpus's].", show_default=False)] = None,
    max_batch: Annotated[int, typer.Option(help="Most requests decoded together, one row each of one batch; their KV cache grows with their texts.")] = 16,
    max_waiting: Annotated[int, typer.Option(help="Requests that may wait for a batch row; more get HTTP 429.")] = 64,
    device: DeviceOpt = "auto",
    precision: DecodePrecisionOpt = "auto",
) -> None:
    """Serve a voice on OpenAI's API (/v1/completions, /v1/chat/completions) with a chat page at /."""
    try:
        from bladegpt.serve import serve as run
    except ImportError as e:
        raise UserError(f"serve needs its extra ({e.name} is missing): pip install 'bladegpt[serve]'.") from None
    run(checkpoint, host, port, api_key, device, precision, frame, max_batch, max_waiting,
        say=lambda line: err_console.print(line, highlight=False, markup=False, soft_wrap=True))
