"""The stop tokens are the source's, everywhere (issue #36, item 3): a model that ends a text with several ids
(SmolLM2- and Qwen2.5-Instruct: <|im_end|> and <|endoftext|>; Llama 3: <|eot_id|> and <|end_of_text|>) keeps
all of them from its source through prepare, sample, chat and both exports, and old files still load."""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from bladegpt.generate import engine
from bladegpt.checkpoint import save_checkpoint
from bladegpt.cli import app
from bladegpt.config import ModelConfig, padded_vocab
from bladegpt.data.dataset import TokenData
from bladegpt.export import export
from bladegpt.export.gguf_vocab import unstopped
from bladegpt.tokenizer.hf import CONTROL, NORMAL, HFTokenizer, gguf_stop_ids
from bladegpt.model import GPT
from bladegpt.data.prepare import prepare
from bladegpt.sources import load_tokenizer_from
from bladegpt.tokenizer import GPT2_EOT, tokenizer_from_dict
from tests.conftest import corpus_text
from tests.families import tiny_family

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
from tests.test_export_llama import checkpoint as family_checkpoint  # noqa: E402  (need transformers)
from tests.test_hf_tokenizer import build_folder  # noqa: E402

SEPARATOR = "\n" + "-" * 40 + "\n"


def with_stops(folder, *tokens: str):
    """The folder with a generation_config.json listing `tokens` as its eos_token_id, as Qwen2.5-Instruct's."""
    tok = HFTokenizer.from_folder(folder)
    ids = [tok.tokenizer.token_to_id(t) for t in tokens]
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": ids}))
    return folder


@pytest.fixture(scope="module")
def instruct(tmp_path_factory):
    """A SmolLM2/Qwen2.5-Instruct-like folder: <|endoftext|> 0, <|im_start|> 1, <|im_end|> 2 (its eos)."""
    return with_stops(build_folder(tmp_path_factory.mktemp("instruct") / "smollm", "smollm"), "<|im_end|>", GPT2_EOT)


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    """A Llama 3-Instruct-like folder: eos <|eot_id|>, generate() also stops at <|end_of_text|>."""
    folder = build_folder(tmp_path_factory.mktemp("llama3") / "llama-bpe", "llama-bpe")
    return with_stops(folder, "<|end_of_text|>", "<|eot_id|>")


def test_a_folder_keeps_every_id_generate_stops_at(instruct, llama3):
    tok = HFTokenizer.from_folder(instruct)
    assert (tok.eos_id, tok.eot_id, tok.stop_ids) == (2, 0, (2, 0))
    assert tok.encode(f"a{GPT2_EOT}b")[1] == tok.eot_id  # the separator is the id the tokenizer gives it
    llama = HFTokenizer.from_folder(llama3)
    eot, end = (llama.tokenizer.token_to_id(t) for t in ("<|eot_id|>", "<|end_of_text|>"))
    assert llama.eos_id == eot and llama.stop_ids == (eot, end)
    assert llama.eot_id is None  # no <|endoftext|> token: that text is characters there, and no stop
    (instruct / "generation_config.json").rename(instruct / "moved.json")
    try:  # without generation_config.json, generate() reads config.json's
        (instruct / "config.json").write_text(json.dumps({"eos_token_id": [0, 1]}))
        assert HFTokenizer.from_folder(instruct).stop_ids == (2, 0, 1)
    finally:
        (instruct / "config.json").unlink()
        (instruct / "moved.json").rename(instruct / "generation_config.json")


def test_stops_travel_and_tokenizers_saved_with_one_id_still_load(instruct, llama3):
    llama = HFTokenizer.from_folder(llama3)
    assert tokenizer_from_dict(llama.to_dict()).stop_ids == llama.stop_ids
    old = HFTokenizer.from_folder(instruct).to_dict()
    del old["stop_ids"]  # as datasets and runs saved before: one eos id
    again = tokenizer_from_dict(old)
    assert (again.eos_id, again.eot_id, again.stop_ids) == (2, 0, (2, 0))


def test_a_gguf_file_stops_where_llama_cpp_does():
    """llama.cpp's end-of-generation ids: the eos/eot/eom keys, fill-in-the-middle pad/repo/file-separator
    tokens (keyed or found by text), and every token spelled as an end (<|im_end|>, <|endoftext|>, ...)."""
    tokens = ["a", "b", "<|im_end|>", GPT2_EOT, "<reponame>", "<|im_start|>", "<|mine|>", "<|eot_id|>", "ab"]
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [NORMAL, NORMAL] + [CONTROL] * 6 + [NORMAL],
            "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.eom_token_id": 6}
    assert gguf_stop_ids(meta) == [2, 6, 3, 7, 4]
    tok = HFTokenizer.from_gguf(meta)
    assert tok.stop_ids == (2, 6, 3, 7, 4) and tok.eot_id == 3
    assert 5 not in tok.stop_ids  # a control token that is no end
    assert gguf_stop_ids({**meta, "tokenizer.ggml.fim_rep_token_id": 1}) == [2, 6, 3, 7, 1]  # the key, not the text


def test_prepare_records_the_separator_the_tokenizer_gives_and_every_stop(workdir, instruct):
    source = workdir / "model"
    shutil.copytree(instruct, source)
    tiny_family("qwen2-biases", vocab=512).config.save_pretrained(source)  # a model folder: its config.json too
    text = f"\n{GPT2_EOT}\n".join(corpus_text(20, seed=i) for i in range(12))
    (workdir / "docs.txt").write_text(text)
    data = TokenData(prepare([workdir / "docs.txt"], out_dir=workdir / "ds", tokenizer_from=str(source)).out_dir)
    assert data.meta["eot_id"] == data.tokenizer.eot_id == 0 and data.meta["stop_ids"] == [2, 0]
    ids = data.splits["train"].tolist() + data.splits["val"].tolist()
    assert ids.count(0) == text.count(GPT2_EOT) == 11


@pytest.fixture
def voice(workdir, instruct):
    """A tiny checkpoint with the instruct tokenizer, and the ids of a, b and its specials."""
    tok = HFTokenizer.from_folder(instruct)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=padded_vocab(tok.vocab_size), block_size=16, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(workdir / "voice.safetensors", model, tok, step=0)
    (a,), (b,) = tok.encode("a"), tok.encode("b")
    return workdir / "voice.safetensors", a, b


def by_seed(script: dict[int, list[int]]):
    """sample_next_token replaced by a script: the row whose generator has seed s draws script[s][t] at step t."""
    steps: dict[int, int] = {}

    def draw(logits, generators, *args, **kwargs):
        rows = []
        for g in generators:
            seed = g.initial_seed()
            t = steps[seed] = steps.get(seed, -1) + 1
            rows.append(script[seed][min(t, len(script[seed]) - 1)])
        return torch.tensor(rows)

    return draw


def test_num_samples_prints_what_each_seed_prints_alone(voice, monkeypatch):
    path, a, b = voice
    script = {0: [a, 1, b, 0, a], 1: [b, 2, a], 2: [a, 1, a]}  # 1 = <|im_start|>: special, no stop, no text
    flags = ["--checkpoint", str(path), "--max-new-tokens", "5", "--precision", "fp32", "--compile", "off"]

    def run(*extra: str) -> str:
        monkeypatch.setattr(engine, "sample_next_token", by_seed(script))
        result = CliRunner().invoke(app, ["sample", "b", *flags, *extra])
        assert result.exit_code == 0, result.output
        return result.stdout

    together = run("--num-samples", "3", "--seed", "0")
    alone = [run("--seed", str(seed)) for seed in range(3)]
    assert together.split(SEPARATOR) == [alone[0][:-1], alone[1][:-1], alone[2]]
    assert alone == ["bab\n", "bb\n", "baaaa\n"]  # stopped at <|endoftext|>, at <|im_end|>, never


def test_chat_ends_a_turn_at_either_end(voice, monkeypatch):
    path, a, b = voice
    monkeypatch.setattr(engine, "sample_next_token", by_seed({0: [a, b, 2, a], 1: [b, 1, a, 0, b]}))
    result = CliRunner().invoke(app, ["chat", "--checkpoint", str(path), "--seed", "0", "--precision", "fp32",
                                      "--compile", "off"], input="ab\nba\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:2] == ["ab", "ba"] and "<|" not in result.output


class Script:
    """A logits processor for transformers' generate(): the n-th new token is forced to script[n]."""

    def __init__(self, prompt: int, script: list[int]):
        self.prompt, self.script = prompt, script

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, -float("inf"))
        forced[:, self.script[min(input_ids.shape[1] - self.prompt, len(self.script) - 1)]] = 0
        return forced


def test_hf_export_lets_generate_stop_at_either(tmp_path, instruct):
    tok = HFTokenizer.from_folder(instruct)
    family_checkpoint("qwen2-biases", tok, tmp_path)
    out = export(tmp_path / "hf", tmp_path / "model.safetensors", format="hf")
    for name in ("config.json", "generation_config.json"):
        assert json.loads((out / name).read_text())["eos_token_id"] == [2, 0]
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert transformers.AutoTokenizer.from_pretrained(out).eos_token_id == 2
    prompt = torch.tensor([tok.encode("ab")])
    for stop in (2, 0):
        script = Script(prompt.shape[1], [5, 6, stop, 7])
        new = model.generate(prompt, max_new_tokens=8, do_sample=False,
                             logits_processor=transformers.LogitsProcessorList([script]))[0, prompt.shape[1]:]
        assert new.tolist() == [5, 6, stop]


@pytest.mark.parametrize("source", ["instruct", "llama3"])
def test_gguf_export_writes_eos_and_eot_and_reads_them_back(tmp_path, request, source):
    tok = HFTokenizer.from_folder(request.getfixturevalue(source))
    family_checkpoint("llama-gqa-tied", tok, tmp_path)
    warned = []
    out = export(tmp_path / "voice.gguf", tmp_path / "model.safetensors", format="gguf", dtype="f32",
                 warn=warned.append)
    fields = gguf.GGUFReader(out).fields
    eos, eot = tok.stop_ids  # <|im_end|> and <|endoftext|>; <|eot_id|> and <|end_of_text|>
    assert fields["tokenizer.ggml.eos_token_id"].contents() == eos
    assert fields["tokenizer.ggml.eot_token_id"].contents() == eot
    assert "tokenizer.ggml.eom_token_id" not in fields and warned == []
    assert load_tokenizer_from(str(out)).stop_ids == tok.stop_ids


def test_gguf_export_names_stops_llama_cpp_would_miss(tmp_path, instruct):
    """Three stops fit the eos, eot and eom keys; a fourth llama.cpp finds only by its text."""
    source = HFTokenizer.from_folder(instruct)
    tok = HFTokenizer(source.tokenizer, 1, 2, stop_ids=[10, 11, 12])
    assert tok.stop_ids == (2, 10, 11, 12, 0) and unstopped(tok) == [12]
    assert unstopped(source) == []
    family_checkpoint("llama-gqa-tied", tok, tmp_path)
    warned = []
    export(tmp_path / "voice.gguf", tmp_path / "model.safetensors", format="gguf", dtype="f32", warn=warned.append)
    assert [line for line in warned if "will not stop at" in line] == [
        f"llama.cpp reads at most three stop ids from a GGUF file and finds others by name only, so it will not "
        f"stop at 12 {tok.decode([12])!r}, where BladeGPT does; export --format hf keeps them all."]
