"""Total tokens a second and time to first token of `bladegpt serve` at 1, 4 and 16 concurrent streaming clients
(issue #39), beside llama.cpp's server (llama-cpp-python[server]) on the same GGUF where it is installed.

A benchmark, not a test. Each client streams one /v1/completions request (its own seed) and the clients start
together; total tok/s is every client's tokens over the wall time of the round, TTFT is from a client's
request to its first text. With --gguf and no --checkpoint the served checkpoint is made from the GGUF
(`prepare --tokenizer-from`, then `train --init-from --steps 1`: the GGUF's weights after one small step).

    python scripts/serve_bench.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf [--checkpoint RUN] [--clients 1,4,16]
                                  [--max-tokens 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bladegpt.runtime import cpu_model

PROMPT = "The old lighthouse keeper climbed the stairs one last time, and"
TEXT = Path(__file__).resolve().parents[1] / "corpora" / "officer_k.txt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bladegpt(*args: str, cwd: Path, env: dict) -> None:
    subprocess.run([sys.executable, "-m", "bladegpt", *args], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def checkpoint_from(gguf: Path, work: Path, env: dict) -> Path:
    """A BladeGPT run holding the GGUF's model after one training step on a small text."""
    bladegpt("prepare", str(TEXT), "--tokenizer-from", str(gguf), cwd=work, env=env)
    bladegpt("train", "--init-from", str(gguf), "--steps", "1", "--batch-size", "1", "--compile", "off", cwd=work, env=env)
    return next((work / "runs").iterdir())


def wait_up(port: int, proc: subprocess.Popen, path: str, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server on port {port} exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server on port {port} did not start in {timeout:.0f} s")


def stream_one(port: int, body: dict, out: list, i: int) -> None:
    """One streaming client: (seconds to first text, tokens) into out[i]."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    reply = conn.getresponse()
    first, chunks, usage = None, 0, None
    while line := reply.readline():
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            usage = chunk["usage"]["completion_tokens"]
        if any(c.get("text") for c in chunk.get("choices", [])):
            chunks += 1
            first = first if first is not None else time.perf_counter() - start
    out[i] = (first, usage if usage is not None else chunks)


def round_of(port: int, clients: int, max_tokens: int, model: str | None) -> dict:
    out: list = [None] * clients
    bodies = [{"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.8, "seed": i, "stream": True,
               "stream_options": {"include_usage": True}, **({"model": model} if model else {})} for i in range(clients)]
    threads = [threading.Thread(target=stream_one, args=(port, bodies[i], out, i)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttft = [first for first, _ in out if first is not None]
    tokens = sum(n for _, n in out)
    return {"clients": clients, "tokens": tokens, "fewest_tokens": min(n for _, n in out), "wall_s": round(wall, 2), "tok_s": round(tokens / wall, 1),
            "ttft_median_s": round(statistics.median(ttft), 2), "ttft_max_s": round(max(ttft), 2)}


def bench(name: str, command: list[str], port: int, health: str, clients: list[int], max_tokens: int,
          env: dict, model: str | None = None) -> list[dict]:
    log = tempfile.TemporaryFile()  # never a pipe: llama.cpp logs every request, and a full pipe would stall it
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_up(port, proc, health)
        round_of(port, 1, 8, model)  # warm up
        rows = [{"server": name, **round_of(port, n, max_tokens, model)} for n in clients]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.seek(0)
        first = log.readline().decode(errors="replace").strip()
        log.close()
    print(f"# {name}: {first}" if name.startswith("bladegpt") else f"# {name}", flush=True)
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, help="the GGUF both servers serve (llama.cpp's needs it)")
    parser.add_argument("--checkpoint", type=Path, help="serve this BladeGPT run or checkpoint instead of one made from --gguf")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads each server may use")
    parser.add_argument("--precision", default="auto", help="bladegpt serve --precision")
    args = parser.parse_args()
    if args.gguf is None and args.checkpoint is None:
        parser.error("give --gguf, --checkpoint or both")
    clients = [int(n) for n in args.clients.split(",")]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print(f"# {cpu_model()}, {args.threads} thread(s) per server, {args.max_tokens} tokens per client", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or checkpoint_from(args.gguf, Path(tmp), env)
        port = free_port()
        bench("bladegpt serve", [sys.executable, "-m", "bladegpt", "serve", str(checkpoint), "--port", str(port),
                                 "--precision", args.precision], port, "/health", clients, args.max_tokens, env)
    if args.gguf is None:
        return
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as e:
        print(f"# llama.cpp's server: skipped, llama-cpp-python[server] is not installed ({e})")
        return
    port = free_port()
    bench("llama.cpp (llama-cpp-python)", [sys.executable, "-m", "llama_cpp.server", "--model", str(args.gguf),
                                           "--port", str(port), "--n_threads", str(args.threads), "--n_ctx", "2048",
                                           "--interrupt_requests", "False"],  # its default: a new request ends the last
          port, "/v1/models", clients, args.max_tokens, env)


if __name__ == "__main__":
    main()
