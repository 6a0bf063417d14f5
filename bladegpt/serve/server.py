"""`bladegpt serve`: a checkpoint loaded as `sample` loads it, its decode thread started, the app on uvicorn until
Ctrl-C or SIGTERM (uvicorn's own handlers: requests in flight are given a few seconds, then the thread stops)."""

from __future__ import annotations

import ipaddress
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn

from bladegpt.data import copymeter
from bladegpt.data.frames import check_kind, choose
from bladegpt.errors import UserError
from bladegpt.generate.chat import recorded_frame
from bladegpt.generate.sampler import Sampler
from bladegpt.runs import RUN_FILE
from bladegpt.serve.app import Voice, create_app
from bladegpt.serve.batcher import Batcher

SHUTDOWN_GRACE_S = 5  # seconds open streams get to finish after Ctrl-C or SIGTERM


def stop_ids(tokenizer) -> tuple[int, ...]:
    """The ids that end a text: the tokenizer's end tokens (a model may have several), else its end of text."""
    ids = getattr(tokenizer, "stop_ids", None) or (tokenizer.eot_id,)
    return tuple(i for i in ids if i is not None)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(checkpoint: Path | None, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          device: str = "auto", precision: str = "auto", frame: str | None = None, max_batch: int = 16, max_waiting: int = 64,
          say: Callable[[str], None] = print) -> None:
    """Serve a checkpoint (default: the latest run's best) until stopped. UserError for a port out of range
    or a checkpoint that cannot be loaded."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be from 1 to 65535, got {port}.")
    if max_batch < 1:
        raise UserError(f"--max-batch must be at least 1, got {max_batch}.")
    if max_waiting < 0:
        raise UserError(f"--max-waiting must be 0 or more, got {max_waiting}.")
    if api_key is not None and not api_key.strip():
        raise UserError("--api-key is empty; give the key clients must send, or leave the option out.")
    check_kind(frame)  # before the model loads
    check_address(host, port)
    sampler = Sampler(checkpoint, device, precision, compile="off", say=say)  # a batch of changing shape: eager steps
    tokenizer, config = sampler.tokenizer, sampler.model.config
    frame, _ = choose(frame, recorded_frame(sampler.checkpoint), tokenizer.encode)
    run_dir = sampler.checkpoint.parent
    model_id = run_dir.name if (run_dir / RUN_FILE).is_file() else sampler.checkpoint.stem
    batcher = Batcher(sampler.model, tokenizer.vocab_size, stop_ids(tokenizer), max_batch, max_waiting)
    voice = Voice(tokenizer, config.block_size, model_id, frame, copymeter.for_checkpoint(sampler.checkpoint),
                  batcher, api_key)
    if not is_loopback(host) and api_key is None:
        say(f"Warning: serving on {host} without --api-key: anyone who can reach this machine can use the model.")
    shown = f"[{host}]" if ":" in host else host
    say(f"{sampler.checkpoint} · {sampler.precision} · {model_id} · frame {frame.describe()}")
    say(f"Chat page: http://{shown}:{port}/   API: http://{shown}:{port}/v1   (Ctrl-C stops)")
    server = uvicorn.Server(uvicorn.Config(create_app(voice), host=host, port=port, log_level="warning",
                                           timeout_graceful_shutdown=SHUTDOWN_GRACE_S))
    # uvicorn shuts down gracefully on SIGINT and SIGTERM, then raises the signal again: both end here, quietly.
    before = signal.signal(signal.SIGTERM, _interrupt)
    batcher.start()
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    except SystemExit:  # uvicorn could not bind after all (taken since check_address)
        server.started = False
    finally:
        batcher.stop()
        signal.signal(signal.SIGTERM, before)
    if not server.started:
        raise UserError(f"Cannot listen on {host}:{port}: another program took it as the server started; choose "
                        f"another --port.")
    say("Stopped.")


def check_address(host: str, port: int) -> None:
    """UserError in one line when this machine cannot listen on host:port (taken, or not its address)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as e:
        raise UserError(f"Cannot listen on {host}:{port} ({e.strerror or e}); choose another --port, or a --host "
                        f"of this machine.") from None


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
