"""A prepared dataset: its files, its metadata, and the batches training reads from it (prepare.py writes it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bladegpt.config import plural
from bladegpt.encoding import openable
from bladegpt.errors import DataError, TokenizerError
from bladegpt.tokenizer import load_tokenizer

DATASETS_DIR = Path("datasets")
META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"
TOKEN_FILES = ("train.bin", "val.bin")
# Which tokens are targets (uint8 a token, 1: trained on and scored), where prepare --speaker wrote them; a
# split without one trains on every token, as every dataset from before them does.
MASK_FILES = {"train": "train_mask.bin", "val": "val_mask.bin"}
DATASET_FILES = {META_FILE, TOKENIZER_FILE, *TOKEN_FILES, *MASK_FILES.values()}


def latest_dataset(root: Path = DATASETS_DIR) -> Path:
    """The most recently prepared dataset folder."""
    metas = sorted(Path(root).glob(f"*/{META_FILE}"), key=lambda p: p.stat().st_mtime)
    if not metas:
        raise DataError("No prepared dataset found; run `bladegpt prepare FILE.txt` first.")
    return metas[-1].parent


def fingerprint(folder: Path) -> str:
    """A hash of the token files and tokenizer: a run records it, and resume checks its data is the same.
    prepare computes the same hash as it writes (for datasets from before, it is computed here). Mask files,
    where there are, are hashed last (a dataset without them hashes as it always has)."""
    digest = hashlib.sha256()
    masks = [name for name in MASK_FILES.values() if (Path(folder) / name).is_file()]
    for name in (*TOKEN_FILES, TOKENIZER_FILE, *masks):
        with open(Path(folder) / name, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()[:16]


def read_meta(folder: Path) -> dict:
    path = Path(folder) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta["dtype"] not in ("uint16", "uint32"):
            raise ValueError(f"unknown dtype {meta['dtype']!r}")
        for key in ("vocab_size", "train_tokens", "val_tokens"):
            if not isinstance(meta[key], int) or meta[key] < 0:
                raise ValueError(f"{key} is not a count")
        if not isinstance(meta.get("masks", []), list) or not set(meta.get("masks", [])) <= set(MASK_FILES):
            raise ValueError(f"masks {meta['masks']!r} are not splits")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path} is damaged ({e}); prepare the dataset again with `bladegpt prepare`.") from None
    return meta


def stream_seed(seed: int, stream: str, index: int) -> int:
    """A 64-bit generator seed for draw `index` of the run's random stream `stream` (e.g. "token-noise"),
    from its --seed alone: a resumed run, or another number of processes, draws the same; other streams and
    other seeds draw independently (a hash, not seed + index, so that no two streams share seeds)."""
    digest = hashlib.blake2b(f"{seed}:{stream}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _map_tokens(path: Path, n_tokens: int, dtype):
    """The token file, memory-mapped read-only (a dataset on a read-only disk trains); its size must be
    what meta.json says, or it was damaged after prepare."""
    import torch

    itemsize = torch.empty(0, dtype=dtype).element_size()
    if not path.is_file():
        raise DataError(f"{path} is missing; the dataset is damaged: prepare it again with `bladegpt prepare`.")
    size = path.stat().st_size
    if size != n_tokens * itemsize:
        raise DataError(f"{path} has {size:,} bytes but {META_FILE} says {n_tokens:,} tokens "
                        f"({n_tokens * itemsize:,} bytes); the dataset is damaged: prepare it again.")
    if n_tokens == 0:
        return torch.empty(0, dtype=dtype)
    with openable(path) as name:  # private map: never written
        return torch.from_file(name, shared=False, size=n_tokens, dtype=dtype)


class TokenData:
    """A prepared dataset: memory-mapped token files, the tokenizer and its metadata."""

    def __init__(self, folder: Path):
        import torch

        folder = Path(folder)
        meta_path = folder / META_FILE
        if not folder.exists():
            raise DataError(f"No dataset at {folder}; check the path, or make one with `bladegpt prepare FILE.txt --out "
                            f"{folder}`.")
        if not meta_path.is_file():
            raise DataError(f"{folder} is not a dataset made by `bladegpt prepare` (no {META_FILE}); give --data a "
                            "folder prepare wrote, or run `bladegpt prepare FILE.txt` on your text.")
        self.folder = folder
        self.meta = read_meta(folder)
        try:
            self.tokenizer = load_tokenizer(folder / TOKENIZER_FILE)
        except TokenizerError as e:
            raise DataError(str(e)) from None
        if self.tokenizer.vocab_size != self.meta["vocab_size"]:
            raise DataError(f"{folder}'s {TOKENIZER_FILE} has {self.tokenizer.vocab_size} tokens but {META_FILE} "
                            f"says {self.meta['vocab_size']}; the dataset is damaged: prepare it again.")
        dtype = torch.uint16 if self.meta["dtype"] == "uint16" else torch.uint32
        self.splits = {split: _map_tokens(folder / f"{split}.bin", self.meta[f"{split}_tokens"], dtype)
                       for split in ("train", "val")}
        self.masks = {split: _map_tokens(folder / MASK_FILES[split], self.meta[f"{split}_tokens"], torch.uint8).bool()
                      for split in self.meta.get("masks", ())}  # (N,) True: a target; only the splits that have one

    @property
    def fingerprint(self) -> str:
        """What runs record of their data (datasets from before fingerprints are hashed now)."""
        return self.meta.get("fingerprint") or fingerprint(self.folder)

    @property
    def train_bytes(self) -> int:
        """Bytes of training text (datasets from before meta.json recorded them are counted here)."""
        if "train_bytes" in self.meta:
            return self.meta["train_bytes"]
        import torch

        lengths = torch.tensor([len(self.tokenizer.token_bytes(i)) for i in range(self.tokenizer.vocab_size)])
        return int(lengths[self.splits["train"].long()].sum())

    def target_text(self, split: str) -> str:
        """The text a split's model is judged against (the voice report's held-out text, the copy meter's
        text): the split's target tokens decoded (a speaker's dataset: their lines, each with the blank line
        that ends it; else the whole split), each document separator (a stop id) a line break rather than
        its spelling."""
        tokens = self.splits[split]
        if split in self.masks:
            tokens = tokens[self.masks[split]]
        stops = set(self.tokenizer.stop_ids)
        table = [b"\n" if i in stops else self.tokenizer.token_bytes(i) for i in range(self.tokenizer.vocab_size)]
        return b"".join(table[i] for i in tokens.tolist()).decode("utf-8", errors="replace")

    def check_fits(self, block_size: int) -> None:
        for split, tokens in self.splits.items():
            if len(tokens) <= block_size + 1:
                raise DataError(
                    f"The {split} split has only {plural(len(tokens), 'token')}, too few for a block size of "
                    f"{block_size}; " + ("" if len(tokens) < 3 else "use a smaller --block-size, or ")
                    + "prepare more text" + (" or a larger --val-fraction." if split == "val" else ".")
                )

    def batch(self, split: str, ix, block_size: int, context_weight: float = 0.0):
        """Inputs and next-token targets (B, T) for the windows starting at ix (B,), and what each target's loss
        counts for (B, T), or None where every target counts 1. On a masked split a target outside the mask is
        -1 (the loss ignores it), or, with a context_weight above 0, kept at that weight. A model that expects bos first (add_bos: Gemma, Llama 3) reads
        it in place of each window's first input, as at a text's start, so it trains and is scored as it samples:
        Gemma 3 270M reads officer_k's val split at 1.302 bpb without it, 1.153 with it
        (docs/benchmarks/finetune.md, "Gemma 3 270M"). The targets stay the window's."""
        import torch

        data = self.splits[split]
        x = torch.stack([data[i : i + block_size] for i in ix.tolist()]).long()
        y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix.tolist()]).long()
        weights = None
        if split in self.masks:
            mask = torch.stack([self.masks[split][i + 1 : i + 1 + block_size] for i in ix.tolist()])
            if context_weight > 0:
                weights = torch.where(mask, 1.0, context_weight)
            else:
                y = y.masked_fill(~mask, -1)
        if self.tokenizer.add_bos and self.tokenizer.bos_id is not None:
            x[:, 0] = self.tokenizer.bos_id
        return x, y, weights

    def unigram_noise(self, x, share: float, generator):
        """x (B, T) with each token replaced, with probability `share`, by the token at a uniformly random
        position of the train split: a draw from the text's own unigram frequencies. This is "unigram
        noising" (Xie et al. 2017, "Data Noising as Smoothing in Neural Network Language Models", ICLR),
        applied to the inputs only, the targets kept: the model cannot lean on any one token of its context."""
        import torch

        hit = torch.rand(x.shape, generator=generator) < share
        data = self.splits["train"]
        drawn = data[torch.randint(len(data), (int(hit.sum()),), generator=generator)].long()
        return x.masked_scatter(hit, drawn)

    def covering_windows(self, split: str, block_size: int):
        """Windows over the whole split, each token a target exactly once (but the first): starts (W,) of
        back-to-back windows, then, where a tail shorter than a window is left, one ending at the split's
        end; and for each window how many of its first targets an earlier window already had (W,), to be
        left out (0 but for that last one, whose targets before the tail then see a longer context). The
        tail counts: officer_k's val split is 1,778 SmolLM2 tokens, and windows of 1,024 back to back
        alone read 1,024 of them."""
        import torch

        targets = len(self.splits[split]) - 1
        whole = targets // block_size
        starts, skips = torch.arange(whole) * block_size, torch.zeros(whole, dtype=torch.long)
        tail = targets - whole * block_size
        if tail and whole:
            starts = torch.cat([starts, torch.tensor([targets - block_size])])
            skips = torch.cat([skips, torch.tensor([block_size - tail])])
        return starts, skips

    def random_starts(self, split: str, shape: tuple[int, ...], block_size: int, generator):
        """Starts of windows drawn anywhere in the split, with replacement (nanoGPT's get_batch): over one
        pass's worth of windows about 1 - 1/e = 63% of the tokens are read, some twice."""
        import torch

        return torch.randint(len(self.splits[split]) - block_size - 1, shape, generator=generator)

    def epoch_starts(self, split: str, first: int, count: int, block_size: int, seed: int):
        """Starts (count,) of windows first .. first + count - 1 of a sequence of epochs over the split: each
        epoch is the back-to-back windows o, o + T, o + 2T, ... in a random order, so that it reads every token
        of the split once but those of the slack (fewer than T, at the ends, where the offset o puts them).
        The order and o come from (seed, epoch) alone: window i of the sequence is the same in a resumed run."""
        import torch

        targets = len(self.splits[split]) - 1
        per_epoch = targets // block_size
        slack = targets - per_epoch * block_size
        starts = []
        for i in range(first, first + count):
            epoch, k = divmod(i, per_epoch)
            key = (split, block_size, seed, epoch)
            if getattr(self, "_epoch", (None,))[0] != key:  # drawn once an epoch, not once a step
                gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**64)  # any --seed fits 64 bits
                offset = int(torch.randint(slack + 1, (), generator=gen))
                self._epoch = (key, torch.randperm(per_epoch, generator=gen), offset)
            _, order, offset = self._epoch
            starts.append(offset + int(order[k]) * block_size)
        return torch.tensor(starts, dtype=torch.long)
