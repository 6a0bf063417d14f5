"""The real Gemma 3 (issue #40): Gemma 3 270M's Q4_K_M GGUF (Q4_K, Q5_0, Q6_K and Q8_0 tensors), fetched once into
a cache outside git. It imports as llama.cpp reads it, computes transformers' logits on the same dequantized weights
past the 512-token window, the same greedy continuation, and keeps its loss with int8 weights (its 262,144-wide
tied head included). Token ids are given as numbers: its SentencePiece tokenizer is another change's."""

import copy

import pytest
import torch
import torch.nn.functional as F

from bladegpt.generate.engine import generate
from bladegpt.generate.quantize import quantize
from bladegpt.sources.gguf import gguf_model
from tests.realmodel import gemma3_gguf

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")
# "The old lighthouse keeper climbed the stairs every night, and" by transformers' tokenizer from the file, with <bos>
PROMPT = [2, 818, 2255, 63937, 64222, 54264, 506, 31393, 1418, 3446, 236764, 532]


@pytest.fixture(scope="module")
def gemma3():
    path = gemma3_gguf()
    ours = gguf_model(path)[0]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    return ours, theirs


def test_gemma3_imports_as_llama_cpp_reads_it(gemma3):
    cfg = gemma3[0].config
    assert (cfg.arch, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.vocab_size, cfg.mlp_size,
            cfg.tie_embeddings) == ("gemma3", 18, 640, 4, 1, 256, 262_144, 2048, True)
    assert (cfg.sliding_window, cfg.sliding_layers, cfg.rope_theta, cfg.rope_local_theta, cfg.query_pre_attn_scalar) == (
        512, tuple(i for i in range(18) if i % 6 != 5), 1e6, 1e4, 256.0)
    assert gemma3[0].num_params(non_embedding=False) == 268_098_176  # "270M": 167.8M of them the embedding


def test_logits_are_transformers_past_the_window(gemma3):
    ours, theirs = gemma3
    ids = torch.tensor([PROMPT + torch.randint(3, 262_000, (588,), generator=torch.Generator().manual_seed(0)).tolist()])
    with torch.no_grad():
        expected = theirs(ids).logits
        got = ours(ids)[0]
    assert (got - expected).abs().max() <= 1e-4  # measured 0: the same ops on the same weights
    assert (got[0, 520:] - expected[0, 520:]).abs().max() <= 1e-4  # where the sliding layers' window has moved on


def test_greedy_continuation_is_transformers(gemma3):
    ours, theirs = gemma3
    with torch.no_grad():
        expected = theirs.generate(torch.tensor([PROMPT]), max_new_tokens=30, do_sample=False, eos_token_id=None,
                                   pad_token_id=0)[0, len(PROMPT):].tolist()
    assert list(generate(ours, PROMPT, 30, 262_144, temperature=0)) == expected


def test_int8_weights_take_every_layer_and_keep_its_loss(gemma3):
    """Every layer's input width (640, 1,024, 2,048) suits the packed int8 kernel: nothing falls back; the loss
    on the model's own greedy text moves by under 0.01 nats a token."""
    model = gemma3[0]
    text = torch.tensor([PROMPT + list(generate(model, PROMPT, 30, 262_144, temperature=0))])
    said: list[str] = []
    int8 = quantize(copy.deepcopy(model), "int8", said.append)
    assert said == []
    assert int8.lm_head.weight.dtype == torch.int8 and int8.transformer.wte.weight.dtype == torch.float32

    def loss(m) -> float:
        with torch.inference_mode():
            return F.cross_entropy(m(text[:, :-1])[0][0], text[0, 1:]).item()

    assert abs(loss(int8) - loss(model)) < 0.01
