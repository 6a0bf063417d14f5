import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from bladegpt.config import ModelConfig
from bladegpt.generate.engine import generate, generate_reference
from bladegpt.model import GPT
from bladegpt.generate import quantize as quantize_module
from bladegpt.generate.quantize import INT4_GROUP, PACKED_MAX_ROWS, Int4Linear, Int8Linear, int4_refusal, int8_refusal, quantize
from bladegpt.generate.fbgemm import dynamic_available, dynamic_int8_mm, dynamic_pack
from bladegpt.errors import DeviceError
from bladegpt.generate import sampler


needs_fbgemm = pytest.mark.skipif(not dynamic_available(), reason="this PyTorch has no fbgemm (x86 builds have it)")


@pytest.fixture(autouse=True)
def packed_measures_faster(monkeypatch):
    """Kernel choices by measurement made fixed: fbgemm never measures faster (tests that want it say so), and
    nothing remembered from another test's measurement."""
    monkeypatch.setattr(quantize_module, "_CHOSEN", {})
    monkeypatch.setattr(quantize_module, "cached", lambda key, compute: compute())
    monkeypatch.setattr(quantize_module, "_best_of", lambda run: 1.0)


@pytest.fixture
def no_fbgemm(monkeypatch):
    """A PyTorch without fbgemm's kernel (as ARM's builds)."""
    monkeypatch.setattr(quantize_module, "dynamic_available", lambda: False)


def test_int8_weights_round_each_to_within_half_its_channels_step():
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 24)
    with torch.no_grad():
        linear.weight[3] *= 100  # a channel of large weights gets its own, larger step
    q = Int8Linear(linear)
    assert q.weight.dtype == torch.int8 and q.weight.abs().max() == 127
    step = linear.weight.abs().amax(dim=1, keepdim=True) / 127
    error = (q.dequantized(torch.float32) - linear.weight).abs()
    assert (error <= step / 2 + 1e-7).all()
    assert error[3].max() > 10 * error[torch.arange(24) != 3].max()  # per channel, not per tensor


@pytest.mark.parametrize("layer", [Int8Linear, Int4Linear])
@pytest.mark.parametrize("rows", [1, 8, PACKED_MAX_ROWS, PACKED_MAX_ROWS + 1, 40])  # the packed kernel, then the dequantized matmul
def test_quantized_linear_multiplies_by_its_dequantized_weight(layer, rows):
    torch.manual_seed(1)
    linear = torch.nn.Linear(64, 96)
    q = layer(linear)
    x = torch.randn(2, rows, 64)
    exact = F.linear(x, q.dequantized(torch.float32), linear.bias)
    y = q(x)
    assert y.shape == exact.shape and y.dtype == torch.float32
    # bf16 activations into the packed kernel: within bf16's rounding of a 64-term sum
    assert torch.allclose(y, exact, rtol=2e-2, atol=2e-2 * exact.abs().max().item())


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    return model, quantize(copy.deepcopy(model), "int8")


def test_an_int8_model_computes_what_the_float_one_does_and_reads_a_quarter_of_the_bytes(models):
    model, q = models
    assert not any(isinstance(m, torch.nn.Linear) for m in q.modules())
    assert q.transformer.wte.weight.dtype == torch.float32  # the embedding is a lookup: kept
    int8_bytes = sum(m.weight.numel() * m.weight.element_size() for m in q.modules() if isinstance(m, Int8Linear))
    fp32_bytes = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert int8_bytes * 4 == fp32_bytes
    idx = torch.randint(0, 64, (1, 12))
    with torch.inference_mode():
        ref, _ = model(idx)
        got, _ = q(idx)
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()


def test_int8_generation_with_cache_matches_its_reference(models):
    _, q = models
    fast = list(generate(q, [3, 1, 4, 1, 5], 10, 60, temperature=0))
    assert fast == generate_reference(q, [3, 1, 4, 1, 5], 10, 60, temperature=0)


def test_decode_precision_int8_on_request_and_by_measurement(models, monkeypatch):
    model, _ = models
    cpu = torch.device("cpu")
    assert sampler.decode_precision(model, cpu, "int8") == "int8"
    with pytest.raises(DeviceError, match="generation only"):
        sampler.decode_precision(model, cpu, "int8", cast=False)  # a model that is training keeps its weights
    with pytest.raises(DeviceError, match="Unknown precision"):
        sampler.decode_precision(model, cpu, "int3")
    assert sampler.decode_precision(model, cpu, "int4") == "int4"  # on request only (see the int4 tests)
    with pytest.raises(DeviceError, match="generation only"):
        sampler.decode_precision(model, cpu, "int4", cast=False)
    timed = []

    def fake(step_s):
        def time_decode(model, device, precision, cast, **_):
            timed.append(precision)
            return step_s[precision]
        return time_decode

    monkeypatch.setattr(sampler, "bf16_supported", lambda device: False)
    monkeypatch.setattr(sampler, "cached", lambda key, compute: compute())
    monkeypatch.setattr(sampler, "_time_decode", fake({"fp32": 1.0, "int8": 0.5}))
    assert sampler.decode_precision(model, cpu) == "int8"
    monkeypatch.setattr(sampler, "_time_decode", fake({"fp32": 1.0, "int8": 0.95}))
    assert sampler.decode_precision(model, cpu) == "fp32"  # not 10% faster: the exact weights win
    timed.clear()
    assert sampler.decode_precision(model, cpu, cast=False) == "fp32" and not timed  # nothing else to measure


def test_int4_weights_keep_each_groups_min_and_max_and_round_the_rest_to_half_a_step():
    """Q4_1's scheme: per group of 32 weights of a row, 16 levels from its min to its max."""
    torch.manual_seed(2)
    linear = torch.nn.Linear(2 * INT4_GROUP, 32)
    with torch.no_grad():
        linear.weight[:, :INT4_GROUP] *= 50  # one group of each row much wider than the other
    w = Int4Linear(linear).dequantized(torch.float32)
    groups = linear.weight.detach().view(32, 2, INT4_GROUP)
    step = (groups.amax(-1) - groups.amin(-1)) / 15  # (rows, groups)
    error = (w.view(32, 2, INT4_GROUP) - groups).abs()
    bf16 = 2 ** -8 * groups.abs().amax(-1)  # scale and zero are bf16: their rounding, carried to the weights
    assert (error <= (step / 2 + bf16)[..., None]).all()
    assert error[:, 0].max() > 10 * error[:, 1].max()  # each group its own step


def test_int4_weights_of_a_q4_1_file_come_back_as_they_were():
    """Weights a Q4_1 GGUF held (16 levels a group of 32, min and max among them) quantize to themselves,
    but for bf16's rounding of the scale and zero."""
    torch.manual_seed(3)
    lo = torch.randn(32, 2, 1).to(torch.bfloat16).float()
    d = torch.rand(32, 2, 1).to(torch.bfloat16).float() / 8
    q = torch.randint(0, 16, (32, 2, INT4_GROUP)).float()
    q[..., 0], q[..., 1] = 0, 15
    linear = torch.nn.Linear(2 * INT4_GROUP, 32, bias=False)
    with torch.no_grad():
        linear.weight.copy_((lo + d * q).view(32, -1))
    w = Int4Linear(linear).dequantized(torch.float32)
    assert torch.allclose(w, linear.weight, atol=0.02 * linear.weight.abs().max().item())


def test_an_int4_model_takes_int8_where_the_kernel_cannot_and_samples_as_its_reference():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=64)).eval()  # a char vocabulary
    q = quantize(copy.deepcopy(model), "int4")
    assert isinstance(q.lm_head, Int8Linear)  # 65 outputs: the int4 kernel wants a multiple of 16
    assert all(isinstance(b.mlp.c_fc, Int4Linear) for b in q.transformer.h)
    idx = torch.randint(0, 65, (1, 12))
    with torch.inference_mode():
        ref, _ = model(idx)
        got, _ = q(idx)
    assert (got - ref).abs().max() < 0.1 * ref.abs().max()
    fast = list(generate(q, [3, 1, 4, 1, 5], 10, 65, temperature=0))
    assert fast == generate_reference(q, [3, 1, 4, 1, 5], 10, 65, temperature=0)


@pytest.mark.parametrize("capability, width, refused", [
    ("AVX512", 16, False), ("AVX512", 576, False), ("AVX512", 24, True), ("AVX512", 100, True),  # AMX, AVX512-BF16
    ("AVX2", 24, False), ("AVX2", 12, True), ("AVX2", 100, True),
    ("VSX", 24, True),  # a kernel not read here: held to the widest known
])
def test_the_packed_int8_kernel_takes_only_widths_its_cpu_kind_reads_whole(capability, width, refused):
    why = int8_refusal(width, capability)
    assert (why is not None) == refused
    if refused:
        assert f"input width of {width}" in why and capability in why


def test_the_int4_kernel_names_the_width_it_cannot_take():
    assert int4_refusal(64, 96) is None
    assert "65" in int4_refusal(64, 65)  # outputs: a multiple of 16
    assert "40" in int4_refusal(40, 64)  # inputs: whole groups of 32


@pytest.fixture
def avx512(monkeypatch):
    """This process's int8 kernel is the AVX512 one (AMX and AVX512-BF16 CPUs), whatever CPU runs the test."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")


@pytest.mark.parametrize("fbgemm", [pytest.param(True, marks=needs_fbgemm), False])
def test_a_width_the_int8_kernel_cannot_take_never_reaches_it(avx512, monkeypatch, fbgemm):
    """Such a layer runs fbgemm's kernel, which takes any width, or where PyTorch has none, its dequantized weights."""
    def crash(*args):
        raise AssertionError("the packed kernel was called with a width it crashes on")

    if not fbgemm:
        monkeypatch.setattr(quantize_module, "dynamic_available", lambda: False)
    monkeypatch.setattr(torch, "_weight_int8pack_mm", crash)
    torch.manual_seed(4)
    linear = torch.nn.Linear(36, 40)
    q = Int8Linear(linear)
    x = torch.randn(1, 4, 36)
    assert torch.allclose(q(x), F.linear(x, q.dequantized(torch.float32), linear.bias), atol=1e-5)
    said = []
    model = quantize(GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=36)), "int8", said.append)
    if fbgemm:  # nothing lost, nothing said
        assert said == []
    else:  # one line, named
        assert len(said) == 1 and "input width of 36" in said[0] and "dequantized" in said[0]
    c_fc = model.transformer.h[0].mlp.c_fc
    assert (c_fc.dynamic is not None) == fbgemm
    x = torch.randn(1, 4, 36)
    assert torch.allclose(c_fc(x), F.linear(x, c_fc.dequantized(torch.float32)), rtol=1e-3, atol=1e-3)


def test_an_explicit_int4_says_which_layers_keep_int8():
    said = []
    quantize(GPT(ModelConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=64)), "int4", said.append)
    assert any("(lm_head)" in line and "not int4" in line and "65" in line for line in said), said


def test_int8_generation_at_a_width_the_kernel_cannot_take_runs_in_a_fresh_process():
    """The crash itself, where this CPU's kernel has it (width 36 at 4 rows on AVX512 and AVX2): a process
    of its own, so a regression fails this test instead of killing the suite."""
    code = (
        "import torch\n"
        "from bladegpt.config import ModelConfig\nfrom bladegpt.model import GPT\n"
        "from bladegpt.generate.quantize import quantize\nfrom bladegpt.generate.engine import generate_batch\n"
        "torch.manual_seed(0)\n"
        "m = quantize(GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=36)).eval(), 'int8')\n"
        "gens = [torch.Generator().manual_seed(i) for i in range(4)]\n"
        "print(len(list(generate_batch(m, [1, 2, 3], 8, 64, gens))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "8", (done.returncode, done.stderr[-2000:])


def test_auto_skips_int8_where_the_kernel_cannot_take_the_width_and_says_why(avx512, no_fbgemm, monkeypatch):
    timed, said = [], []

    def time_decode(model, device, precision, cast, **_):
        timed.append(precision)
        return {"fp32": 1.0, "bf16": 0.95, "int8": 0.1}[precision]

    monkeypatch.setattr(sampler, "_time_decode", time_decode)
    monkeypatch.setattr(sampler, "cached", lambda key, compute: compute())
    model = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=36)).eval()
    assert sampler.decode_precision(model, torch.device("cpu"), say=said.append) == "fp32"
    assert "int8" not in timed
    assert len(said) == 1 and "leaves int8 weights out" in said[0] and "input width of 36" in said[0]
    timed.clear()
    wide = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32)).eval()
    assert sampler.decode_precision(wide, torch.device("cpu"), say=said.append) == "int8" and "int8" in timed


def test_int8_keeps_int4_for_a_q4_1_files_weights_closer_and_in_half_the_bytes():
    """Weights a Q4_1 GGUF holds (the gguf package's own quantizer) are already 4-bit: "int8" keeps them in int4,
    closer to the file's than int8 rounds them (only bf16's rounding of the scale and zero); ordinary weights,
    closer in int8, stay int8. The mixed model samples as its reference does."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    torch.manual_seed(7)
    model = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=64)).eval()
    fc = model.transformer.h[0].mlp.c_fc
    blocks = quants.quantize(fc.weight.detach().numpy().astype(np.float32), GGMLQuantizationType.Q4_1)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(quants.dequantize(blocks, GGMLQuantizationType.Q4_1)))
    said = []
    q = quantize(copy.deepcopy(model), "int8", said.append)
    assert said == ["1 layer(s) (transformer.h.0.mlp.c_fc) run int4 weights, not int8: theirs are already 4-bit (a "
                    "Q4_1 file's, untouched), which int4 holds closer in half the bytes."]  # the start says int8
    four, eight = q.transformer.h[0].mlp.c_fc, Int8Linear(fc)
    assert isinstance(four, Int4Linear) and four.weight.numel() * 2 == eight.weight.numel()  # packed: 2 a byte
    assert four.error < eight.error / 2
    file_weights = fc.weight.detach()
    error = (four.dequantized(torch.float32) - file_weights).abs()
    assert (error <= 2 ** -7 * file_weights.abs().amax(dim=1, keepdim=True)).all()  # bf16's relative step, about
    assert all(isinstance(b.mlp.c_proj, Int8Linear) and isinstance(b.attn.c_attn, Int8Linear) for b in q.transformer.h)
    assert isinstance(q.transformer.h[1].mlp.c_fc, Int8Linear)
    fast = list(generate(q, [3, 1, 4, 1, 5], 10, 64, temperature=0))
    assert fast == generate_reference(q, [3, 1, 4, 1, 5], 10, 64, temperature=0)


@pytest.mark.parametrize("kind", ["Q4_1", "Q4_0"])
def test_int8_keeps_a_fine_tunes_change_to_a_4_bit_files_weights(kind):
    """A run fine-tuned from a 4-bit GGUF moved its weights off the file's grid by a little (here 0.3% of their
    rms): int4 would round them back onto it, undoing the training, so "int8" keeps such a layer in int8, where
    the change survives; the file's own weights, untouched, stay int4."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    torch.manual_seed(7)
    model = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=64)).eval()
    fc, proj = model.transformer.h[0].mlp.c_fc, model.transformer.h[0].mlp.c_proj
    qtype = getattr(GGMLQuantizationType, kind)
    with torch.no_grad():
        for layer in (fc, proj):
            blocks = quants.quantize(layer.weight.detach().numpy().astype(np.float32), qtype)
            layer.weight.copy_(torch.from_numpy(quants.dequantize(blocks, qtype)))
        base = fc.weight.detach().clone()
        change = torch.randn_like(base) * 3e-3 * base.pow(2).mean().sqrt()
        fc.weight.add_(change)
    q = quantize(copy.deepcopy(model), "int8")
    tuned = q.transformer.h[0].mlp.c_fc
    assert isinstance(tuned, Int8Linear)
    kept = ((tuned.dequantized(torch.float32) - base) * change).sum() / change.pow(2).sum()
    assert 0.8 < kept < 1.2  # the change survives int8's rounding, on average
    if kind == "Q4_1":  # min and max exact, as Int4Linear's grid: the untouched layer is int4
        assert isinstance(q.transformer.h[0].mlp.c_proj, Int4Linear)


@needs_fbgemm
@pytest.mark.parametrize("case", ["normal", "outlier", "positive", "negative", "skewed", "tiny", "huge", "rows"])
def test_fbgemm_takes_the_input_in_two_parts_and_keeps_about_13_bits(case):
    """One 7-bit rounding of the input is 1e-2 off; the two parts (fbgemm.py) 1e-4 to 3e-3, at or below bf16's input,
    whatever the input's sign, skew (GELU's) or size."""
    torch.manual_seed(11)
    weight = torch.randn(256, 96) * 0.05
    scale = weight.abs().amax(1) / 127
    q = (weight / scale[:, None]).round().to(torch.int8)
    packed = dynamic_pack(q, scale)
    x = {"normal": torch.randn(1, 96), "outlier": torch.randn(1, 96) * torch.where(torch.arange(96) == 7, 30.0, 1.0),
         "positive": torch.rand(1, 96), "negative": -torch.rand(1, 96), "skewed": F.gelu(torch.randn(1, 96) * 2),
         "tiny": torch.randn(1, 96) * 1e-5, "huge": torch.randn(1, 96) * 1e25, "rows": torch.randn(8, 96)}[case]
    exact = x.double() @ (q.double() * scale.double()[:, None]).t()

    def error(y):
        return ((y.double() - exact).norm() / exact.norm()).item()

    assert error(dynamic_int8_mm(x, packed)) < (4e-3 if case == "outlier" else 6e-4)
    assert error(dynamic_int8_mm(x, packed)) < error(torch.ops.quantized.linear_dynamic(x, packed, True)) / 3
    if case != "outlier":  # one channel 30x the rest: the grid's step follows it
        assert error(dynamic_int8_mm(x, packed)) < error(x.bfloat16().double() @ (q.double() * scale.double()[:, None]).t())


@needs_fbgemm
@pytest.mark.parametrize("one_row, eight_rows, taken", [(1.0, 2.0, True), (2.0, 1.0, True), (0.9, 2.0, False),
                                                        (1.2, 1.2, False)])
def test_fbgemm_is_taken_where_it_measures_faster_for_every_row_count(monkeypatch, one_row, eight_rows, taken):
    """Measured per layer shape at 1 and 8 rows: taken where 1.3x faster at one and no slower at the other, then for
    every row count (so a row's result is the same alone or batched); the model samples as its reference does."""
    timed = []

    def best_of(run):  # the packed kernel, then fbgemm, at 1 row, then at 8
        timed.append(run)
        speedup = (one_row, eight_rows)[(len(timed) - 1) // 2 % 2]
        return 1.0 if len(timed) % 2 else 1.0 / speedup

    monkeypatch.setattr(quantize_module, "_best_of", best_of)
    torch.manual_seed(3)
    model = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32)).eval()
    said = []
    q = quantize(copy.deepcopy(model), "int8", said.append)
    layers = [m for m in q.modules() if isinstance(m, Int8Linear)]
    assert layers and all((m.dynamic is not None) == taken for m in layers)
    assert said == []  # a faster kernel for the same weights is not news
    calls = len(timed)
    quantize(copy.deepcopy(model), "int8")
    assert len(timed) == calls  # once a shape a process
    used = []
    real = quantize_module.dynamic_int8_mm
    monkeypatch.setattr(quantize_module, "dynamic_int8_mm", lambda x, packed: used.append(len(x)) or real(x, packed))
    layer = layers[0]
    for rows in (1, 8, 40):
        x = torch.randn(rows, 1, layer.in_features)
        assert torch.allclose(layer(x), F.linear(x, layer.dequantized(torch.float32), layer.bias), rtol=2e-2, atol=2e-2)
    assert used == ([1, 8, 40] if taken else [])
    fast = list(generate(q, [3, 1, 4, 1, 5], 10, 64, temperature=0))
    assert fast == generate_reference(q, [3, 1, 4, 1, 5], 10, 64, temperature=0)


def test_a_decode_batch_past_the_packed_kernels_rows_runs_it_in_turns():
    """40 decode rows through the packed kernel 16 at a time: each row's result the bits it has alone."""
    torch.manual_seed(5)
    layer = Int8Linear(torch.nn.Linear(64, 48))
    x = torch.randn(40, 1, 64)
    batched = layer(x)
    assert all(torch.equal(batched[i], layer(x[i : i + 1])[0]) for i in range(40))


def test_the_int8_copy_generation_makes_shares_the_float_weights_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))
    model.compile_blocks()  # a training model's compiled wrappers are neither copied nor lost
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    q, _ = sampler.in_precision(model, "int8", cast=True)
    assert q.transformer.wte.weight is model.transformer.wte.weight  # shared, not a float copy
    assert q.transformer.h[0].ln_1.weight is model.transformer.h[0].ln_1.weight
    assert isinstance(q.lm_head, Int8Linear) and isinstance(model.lm_head, torch.nn.Linear)
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    assert "compiled_blocks" not in q.__dict__ and len(model.__dict__["compiled_blocks"]) == 2
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    assert list(generate(q, [1, 2], 8, 64, temperature=0)) == generate_reference(quantize(copy.deepcopy(model), "int8"),
                                                                          [1, 2], 8, 64, temperature=0)


def test_an_evaluation_samples_in_the_precision_sample_would_and_a_lora_run_as_it_trains(monkeypatch):
    from bladegpt.lora import LoraConfig, attach
    from bladegpt.train import evaluate

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))
    asked = []

    def choice(model, device, requested="auto", cast=True, **_):
        asked.append(cast)
        return "int8" if cast else "bf16"

    monkeypatch.setattr(evaluate, "decode_precision", choice)
    evaluator = evaluate.Evaluator.__new__(evaluate.Evaluator)
    evaluator.device = torch.device("cpu")
    assert evaluator._decode_precision(model) == "int8" and asked == [True]
    asked.clear()
    attach(model, LoraConfig())
    assert evaluator._decode_precision(model) == "bf16" and asked == [False]  # its adapters are not in the weights


@needs_fbgemm
def test_a_short_texts_copy_packs_nothing_for_fbgemm(monkeypatch):
    monkeypatch.setattr(quantize_module, "_fbgemm_faster", lambda layer: True)  # fbgemm measured faster everywhere
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))
    usual, _ = sampler.in_precision(model, "int8", cast=True)
    short, _ = sampler.in_precision(model, "int8", cast=True, short=True)
    layers = lambda m: [layer for layer in m.modules() if isinstance(layer, Int8Linear)]
    assert all(layer.dynamic is not None for layer in layers(usual))
    assert layers(short) and all(layer.dynamic is None for layer in layers(short))
