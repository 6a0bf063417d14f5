"""Where a pretrained model comes from (issue #22): ollama's store, paths that are not hub ids, GGUF files
that are not what they claim. Every mistake is one line and leaves no run folder behind."""

import json

import pytest
import torch

from bladegpt.sources import gguf_path, load_tokenizer_from
from bladegpt.errors import SourceError
from bladegpt.sources.gguf import gguf_model
from bladegpt.sources.ollama import manifest_parts, ollama_blob
from tests.families import logits_of, tiny_family, write_gguf
from tests.safety import assert_one_line_error, invoke

transformers = pytest.importorskip("transformers")


def ollama_store(root, gguf_file, name=("registry.ollama.ai", "library", "tiny", "latest")):
    """A store laid out as ollama writes it: blobs/sha256-<hex> and a manifest naming the model layer."""
    import hashlib

    data = gguf_file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
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
                   {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": len(data)}],
    }))
    return root


def test_ollama_names_map_to_manifest_paths():
    assert manifest_parts("smollm2") == ("registry.ollama.ai", "library", "smollm2", "latest")
    assert manifest_parts("smollm2:135m") == ("registry.ollama.ai", "library", "smollm2", "135m")
    assert manifest_parts("me/voice:v2") == ("registry.ollama.ai", "me", "voice", "v2")
    assert manifest_parts("hf.co/user/repo:Q4_K_M") == ("hf.co", "user", "repo", "Q4_K_M")


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
