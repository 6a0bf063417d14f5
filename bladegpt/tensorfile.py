"""safetensors files written around the page cache, for a run's checkpoints (read back by safetensors itself).

A training run writes the same large files again and again: SmolLM2-135M's resume state and weights are 1.6 GB a
save, Gemma 3 270M's 3.2 GB. Written through the page cache, each save copies them into fresh cache memory, and
on a VM that hands freed memory back to its host, as this project's 2-core AMD EPYC machines do, touching fresh
memory is the cost: a 1.6 GB `safetensors.torch.save_file` took 2.88 s there with its fsync (0.35 s into memory
just freed). Written with O_DIRECT, from one 64 MiB buffer straight to the disk, it took 0.85 s (scripts/save_bench.py
--writers, 1 thread, medians; Gemma 3 270M's default run 240 -> 213 s: docs/benchmarks/finetune.md). DeepSpeed's
FastPersist writes checkpoints the same way. A
checkpoint written so is never in the page cache: the run's saves no longer push out what the machine had cached.

The format (github.com/huggingface/safetensors, "Format"): an 8-byte little-endian header length N, N bytes of
JSON ({name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, padded with spaces
to a multiple of 8), then the tensors' bytes back to back. Where the OS or the filesystem has no O_DIRECT
(macOS, Windows, tmpfs), or a dtype is not one of DTYPES, safetensors writes the file.
"""

from __future__ import annotations

import errno
import json
import os

import torch
from safetensors.torch import save_file

# safetensors' names of the dtypes a checkpoint holds (its Dtype enum)
DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}
# O_DIRECT wants the buffer's address, the file offset and the length aligned to the disk's logical block
# (512 or 4,096 bytes on Linux's common disks): 4,096 covers both.
ALIGN = 4096
CHUNK = 64 << 20  # bytes written a call: 16 MiB took 1.8-2.5 s for the 1.6 GB above, 64 MiB 0.9-1.3 s


def save_tensors(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (contiguous CPU tensors, by name) and `metadata` to `path` as a safetensors file, creating or
    truncating it; directly to the disk where it can (the module's docstring), else through safetensors.

    Raises OSError naming `path` where a write fails (a full disk, say); the file is then incomplete."""
    if not hasattr(os, "O_DIRECT") or any(t.dtype not in DTYPES for t in tensors.values()):
        return save_file(tensors, path, metadata=metadata)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o666)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        return save_file(tensors, path, metadata=metadata)  # the filesystem has no O_DIRECT (tmpfs)
    try:
        _write(fd, _header(tensors, metadata), tensors)
    except OSError as e:
        if e.errno == errno.EINVAL and os.fstat(fd).st_size == 0:
            return save_file(tensors, path, metadata=metadata)  # refused at the first write, not at open
        raise OSError(e.errno, e.strerror, path) from None
    finally:
        os.close(fd)


def _header(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> bytes:
    """The header length and header, as safetensors lays them out, for the tensors in their order."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    begin = 0
    for name, t in tensors.items():
        end = begin + t.numel() * t.element_size()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [begin, end]}
        begin = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def _write(fd: int, header: bytes, tensors: dict[str, torch.Tensor]) -> None:
    """The header, then each tensor's bytes, through one aligned buffer, CHUNK bytes a write; the last block
    padded to ALIGN for O_DIRECT, and the file cut back to its true length."""
    spare = torch.empty(CHUNK + ALIGN, dtype=torch.uint8)
    start = -spare.data_ptr() % ALIGN
    buffer = spare[start:start + CHUNK]
    view = memoryview(buffer.numpy())
    filled = written = 0

    def flush(n: int) -> None:
        done = 0
        while done < n:
            done += os.write(fd, view[done:n])

    sources = [torch.frombuffer(bytearray(header), dtype=torch.uint8)]
    sources += [t.detach().reshape(-1).view(torch.uint8) for t in tensors.values()]
    for source in sources:
        taken = 0
        while taken < source.numel():
            n = min(CHUNK - filled, source.numel() - taken)
            buffer[filled:filled + n].copy_(source[taken:taken + n])
            filled, taken = filled + n, taken + n
            if filled == CHUNK:
                flush(CHUNK)
                written, filled = written + CHUNK, 0
    if filled:
        padded = filled + (-filled % ALIGN)
        buffer[filled:padded].zero_()
        flush(padded)
    os.ftruncate(fd, written + filled)
