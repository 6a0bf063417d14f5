"""The GPT: GPT-2's block and the Llama family's in one readable file. Pure: no I/O, no device choices.

Which block is configuration (config.ModelConfig), as in litgpt: LayerNorm or RMSNorm, learned
positions or RoPE, a GELU, SwiGLU or GeGLU MLP, full or grouped-query attention, Qwen2's q/k/v biases,
Qwen3's q/k norm, and Gemma 3's sandwich norms, scaled embeddings and sliding-window layers with a RoPE
base of their own. Module names are GPT-2's for every family, so old checkpoints load as they are.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from bladegpt.attention import ATTENTION_IMPLS, attend
from bladegpt.config import GATED, ModelConfig
from bladegpt.loss import linear_cross_entropy, softcapped

# The blocks' weight matrices, by the ends of their names: what LoRA adapts and a frozen base may keep in bf16.
BLOCK_MATRICES = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def dropout(module: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """module(x) where it drops anything (training, p > 0); else x, without the module call's ~3 us, which a
    decode step pays 61 times for SmolLM2 (one thread of an AMD EPYC)."""
    return module(x) if module.training and module.p > 0 else x


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), computed in fp32 and cast back before the weight: transformers'
    LlamaRMSNorm, op for op. F.rms_norm where x and w are fp32: the same floats (tested) in one call, 11 us
    against 15 for a decode step's 576-wide norm (PyTorch 2.13, one thread); for bf16 it rounds elsewhere.
    Gemma's RMSNorm scales by 1 + w: its w is held here as the 1 + w it multiplies by, as llama.cpp's
    GGUF files hold it (the sources and exports add and take away the 1)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def make_norm(config: ModelConfig, dim: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.layer_norm_eps)
    return nn.LayerNorm(dim, eps=config.layer_norm_eps, bias=config.bias)


def rope_frequencies(config: ModelConfig, local: bool = False) -> torch.Tensor:
    """RoPE's inverse frequencies (head_dim / 2,): 1 / theta^(2i/d) (Su et al. 2021), with the configured
    scaling: "linear" divides them by `factor`; Llama 3's "llama3" (transformers' _compute_llama3_parameters)
    divides long wavelengths by `factor`, keeps short ones and interpolates the band between. `local`: the
    sliding layers' own base, unscaled (Gemma 3)."""
    d = config.head_dim
    theta = config.rope_local_theta if local else config.rope_theta
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    scaling = None if local else config.rope_scaling
    if not scaling:
        return inv_freq
    if scaling["rope_type"] == "linear":
        return inv_freq / scaling["factor"]
    factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / lo, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    middle = ~(wavelen < old_len / hi) & ~(wavelen > old_len / lo)
    return torch.where(middle, smoothed, scaled)


def rope_tables(config: ModelConfig, device=None, local: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (block_size, head_dim) in fp32 for every position, half-split as transformers lays
    them out (the first half of a head pairs with the second); sin's first half negated, so apply_rope
    rotates with one flip of the halves where transformers' rotate_half takes a negation and a cat."""
    inv_freq = rope_frequencies(config, local).to(device)
    freqs = torch.arange(config.block_size, device=device).float()[:, None] * inv_freq[None, :]  # (T, hs/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, hs)
    sin = emb.sin()
    sin[:, : sin.size(-1) // 2] *= -1
    return emb.cos(), sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each head of x (B, nh, T, hs) by its position's angles, cos and rope_tables' signed sin (T, hs):
    x * cos + (x2, x1) * (-sin, sin), transformers' x * cos + rotate_half(x) * sin, the same floats."""
    swapped = torch.roll(x, x.size(-1) // 2, dims=-1)  # each head's halves, second first: one copy (flip took 3 ops)
    return (x * cos + swapped * sin).to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, impl: str):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        q_size, kv_size = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.sizes = (q_size, kv_size, kv_size)
        self.c_attn = nn.Linear(config.n_embd, sum(self.sizes), bias=config.bias or config.qkv_bias)
        self.c_proj = nn.Linear(q_size, config.n_embd, bias=config.bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.layer_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.layer_norm_eps)
        self.qk_norm = config.qk_norm
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.layer_idx = layer_idx
        self.impl = impl
        self.window = config.sliding_window if layer_idx in config.sliding_layers else None
        self.scale = None if config.query_pre_attn_scalar is None else config.query_pre_attn_scalar ** -0.5

    def forward(self, x: torch.Tensor, rope=None, kv_cache=None, pos=None) -> torch.Tensor:
        """x (B, T, C); rope: this layer's cos/sin at the tokens' positions `pos` (T,) or (B, T)."""
        B, T, _ = x.size()
        qkv = self.c_attn(x)
        qk_size = self.sizes[0] + self.sizes[1]
        v = qkv[..., qk_size:].view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        if rope is not None and not self.qk_norm:  # q and k side by side in qkv: rotated as one, half the ops
            qk = qkv[..., :qk_size].view(B, T, self.n_head + self.n_kv_head, self.head_dim)
            q, k = apply_rope(qk.transpose(1, 2), *rope).split((self.n_head, self.n_kv_head), dim=1)
        else:
            q, k = qkv[..., : self.sizes[0]], qkv[..., self.sizes[0] : qk_size]
            q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
            k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
            if self.qk_norm:
                q, k = self.q_norm(q), self.k_norm(k)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        mask = lengths = None
        if kv_cache is not None:
            k, v, mask = kv_cache.update(self.layer_idx, k, v)  # (B, nkv, S, hs), and a (T, S) mask or None
            lengths = getattr(kv_cache, "row_lengths", None)
        if lengths is None:
            y = self._attend(q, k, v, mask, pos)
        else:  # texts of many lengths (serve's batch): each row over its own keys, unmasked, as it decodes alone
            y = torch.cat([self._attend(q[b : b + 1], k[b : b + 1, :, :n], v[b : b + 1, :, :n], None, pos[b])
                           for b, n in enumerate(lengths)])
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)
        return dropout(self.resid_dropout, self.c_proj(y))

    def _attend(self, q, k, v, mask, pos) -> torch.Tensor:
        return attend(q, k, v, self.impl, self.dropout if self.training else 0.0, mask, self.scale, self.window, pos)


class MLP(nn.Module):
    """GPT-2's Linear-GELU-Linear, the Llama family's SwiGLU, down(silu(gate(x)) * up(x)) (Shazeer
    2020), Gemma's GeGLU, the same with the tanh GELU, gate and up as one matmul (c_fc's first and second
    halves); or ReLU², relu(x)^2 (So et al. 2021, "Primer"; modded-nanogpt)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gated = config.activation in GATED
        self.gate_act = F.silu if config.activation == "swiglu" else partial(F.gelu, approximate="tanh")
        self.relu2 = config.activation == "relu2"
        hidden = config.mlp_size
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden if self.gated else hidden, bias=config.bias)
        # Our own models use the exact (erf) GELU, as nanoGPT: GPT-2's tanh approximation measured
        # 4.7x slower on an AVX-512 CPU (0.70 vs 0.15 ms on a 768x512 activation). Models imported
        # from GPT-2 keep its tanh GELU ("gelu_tanh"), so they compute exactly what they learned.
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = self.c_fc(x).chunk(2, dim=-1)
            return dropout(self.dropout, self.c_proj(self.gate_act(gate) * up))
        if self.relu2:
            return dropout(self.dropout, self.c_proj(F.relu(self.c_fc(x)).square()))
        return dropout(self.dropout, self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm: x + attn(ln_1(x)), then + mlp(ln_2(x)); with sandwich norms (Gemma 2/3) each output is
    normed again (ln_1_post, ln_2_post) before it is added."""

    def __init__(self, config: ModelConfig, layer_idx: int, impl: str):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config, layer_idx, impl)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)
        if config.sandwich_norm:
            self.ln_1_post = make_norm(config, config.n_embd)
            self.ln_2_post = make_norm(config, config.n_embd)
        self.sandwich = config.sandwich_norm

    def forward(self, x: torch.Tensor, rope=None, kv_cache=None, pos=None) -> torch.Tensor:
        a = self.attn(self.ln_1(x), rope, kv_cache, pos)
        x = x + (self.ln_1_post(a) if self.sandwich else a)
        m = self.mlp(self.ln_2(x))
        return x + (self.ln_2_post(m) if self.sandwich else m)


class GPT(nn.Module):
    def __init__(self, config: ModelConfig, attention: str = "sdpa"):
        super().__init__()
        if attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {attention!r}")
        self.config = config
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.positions == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules.update(drop=nn.Dropout(config.dropout),
                       h=nn.ModuleList(Block(config, i, attention) for i in range(config.n_layer)),
                       ln_f=make_norm(config, config.n_embd))
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        self.apply(self._init_weights)
        # Residual projections add to the stream once per layer twice: scale them so the
        # stream's variance does not grow with depth (GPT-2 paper).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
                if config.zero_init:  # each block starts as the identity (modded-nanogpt, nanochat)
                    nn.init.zeros_(p)
        self.reset_buffers()
        # Activation checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"):
        # a training step holds one block's activations at a time, for about a third more compute. How
        # to compute, not what: set by the trainer, never saved.
        self.activation_checkpointing = False

    @classmethod
    def uninitialized(cls, config: ModelConfig, attention: str = "sdpa") -> GPT:
        """A model on the CPU whose weights are allocated but not initialized: for weights about to be loaded
        whole (a fine-tune's start, a resume), without the random init they would overwrite (3.9 s of
        Gemma 3 270M's start on a 2-core AMD EPYC). Tied as GPT() ties; RoPE's tables computed."""
        with torch.device("meta"):
            model = cls(config, attention)
        model = model.to_empty(device="cpu")
        model.tie_weights()
        model.reset_buffers()
        return model

    def reset_buffers(self) -> None:
        """(Re)compute RoPE's cos/sin tables beside the weights: after loading weights into a model built on
        the meta device, or a change of context. Not saved with the weights: they follow from the config."""
        if self.config.positions != "rope":
            return
        cos, sin = rope_tables(self.config, self.transformer.wte.weight.device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        if self.config.rope_local_theta is not None:  # the sliding layers' own (Gemma 3)
            cos, sin = rope_tables(self.config, self.transformer.wte.weight.device, local=True)
            self.register_buffer("rope_local_cos", cos, persistent=False)
            self.register_buffer("rope_local_sin", sin, persistent=False)

    def tie_weights(self) -> None:
        """Tie wte and lm_head again (load_state_dict(assign=True) loads each name alone)."""
        if self.config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def compile_blocks(self) -> None:
        """torch.compile each block for training and evaluation (regional compilation, PyTorch's recipe
        for repeated layers: the blocks share one forward, so one compile serves all 30 of SmolLM2's).
        Measured 1.36x a SmolLM2 training step on a 2-core CPU (RMSNorm, RoPE and SwiGLU fused); the
        head's loss stays eager (loss.py). Generation with a KV cache keeps the eager blocks. The
        compiled wrappers share the blocks' parameters and are not part of the state dict."""
        self.__dict__["compiled_blocks"] = [torch.compile(block) for block in self.transformer.h]

    def set_attention(self, impl: str) -> None:
        """Switch manual/SDPA attention; the weights are the same either way."""
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {impl!r}")
        for block in self.transformer.h:
            block.attn.impl = impl

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings are left out by default, as in nanoGPT's MFU."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def _rope(self, pos: torch.Tensor, table: str) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of a RoPE table at the positions: (T, hs) each, or (B, 1, T, hs) for a position per
        row (B, T), as a server's batch of texts of many lengths (the same for every head)."""
        cos, sin = getattr(self, f"{table}_cos")[pos], getattr(self, f"{table}_sin")[pos]
        return (cos, sin) if pos.dim() == 1 else (cos[:, None], sin[:, None])

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache=None,
                weights: torch.Tensor | None = None):
        """Logits for every position (B, T, vocab) and None; or, given targets (B, T) (-1 ignored), None
        and the mean cross-entropy in nats, computed without materialising the logits; weights (B, T), if
        given, make it the weighted mean (loss.linear_cross_entropy).

        With a kv_cache the tokens sit where the cache has seated them (engine.py): their keys and values
        are written there and they attend to everything before; seating and moving it on is its caller's job.
        """
        B, T = idx.size()
        if kv_cache is not None:
            pos = kv_cache.positions()
        elif T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block size {self.config.block_size}")
        else:
            pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx)  # (B, T, C)
        if self.config.scale_embeddings:  # sqrt(n_embd) rounded to the weights' dtype, as transformers' Gemma
            x = x * torch.tensor(self.config.n_embd ** 0.5, dtype=x.dtype)
        rope = local_rope = None
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(pos)
        else:
            rope = local_rope = self._rope(pos, "rope")
            if self.config.rope_local_theta is not None:
                local_rope = self._rope(pos, "rope_local")
        x = dropout(self.transformer.drop, x)
        compiled = self.__dict__.get("compiled_blocks")
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        blocks = compiled if compiled and kv_cache is None else self.transformer.h
        for block, layer in zip(blocks, self.transformer.h):
            layer_rope = local_rope if layer.attn.window is not None else rope
            if recompute:  # keep each block's input only; its activations are computed again in backward
                x = torch.utils.checkpoint.checkpoint(block, x, layer_rope, kv_cache, pos, use_reentrant=False)
            else:
                x = block(x, layer_rope, kv_cache, pos)
        x = self.transformer.ln_f(x)
        cap = self.config.logit_softcap  # the same cap on both paths (loss.softcapped)
        if targets is None:
            return softcapped(self.lm_head(x), cap), None  # (B, T, vocab)
        # The loss a chunk of positions at a time: the (B, T, vocab) logits are never all in memory (loss.py).
        return None, linear_cross_entropy(x.flatten(0, 1), self.lm_head.weight, targets.flatten(), cap,
                                          weights=None if weights is None else weights.flatten())


def flops_per_token(config: ModelConfig, n_params: int) -> int:
    """Training FLOPs per token: 6N for the weights plus 12*L*H*Q*T for attention (PaLM, nanoGPT)."""
    L, H, Q, T = config.n_layer, config.n_head, config.head_dim, config.block_size
    return 6 * n_params + 12 * L * H * Q * T
