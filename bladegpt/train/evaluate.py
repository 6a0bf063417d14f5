"""What an evaluation measures of the weights: validation loss and bits per byte on the same windows every
time, a sample in the text's voice, how much of that sample is copied from the training text, and its voice
report (generate/voice.py: loops, and style distance from the held-out text)."""

from __future__ import annotations

import functools
import math

import torch

from bladegpt.config import REPETITION_PENALTY, ModelConfig, TrainConfig
from bladegpt.data import copymeter
from bladegpt.data.dataset import TokenData
from bladegpt.generate.engine import generate, prompt_ids, sample_text
from bladegpt.generate.quantize import QUANTIZED
from bladegpt.generate.sampler import decode_precision, in_precision
from bladegpt.generate.settings import SampleSettings
from bladegpt.generate.voice import StyleReference, report
from bladegpt.lora import FrozenLinear
from bladegpt.model import GPT
from bladegpt.runtime import Runtime
from bladegpt.train.distributed import Distributed


class Evaluator:
    """A run's evaluations (torchtitan's Validator). It reads only settings a re-plan never changes (the
    batch, eval_iters, the seed, sample_tokens); its own state is the token byte lengths, the sampling
    precision (measured once), the copy meter (made in the background) and the held-out text's word statistics
    (made at the first sample)."""

    def __init__(self, data: TokenData, model_cfg: ModelConfig, cfg: TrainConfig, runtime: Runtime, ddp: Distributed,
                 say):
        self.data, self.model_cfg, self.cfg, self.runtime, self.ddp, self.say = data, model_cfg, cfg, runtime, ddp, say
        self.device = runtime.device
        self.sample_precision: str | None = None
        self.copy_meter: copymeter.Background | None = None  # the eval samples' copy meter, made in the background
        if ddp.main and cfg.sample_tokens > 0:
            self.copy_meter = copymeter.Background(lambda: copymeter.for_dataset(data.folder, data.fingerprint))
        lengths = [len(data.tokenizer.token_bytes(i)) for i in range(data.tokenizer.vocab_size)]
        lengths += [0] * (model_cfg.vocab_size - len(lengths))
        self.token_bytes = torch.tensor(lengths, dtype=torch.float64)

    @torch.no_grad()
    def loss_and_bpb(self, model: GPT) -> tuple[float, float]:
        """Validation loss (nats/token) and bits per byte, on the same batches every time: the whole
        val split, each token once (data.covering_windows), where it fits in eval_iters batches; else that many batches of
        random windows. (Random windows over a small split count some tokens many times and others
        never, by the run's seed: officer_k's best val moved 0.12 bpb between two seeds.)"""
        cfg, T = self.cfg, self.model_cfg.block_size
        whole, skips = self.data.covering_windows("val", T)
        if len(whole) <= cfg.eval_iters * cfg.batch_size:
            starts, skips = whole.split(cfg.micro_batch), skips.split(cfg.micro_batch)
        else:  # eval_iters batches, run as micro-batches: the same sequences whatever --accum is
            gen = torch.Generator().manual_seed(cfg.seed + 1)
            starts = self.data.random_starts("val", (cfg.eval_iters * cfg.accum, cfg.micro_batch), T, gen)
            skips = torch.zeros_like(starts)
        sums = torch.zeros(3, dtype=torch.float64)  # nats, tokens, bytes
        model.eval()
        for i in range(self.ddp.rank, len(starts), self.ddp.world):
            x, y, _ = self.data.batch("val", starts[i], T)
            y = y.masked_fill(torch.arange(T) < skips[i][:, None], -1)  # targets an earlier window had
            with self.runtime.autocast():
                _, loss = model(x.to(self.device), y.to(self.device))  # the mean over the targets kept
            kept = y >= 0
            nats = loss.double().cpu() * kept.sum()
            sums += torch.stack([nats, kept.sum().double(), self.token_bytes[y[kept]].sum()])
        model.train()
        nats, tokens, n_bytes = self.ddp.all_sum(sums).tolist()
        return nats / tokens, nats / (math.log(2) * n_bytes)

    def sample(self, model: GPT) -> str | None:
        """A short text from an empty prompt (a speaker's dataset: the opening of a scene, up to their cue), the
        same seed every evaluation, so the voice can be watched."""
        if not self.ddp.main or self.cfg.sample_tokens <= 0:
            return None
        tok = self.data.tokenizer
        model.eval()
        gen = torch.Generator(self.device).manual_seed(self.cfg.seed)
        if self.sample_precision is None:  # `sample`'s own choice for this model here, measured once
            self.sample_precision = self._decode_precision(model)
        decoder, context = in_precision(model, self.sample_precision, cast=self.sample_precision in QUANTIZED,
                                        short=True)
        with context:
            opening = prompt_ids(tok, self.data.meta.get("opening", ""))  # a speaker's dataset: the scene's start
            ids = list(generate(decoder, opening, self.cfg.sample_tokens, tok.vocab_size, gen,
                                **SampleSettings(self.cfg.sample_tokens, repetition_penalty=REPETITION_PENALTY).knobs(),
                                stop=tok.stop_ids))
        model.train()
        return sample_text(ids, tok)

    def _decode_precision(self, model: GPT) -> str:
        """What `sample` will decode this model in here (decode_precision, cached per machine and shape) where
        that is int8 or int4 weights: a quantized copy sharing the training weights, 2-3x faster than the
        training model for SmolLM2-135M's 60 tokens on a 2-core EPYC (docs/benchmarks/finetune.md); else
        fp32 or bf16 autocast over the training weights, which are never copied whole. LoRA's adapters are
        not in its linears' weights, so a LoRA run decodes as it trains."""
        if not any(isinstance(m, FrozenLinear) for m in model.modules()):
            choice = decode_precision(model, self.device)
            if choice in QUANTIZED:
                return choice
        return decode_precision(model, self.device, cast=False)

    def copied(self, sample: str | None) -> dict:
        """How much of the eval sample is copied from the training text (runbook.eval_record's fields);
        nothing while the meter is still being made, or if it could not be."""
        if not sample or self.copy_meter is None:
            return {}
        index = self.copy_meter.ready()
        if index is None:
            if self.copy_meter.error is not None:
                self.say(f"No copy meter for the samples: {self.copy_meter.error}")
                self.copy_meter = None
            return {}
        return index.measure([sample]).record()

    def voice(self, sample: str | None) -> dict:
        """The eval sample's voice report (runbook.eval_record's fields), against the held-out text: the
        val split's (its speaker's lines, where the dataset has a speaker), read once a run."""
        return report([sample], self.reference) if sample else {}

    @functools.cached_property
    def reference(self) -> StyleReference | None:
        """The held-out text's word statistics, made at the first sample, once a run (None: under 80 words)."""
        return StyleReference.from_text(self.data.target_text("val"))

    def measure_base(self, model: GPT) -> tuple[dict, str | None]:
        """The voice report of the model's sample before any training (what a fine-tune's evaluations are
        read against), and the sample: the evaluations' own settings and seed."""
        sample = self.sample(model)
        return self.voice(sample), sample
