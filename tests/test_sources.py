"""Where a pretrained model comes from (issue #22): ollama's store, paths that are not hub ids, GGUF files
that are not what they claim. Every mistake is one line and leaves no run folder behind."""

import json
import shutil

import pytest
import torch

from bladegpt.sources import gguf_path, load_tokenizer_from
from bladegpt.errors import SourceError
from bladegpt.sources.gguf import gguf_model
from bladegpt.sources.ollama import manifest_parts, ollama_blob
from tests.families import logits_of, tiny_family, write_gguf
from tests.safety import assert_one_line_error, invoke

transformers = pytest.importorskip("transformers")


def ollama_store(root, gguf_file, name=("registry.ollama.ai", "library", "tiny", "latest"), adapters=(), projector=None):
    """A store laid out as ollama writes it: blobs/sha256-<hex> and a manifest naming the model layer (and
    the adapter layers of a Modelfile's ADAPTER lines)."""
    import hashlib

    def blob(path):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        (root / "blobs" / f"sha256-{digest}").write_bytes(data)
        return digest, len(data)

    (root / "blobs").mkdir(parents=True, exist_ok=True)
    digest, size = blob(gguf_file)
    extra = [{"mediaType": "application/vnd.ollama.image.adapter", "digest": f"sha256:{d}", "size": n}
             for d, n in map(blob, adapters)]
    if projector is not None:
        d, n = blob(projector)
        extra.append({"mediaType": "application/vnd.ollama.image.projector", "digest": f"sha256:{d}", "size": n})
    config = json.dumps({"model_format": "gguf", "model_family": "llama"}).encode()
    config_digest = hashlib.sha256(config).hexdigest()
    (root / "blobs" / f"sha256-{config_digest}").write_bytes(config)
    manifest = root.joinpath("manifests", *name)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": f"sha256:{config_digest}",
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64, "size": 3},
                   {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": size},
                   *extra],
    }))
    return root


def test_ollama_names_map_to_manifest_paths():
    assert manifest_parts("smollm2") == ("registry.ollama.ai", "library", "smollm2", "latest")
    assert manifest_parts("smollm2:135m") == ("registry.ollama.ai", "library", "smollm2", "135m")
    assert manifest_parts("me/voice:v2") == ("registry.ollama.ai", "me", "voice", "v2")
    assert manifest_parts("hf.co/user/repo:Q4_K_M") == ("hf.co", "user", "repo", "Q4_K_M")


def test_the_store_lists_models_as_ollama_list_names_them(tmp_path):
    from bladegpt.sources.ollama import installed

    for parts in [("registry.ollama.ai", "library", "smollm2", "135m"), ("registry.ollama.ai", "me", "voice", "v2"),
                  ("hf.co", "user", "repo", "Q4_K_M")]:
        manifest = tmp_path.joinpath("manifests", *parts)
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text("{}")
    assert sorted(installed([tmp_path])) == ["hf.co/user/repo:Q4_K_M", "me/voice:v2", "smollm2:135m"]
    assert [manifest_parts(name) for name in ("me/voice:v2", "hf.co/user/repo:Q4_K_M")] == [
        ("registry.ollama.ai", "me", "voice", "v2"), ("hf.co", "user", "repo", "Q4_K_M")]  # each name finds its model


def test_an_ollama_model_loads_from_its_store(tmp_path, monkeypatch):
    source = tiny_family("llama-gqa-tied")
    write_gguf(source, tmp_path / "m.gguf")
    store = ollama_store(tmp_path / "store", tmp_path / "m.gguf")
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    blob = gguf_path("ollama:tiny")
    assert blob == ollama_blob("tiny:latest") and blob.parent == store / "blobs"
    model, _, _ = gguf_model(blob)
    ids = [1, 2, 3, 200, 7]
    torch.testing.assert_close(logits_of(model, ids), logits_of(source, ids), atol=1e-4, rtol=0)


def test_a_missing_ollama_model_lists_what_the_store_has(tmp_path, monkeypatch, workdir, corpus):
    write_gguf(tiny_family("llama-gqa-tied"), tmp_path / "m.gguf")
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama_store(tmp_path / "store", tmp_path / "m.gguf")))
    with pytest.raises(SourceError, match=r"ollama:smollm2:135m is not in ollama's store .* the store has: tiny:latest"):
        gguf_path("ollama:smollm2:135m")
    assert invoke("prepare", corpus, "--tokenizer", "char").exit_code == 0
    assert_one_line_error(invoke("train", "--init-from", "ollama:qwen3"), "the store has: tiny:latest", "ollama pull")
    assert not (workdir / "runs").exists() or not list((workdir / "runs").iterdir())
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "empty"))
    assert_one_line_error(invoke("prepare", corpus, "--tokenizer-from", "ollama:qwen3"), "the store has no models")


def test_a_folder_named_gguf_is_called_a_folder(workdir, corpus):
    (workdir / "voice.gguf").mkdir()
    assert invoke("prepare", corpus, "--tokenizer", "char").exit_code == 0
    for args in (["train", "--init-from", "voice.gguf"], ["prepare", corpus, "--tokenizer-from", "voice.gguf"]):
        assert_one_line_error(invoke(*args), "voice.gguf is a folder, not a .gguf file")


@pytest.mark.parametrize("path", [r"C:\Users\me\models\gpt2", r"models\gpt2", "./models/gpt2", "~/models/gpt2",
                                  "models/gpt2/", "D:/models", "/opt/models/gpt2", "voice.gguf"])
def test_a_path_is_never_taken_for_a_hub_id(workdir, corpus, monkeypatch, path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_one_line_error(invoke("prepare", corpus, "--tokenizer-from", path, "--out", "x"), "No such file", path)
    assert invoke("prepare", corpus, "--tokenizer", "char").exit_code == 0
    assert_one_line_error(invoke("train", "--init-from", path), "No such file")


@pytest.mark.parametrize("name", ["not a repo", "owner/na me", "bad..name", "emoji-\U0001F600"])
def test_neither_a_path_nor_a_repo_id_says_both(name):
    with pytest.raises(SourceError, match="neither an existing file or folder nor a Hugging Face repo id"):
        load_tokenizer_from(name)


def test_a_file_named_gguf_that_is_not_one_is_one_line(workdir, corpus):
    (workdir / "fake.gguf").write_text("not a model")
    assert invoke("prepare", corpus, "--tokenizer", "char").exit_code == 0
    assert_one_line_error(invoke("train", "--init-from", "fake.gguf"), "is not a GGUF file")
    truncated = workdir / "cut.gguf"
    write_gguf(tiny_family("llama-gqa-tied"), workdir / "whole.gguf")
    truncated.write_bytes((workdir / "whole.gguf").read_bytes()[:5000])
    assert_one_line_error(invoke("train", "--init-from", truncated), "cut.gguf")


# Everything a source holds is used, or refused by name (issue #36): an ollama model's ADAPTER layer, GGUF
# split in parts, sharded pickle weights, an untied head without its weights, more token ids than rows.

IDS = [5, 17, 250, 3, 99, 100, 7, 42, 300, 1, 0, 64]
Q_K = ("self_attn.q_proj", "self_attn.k_proj")


def peft_lora(source, seed: int = 1):
    """peft's LoRA (rank 4, alpha 8) on every projection of `source`, with B random (nonzero), as trained."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(source, peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn_like(p))
    return model.eval()


def write_adapter(lora, path, arch: str = "llama", alpha: float = 8.0, extra: dict | None = None,
                  invocation: list | None = None) -> None:
    """A LoRA adapter GGUF laid out as llama.cpp's convert_lora_to_gguf.py writes it: general.type adapter,
    adapter.lora.alpha, `<base tensor>.lora_a` (r, in) and `.lora_b` (out, r) in GGUF names, lora_b's q/k
    rows permuted for arch llama as the base's are."""
    import gguf

    from tests.families import GGUF_NAMES, permute

    cfg = lora.base_model.model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    if invocation:  # an activated LoRA's invocation tokens (llama.cpp's adapter.alora.invocation_tokens)
        writer.add_array("adapter.alora.invocation_tokens", invocation)
    for name, p in lora.named_parameters():
        if "lora_" not in name:
            continue
        i, rest = name.split(".layers.")[1].split(".", 1)  # ...layers.0.self_attn.q_proj.lora_A.default.weight
        module, half = rest.split(".lora_")
        w = p.detach().float().numpy()
        if half.startswith("B") and arch == "llama" and module in Q_K:
            w = permute(w, cfg.num_attention_heads if module == Q_K[0] else cfg.num_key_value_heads)
        writer.add_tensor(f"blk.{i}.{GGUF_NAMES[module]}.weight.lora_{half[0].lower()}", w)
    for name, w in (extra or {}).items():
        writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def with_vocabulary(tmp_path, family: str = "llama-gqa-tied", extra_rows: int = 0):
    """A tiny random model whose GGUF (tmp_path/base.gguf) carries a real vocabulary (a SmolLM2-like BPE of
    about 500 ids) on an embedding of that many rows plus `extra_rows` (fewer, where negative)."""
    from tests.test_hf_tokenizer import add_vocabulary, build_folder

    folder = build_folder(tmp_path / "tokenizer", "smollm")
    ids = max(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"].values()) + 1
    base = tiny_family(family, vocab=ids + extra_rows)
    write_gguf(base, tmp_path / "base.gguf", tokenizer=lambda w: add_vocabulary(w, folder, "smollm", pads=0,
                                                                                add_bos=False))
    return base, folder, ids


def test_an_ollama_adapter_is_merged_into_its_base_as_peft_merges_it(tmp_path, monkeypatch):
    from bladegpt.sources import load_pretrained

    base, _, _ = with_vocabulary(tmp_path)
    bare = logits_of(base, IDS)
    lora = peft_lora(base)
    write_adapter(lora, tmp_path / "adapter.gguf")
    merged = lora.merge_and_unload()
    expected = logits_of(merged, IDS)
    assert (expected - bare).abs().max() > 0.05  # the adapter changes the model
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama_store(tmp_path / "store", tmp_path / "base.gguf",
                                                         adapters=[tmp_path / "adapter.gguf"])))
    pretrained = load_pretrained("ollama:tiny")
    torch.testing.assert_close(logits_of(pretrained.model, IDS), expected, atol=1e-4, rtol=0)
    assert "LoRA adapter" in pretrained.description and "rank 4, alpha 8" in pretrained.description
    assert load_tokenizer_from("ollama:tiny").to_dict() == pretrained.tokenizer.to_dict()


def test_an_ollama_vision_projector_is_named_as_not_used(tmp_path, monkeypatch):
    """A vision model's store holds a projector beside the text model: the text model loads and the line
    that says where it came from names the projector as not used, never dropping it silently."""
    from bladegpt.sources import load_pretrained

    source, _, _ = with_vocabulary(tmp_path)
    (tmp_path / "mmproj.gguf").write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama_store(tmp_path / "store", tmp_path / "base.gguf",
                                                         projector=tmp_path / "mmproj.gguf")))
    loaded = load_pretrained("ollama:tiny")
    assert "its vision projector (image input) is not used" in loaded.description
    torch.testing.assert_close(logits_of(loaded.model, IDS), logits_of(source, IDS), atol=1e-4, rtol=0)
    plain = ollama_store(tmp_path / "plain", tmp_path / "base.gguf")
    monkeypatch.setenv("OLLAMA_MODELS", str(plain))
    assert "not used" not in load_pretrained("ollama:tiny").description


@pytest.mark.parametrize("case, fragment", [
    ("arch", "is for arch 'qwen2', its base is 'llama'"),
    ("norm", "holds blk.0.attn_norm.weight"),
    ("shape", "does not fit its base"),
    ("half", "without its other half"),
    ("embedding", "adapts the token embedding"),
    ("alora", "activated LoRA (aLoRA)"),
])
def test_an_ollama_adapter_that_cannot_be_merged_is_one_line(tmp_path, monkeypatch, workdir, corpus, case, fragment):
    import numpy as np

    base, _, _ = with_vocabulary(tmp_path)
    if case == "shape":  # an adapter trained on another base, with a wider hidden size
        import transformers as tf

        other = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=320, hidden_size=96, intermediate_size=96,
                                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
        lora = peft_lora(other)
    else:
        lora = peft_lora(base)
    extra = {"norm": {"blk.0.attn_norm.weight": np.ones(64, dtype=np.float32)},
             "half": {"blk.0.ffn_up.weight.extra.lora_a": np.ones((4, 64), dtype=np.float32)},
             "embedding": {"token_embd.weight.lora_a": np.ones((base.config.vocab_size, 4), dtype=np.float32),
                           "token_embd.weight.lora_b": np.ones((64, 4), dtype=np.float32)}}.get(case)
    write_adapter(lora, tmp_path / "adapter.gguf", arch="qwen2" if case == "arch" else "llama", extra=extra,
                  invocation=[1, 2] if case == "alora" else None)
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama_store(tmp_path / "store", tmp_path / "base.gguf",
                                                         adapters=[tmp_path / "adapter.gguf"])))
    assert_one_line_error(invoke("prepare", corpus, "--tokenizer-from", "ollama:tiny"), "ollama:tiny", fragment)
    assert not (workdir / "datasets").exists()
    assert invoke("prepare", corpus, "--tokenizer", "char").exit_code == 0
    assert_one_line_error(invoke("train", "--init-from", "ollama:tiny"), "ollama:tiny", fragment)
    assert not (workdir / "runs").exists() or not list((workdir / "runs").iterdir())


def test_a_split_gguf_is_read_from_its_first_part(tmp_path, workdir, corpus):
    from bladegpt.sources import load_pretrained
    from tests.test_hf_tokenizer import add_vocabulary

    _, folder, ids = with_vocabulary(tmp_path)
    source = tiny_family("llama-mha-untied-llama3", vocab=ids)
    write_gguf(source, tmp_path / "m.gguf", split_max_tensors=8,
               tokenizer=lambda w: add_vocabulary(w, folder, "smollm", pads=0, add_bos=False))
    parts = sorted(tmp_path.glob("m-*-of-*.gguf"))
    assert len(parts) >= 3 and parts[0].name == f"m-00001-of-{len(parts):05d}.gguf"
    pretrained = load_pretrained(str(parts[0]))
    torch.testing.assert_close(logits_of(pretrained.model, IDS), logits_of(source, IDS), atol=1e-4, rtol=0)
    assert f"in {len(parts)} parts" in pretrained.description
    assert_one_line_error(invoke("prepare", corpus, "--tokenizer-from", parts[1]), "part 2 of a model split",
                          f"pass its first part, {parts[0]}")
    renamed = parts[0].with_name("m.gguf")
    renamed.write_bytes(parts[0].read_bytes())
    assert_one_line_error(invoke("prepare", corpus, "--tokenizer-from", renamed), "part 1 of a model split",
                          f"does not end in -00001-of-{len(parts):05d}.gguf")
    parts[-1].rename(tmp_path / "elsewhere.gguf")
    assert_one_line_error(invoke("prepare", corpus, "--tokenizer-from", parts[0]), "is missing", parts[-1].name)
    assert invoke("prepare", corpus, "--tokenizer", "char").exit_code == 0
    assert_one_line_error(invoke("train", "--init-from", parts[0]), "is missing", parts[-1].name)


@pytest.mark.parametrize("weights", ["safetensors", "bin", "legacy-bin"])
def test_sharded_weights_are_read_whole(tmp_path, weights):
    from bladegpt.sources import hf_model

    source = tiny_family("qwen3-qknorm")
    source.save_pretrained(tmp_path, max_shard_size="100KB")
    index = "model.safetensors.index.json"
    if weights != "safetensors":  # transformers 4's save_pretrained(safe_serialization=False): the same, pickled
        from safetensors.torch import load_file

        spec = json.loads((tmp_path / index).read_text())
        for shard in set(spec["weight_map"].values()):
            torch.save(load_file(tmp_path / shard), tmp_path / shard.replace("model-", "pytorch_model-").replace(
                ".safetensors", ".bin"), _use_new_zipfile_serialization=weights == "bin")  # legacy: torch < 1.6's
            (tmp_path / shard).unlink()
        spec["weight_map"] = {k: v.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
                              for k, v in spec["weight_map"].items()}
        (tmp_path / index).unlink()
        index = "pytorch_model.bin.index.json"
        (tmp_path / index).write_text(json.dumps(spec))
    shards = json.loads((tmp_path / index).read_text())["weight_map"].values()
    assert len(set(shards)) >= 3
    model, _, _ = hf_model(tmp_path)
    torch.testing.assert_close(logits_of(model, IDS), logits_of(source, IDS), atol=1e-4, rtol=0)
    (tmp_path / sorted(set(shards))[-1]).unlink()
    with pytest.raises(SourceError, match=f"lacks 1 of the .* weight shards {index} names"):
        hf_model(tmp_path)


def test_an_untied_head_without_its_weights_is_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    from bladegpt.sources import hf_model

    tiny_family("qwen3-qknorm").save_pretrained(tmp_path)  # tie_word_embeddings: false
    state = load_file(tmp_path / "model.safetensors")
    del state["lm_head.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SourceError, match="tie_word_embeddings: false.* no lm_head.weight"):
        hf_model(tmp_path)


def test_a_tokenizer_with_more_ids_than_embedding_rows_is_one_line(tmp_path, workdir, corpus):
    _, folder, ids = with_vocabulary(tmp_path, extra_rows=-10)  # base.gguf: 10 ids without a row
    tiny_family("llama-gqa-tied", vocab=ids - 10).save_pretrained(folder)  # the same, as a Hugging Face folder
    sizes = (f"{ids:,} ids", f"only {ids - 10:,} rows")
    assert invoke("prepare", corpus, "--tokenizer", "char").exit_code == 0
    for source in (folder, tmp_path / "base.gguf"):
        assert_one_line_error(invoke("prepare", corpus, "--tokenizer-from", source, "--out", "x"), *sizes)
        assert_one_line_error(invoke("train", "--init-from", source), *sizes)
    assert not (workdir / "x").exists()
    assert not (workdir / "runs").exists() or not list((workdir / "runs").iterdir())


def test_a_gguf_model_is_shown_by_its_files_name(tmp_path, monkeypatch):
    """SmolLM2's file was shown as 'smollm2 135M 8k-lc100k-mix1-ep2' (general.basename, size_label and
    finetune), which reads badly: a GGUF file is shown by its file's name, a split model's without its part
    number, whatever its metadata's names; an ollama model by the name it was asked for."""
    from bladegpt.sources import load_pretrained
    from tests.test_hf_tokenizer import add_vocabulary

    base, folder, _ = with_vocabulary(tmp_path)

    def named(writer):
        add_vocabulary(writer, folder, "smollm", pads=0, add_bos=False)
        writer.add_basename("smollm2")
        writer.add_size_label("135M")
        writer.add_finetune("8k-lc100k-mix1-ep2")

    write_gguf(base, tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf", tokenizer=named)
    described = load_pretrained(str(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")).description
    assert described.startswith("SmolLM2-135M-Instruct.Q4_1: llama "), described
    assert "smollm2 135M" not in described
    assert load_pretrained(str(tmp_path / "base.gguf")).description.startswith("base: ")  # not general.name's
    shutil.copy(tmp_path / "base.gguf", tmp_path / "My Base ü.Q8_0.GGUF")  # its suffix in capitals was shown
    assert load_pretrained(str(tmp_path / "My Base ü.Q8_0.GGUF")).description.startswith("My Base ü.Q8_0: ")
    write_gguf(base, tmp_path / "Nameless.gguf", split_max_tensors=8,
               tokenizer=lambda w: (add_vocabulary(w, folder, "smollm", pads=0, add_bos=False),
                                    w.kv_data[0].pop("general.name")))
    first = sorted(tmp_path.glob("Nameless-*-of-*.gguf"))[0]
    assert load_pretrained(str(first)).description.startswith("Nameless: "), first
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama_store(tmp_path / "store", tmp_path / "base.gguf")))
    assert load_pretrained("ollama:tiny").description.startswith("tiny: ")  # its blob's name is a hash
