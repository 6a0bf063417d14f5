"""Continuous batching: one thread owns the model and runs one decode step for every active request, which
join at the next step (their prompt prefilled alone, its keys and values then copied into a row of the batch's
cache) and leave when done, stopped or abandoned.

Each request draws from its own torch.Generator, seeded as `bladegpt sample --seed` seeds its sample, over
logits computed as sample computes them (the prompt alone, then one token a step; the same window slide),
so its tokens are the ones `sample` gives with the same settings, whoever else is in the batch.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import torch
from torch.nn.attention import sdpa_kernel

from bladegpt.generate.engine import DECODE_BACKENDS, KVCache, last_logits, sample_next_token
from bladegpt.generate.nocopy import Guard
from bladegpt.generate.settings import SampleSettings
from bladegpt.model import GPT

log = logging.getLogger(__name__)
IDLE_WAIT_S = 0.1  # how often an idle decode thread looks up to see whether it should stop


class Job:
    """One text being generated. `tell(token, finish)` is called from the decode thread: a new token id
    (finish None), or None and why it ended ("stop": an end token; "length": max_new_tokens; "error").
    `guard` keeps it from writing what the training text holds (no_copy), as sample's rows are kept."""

    def __init__(self, ids: list[int], settings: SampleSettings, tell: Callable[[int | None, str | None], None],
                 guard: Guard | None = None):
        self.ids, self.settings, self.tell, self.guard = ids, settings, tell, guard
        self.seq = list(ids)  # the prompt and every token drawn: what the repetition penalty sees
        self.made = 0
        self.cancelled = False  # set by the server (a stop string, a client gone): the row leaves at the next step
        self.generator: torch.Generator | None = None
        self.logits: torch.Tensor | None = None  # (1, V): what its next token is drawn from

    def cancel(self) -> None:
        self.cancelled = True


class RowsCache:
    """Keys and values of every active text, one row each in per-layer (rows, nkv, length, hs) buffers, each
    row filled to its own length. A step seats one token per row at that row's position and attends over
    the longest row's length, masking what a shorter row has not written. The buffers grow (doubling, zeroed
    so that masked slots stay finite) with the rows and the longest text, never past the context: a
    model with a long context (SmolLM2's 8,192 tokens: 377 MB a row in fp32) costs what its texts use."""

    def __init__(self, n_layer: int, block: int):
        self.n_layer, self.block = n_layer, block
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.lengths: list[int] = []
        self.where: torch.Tensor | None = None  # (B,) positions of the tokens of the coming step
        # Each row's keys in the coming step where the rows differ in length, else None: the model then attends
        # row by row, unmasked, so a text's floats are those it has alone (a masked batched attention sums in
        # another order: 1e-7 off in fp32, up to 5e-5 for SmolLM2, which bf16 inputs to the int4/int8 kernels
        # made 0.13-0.21 in a logit and a different text than `sample --seed` gives)
        self.row_lengths: list[int] | None = None

    def add(self, solo: KVCache) -> None:
        """A new row holding a prefilled single-text cache's keys and values."""
        if not self.k:
            self.k = [k.new_zeros(0, k.size(1), 0, k.size(3)) for k in solo.k]
            self.v = [v.new_zeros(0, v.size(1), 0, v.size(3)) for v in solo.v]
        self._fit(len(self.lengths) + 1, solo.pos)
        self.lengths.append(0)
        self.put(len(self.lengths) - 1, solo)

    def _fit(self, rows: int, length: int) -> None:
        """Buffers of at least `rows` rows and `length` positions (doubling what is there), contents kept."""
        have_rows, have_length = self.k[0].size(0), self.k[0].size(2)
        if rows <= have_rows and length <= have_length:
            return
        rows = max(rows, 2 * have_rows if rows > have_rows else have_rows, 4)
        length = min(self.block, max(length, 2 * have_length if length > have_length else have_length, 64))

        def grown(old: torch.Tensor) -> torch.Tensor:
            buffer = old.new_zeros(rows, old.size(1), length, old.size(3))
            buffer[: old.size(0), :, : old.size(2)] = old
            return buffer

        self.k, self.v = [grown(k) for k in self.k], [grown(v) for v in self.v]

    def put(self, row: int, solo: KVCache) -> None:
        """Row `row` becomes a copy of a prefilled single-text cache (a join, or a window slide)."""
        n = solo.pos
        self._fit(row + 1, n)
        for layer in range(self.n_layer):
            if n:
                self.k[layer][row, :, :n] = solo.k[layer][0, :, :n]
                self.v[layer][row, :, :n] = solo.v[layer][0, :, :n]
        self.lengths[row] = n

    def remove(self, row: int) -> None:
        """Row `row` leaves; the last row moves into its place (so rows stay 0..B-1)."""
        last = len(self.lengths) - 1
        if row != last:
            n = self.lengths[last]
            for layer in range(self.n_layer):
                self.k[layer][row, :, :n] = self.k[layer][last, :, :n]
                self.v[layer][row, :, :n] = self.v[layer][last, :, :n]
            self.lengths[row] = n
        self.lengths.pop()

    def seat(self, T: int, device: torch.device) -> None:
        if T != 1:
            raise ValueError("a batch step seats one token per row")
        self._fit(len(self.lengths), max(self.lengths) + 1)
        self.where = torch.tensor(self.lengths, device=device)
        self.row_lengths = [n + 1 for n in self.lengths] if len(set(self.lengths)) > 1 else None

    def positions(self) -> torch.Tensor:
        return self.where[:, None]  # (B, 1)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write each row's new (B, nkv, 1, hs) key/value at its position; return keys/values up to the
        longest row and the (B, 1, 1, S) mask of what each row has written (None where all rows are S long).
        The model attends row by row where `row_lengths` is set."""
        B = k.size(0)
        rows = torch.arange(B, device=k.device)
        self.k[layer][rows, :, self.where] = k[:, :, 0]
        self.v[layer][rows, :, self.where] = v[:, :, 0]
        S = max(self.lengths) + 1
        if self.row_lengths is None:  # every row S long: nothing to mask
            return self.k[layer][:B, :, :S], self.v[layer][:B, :, :S], None
        mask = torch.arange(S, device=k.device)[None, :] <= self.where[:, None]  # (B, S), for attention over all rows at once
        return self.k[layer][:B, :, :S], self.v[layer][:B, :, :S], mask[:, None, None, :]

    def advance(self, n: int) -> None:
        self.lengths = [length + n for length in self.lengths]


class QueueFull(Exception):
    """More requests wait than the server takes; the client should try again later (HTTP 429)."""


class Batcher:
    """The decode thread and the jobs waiting for it: at most `max_rows` decode together, at most
    `max_waiting` wait for a row."""

    def __init__(self, model: GPT, n_vocab: int, stop_ids: tuple[int, ...], max_rows: int, max_waiting: int):
        self.model, self.n_vocab, self.stop_ids = model, n_vocab, frozenset(stop_ids)
        self.max_rows, self.max_waiting = max_rows, max_waiting
        self.device = model.transformer.wte.weight.device
        self.block = model.config.block_size
        self.waiting: queue.Queue[Job] = queue.Queue()
        self.jobs: list[Job] = []  # row i of the cache is jobs[i]
        self.rows = RowsCache(model.config.n_layer, self.block)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bladegpt-decode", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)

    def submit(self, jobs: list[Job]) -> None:
        """Queue jobs for the next step; QueueFull when too many already wait."""
        if self.waiting.qsize() + len(jobs) > self.max_waiting:
            raise QueueFull(f"{self.waiting.qsize()} requests already wait for the model (at most "
                            f"{self.max_waiting}); try again in a moment.")
        for job in jobs:
            self.waiting.put(job)

    def _run(self) -> None:
        with torch.inference_mode(), sdpa_kernel(DECODE_BACKENDS):
            while not self.stopping.is_set():
                try:
                    self._admit()
                    if self.jobs:
                        self._step()
                except Exception:  # a bug or the device out of memory: end these texts, keep serving
                    log.exception("decode step failed; ending the %d texts in the batch", len(self.jobs))
                    for job in self.jobs:
                        job.tell(None, "error")
                    self.jobs, self.rows = [], RowsCache(self.model.config.n_layer, self.block)
        for job in self.jobs:
            job.tell(None, "error")

    def _admit(self) -> None:
        """Waiting jobs take free rows: each prompt prefilled alone, as `sample` prefills it."""
        while len(self.jobs) < self.max_rows:
            try:
                job = self.waiting.get(timeout=IDLE_WAIT_S) if not self.jobs else self.waiting.get_nowait()
            except queue.Empty:
                return
            if job.cancelled:
                continue
            try:
                solo = KVCache(self.model.config.n_layer, self.block)
                job.logits = last_logits(self.model, torch.tensor([job.ids], device=self.device), self.n_vocab, solo)
                job.generator = torch.Generator(self.device).manual_seed(job.settings.seed)
                self.rows.add(solo)
            except Exception:  # this prompt failed (out of memory): it ends, the batch goes on
                log.exception("prefill failed")
                job.tell(None, "error")
                continue
            self.jobs.append(job)

    def _step(self) -> None:
        """Each row draws its token from its own logits, generator and settings; the rows still going then
        take one batched forward pass."""
        for row in reversed(range(len(self.jobs))):
            job = self.jobs[row]
            finish = None if not job.cancelled else "cancelled"
            if finish is None:
                settings = job.settings
                seen = torch.tensor([job.seq], device=self.device) if settings.repetition_penalty is not None else None
                token = int(sample_next_token(job.logits, job.generator, **settings.knobs(), seen=seen)[0])
                if job.guard is not None:
                    token = job.guard.choose(job.logits, token, lambda banned: int(sample_next_token(
                        job.logits, job.generator, **settings.knobs(), seen=seen, banned=banned)[0]))
                    job.guard.add(token)
                if token in self.stop_ids:
                    finish = "stop"
                else:
                    job.seq.append(token)
                    job.made += 1
                    job.tell(token, None)
                    finish = "length" if job.made == settings.max_new_tokens else None
            if finish is not None:
                if finish != "cancelled":
                    job.tell(None, finish)
                self.jobs[row] = self.jobs[-1]  # as the cache's rows move (RowsCache.remove)
                self.jobs.pop()
                self.rows.remove(row)
        if not self.jobs:
            return
        for row, job in enumerate(self.jobs):
            if self.rows.lengths[row] == self.block:  # the window is full: keep its last half, as sample does
                self._slide(row, job)
        tokens = torch.tensor([[job.seq[-1]] for job in self.jobs], device=self.device)
        logits = last_logits(self.model, tokens, self.n_vocab, self.rows)  # (B, V)
        for row, job in enumerate(self.jobs):
            job.logits = logits[row : row + 1]

    def _slide(self, row: int, job: Job) -> None:
        """The row starts again from the last half-window of its text but the newest token (which the
        coming step seats), prefilled alone."""
        solo = KVCache(self.model.config.n_layer, self.block)
        keep = job.seq[len(job.seq) - self.block // 2 : -1]
        if keep:
            last_logits(self.model, torch.tensor([keep], device=self.device), self.n_vocab, solo)
        self.rows.put(row, solo)
