"""The real model from the sources a user has (issue #36): SmolLM2-135M-Instruct's Q4_1 GGUF split in parts as
gguf-split splits it, and served by ollama with a LoRA adapter (a Modelfile's ADAPTER) on top."""

import pytest
import torch

from bladegpt.sources import load_pretrained
from tests.families import logits_of
from tests.realmodel import smollm2_gguf
from tests.test_sources import ollama_store, peft_lora, write_adapter

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")
IDS = [1, 504, 3458, 282, 253, 1345, 30, 2]


def split(path, out, parts: int = 3) -> list:
    """The GGUF at `path` as `parts` files out-0000N-of-0000M.gguf: every key in the first, the split.* keys
    in each, its tensors as stored (quantized blocks copied, not converted)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(out), arch, split_max_tensors=-(-len(reader.tensors) // parts))
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_dtype=gguf.GGMLQuantizationType(t.tensor_type))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(out.parent.glob(f"{out.stem}-*-of-*.gguf"))


def test_smollm2_split_in_three_parts_is_the_whole_file(tmp_path):
    whole = load_pretrained(str(smollm2_gguf()))
    parts = split(smollm2_gguf(), tmp_path / "smollm2.gguf")
    assert len(parts) == 3
    pretrained = load_pretrained(str(parts[0]))
    assert "in 3 parts" in pretrained.description and "Q4_1" in pretrained.description
    assert pretrained.tokenizer.to_dict() == whole.tokenizer.to_dict()
    torch.testing.assert_close(logits_of(pretrained.model, IDS), logits_of(whole.model, IDS), atol=0, rtol=0)


def test_smollm2_with_an_ollama_adapter_is_peft_merged_on_the_same_weights(tmp_path, monkeypatch):
    path = smollm2_gguf()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    lora = peft_lora(theirs)
    write_adapter(lora, tmp_path / "adapter.gguf")
    expected = logits_of(lora.merge_and_unload(), IDS)
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama_store(tmp_path / "store", path, adapters=[tmp_path / "adapter.gguf"])))
    pretrained = load_pretrained("ollama:tiny")
    assert "LoRA adapter" in pretrained.description
    torch.testing.assert_close(logits_of(pretrained.model, IDS), expected, atol=1e-3, rtol=0)
