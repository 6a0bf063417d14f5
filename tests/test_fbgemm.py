"""fbgemm's int8 kernel as decoding runs it (bladegpt/generate/fbgemm.py): a row's result does not depend on the
rows beside it, the thread count, or a row of NaN; and the kernel chosen for a layer is the same in every run."""

import copy

import pytest
import torch
import torch.nn.functional as F

from bladegpt.config import ModelConfig
from bladegpt.generate import quantize as quantize_module
from bladegpt.generate.engine import KVCache, generate, last_logits
from bladegpt.generate.fbgemm import dynamic_available, dynamic_int8_mm, dynamic_pack
from bladegpt.generate.quantize import Int8Linear, quantize
from bladegpt.generate.settings import SampleSettings
from bladegpt.model import GPT
from bladegpt.serve.batcher import Batcher
from tests.test_batcher import run_steps, tiny

pytestmark = pytest.mark.skipif(not dynamic_available(), reason="this PyTorch has no fbgemm (x86 builds have it)")


def packed_layer(out: int, width: int, seed: int = 0):
    """fbgemm's packed int8 weights (out, width) and the float weights they stand for."""
    torch.manual_seed(seed)
    weight = torch.randn(out, width) * 0.05
    scale = weight.abs().amax(1) / 127
    q = (weight / scale[:, None]).round().to(torch.int8)
    return dynamic_pack(q, scale), q.double() * scale.double()[:, None]


@pytest.mark.parametrize("width", [1, 5, 96])
def test_a_rows_result_is_the_same_bits_alone_or_beside_any_rows_at_any_thread_count(width):
    """The serve batcher decodes many texts' rows in one call: a row 1,000x larger beside it, or one of one sign,
    or a tiny one, leaves its result as it is alone (fbgemm rounds the whole input on one grid)."""
    packed, dequantized = packed_layer(64, width)
    row = torch.randn(1, width)
    alone = dynamic_int8_mm(row, packed)
    exact = row.double() @ dequantized.t()
    assert ((alone.double() - exact).norm() / exact.norm()) < 1e-3
    for beside in (torch.randn(7, width) * 1000, torch.rand(3, width), -torch.rand(2, width), torch.randn(15, width) * 1e-6):
        batch = torch.cat((beside[:1], row, beside[1:]))
        assert torch.equal(dynamic_int8_mm(batch, packed)[1:2], alone)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.equal(dynamic_int8_mm(row, packed), alone)
    finally:
        torch.set_num_threads(threads)


def test_a_row_of_nan_or_inf_gives_nan_and_leaves_the_other_rows_and_zeros_give_zeros():
    """As the float matmul would, not fbgemm's RuntimeError for the whole input (its grid from NaN min and max);
    a row of subnormals (1e-44: its largest / 63 rounds to 0) widens no one's grid, and comes out within float32's
    smallest normal number of its product."""
    packed, dequantized = packed_layer(64, 32)
    rows = torch.randn(6, 32)
    rows[1, 3], rows[2, 0], rows[3], rows[5] = float("nan"), float("inf"), 0.0, rows[5] * 1e-44
    y = dynamic_int8_mm(rows, packed)
    assert y[1].isnan().all() and y[2].isnan().all() and torch.equal(y[3], torch.zeros(64))
    assert torch.equal(y[[0, 4]], dynamic_int8_mm(rows[[0, 4]], packed))
    exact = rows[5].double() @ dequantized.t()
    assert y[5].isfinite().all() and (y[5].double() - exact).abs().max() < torch.finfo(torch.float32).tiny


def test_an_int8_models_logits_for_a_text_are_the_same_bits_whatever_is_decoded_beside_it():
    """Every linear through fbgemm: the last logits of one prompt alone and as a row of a batch of others."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, bias=True)).eval()
    q = quantize(copy.deepcopy(model), "int8")
    for layer in q.modules():
        if isinstance(layer, Int8Linear):
            layer.dynamic = dynamic_pack(layer.weight, layer.scale)
    prompts = torch.tensor([[5, 9, 2], [1, 1, 1], [60, 3, 33], [7, 8, 9]])
    with torch.inference_mode():
        batched = last_logits(q, prompts, 64, KVCache(2, 16))
        for i, prompt in enumerate(prompts):
            assert torch.equal(batched[i], last_logits(q, prompt[None], 64, KVCache(2, 16))[0])
        exact = last_logits(model, prompts, 64)
    assert ((batched - exact).norm() / exact.norm()) < 2e-2  # int8 weights' rounding, as the packed kernel's


def test_the_kernel_chosen_for_a_layer_is_remembered_for_the_next_run(monkeypatch, tmp_path):
    """Measured once a machine (the cache folder), so a near tie cannot flip the choice, and the text a seed gives,
    between one `sample` and the next."""
    monkeypatch.setenv("BLADEGPT_CACHE", str(tmp_path))
    monkeypatch.setattr(quantize_module, "_CHOSEN", {})
    timed = []

    def best_of(run):  # fbgemm 2x faster at one row, as fast at eight
        timed.append(run)
        return [1.0, 0.5, 1.0, 1.0][(len(timed) - 1) % 4]

    monkeypatch.setattr(quantize_module, "_best_of", best_of)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48))
    first = quantize(copy.deepcopy(model), "int8")[0]
    assert first.dynamic is not None and len(timed) == 4
    monkeypatch.setattr(quantize_module, "_CHOSEN", {})  # a new process
    monkeypatch.setattr(quantize_module, "_best_of", lambda run: pytest.fail("measured again"))
    again = quantize(copy.deepcopy(model), "int8")[0]
    assert again.dynamic is not None
    x = torch.randn(1, 64)
    assert torch.equal(again(x), first(x))
    assert torch.allclose(first(x), F.linear(x, first.dequantized(torch.float32), first.bias), rtol=1e-3, atol=1e-3)


def test_texts_joining_and_leaving_an_int8_batch_each_equal_their_seed_alone():
    """serve's batcher over int8 weights, every linear through fbgemm: the texts test_batcher's fp32 model keeps."""
    model = quantize(tiny("gpt2", "sdpa"), "int8")
    for layer in model.modules():
        if isinstance(layer, Int8Linear):
            layer.dynamic = dynamic_pack(layer.weight, layer.scale)
    asks = {0: ([1, 2, 3], SampleSettings(max_new_tokens=40, seed=1)),
            1: (list(range(5, 20)), SampleSettings(max_new_tokens=9, seed=2, top_k=5)),
            3: (list(range(16)), SampleSettings(max_new_tokens=30, seed=3, temperature=1.3, top_p=0.9)),
            4: ([7], SampleSettings(max_new_tokens=25, seed=4, min_p=0.05)),
            6: ([9, 9, 9, 9, 9], SampleSettings(max_new_tokens=12, seed=5, temperature=0))}
    out: dict[int, list] = {}
    run_steps(Batcher(model, 64, stop_ids=(), max_rows=8, max_waiting=8), asks, out, 60)
    for prompt, settings in asks.values():
        alone = list(generate(model, prompt, settings.max_new_tokens, 64, torch.Generator().manual_seed(settings.seed),
                              **settings.knobs()))
        assert out[settings.seed] == [*alone, "length"], settings
