import pytest
import torch

from bladegpt.checkpoint import load_checkpoint, save_checkpoint
from bladegpt.config import ModelConfig
from bladegpt.model import GPT, flops_per_token
from bladegpt.tokenizer import CharTokenizer

CFG = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)


def test_shapes_and_loss():
    model = GPT(CFG)
    idx = torch.randint(0, 64, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 64) and loss is None
    _, loss = model(idx, torch.randint(0, 64, (3, 10)))
    assert abs(loss.item() - torch.log(torch.tensor(64.0)).item()) < 0.3  # near uniform at init


def test_causal():
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    idx = torch.randint(0, 64, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 64
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[0, :8], b[0, :8], atol=1e-6)
    assert not torch.allclose(a[0, 8:], b[0, 8:])


def test_manual_and_sdpa_agree():
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    idx = torch.randint(0, 64, (2, 16))
    sdpa, _ = model(idx)
    model.set_attention("manual")
    manual, _ = model(idx)
    assert torch.allclose(sdpa, manual, atol=1e-5)


def test_tied_and_scaled_init():
    model = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=8, n_head=2, n_embd=64))
    assert model.lm_head.weight is model.transformer.wte.weight
    proj = model.transformer.h[0].mlp.c_proj.weight.std().item()
    fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(fc - 0.02) < 0.003
    assert abs(proj - 0.02 / 4) < 0.001  # 1/sqrt(2 * 8 layers)


def test_tie_survives_save_and_load(tmp_path):
    model = GPT(CFG)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    save_checkpoint(tmp_path / "m.safetensors", model, CharTokenizer(list("ab")), step=3)
    loaded, tok, info = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert info["step"] == 3 and tok.chars == ["a", "b"]
    idx = torch.randint(0, 64, (1, 8))
    assert torch.equal(loaded(idx)[0], model.eval()(idx)[0])


def test_flops_per_token_known_case():
    # GPT-2 124M at T=1024, as nanoGPT counts it: N leaves out the position embeddings.
    cfg = ModelConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, bias=True)
    model = GPT(cfg)
    assert model.num_params(non_embedding=False) == 124_439_808  # GPT-2 small's famous count
    n = model.num_params()
    assert n == 124_439_808 - 1024 * 768
    assert flops_per_token(cfg, n) == 6 * 123_653_376 + 12 * 12 * 12 * 64 * 1024  # 855,166,464


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_activation_checkpointing_gives_the_same_gradients(arch):
    """Recomputing each block in backward is how, not what: loss and gradients equal, dropout included."""
    llama = dict(arch="llama", norm="rmsnorm", positions="rope", activation="swiglu", n_kv_head=1) if arch == "llama" else {}
    cfg = ModelConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.1, **llama)
    torch.manual_seed(0)
    model = GPT(cfg).train()
    idx, y = torch.randint(0, 64, (3, 8)), torch.randint(0, 64, (3, 8))
    grads = []
    for recompute in (False, True):
        model.activation_checkpointing = recompute
        model.zero_grad()
        torch.manual_seed(5)  # the same dropout masks
        _, loss = model(idx, y)
        loss.backward()
        grads.append((float(loss), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-6)
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, atol=1e-6, rtol=1e-5, msg=name)
    assert "activation_checkpointing" not in str(model.state_dict().keys())


def test_rope_with_one_flip_is_transformers_rotate_half_to_the_last_bit():
    """apply_rope takes a signed sin table (rope_tables) so it rotates with one flip; the floats are transformers'."""
    from bladegpt.model import apply_rope, rope_tables
    torch.manual_seed(5)
    config = ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=4, n_embd=64, positions="rope")
    cos, signed_sin = rope_tables(config)
    sin = torch.cat((-signed_sin[:, :8], signed_sin[:, 8:]), dim=-1)
    assert torch.equal(sin[:, :8], sin[:, 8:])  # the halves pair, as transformers lays them out
    angles = torch.arange(16).float()[:, None] / 10000 ** (torch.arange(0, 16, 2).float() / 16)
    assert torch.allclose(sin, torch.cat((angles, angles), dim=-1).sin(), atol=1e-6)
    x = torch.randn(2, 4, 16, 16)
    rotate_half = torch.cat((-x[..., 8:], x[..., :8]), dim=-1)
    assert torch.equal(apply_rope(x, cos, signed_sin), x * cos + rotate_half * sin)


@pytest.mark.parametrize("rows, dim", [(1, 576), (8, 64), (20, 960)])
def test_rms_norm_in_fp32_is_transformers_formula_to_the_last_bit(rows, dim):
    from bladegpt.model import RMSNorm
    torch.manual_seed(6)
    norm = RMSNorm(dim, 1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = 3 * torch.randn(rows, dim)
    assert torch.equal(norm(x), norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)))


def test_an_uninitialized_model_is_tied_and_holds_what_is_loaded_into_it():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, positions="rope", norm="rmsnorm")
    model = GPT(cfg).eval()
    empty = GPT.uninitialized(cfg)
    assert empty.lm_head.weight is empty.transformer.wte.weight
    empty.load_state_dict(model.state_dict())
    idx = torch.randint(0, 64, (2, 16))
    assert torch.equal(empty.eval()(idx)[0], model(idx)[0])
