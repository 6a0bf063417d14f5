import pytest
import torch

from bladegpt.config import ModelConfig
from bladegpt.generate.settings import SampleSettings
from bladegpt.generate.engine import KVCache, StaticKVCache, generate, generate_reference, sample_next_token, stream_text
from bladegpt.model import GPT
from bladegpt.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("attention", ["sdpa", "manual", "chunked"])
def test_kv_cache_logits_equal_full_forward(model, attention, static):
    model.set_attention(attention)
    idx = torch.randint(0, 64, (2, 12))
    full, _ = model(idx)
    cache = StaticKVCache(2, 16, rows=2) if static else KVCache(2, 16)

    def forward(part):
        cache.seat(part.size(1), part.device)
        logits, _ = model(part, kv_cache=cache)
        cache.advance(part.size(1))
        return logits

    first = forward(idx[:, :5])
    rest = [forward(idx[:, t : t + 1]) for t in range(5, 12)]
    assert torch.allclose(torch.cat([first, *rest], dim=1), full, atol=1e-5)


@pytest.mark.parametrize("new_tokens", [8, 40])  # within the 16-token context, and far past it
def test_greedy_with_and_without_cache_is_identical(model, new_tokens):
    prompt = [3, 1, 4, 1, 5]
    fast = list(generate(model, prompt, new_tokens, 60, temperature=0))
    slow = generate_reference(model, prompt, new_tokens, 60, temperature=0)
    assert fast == slow and len(fast) == new_tokens


def test_sampling_with_cache_matches_reference_for_a_seed(model):
    fast = list(generate(model, [7], 30, 60, torch.Generator().manual_seed(5), temperature=1.0, top_k=10))
    slow = generate_reference(model, [7], 30, 60, torch.Generator().manual_seed(5), temperature=1.0, top_k=10)
    assert fast == slow


def test_same_seed_same_text_and_padding_never_sampled(model):
    a = list(generate(model, [1, 2], 50, 60, torch.Generator().manual_seed(1), temperature=2.0))
    b = list(generate(model, [1, 2], 50, 60, torch.Generator().manual_seed(1), temperature=2.0))
    c = list(generate(model, [1, 2], 50, 60, torch.Generator().manual_seed(2), temperature=2.0))
    assert a == b != c
    assert max(a + c) < 60


def test_long_prompt_is_cropped(model):
    out = list(generate(model, list(range(50)), 3, 64, temperature=0))
    assert out == generate_reference(model, list(range(34, 50)), 3, 64, temperature=0)


def test_top_k_and_top_p():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    g = torch.Generator().manual_seed(0)
    assert {int(sample_next_token(logits, g, 1.0, top_k=2)) for _ in range(200)} == {3, 4}
    # probabilities ~ [.01 .03 .09 .23 .64]: top_p 0.8 keeps the two likeliest
    assert {int(sample_next_token(logits, g, 1.0, top_p=0.8)) for _ in range(200)} == {3, 4}
    assert {int(sample_next_token(logits, g, 1.0, top_p=0.5)) for _ in range(100)} == {4}
    assert int(sample_next_token(logits, g, 0.0)) == 4


def test_sampling_follows_the_distribution():
    """Over many draws each id comes up as often as softmax(logits / temperature) says, also among
    the top k, and an id of probability 0 never does."""
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])
    logits = probs.log().expand(1000, -1)
    g = torch.Generator().manual_seed(0)

    def freq(**settings):
        draws = torch.cat([sample_next_token(logits, g, **settings) for _ in range(20)])
        return torch.bincount(draws, minlength=5) / len(draws)

    assert torch.allclose(freq(), probs, atol=0.015)
    hot = probs.sqrt() / probs.sqrt().sum()  # temperature 2 flattens p to p^(1/2)
    assert torch.allclose(freq(temperature=2.0), hot, atol=0.015)
    assert torch.allclose(freq(top_k=2), torch.tensor([0, 0, 3 / 7, 4 / 7, 0]), atol=0.015)


def test_stream_text_holds_back_split_characters():
    tok = train_tokenizer("gpt2", "")
    text = "naïve 😀 café"
    pieces = list(stream_text(iter(tok.encode(text)), tok))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


@pytest.mark.parametrize("new_tokens", [8, 40])
def test_batched_samples_are_each_seeds_own_text(model, new_tokens):
    """One prefill, n rows decoding together: greedy rows all equal the reference, and sampled row i
    is exactly the text seed + i gives alone (through the window slide too)."""
    from bladegpt.generate.engine import generate_batch

    greedy = torch.stack(list(generate_batch(model, [3, 1, 4], new_tokens, 60, [None] * 4, temperature=0)), 1)
    reference = generate_reference(model, [3, 1, 4], new_tokens, 60, temperature=0)
    assert greedy.tolist() == [reference] * 4
    gens = [torch.Generator().manual_seed(10 + i) for i in range(5)]
    rows = torch.stack(list(generate_batch(model, [7], new_tokens, 60, gens, temperature=1.0, top_k=20)), 1)
    for i, row in enumerate(rows.tolist()):
        alone = generate_reference(model, [7], new_tokens, 60, torch.Generator().manual_seed(10 + i), temperature=1.0, top_k=20)
        assert row == alone
    assert len({tuple(r) for r in rows.tolist()}) > 1


@pytest.mark.slow
def test_compiled_decode_gives_the_reference_tokens(model, tmp_path):
    """sample --compile on: the compiled decode step writes exactly the slow reference's greedy text."""
    from bladegpt.checkpoint import save_checkpoint
    from bladegpt.generate.sampler import Sampler

    tok = train_tokenizer("char", "".join(chr(33 + i) for i in range(60)))
    save_checkpoint(tmp_path / "m.safetensors", model, tok, step=1)
    said = []
    sampler = Sampler(tmp_path / "m.safetensors", "cpu", "fp32", compile="on", say=said.append)
    text = "".join(sampler.stream("!#", SampleSettings(max_new_tokens=40, temperature=0)))
    assert sampler.decode is not None  # it did compile
    assert tok.encode(text) == generate_reference(model, tok.encode("!#"), 40, 60, temperature=0)
    auto = Sampler(tmp_path / "m.safetensors", "cpu", "fp32", compile="auto", say=said.append)
    "".join(auto.stream("!#", SampleSettings(max_new_tokens=40, temperature=0)))
    assert auto.decode is None and not said  # 40 tokens never repay a compile


@pytest.mark.slow
def test_compiled_static_step_compiles_once_and_keeps_each_seeds_text(model):
    """The compiled one-token step over a static cache: one graph for every generation (through two
    window slides, and again over a new cache), and each sampled row is still exactly what its seed
    gives alone."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from bladegpt.generate.engine import compile_decode, generate_batch

    torch._dynamo.reset()
    counters.clear()
    decode = compile_decode(model)
    gens = [torch.Generator().manual_seed(20 + i) for i in range(3)]
    rows = torch.stack(list(generate_batch(model, [7, 8], 30, 60, gens, 1.0, 20, decode=decode)), 1)
    again = [torch.Generator().manual_seed(20 + i) for i in range(3)]  # a new cache, the same graph
    assert torch.stack(list(generate_batch(model, [7, 8], 30, 60, again, 1.0, 20, decode=decode)), 1).equal(rows)
    assert counters["stats"]["unique_graphs"] == 1
    for i, row in enumerate(rows.tolist()):
        assert row == generate_reference(model, [7, 8], 30, 60, torch.Generator().manual_seed(20 + i), temperature=1.0,
                                         top_k=20)


def _draws(logits, n=400, seed=0, **knobs) -> torch.Tensor:
    """n draws of each row of logits, (n, B)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([sample_next_token(logits, g, **knobs) for _ in range(n)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_every_knob_at_its_limits_samples_by_its_definition(dtype):
    """The limits SampleSettings accepts, each against its definition: a temperature that rounds to 0
    in float32 is greedy (it once overflowed into an index past the vocabulary), a huge one is uniform
    over what is kept, top-k 1 and top-p near 0 and min-p 1 are greedy, top-k past the vocabulary and
    top-p 1 and min-p 0 change nothing, in any float dtype the model hands back."""
    torch.manual_seed(0)
    logits = (torch.stack([torch.randperm(200) for _ in range(8)]) / 16 - 6).to(dtype)  # exact, no ties
    greedy = logits.float().argmax(-1).expand(50, -1)
    for tiny in (1e-40, 1e-300, 5e-324):
        assert _draws(logits, 50, temperature=tiny).equal(greedy)
    tie = torch.tensor([[1.0, 5.0, 5.0, 2.0]], dtype=dtype)  # the limit of softmax(l / T): the tied top ids, evenly
    assert set(_draws(tie, 100, temperature=1e-40).flatten().tolist()) == {1, 2}
    for knobs in (dict(top_k=1), dict(top_p=1e-9), dict(min_p=1.0), dict(temperature=1e-6, top_k=10**9)):
        assert _draws(logits, 50, **knobs).equal(greedy), knobs
    plain = _draws(logits, 50, seed=3)
    for knobs in (dict(top_k=200), dict(top_k=10**9), dict(top_p=1.0), dict(min_p=0.0)):
        assert _draws(logits, 50, seed=3, **knobs).equal(plain), knobs
    for huge in (1e30, 1e308):  # all 200 near-equal: every id comes up
        draws = _draws(logits[:1], 4000, temperature=huge)
        assert draws.unique().numel() == 200 and draws.flatten().bincount().max() < 60
        kept = _draws(logits[:1], 200, temperature=huge, top_k=3)  # uniform over the three kept
        assert set(kept.flatten().tolist()) == set(logits[0].float().topk(3).indices.tolist())


def test_min_p_keeps_what_is_at_least_min_p_as_likely_as_the_top_before_temperature():
    """min-p (Nguyen et al. 2024): p >= min_p * p_max, on the model's own probabilities; temperature
    then reshapes only those."""
    probs = torch.tensor([0.5, 0.3, 0.1, 0.06, 0.04])
    logits = probs.log().expand(2000, -1)
    g = torch.Generator().manual_seed(0)
    freq = lambda **knobs: torch.bincount(sample_next_token(logits, g, **knobs), minlength=5) / 2000
    assert torch.allclose(freq(min_p=0.2), torch.tensor([0.5, 0.3, 0.1, 0, 0]) / 0.9, atol=0.03)  # 0.1 = 0.2 * 0.5 kept
    assert freq(min_p=0.21)[2:].sum() == 0
    hot = freq(min_p=0.5, temperature=1e9)  # the same two kept however hot, then uniform among them
    assert hot[2:].sum() == 0 and torch.allclose(hot[:2], torch.tensor([0.5, 0.5]), atol=0.04)
    assert freq(top_p=0.75)[2:].sum() == 0  # top-p after temperature, as before: 0.5 + 0.3 reach it


def test_infinite_and_nan_logits_still_sample():
    """-inf is never drawn, at any temperature; +inf (an fp16 overflow) always wins; NaN counts as -inf;
    a row with nothing finite draws uniformly instead of failing."""
    inf = float("inf")
    logits = torch.tensor([[0.0, -inf, 1.0, float("nan")], [-inf, inf, 3e38, 0.0], [-inf, -inf, -inf, -inf]])
    for knobs in (dict(), dict(temperature=1e308), dict(temperature=1e-40), dict(top_p=0.99), dict(min_p=0.01)):
        draws = _draws(logits, 200, **knobs)
        assert not ({1, 3} & set(draws[:, 0].tolist())), knobs
        assert draws[:, 1].eq(1).all(), knobs
        assert draws[:, 2].lt(4).all(), knobs
    assert set(_draws(logits, 200)[:, 2].tolist()) == {0, 1, 2, 3}
    assert set(_draws(logits.half(), 200, top_k=2)[:, 0].tolist()) == {0, 2}


def test_min_p_goes_through_the_cached_and_the_reference_generator(model):
    gens = lambda: torch.Generator().manual_seed(9)
    fast = list(generate(model, [7], 30, 60, gens(), temperature=1.5, min_p=0.9))
    assert fast == generate_reference(model, [7], 30, 60, gens(), temperature=1.5, min_p=0.9)
    assert fast != list(generate(model, [7], 30, 60, gens(), temperature=1.5))
    assert list(generate(model, [7], 30, 60, gens(), min_p=1.0)) == generate_reference(model, [7], 30, 60, temperature=0)


def test_repetition_penalty_follows_ctrls_definition_on_fixed_logits():
    """CTRL (Keskar et al. 2019), as transformers' RepetitionPenaltyLogitsProcessor: an id already in the
    text has its logit divided by the penalty if positive, multiplied if negative; others keep theirs."""
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.9]])
    seen = torch.tensor([[0, 1, 1]])  # id 0 and id 1 (twice: penalised once, as transformers does)
    assert int(sample_next_token(logits, temperature=0)) == 0
    assert int(sample_next_token(logits, temperature=0, repetition_penalty=1.2, seen=seen)) == 3  # 2 / 1.2 < 1.9
    assert int(sample_next_token(logits, temperature=0, repetition_penalty=1.0, seen=seen)) == 0  # 1 is off
    probs = torch.tensor([[0.4, 0.1, 0.3, 0.2]])
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_next_token(probs.log(), g, repetition_penalty=2.0, seen=torch.tensor([[0]]))
                       for _ in range(4000)])
    expected = torch.tensor([0.4**2, 0.1, 0.3, 0.2])  # log 0.4 < 0, so doubled: p^2
    assert torch.allclose(torch.bincount(draws, minlength=4) / 4000, expected / expected.sum(), atol=0.03)
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    scores = torch.randn(3, 50)
    ids = torch.randint(0, 50, (3, 9))
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(ids, scores.clone())
    assert torch.equal(sample_next_token(scores, temperature=0, repetition_penalty=1.3, seen=ids), theirs.argmax(-1))


def test_repetition_penalty_goes_through_the_cached_and_the_reference_generator(model):
    gens = lambda: torch.Generator().manual_seed(9)
    fast = list(generate(model, [7, 3], 40, 60, gens(), temperature=0.9, repetition_penalty=1.5))
    assert fast == generate_reference(model, [7, 3], 40, 60, gens(), temperature=0.9, repetition_penalty=1.5)
    assert fast != list(generate(model, [7, 3], 40, 60, gens(), temperature=0.9))
    greedy = generate_reference(model, [7], 40, 60, temperature=0, repetition_penalty=100.0)
    assert len(set(greedy)) > len(set(generate_reference(model, [7], 40, 60, temperature=0)))


def test_auto_never_compiles_quantized_decoding_on_the_cpu(model, tmp_path, monkeypatch):
    """Compiled over a static cache, int8/int4 steps ran slower than eager (docs/benchmarks/generation.md): `auto`
    keeps them eager however many steps are asked for; fp32 still compiles where the steps repay it."""
    from bladegpt.checkpoint import save_checkpoint
    from bladegpt.generate import sampler as sampler_module

    compiled = []
    monkeypatch.setattr(sampler_module, "compile_decode", lambda m: compiled.append(m) or "step")
    save_checkpoint(tmp_path / "m.safetensors", model, train_tokenizer("char", "abcdef"), step=1)
    quantized = sampler_module.Sampler(tmp_path / "m.safetensors", "cpu", "int8", compile="auto")
    quantized._maybe_compile(10**9, 1)
    assert quantized.decode is None and not compiled
    fp32 = sampler_module.Sampler(tmp_path / "m.safetensors", "cpu", "fp32", compile="auto")
    fp32._maybe_compile(10**9, 1)
    assert fp32.decode == "step" and len(compiled) == 1
