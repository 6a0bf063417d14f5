"""The real model (issue #22): SmolLM2-135M-Instruct's Q4_1 GGUF, fetched once into a cache outside git.
It imports with its quantization said, computes transformers' greedy continuation on the same dequantized
weights, and keeps its loss with int8 weights. (Fine-tuning it: test_realmodel_finetune.py, a file of its
own so the two halves run on two workers.)"""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bladegpt.generate.engine import KVCache, generate
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



@pytest.mark.parametrize("threads", [1, 2])
def test_a_serve_batch_of_texts_of_many_lengths_gives_each_the_logits_it_has_alone(smollm2, threads):
    """SmolLM2 in int8 as `sample` and `serve` decode it (int4 blocks, the head through whichever kernel this
    machine measured faster): eight texts of 3 to 400 tokens in one batch step, each row's logits the bits of the
    same text's step alone. Masked batched attention moved one row by 0.09 at one thread; a head kernel chosen by
    row count moved every row by 0.1-0.2 at two (AMD EPYC)."""
    from bladegpt.serve.batcher import RowsCache

    _, pretrained = smollm2
    model = quantize(copy.deepcopy(pretrained.model).eval(), "int8")
    torch.manual_seed(0)
    prompts = [torch.randint(0, model.config.vocab_size, (n,)).tolist() for n in (11, 3, 400, 250, 90, 7, 64, 33)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            rows, alone = RowsCache(model.config.n_layer, 1024), []
            for p in prompts:
                solo = KVCache(model.config.n_layer, 1024)
                solo.seat(len(p) - 1, torch.device("cpu"))
                model(torch.tensor([p[:-1]]), kv_cache=solo)
                solo.advance(len(p) - 1)
                rows.add(solo)
                solo.seat(1, torch.device("cpu"))
                alone.append(model(torch.tensor([p[-1:]]), kv_cache=solo)[0][0, -1])
            rows.seat(1, torch.device("cpu"))
            batched = model(torch.tensor([p[-1:] for p in prompts]), kv_cache=rows)[0][:, -1]
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(batched[i], alone[i]) for i in range(len(prompts)))
