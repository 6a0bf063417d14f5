"""ollama's local store: `ollama:NAME[:TAG]` to the GGUF file of its model layer.

Layout (ollama's manifest/paths.go, types/model/name.go; shared/research/llama-family.md §5.1): the root
is $OLLAMA_MODELS, else ~/.ollama/models, else the Linux service's /usr/share/ollama/.ollama/models; a
model's manifest is manifests/<host>/<namespace>/<model>/<tag> (defaults registry.ollama.ai, library,
latest), JSON whose layer of media type application/vnd.ollama.image.model names the weights' blob,
blobs/sha256-<hex>, a plain GGUF file; a layer of media type application/vnd.ollama.image.adapter (a
Modelfile's ADAPTER) names a llama.cpp LoRA GGUF that ollama applies on top, merged here (adapter.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bladegpt.errors import SourceError

MODEL_LAYER = "application/vnd.ollama.image.model"
ADAPTER_LAYER = "application/vnd.ollama.image.adapter"
# Weights ollama's runner loads beside the model that a text model cannot use, by media type: said, never dropped.
UNUSED_LAYERS = {"application/vnd.ollama.image.projector": "its vision projector (image input)"}
DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"


def store_roots() -> list[Path]:
    """Where ollama keeps models: OLLAMA_MODELS alone when set, else the user's and the service's places."""
    if os.environ.get("OLLAMA_MODELS"):
        return [Path(os.environ["OLLAMA_MODELS"]).expanduser()]
    return [Path("~/.ollama/models").expanduser(), Path("/usr/share/ollama/.ollama/models")]


def manifest_parts(name: str) -> tuple[str, ...]:
    """NAME[:TAG] as the manifest's path parts: smollm2:135m -> registry.ollama.ai/library/smollm2/135m."""
    model, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
    parts = model.split("/")
    if len(parts) == 1:
        parts = [DEFAULT_HOST, DEFAULT_NAMESPACE, *parts]
    elif len(parts) == 2:
        parts = [DEFAULT_HOST, *parts]
    return (*parts, tag or DEFAULT_TAG)


def installed(roots: list[Path]) -> list[str]:
    """The models of the stores, as `ollama list` names them (library models without host and namespace)."""
    names = []
    for root in roots:
        for manifest in sorted((root / "manifests").glob("*/*/*/*")):
            host, namespace, model, tag = manifest.relative_to(root / "manifests").parts
            # ollama's DisplayShortest: the default host, then the default namespace, left out
            prefix = "" if (host, namespace) == (DEFAULT_HOST, DEFAULT_NAMESPACE) else (
                f"{namespace}/" if host == DEFAULT_HOST else f"{host}/{namespace}/")
            names.append(f"{prefix}{model}:{tag}")
    return names


def ollama_blob(name: str) -> Path:
    """The GGUF file of `ollama:NAME[:TAG]`; one line listing the installed models when it is not there."""
    return ollama_layers(name)[0]


def ollama_unused(name: str) -> list[str]:
    """What `ollama:NAME[:TAG]` holds beside its text model that BladeGPT does not use (a vision projector),
    in words, for the line that says where the model came from."""
    root, manifest = _manifest(name)
    try:
        return [UNUSED_LAYERS[layer["mediaType"]] for layer in json.loads(manifest.read_text())["layers"]
                if layer.get("mediaType") in UNUSED_LAYERS]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SourceError(f"ollama:{name}'s manifest {manifest} cannot be read ({e}); pull the model again.") from None


def ollama_layers(name: str) -> tuple[Path, list[Path]]:
    """The GGUF files of `ollama:NAME[:TAG]`: its model layer, and its adapter layers (a Modelfile's ADAPTER,
    a llama.cpp LoRA GGUF that ollama applies on top); one line listing the installed models when it is
    not there."""
    return _layers(*_manifest(name), name)


def _manifest(name: str) -> tuple[Path, Path]:
    """The store root and manifest file of `ollama:NAME[:TAG]`; one line listing the installed models when
    it is not there."""
    if not name.strip() or ".." in name.split("/") or name.startswith("/"):
        raise SourceError(f"ollama:{name} is not a model name; write it as ollama list shows it, e.g. ollama:smollm2:135m.")
    roots = store_roots()
    parts = manifest_parts(name)
    for root in roots:
        manifest = root.joinpath("manifests", *parts)
        if manifest.is_file():
            return root, manifest
    have = installed(roots)
    where = " or ".join(str(r) for r in roots)
    listing = f"the store has: {', '.join(have)}" if have else "the store has no models"
    raise SourceError(f"ollama:{name} is not in ollama's store ({where}); {listing}. Pull it first (ollama pull "
                      f"{name}) or set OLLAMA_MODELS to the store's folder.")


def _layers(root: Path, manifest: Path, name: str) -> tuple[Path, list[Path]]:
    try:
        layers = json.loads(manifest.read_text())["layers"]
        digests = [layer["digest"] for layer in layers if layer.get("mediaType") in (MODEL_LAYER, ADAPTER_LAYER)]
        models = [layer["digest"] for layer in layers if layer.get("mediaType") == MODEL_LAYER]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SourceError(f"ollama:{name}'s manifest {manifest} cannot be read ({e}); pull the model again.") from None
    if len(models) != 1:
        what = "no model layer (it may be a cloud model)" if not models else f"{len(models)} model layers"
        raise SourceError(f"ollama:{name} has {what}; start from a model with one layer of weights.")
    blobs = [root / "blobs" / str(digest).replace(":", "-") for digest in digests]
    for blob in blobs:
        if not blob.is_file():
            raise SourceError(f"ollama:{name}'s weights ({blob}) are missing from the store; pull the model again.")
    model = blobs[digests.index(models[0])]
    return model, [blob for blob in blobs if blob != model]
