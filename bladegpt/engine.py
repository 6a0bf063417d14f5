"""Text generation: a KV cache, one sampling function, the fast generator and its slow reference.

Both generators slide the same window when a text outgrows the context (keep the last half,
start again), so the reference proves the cached one token for token, at any length.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bladegpt.config import check_seed
from bladegpt.errors import UserError
from bladegpt.model import GPT
from bladegpt.tokenizer import Tokenizer

# Generation meets a new sequence length at every token. cuDNN's attention, which PyTorch
# prefers on recent NVIDIA GPUs, builds a graph for each new length (tens of ms each: 19
# tok/s on an H200 until the window filled); these kernels need no set-up per shape.
DECODE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class KVCache:
    """Keys and values of the tokens seen so far, one pair of tensors per layer."""

    def __init__(self, n_layer: int, max_len: int):
        self.max_len = max_len
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (B, nh, T, hs) keys/values; return all of them so far (B, nh, pos+T, hs)."""
        B, nh, T, hs = k.shape
        if self.k[layer] is None:
            self.k[layer] = k.new_empty(B, nh, self.max_len, hs)
            self.v[layer] = v.new_empty(B, nh, self.max_len, hs)
        end = self.pos + T
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n

    def reset(self) -> None:
        self.pos = 0


def check_settings(num_samples: int, max_new_tokens: int, temperature: float, top_k: int | None,
                   top_p: float | None, seed: int) -> None:
    """Refuse sampling settings that cannot work, in one line each, before a model is loaded."""
    if num_samples < 1 or max_new_tokens < 1:
        raise UserError("--num-samples and --max-new-tokens must be at least 1.")
    if not 0 <= temperature < math.inf:  # also refuses NaN
        raise UserError(f"--temperature must be 0 (greedy) or a positive number, got {temperature}.")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k must be at least 1 (1 is greedy), got {top_k}.")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], e.g. 0.9, got {top_p}.")
    check_seed(seed)


def sample_next_token(
    logits: torch.Tensor,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """One token id per row of (B, V) logits; temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # mass before this token already exceeds top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _last_logits(model: GPT, ids: list[int], n_vocab: int, kv_cache=None) -> torch.Tensor:
    device = next(model.parameters()).device
    with sdpa_kernel(DECODE_BACKENDS):
        logits, _ = model(torch.tensor([ids], dtype=torch.long, device=device), kv_cache=kv_cache)
    logits = logits[:, -1, :].float()
    logits[:, n_vocab:] = float("-inf")  # padding ids the tokenizer cannot decode
    return logits


@torch.inference_mode()
def generate(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    n_vocab: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time, with a KV cache."""
    block = model.config.block_size
    tokens = list(prompt[-block:])
    start = 0
    cache = KVCache(model.config.n_layer, block)
    logits = _last_logits(model, tokens, n_vocab, cache)
    for _ in range(max_new_tokens):
        token = int(sample_next_token(logits, generator, temperature, top_k, top_p)[0])
        yield token
        tokens.append(token)
        if cache.pos == block:  # the window is full: keep its last half and start again
            start = len(tokens) - block // 2
            cache.reset()
            logits = _last_logits(model, tokens[start:], n_vocab, cache)
        else:
            logits = _last_logits(model, [token], n_vocab, cache)


@torch.inference_mode()
def generate_reference(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    n_vocab: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> list[int]:
    """The slow, obviously right generator: recompute the whole window for every token."""
    block = model.config.block_size
    tokens = list(prompt[-block:])
    start = 0
    out = []
    for _ in range(max_new_tokens):
        if len(tokens) - start > block:
            start = len(tokens) - block // 2
        logits = _last_logits(model, tokens[start:], n_vocab)
        token = int(sample_next_token(logits, generator, temperature, top_k, top_p)[0])
        out.append(token)
        tokens.append(token)
    return out


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's ids; an empty prompt starts from a line break, as a new paragraph would."""
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:
        try:
            ids = tokenizer.encode("\n")
        except ValueError:
            ids = [0]
    return ids


def stream_text(tokens: Iterator[int], tokenizer: Tokenizer) -> Iterator[str]:
    """Turn token ids into text pieces as they come, holding back half-finished UTF-8 characters."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in tokens:
        piece = decoder.decode(tokenizer.token_bytes(token))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


class Sampler:
    """A checkpoint made ready to generate: the latest run's best unless one is named."""

    def __init__(self, checkpoint: Path | None = None, device: str = "auto"):
        from bladegpt.checkpoint import load_checkpoint
        from bladegpt.runs import resolve_checkpoint
        from bladegpt.runtime import choose_precision, resolve_device

        self.checkpoint = resolve_checkpoint(checkpoint)
        self.device = resolve_device(device)
        self.model, self.tokenizer, self.info = load_checkpoint(self.checkpoint)
        self.model.to(self.device)
        self.precision = choose_precision(self.device)

    def stream(
        self,
        prompt: str,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int | None = 200,
        top_p: float | None = None,
        seed: int = 0,
    ) -> Iterator[str]:
        """Text pieces of one sample as they are generated (the prompt itself is not repeated).

        The prompt is encoded now, so a prompt the tokenizer cannot take fails before any output.
        """
        ids = prompt_ids(self.tokenizer, prompt)
        generator = torch.Generator(self.device).manual_seed(seed)
        tokens = generate(self.model, ids, max_new_tokens, self.tokenizer.vocab_size, generator, temperature, top_k, top_p)
        return self._autocast(stream_text(tokens, self.tokenizer))

    def _autocast(self, pieces: Iterator[str]) -> Iterator[str]:
        from bladegpt.runtime import autocast

        with autocast(self.device, self.precision):
            yield from pieces
