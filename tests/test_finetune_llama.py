"""A Llama-family model, end to end as a user runs it (issue #22): prepare with its tokenizer, train from it,
then sample, chat, runs and export --format safetensors on the result; from a Hugging Face folder and
from a GGUF file of the same model."""

import json

import pytest
import torch

from bladegpt.checkpoint import load_checkpoint
from bladegpt.sources import load_pretrained
from tests.families import logits_of, tiny_family, write_gguf
from tests.safety import assert_one_line_error, invoke

transformers = pytest.importorskip("transformers")
from tests.test_hf_tokenizer import build_folder  # noqa: E402  (needs transformers)

TINY = ["--steps", "6", "--block-size", "16", "--batch-size", "4", "--eval-interval", "3"]


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A tiny random SmolLM2-like model: its tokenizer (digits split, <|im_start|> specials) and weights."""
    folder = build_folder(tmp_path_factory.mktemp("smol") / "tiny-smollm", "smollm")
    vocab = json.loads((folder / "tokenizer.json").read_text())
    size = max(vocab["model"]["vocab"].values()) + 1
    model = tiny_family("llama-gqa-tied", vocab=(size + 63) // 64 * 64)
    model.save_pretrained(folder)
    return folder, model


def test_a_folder_and_its_gguf_load_the_same_model_and_tokenizer(llama_folder, tmp_path):
    folder, source = llama_folder
    from tests.test_hf_tokenizer import add_vocabulary

    def vocabulary(writer):  # the folder's tokenizer, as llama.cpp's converter writes it
        add_vocabulary(writer, folder, "smollm", pads=0, add_bos=False)

    write_gguf(source, tmp_path / "tiny.gguf", tokenizer=vocabulary)
    from_folder, from_gguf = load_pretrained(str(folder)), load_pretrained(str(tmp_path / "tiny.gguf"))
    text = "The hunter counted 1234 coins. <|im_start|>user\nhi<|im_end|>"
    assert from_folder.tokenizer.encode(text) == from_gguf.tokenizer.encode(text)
    ids = from_folder.tokenizer.encode(text)
    torch.testing.assert_close(logits_of(from_gguf.model, ids), logits_of(from_folder.model, ids), atol=1e-4, rtol=0)
    assert "GGUF" in from_gguf.description and "F32" in from_gguf.description


def test_fine_tune_sample_chat_runs_and_export(llama_folder, workdir, corpus):
    folder, _ = llama_folder
    assert invoke("prepare", corpus, "--tokenizer-from", folder).exit_code == 0
    dataset = workdir / "datasets" / "tales-tiny-smollm"
    assert json.loads((dataset / "meta.json").read_text())["vocab_size"] < 65536
    result = invoke("train", "--init-from", folder, *TINY)
    assert result.exit_code == 0, result.output
    assert "Llama" in result.output and str(folder) in result.output
    run = workdir / "runs" / "tales-tiny-smollm-1"
    model, tokenizer, _ = load_checkpoint(run / "best.safetensors")
    assert (model.config.arch, model.config.kv_heads, tokenizer.kind) == ("llama", 2, "hf")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in m for m in metrics)
    sampled = invoke("sample", "The hunter", "--max-new-tokens", "12", "--seed", "1", "--num-samples", "2")
    assert sampled.exit_code == 0, sampled.output
    assert sampled.output.count("The hunter") == 2
    chat = invoke_input("Who are you?\n", "chat", "--max-new-tokens", "8", "--seed", "1")
    assert chat.exit_code == 0, chat.output
    listing = invoke("runs", "--json")
    assert listing.exit_code == 0 and "tales-tiny-smollm-1" in listing.output
    assert invoke("export", workdir / "voice.safetensors", "--format", "safetensors").exit_code == 0
    again, _, _ = load_checkpoint(workdir / "voice.safetensors")
    ids = tokenizer.encode("The hunter")
    torch.testing.assert_close(logits_of(again, ids), logits_of(model, ids))


def test_a_dataset_of_another_tokenizer_is_one_line(llama_folder, workdir, corpus):
    folder, _ = llama_folder
    assert invoke("prepare", corpus, "--tokenizer", "char").exit_code == 0
    assert_one_line_error(invoke("train", "--init-from", folder, *TINY), "another tokenizer", "--tokenizer-from")
    assert_one_line_error(invoke("train", "--init-from", folder, "--n-head", "2"), "drop --n-head")
    assert not (workdir / "runs").exists() or not list((workdir / "runs").iterdir())


@pytest.mark.slow
def test_the_compiled_static_cache_step_writes_what_the_eager_one_writes(llama_folder):
    from bladegpt.generate.engine import compile_decode, generate_batch

    folder, _ = llama_folder
    model = load_pretrained(str(folder)).model
    model.config.block_size = 24  # the window slides within 30 new tokens
    model.reset_buffers()
    prompt = [5, 6, 7, 8]

    def run(decode):
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        return torch.stack(list(generate_batch(model, prompt, 30, model.config.vocab_size, gens, temperature=0.8,
                                               decode=decode))).tolist()

    assert run(compile_decode(model)) == run(None)


def invoke_input(text, *args):
    from typer.testing import CliRunner

    from bladegpt.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], input=text)


def test_a_prompt_starts_with_bos_where_the_model_expects_one(tmp_path):
    from bladegpt.generate.engine import prompt_ids
    from bladegpt.tokenizer.hf import HFTokenizer

    llama3 = HFTokenizer.from_folder(build_folder(tmp_path / "llama3", "llama-bpe"))
    smollm = HFTokenizer.from_folder(build_folder(tmp_path / "smollm", "smollm"))
    assert llama3.add_bos and prompt_ids(llama3, "The hunter") == [llama3.bos_id, *llama3.encode("The hunter")]
    assert prompt_ids(llama3, "<|begin_of_text|>Hi") == llama3.encode("<|begin_of_text|>Hi")  # never twice
    assert not smollm.add_bos and prompt_ids(smollm, "The hunter") == smollm.encode("The hunter")


def test_fine_tune_context_mistakes_and_a_gguf_as_checkpoint_are_one_line(llama_folder, workdir, corpus):
    """Found by a new user: --block-size 0 ran at the default context; a GGUF given to sample --checkpoint
    was called damaged."""
    folder, source = llama_folder
    assert invoke("prepare", corpus, "--tokenizer-from", folder).exit_code == 0
    for bad in ("0", "-5"):
        assert_one_line_error(invoke("train", "--init-from", folder, "--block-size", bad), "--block-size must be between 1")
    assert not (workdir / "runs").exists() or not list((workdir / "runs").iterdir())
    write_gguf(source, workdir / "voice.gguf")
    assert_one_line_error(invoke("sample", "Hi", "--checkpoint", workdir / "voice.gguf"), "is a GGUF file",
                          "--init-from")


def test_the_recipes_choices_are_printed_and_each_flag_overrides_its_own():
    from bladegpt.train.recipes import FINETUNE, FINETUNE_PASSES, FINETUNE_TOKENS, finetune_config

    cfg, notes = finetune_config(None, 576, train_tokens=16_700, val_tokens=1_900, block_size=256)
    assert cfg.batch_size * 256 == FINETUNE_TOKENS  # a shorter context gets a bigger batch
    assert cfg.steps == round(FINETUNE_PASSES * 16_700 / FINETUNE_TOKENS)
    assert (cfg.lr, cfg.min_lr_ratio, cfg.weight_decay) == (FINETUNE["lr"], FINETUNE["min_lr_ratio"], FINETUNE["weight_decay"])
    said = " ".join(notes)
    assert f"--steps {cfg.steps}" in said and "--lr" in said and f"every {cfg.eval_interval} steps" in said
    assert cfg.sampling == "epochs" and "--sampling epochs" in said
    flags = dict(steps=7, lr=1e-5, min_lr_ratio=0.5, weight_decay=0.3, batch_size=2, eval_interval=3, patience=1,
                 warmup_steps=0, sampling="random")
    cfg, notes = finetune_config(flags, 576, train_tokens=16_700, val_tokens=1_900, block_size=256)
    assert {k: getattr(cfg, k) for k in flags} == flags
    assert notes == []  # nothing left to choose
    wider, _ = finetune_config(None, 1152, train_tokens=16_700, val_tokens=1_900, block_size=256)
    assert wider.lr == pytest.approx(FINETUNE["lr"] / 2)  # the lr scales with the width
    lora, said = finetune_config(None, 576, train_tokens=16_700, val_tokens=1_900, block_size=256, lora=True)
    assert lora.lr == pytest.approx(10 * FINETUNE["lr"])  # LoRA's adapters learn best at about 10x
    assert f"--lr {lora.lr:.2g} (constant" in " ".join(said) and "LoRA" in " ".join(said)  # the line says the lr used
    given, _ = finetune_config({"lr": 1e-5}, 576, train_tokens=16_700, val_tokens=1_900, block_size=256, lora=True)
    assert given.lr == 1e-5
    gemma, said = finetune_config(None, 640, train_tokens=16_700, val_tokens=1_900, block_size=256, arch="gemma3")
    assert gemma.lr == pytest.approx(3e-5) and "--lr 3e-05" in " ".join(said)  # its family's measured lr
