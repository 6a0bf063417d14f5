"""The real model (issue #22): SmolLM2-135M-Instruct's Q4_1 GGUF, fetched once into a cache outside git.
It imports with its quantization said, computes transformers' greedy continuation on the same dequantized
weights, and keeps its loss with int8 weights. (Fine-tuning it: test_realmodel_finetune.py, a file of its
own so the two halves run on two workers.)"""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bladegpt.generate.engine import generate
from bladegpt.generate.quantize import quantize
from bladegpt.sources import load_pretrained
from tests.realmodel import smollm2_gguf

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")
OFFICER_K = Path(__file__).resolve().parents[1] / "corpora" / "officer_k.txt"


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_gguf()
    return path, load_pretrained(str(path))


def test_smollm2_imports_as_it_is(smollm2):
    path, pretrained = smollm2
    cfg = pretrained.model.config
    assert (cfg.arch, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.vocab_size, cfg.rope_theta,
            cfg.tie_embeddings) == ("llama", 30, 576, 9, 3, 49152, 100000.0, True)
    assert pretrained.model.num_params(non_embedding=False) == 134_515_008  # SmolLM2-135M's published count
    assert "135M" in pretrained.description and "Q4_1" in pretrained.description and "GGUF" in pretrained.description
    # named by its file, not its metadata's 'smollm2 135M 8k-lc100k-mix1-ep2'
    assert pretrained.description.startswith(f"{path.stem}: llama 135M from "), pretrained.description


def test_greedy_text_is_transformers_on_the_same_weights(smollm2):
    path, pretrained = smollm2
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    prompt = pretrained.tokenizer.encode("The officer closed the door and said")
    with torch.no_grad():
        expected = theirs.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt):].tolist()
    ours = list(generate(pretrained.model, prompt, 24, pretrained.tokenizer.vocab_size, temperature=0))
    assert ours == expected, (pretrained.tokenizer.decode(ours), pretrained.tokenizer.decode(expected))


def test_int8_weights_keep_its_loss_on_officer_k(smollm2):
    """sample's int8 weights: SmolLM2's loss on a stretch of officer_k moves by under 0.01 nats a token
    (measured +0.002 bpb on the whole val split: docs/benchmarks/finetune.md)."""
    _, pretrained = smollm2
    ids = torch.tensor(pretrained.tokenizer.encode(OFFICER_K.read_text(encoding="utf-8")[-6000:])[: 4 * 256 + 1])
    x, y = ids[:-1].view(4, 256), ids[1:].view(4, 256)

    def loss(model) -> float:
        with torch.inference_mode():
            return F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item()

    fp32, int8 = loss(pretrained.model), loss(quantize(copy.deepcopy(pretrained.model), "int8"))
    assert abs(int8 - fp32) < 0.01, (fp32, int8)

