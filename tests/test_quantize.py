import copy

import pytest
import torch
import torch.nn.functional as F

from bladegpt.config import ModelConfig
from bladegpt.engine import generate, generate_reference
from bladegpt.model import GPT
from bladegpt.quantize import PACKED_MAX_ROWS, Int8Linear, quantize_int8
from bladegpt.runtime import DeviceError
from bladegpt import sampler


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


@pytest.mark.parametrize("rows", [1, 8, PACKED_MAX_ROWS + 1, 40])  # the packed kernel, then the dequantized matmul
def test_int8_linear_multiplies_by_its_dequantized_weight(rows):
    torch.manual_seed(1)
    linear = torch.nn.Linear(64, 96)
    q = Int8Linear(linear)
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
    return model, quantize_int8(copy.deepcopy(model))


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
        sampler.decode_precision(model, cpu, "int4")
    timed = []

    def fake(step_s):
        def time_decode(model, device, precision, cast, **_):
            timed.append(precision)
            return step_s[precision]
        return time_decode

    monkeypatch.setattr(sampler, "bf16_supported", lambda device: False)
    monkeypatch.setattr(sampler, "_cached", lambda key, compute: compute())
    monkeypatch.setattr(sampler, "_time_decode", fake({"fp32": 1.0, "int8": 0.5}))
    assert sampler.decode_precision(model, cpu) == "int8"
    monkeypatch.setattr(sampler, "_time_decode", fake({"fp32": 1.0, "int8": 0.95}))
    assert sampler.decode_precision(model, cpu) == "fp32"  # not 10% faster: the exact weights win
    timed.clear()
    assert sampler.decode_precision(model, cpu, cast=False) == "fp32" and not timed  # nothing else to measure
