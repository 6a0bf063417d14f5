"""How a text is drawn: the one set of sampling settings that the CLI's sample and chat, the Sampler, a
Conversation and a training run's eval sample all pass around, checked once when made."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bladegpt.config import check_seed
from bladegpt.data.copyindex import SHORTEST
from bladegpt.errors import UserError


@dataclass(frozen=True)
class SampleSettings:
    """Sampling settings, refused in one line each when they cannot work, before a model is loaded; every
    setting this accepts samples (engine.sample_next_token's limits). Sample i of a batch uses seed + i."""

    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 is greedy
    top_k: int | None = 200
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None  # CTRL's (Keskar et al. 2019); None or 1: off (sample's default: config.py)
    seed: int = 0
    no_copy: int | None = None  # characters: never write a span this long found in the training text (nocopy.py)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError("--num-samples and --max-new-tokens must be at least 1.")
        if not 0 <= self.temperature < math.inf:  # also refuses NaN
            raise UserError(f"--temperature must be 0 (greedy) or a positive number, got {self.temperature}.")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"--top-k must be at least 1 (1 is greedy), got {self.top_k}.")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], e.g. 0.9, got {self.top_p}.")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise UserError(f"--min-p must be in [0, 1] (0 keeps every token, 1 is greedy), e.g. 0.05, got {self.min_p}.")
        if self.repetition_penalty is not None and not 0 < self.repetition_penalty < math.inf:
            raise UserError(f"--repetition-penalty must be a positive number (1 is off; 1.1-1.3 discourages "
                            f"repeats), got {self.repetition_penalty}.")
        check_seed(self.seed)
        if self.no_copy is not None and self.no_copy < SHORTEST:
            raise UserError(f"--no-copy must be at least {SHORTEST} characters (the copy meter's index finds copies "
                            f"of {SHORTEST} bytes or more), got {self.no_copy}; 50 is the copy meter's span.")

    def knobs(self) -> dict:
        """What shapes each draw, as engine.generate_batch and sample_next_token take it."""
        return dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                    repetition_penalty=self.repetition_penalty)


def check_samples(num_samples: int) -> None:
    """`sample --num-samples`, refused as its sibling --max-new-tokens is."""
    if num_samples < 1:
        raise UserError("--num-samples and --max-new-tokens must be at least 1.")
