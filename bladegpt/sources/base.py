"""What every source shares, in a leaf its siblings import (never the package's front door): the loaded model
and tokenizer, a model built around tensors without a second copy, a size in words."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from bladegpt.config import ModelConfig
from bladegpt.errors import SourceError
from bladegpt.model import GPT
from bladegpt.tokenizer import Tokenizer


@dataclass
class Pretrained:
    model: GPT  # on the CPU, in fp32
    tokenizer: Tokenizer
    description: str  # what was loaded and from where, its size and quantization, for the start of a run


def build_model(config: ModelConfig, state: dict[str, torch.Tensor], where: str) -> GPT:
    """A model holding `state` (BladeGPT's names, fp32) without a second copy: built on the meta device,
    then the tensors assigned; every name and shape must fit."""
    if not config.tie_embeddings and "lm_head.weight" not in state:
        config.tie_embeddings = True  # no head of its own: transformers' loaders tie it too
        state["lm_head.weight"] = state.get("transformer.wte.weight")
    with torch.device("meta"):  # no random init of weights about to be replaced
        model = GPT(config)
    try:
        model.load_state_dict(state, assign=True)  # strict: every name and shape
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise SourceError(f"{where}'s weights do not fit its configuration ({first}); download the model again.") from None
    model.tie_weights()
    model.reset_buffers()
    return model.eval()


def crop_positions(state: dict[str, torch.Tensor], block_size: int) -> dict[str, torch.Tensor]:
    """Learned positions cut to a shorter context (nanoGPT's crop_block_size); other models as they are."""
    if "transformer.wpe.weight" not in state:
        return state
    return {**state, "transformer.wpe.weight": state["transformer.wpe.weight"][:block_size]}


def shaped(state: dict[str, torch.Tensor], config: ModelConfig, where: str) -> GPT:
    """A base model's weights as a model of `config`, the run's shape (its context, dropout), sharing the tensors."""
    return build_model(dataclasses.replace(config), crop_positions(state, config.block_size), where).train()


def size(model: GPT) -> str:
    n = model.num_params(non_embedding=False)
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"
