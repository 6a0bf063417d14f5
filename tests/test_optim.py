"""The optimizers `train` builds and the schedule they follow."""

import json

import pytest
import torch
from safetensors.torch import save_file

from bladegpt.checkpoint import FORMAT, load_train_state, save_training
from bladegpt.config import ModelConfig, TrainConfig
from bladegpt.errors import ConfigError
from bladegpt.model import GPT
from bladegpt.train.optim import lr_at, make_optimizers, set_lr
from bladegpt.tokenizer import CharTokenizer
from tests.conftest import TINY_MODEL


def tiny_gpt() -> GPT:
    return GPT(ModelConfig(vocab_size=64, **TINY_MODEL))


def test_lr_schedule():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg, 0.0) == pytest.approx(1e-4)
    assert lr_at(9, cfg, 0.0) == pytest.approx(1e-3)
    assert lr_at(60, cfg, 0.5) == pytest.approx(0.55e-3)
    assert lr_at(110, cfg, 1.0) == pytest.approx(1e-4)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_every_parameter_is_optimized_once(optimizer):
    model = tiny_gpt()
    opts = make_optimizers(model, TrainConfig(optimizer=optimizer), torch.device("cpu"))
    seen = [id(p) for opt in opts for group in opt.param_groups for p in group["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # the tied wte/lm_head once
    assert len(opts) == (2 if optimizer == "muon" else 1)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = tiny_gpt()
    adamw, muon = make_optimizers(model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    in_muon = {id(p) for p in muon.param_groups[0]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in in_muon}
    assert names == {n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2}
    assert id(model.transformer.wte.weight) not in in_muon and id(model.transformer.wpe.weight) not in in_muon


def test_the_schedule_scales_muon_to_its_own_lr():
    model = tiny_gpt()
    cfg = TrainConfig(optimizer="muon", lr=2e-3, muon_lr=0.04)
    adamw, muon = make_optimizers(model, cfg, torch.device("cpu"))
    set_lr([adamw, muon], cfg, 1e-3)  # halfway down from the peak
    assert [g["lr"] for g in adamw.param_groups] == [1e-3, 1e-3]
    assert muon.param_groups[0]["lr"] == pytest.approx(0.02)


def test_unknown_optimizer_is_refused():
    with pytest.raises(ConfigError, match="Unknown optimizer 'sgd'; use one of: adamw, muon"):
        TrainConfig(optimizer="sgd")


def test_state_round_trip_with_two_optimizers(tmp_path):
    model = tiny_gpt()
    opts = make_optimizers(model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    model(torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))[1].backward()
    for opt in opts:
        opt.step()
    info = {"step": 1, "best_val": None}
    save_training(tmp_path, model, CharTokenizer(list("ab")), opts, {"rng.cpu": torch.get_rng_state()}, info)
    states, tensors, saved_info = load_train_state(tmp_path / "state.safetensors")
    assert saved_info == info and "rng.cpu" in tensors
    for opt, saved in zip(opts, states):
        original = opt.state_dict()
        assert saved["param_groups"] == json.loads(json.dumps(original["param_groups"]))
        for idx, state in original["state"].items():
            for key, value in state.items():
                assert torch.equal(saved["state"][idx][key], value.cpu()), (idx, key)


def test_state_saved_before_muon_still_loads(tmp_path):
    """A state file from when runs had one optimizer: keys opt.N.name, one list of groups."""
    groups = [{"params": [0], "lr": 1e-3, "weight_decay": 0.1}]
    metadata = {"format": FORMAT, "param_groups": json.dumps(groups), "info": json.dumps({"step": 5})}
    save_file({"opt.0.exp_avg": torch.ones(3), "rng.cpu": torch.zeros(4, dtype=torch.uint8)},
              str(tmp_path / "state.safetensors"), metadata=metadata)
    states, tensors, info = load_train_state(tmp_path / "state.safetensors")
    assert len(states) == 1 and states[0]["param_groups"] == groups
    assert torch.equal(states[0]["state"][0]["exp_avg"], torch.ones(3)) and "rng.cpu" in tensors


@pytest.mark.parametrize("ns_dtype", [torch.bfloat16, torch.float32])
def test_muon_makes_pytorchs_update(ns_dtype):
    """Same steps as torch.optim.Muon: bit for bit in bf16 (PyTorch's own dtype), to fp32's precision in fp32."""
    from bladegpt.train.optim import Muon

    torch.manual_seed(0)
    theirs_w = torch.randn(48, 16, requires_grad=True)
    ours_w = theirs_w.detach().clone().requires_grad_(True)
    theirs = torch.optim.Muon([theirs_w], lr=0.05, weight_decay=0.1)
    ours = Muon([ours_w], ns_dtype=ns_dtype, lr=0.05, weight_decay=0.1)
    for _ in range(3):
        grad = torch.randn(48, 16)
        theirs_w.grad, ours_w.grad = grad.clone(), grad.clone()
        theirs.step()
        ours.step()
    if ns_dtype == torch.bfloat16:
        assert torch.equal(ours_w, theirs_w)
    else:
        assert torch.allclose(ours_w, theirs_w, atol=3e-3)  # three updates of ~0.02 each, bf16 vs fp32
        assert not torch.equal(ours_w, theirs_w)  # it really iterated in fp32
    assert torch.equal(ours.state[ours_w]["momentum_buffer"], theirs.state[theirs_w]["momentum_buffer"])
