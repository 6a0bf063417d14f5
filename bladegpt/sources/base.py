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
    if not config.tie_embeddings and state.get("lm_head.weight") is None:
        raise SourceError(f"{where} has an output layer of its own (tie_word_embeddings: false) but its weights hold "
                          "no lm_head.weight; they are incomplete: download the model again (were the head meant to "
                          "be the embedding, its config.json would say tie_word_embeddings: true).")
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


def check_vocabulary(tokenizer: Tokenizer, rows: int, where: str) -> None:
    """A tokenizer whose ids the model's embedding cannot all look up is refused in one line, here rather
    than as an index error at the first batch that holds such an id."""
    if tokenizer.vocab_size > rows:
        raise SourceError(f"{where}'s tokenizer has {tokenizer.vocab_size:,} ids but its model's token embedding "
                          f"only {rows:,} rows, so ids from {rows:,} on have no embedding: the tokenizer is not this "
                          "model's (or its files are damaged); download the model again, whole.")


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
