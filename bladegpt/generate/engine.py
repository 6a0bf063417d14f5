"""Text generation: a KV cache, one sampling function, the fast generator and its slow reference.

Both generators slide the same window when a text outgrows the context (keep the last half,
start again), so the reference proves the cached one token for token, at any length.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Collection, Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bladegpt.generate.nocopy import Guard, copying
from bladegpt.model import GPT
from bladegpt.tokenizer import Tokenizer

# Generation meets a new sequence length at every token. cuDNN's attention, which PyTorch
# prefers on recent NVIDIA GPUs, builds a graph for each new length (tens of ms each: 19
# tok/s on an H200 until the window filled); these kernels need no set-up per shape.
DECODE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class KVCache:
    """Keys and values of the tokens seen so far: per layer one (B, nh, max_len, hs) buffer, allocated
    once (in the dtype the first keys arrive in) and written in place. Attention reads only the
    filled part, so its length grows by one each step: the fastest eager step."""

    def __init__(self, n_layer: int, max_len: int):
        self.max_len = max_len
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.pos = 0
        self.where: torch.Tensor | None = None  # positions of the tokens of the coming forward pass

    def seat(self, T: int, device: torch.device) -> None:
        """Place the next T tokens, before the forward pass (outside any compiled code)."""
        if self.pos + T > self.max_len:
            raise ValueError(f"sequence of {self.pos + T} tokens exceeds block size {self.max_len}")
        self.where = torch.arange(self.pos, self.pos + T, device=device)

    def positions(self) -> torch.Tensor:
        """Where the seated tokens go (the model adds their position embeddings)."""
        return self.where

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store the new (B, nh, T, hs) keys/values; return all of them so far (B, nh, pos+T, hs), and
        no mask: they are all seen, the new ones causally."""
        B, nh, T, hs = k.shape
        if self.k[layer] is None:
            self.k[layer] = k.new_empty(B, nh, self.max_len, hs)
            self.v[layer] = v.new_empty(B, nh, self.max_len, hs)
        end = self.pos + T
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end], None

    def advance(self, n: int) -> None:
        self.pos += n

    def reset(self) -> None:
        self.pos = 0

    def repeat(self, n: int) -> None:
        """One prompt's cache (batch 1) copied to n rows, so n samples continue from one prefill."""
        self.k = [k.expand(n, -1, -1, -1).contiguous() for k in self.k]
        self.v = [v.expand(n, -1, -1, -1).contiguous() for v in self.v]


class StaticKVCache(KVCache):
    """gpt-fast's and transformers' static cache: buffers for `rows` samples over the whole context,
    allocated once and zeroed, written at positions held as a tensor, attention over all of them
    under a mask. A one-token step then has the same shapes and memory addresses every time, which is
    what a compiled step needs to never recompile and what CUDA graphs replay."""

    def __init__(self, n_layer: int, max_len: int, rows: int):
        super().__init__(n_layer, max_len)
        self.rows = rows
        self.slots: torch.Tensor | None = None  # every position, for the mask

    def seat(self, T: int, device: torch.device) -> None:
        super().seat(T, device)
        if self.slots is None:
            self.slots = torch.arange(self.max_len, device=device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write the new keys/values into rows 0..B-1 at their positions; return the whole buffers and
        the (T, max_len) mask of what each new token sees. Zeroed buffers keep unwritten slots finite,
        so their zero weight in attention stays zero."""
        B, nh, T, hs = k.shape
        if self.k[layer] is None:
            self.k[layer] = k.new_zeros(self.rows, nh, self.max_len, hs)
            self.v[layer] = v.new_zeros(self.rows, nh, self.max_len, hs)
            torch._dynamo.mark_static_address(self.k[layer])  # CUDA graphs read them in place, never copied
            torch._dynamo.mark_static_address(self.v[layer])
        self.k[layer][:B].index_copy_(2, self.where, k)
        self.v[layer][:B].index_copy_(2, self.where, v)
        return self.k[layer][:B], self.v[layer][:B], self.slots <= self.where[:, None]

    def repeat(self, n: int) -> None:
        """Row 0's prefill copied to the other rows, in place (the buffers keep their addresses)."""
        for buffer in self.k + self.v:
            buffer[1:n] = buffer[:1]


def sample_next_token(
    logits: torch.Tensor,
    generator: torch.Generator | list[torch.Generator] | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    seen: torch.Tensor | None = None,
    banned: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token id per row of (B, V) logits, of any float dtype; temperature 0 is greedy.

    In this order: the repetition penalty divides the positive logits and multiplies the negative ones
    of every id in that row's `seen` (B, S) ids, the text so far with its prompt, by the penalty (CTRL,
    Keskar et al. 2019, arXiv 1909.05858, as transformers' RepetitionPenaltyLogitsProcessor; before
    greedy too); top-k keeps the k likeliest (k past the vocabulary keeps all of it); min-p keeps
    the tokens whose probability is at least min_p times the likeliest one's, measured on the model's
    own probabilities before temperature (Nguyen et al. 2024, "Turning Up the Heat: Min-p Sampling",
    arXiv 2407.01082; llama.cpp's default order), so a high temperature flattens only what it keeps;
    then temperature divides the logits; top-p keeps the smallest set of the likeliest whose
    probability reaches top_p (Holtzman et al. 2019, nucleus sampling).

    Any setting SampleSettings accepts samples: the logits are shifted so the largest is 0 before the
    temperature divides them, so a tiny temperature sends the rest to -inf (greedy; ties share the
    draw) and a huge one makes them all near 0 (uniform over what is kept), never inf - inf. +inf logits
    share all the probability; NaN counts as -inf.

    Each row draws from its own generator (one for all rows if a single one is given), so a row's
    text depends on its seed alone, not on how many rows are sampled beside it. A row costs one
    uniform draw, placed on the cumulative probabilities (inverse CDF): an exponential per
    vocabulary entry (the race) measured 90 us a row for 4,096 ids, this 3 us. Top-k samples among
    the k likeliest only, which also spares the softmax and the cumulative sum over the rest.

    `banned` (B, V) bool takes ids out of what the knobs above keep, and the rest is renormalised (for
    greedy: the likeliest id not banned); a row whose kept ids are all banned gives -1 (nocopy.py).
    """
    logits = logits.float()
    if repetition_penalty is not None and repetition_penalty != 1.0 and seen is not None and seen.numel():
        picked = logits.gather(-1, seen)
        picked = torch.where(picked > 0, picked / repetition_penalty, picked * repetition_penalty)
        logits = logits.scatter(-1, seen, picked)
    if temperature == 0:
        if banned is None:
            return logits.argmax(dim=-1)
        logits = logits.masked_fill(banned | logits.isnan(), -math.inf)
        return torch.where(logits.isneginf().all(dim=-1), -1, logits.argmax(dim=-1))
    logits = logits.nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf)  # NaN only, in one pass
    ids = None  # where the columns come from, when they are a sorted subset of the vocabulary
    if top_k is not None and top_k < logits.size(-1):
        logits, ids = torch.topk(logits, top_k, dim=-1)  # (B, k), likeliest first
    top = logits.amax(dim=-1, keepdim=True)
    # Each row's largest becomes 0. A row whose largest is +inf keeps only its +inf ids (0, the rest
    # -inf), a row of -inf keeps all (uniform): the limits softmax tends to, where l - top is inf - inf.
    logits = torch.where(top.isinf(), (logits == top).float().log(), logits - top)
    if min_p is not None and min_p > 0:
        logits = logits.masked_fill(logits < math.log(min_p), -math.inf)  # p / p_max < min_p
    # Kept where it and its reciprocal are normal float32 numbers: a temperature that rounds to 0 or inf
    # there would make 0 / 0 or -inf / inf.
    tiny = torch.finfo(torch.float32).tiny
    logits = logits / min(max(temperature, tiny), 1 / tiny)
    if top_p is not None and top_p < 1.0:
        if ids is None:
            logits, ids = torch.sort(logits, descending=True, dim=-1)
        probs = logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # mass before this token already exceeds top_p
        logits = logits.masked_fill(drop, -math.inf)
    empty = None
    if banned is not None:
        logits = logits.masked_fill(banned if ids is None else banned.gather(-1, ids), -math.inf)
        empty = logits.isneginf().all(dim=-1)
        logits = logits.masked_fill(empty[:, None], 0.0)  # drawn from, then answered -1
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)  # (B, n), never decreasing
    total = cdf[:, -1:]
    generators = generator if isinstance(generator, list) else [generator] * len(cdf)
    u = torch.stack([torch.rand(1, generator=g, device=cdf.device) for g in generators])  # (B, 1) in [0, 1)
    # The first column whose cdf passes u * total: a column of probability 0 never does. The bound
    # keeps the point below the total when the product rounds up.
    point = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    pick = torch.searchsorted(cdf, point, right=True)  # (B, 1)
    token = (pick if ids is None else ids.gather(-1, pick)).squeeze(-1)
    return token if empty is None else torch.where(empty, -1, token)


def sample_guarded(logits: torch.Tensor, generators: list, knobs: dict, seen: torch.Tensor | None,
                   guards: list[Guard]) -> torch.Tensor:
    """sample_next_token for (B, V) logits, each row then kept from copying by its own Guard (--no-copy); row r
    redraws with generators[r] alone, so a row's text is its seed's whatever rows sample beside it."""
    token = sample_next_token(logits, generators, **knobs, seen=seen)
    first = copying(guards, token.tolist())
    for r, guard in enumerate(guards):
        row, row_seen = logits[r : r + 1], None if seen is None else seen[r : r + 1]

        def redraw(banned: torch.Tensor) -> int:
            return int(sample_next_token(row, generators[r], **knobs, seen=row_seen, banned=banned)[0])

        token[r] = guard.choose(row, int(token[r]), redraw, first[r])
        guard.add(int(token[r]))
    return token


def last_logits(model, idx: torch.Tensor, n_vocab: int, kv_cache: KVCache | None = None) -> torch.Tensor:
    """Logits of the last position of each row (B, n_vocab), the cache moved past idx: padding ids
    past the tokenizer's vocabulary, which it cannot decode, are left out."""
    if kv_cache is not None:
        kv_cache.seat(idx.size(1), idx.device)
    logits, _ = model(idx, kv_cache=kv_cache)
    if kv_cache is not None:
        kv_cache.advance(idx.size(1))
    return logits[:, -1, :n_vocab]


def compile_decode(model: GPT):
    """The one-token step compiled for a StaticKVCache: one graph of fixed shapes, never recompiled as
    the text grows; on CUDA replayed as a CUDA graph (mode reduce-overhead: one launch a token instead of
    hundreds, the fix gpt-fast and transformers' static cache use for launch-bound decoding)."""
    cuda = model.transformer.wte.weight.device.type == "cuda"
    return torch.compile(model, dynamic=False, fullgraph=True, mode="reduce-overhead" if cuda else None)


@torch.inference_mode()
def generate_batch(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    n_vocab: int,
    generators: list[torch.Generator | None],
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    decode=None,
    stop: Collection[int] = (),
    repetition_penalty: float | None = None,
    guards: list[Guard] | None = None,
) -> Iterator[torch.Tensor]:
    """Yield, step by step, one new token per sample (a tensor of len(generators) ids).

    The prompt is run once and its cache copied to every row (nanochat's engine does the same);
    then all rows decode together, one batched forward pass a token. `decode` (compile_decode's) runs
    the one-token steps over a static cache; the prompt and each window slide run eager. Once every
    row has drawn one of the `stop` ids (the tokenizer's stop_ids) generation ends; a row's tokens from
    its own first stop on are not part of its sample (`until_stop`). `guards` (one a row, nocopy.py) keep
    each row from writing what the training text holds (--no-copy).
    """
    block, n = model.config.block_size, len(generators)
    device = model.transformer.wte.weight.device
    stops = torch.tensor(sorted(stop), dtype=torch.long, device=device)
    prompt = list(prompt[-block:])
    seq = torch.empty(n, len(prompt) + max_new_tokens, dtype=torch.long, device=device)
    seq[:, : len(prompt)] = torch.tensor(prompt, device=device)
    length = len(prompt)
    cache = KVCache(model.config.n_layer, block) if decode is None else StaticKVCache(model.config.n_layer, block, n)
    step = model if decode is None else decode
    with sdpa_kernel(DECODE_BACKENDS):
        logits = last_logits(model, seq[:1, :length], n_vocab, cache)
        if n > 1:
            cache.repeat(n)
            logits = logits.expand(n, -1)
        ended = torch.zeros(n, dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            knobs = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                         repetition_penalty=repetition_penalty)
            seen = seq[:, :length] if repetition_penalty is not None else None
            token = sample_next_token(logits, generators, **knobs, seen=seen) if guards is None \
                else sample_guarded(logits, generators, knobs, seen, guards)
            yield token
            if len(stops):
                ended |= torch.isin(token, stops)
                if bool(ended.all()):
                    return
            seq[:, length] = token
            length += 1
            if cache.pos == block:  # the window is full: keep its last half and start again
                cache.reset()
                logits = last_logits(model, seq[:, length - block // 2 : length], n_vocab, cache)
            else:
                if device.type == "cuda" and decode is not None:
                    torch.compiler.cudagraph_mark_step_begin()  # the last step's logits are used up
                logits = last_logits(step, seq[:, length - 1 : length], n_vocab, cache)


def generate(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    n_vocab: int,
    generator: torch.Generator | None = None,
    stop: Collection[int] = (),
    **knobs,
) -> Iterator[int]:
    """Yield new token ids of one sample, one at a time, with a KV cache; the sample ends before a `stop` id.
    `knobs` are sample_next_token's (temperature, top_k, top_p, min_p, repetition_penalty: SampleSettings.knobs())."""
    for token in generate_batch(model, prompt, max_new_tokens, n_vocab, [generator], stop=stop, **knobs):
        if int(token[0]) in stop:
            return
        yield int(token[0])


@torch.inference_mode()
def generate_reference(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    n_vocab: int,
    generator: torch.Generator | None = None,
    stop: Collection[int] = (),
    **knobs,
) -> list[int]:
    """The slow, obviously right generator: recompute the whole window for every token; ends before a `stop` id."""
    block = model.config.block_size
    device = model.transformer.wte.weight.device
    tokens = list(prompt[-block:])
    start = 0
    out = []
    for _ in range(max_new_tokens):
        if len(tokens) - start > block:
            start = len(tokens) - block // 2
        with sdpa_kernel(DECODE_BACKENDS):
            logits = last_logits(model, torch.tensor([tokens[start:]], device=device), n_vocab)
        seen = torch.tensor([tokens], device=device)
        token = int(sample_next_token(logits, generator, **knobs, seen=seen)[0])
        if token in stop:
            break
        out.append(token)
        tokens.append(token)
    return out


def until_stop(tokens: list[int], stop: Collection[int]) -> list[int]:
    """A sample's tokens up to (not including) its first `stop` id."""
    return tokens[: next((i for i, token in enumerate(tokens) if token in stop), len(tokens))]


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's ids; an empty prompt starts from a line break, as a new paragraph would. A tokenizer
    whose model expects a beginning-of-text token first (add_bos: Llama 3) gets it, as its own
    tokenizer would add it."""
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:
        try:
            ids = tokenizer.encode("\n")
        except ValueError:
            ids = [0]
    if tokenizer.add_bos and tokenizer.bos_id is not None and ids[0] != tokenizer.bos_id:
        ids = [tokenizer.bos_id, *ids]
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


def sample_text(tokens: list[int], tokenizer: Tokenizer) -> str:
    """A sample's text as stream_text shows it piece by piece (special tokens are no text), so a sample
    printed whole reads exactly as one streamed."""
    return "".join(stream_text(iter(tokens), tokenizer))
