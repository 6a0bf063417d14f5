import json

import pytest
import torch

from bladegpt.data.dataset import TokenData, latest_dataset
from bladegpt.errors import DataError
from bladegpt.data.prepare import prepare


def test_prepare_writes_a_dataset(corpus, workdir):
    result = prepare([corpus], tokenizer="bpe", vocab_size=512)
    folder = result.out_dir
    assert folder == workdir / "datasets" / "tales" or folder.resolve() == (workdir / "datasets" / "tales").resolve()
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["tokenizer"] == "bpe"
    assert (folder / "train.bin").stat().st_size == 2 * meta["train_tokens"]
    assert 0.08 < meta["val_tokens"] / (meta["train_tokens"] + meta["val_tokens"]) < 0.12
    data = TokenData(folder)
    text = data.tokenizer.decode(data.splits["train"][:200].tolist())
    assert text == corpus.read_text()[: len(text)]
    assert latest_dataset() == folder


def test_prepare_takes_folders_and_is_deterministic(workdir):
    books = workdir / "books"
    books.mkdir()
    (books / "a.txt").write_text("first book line\n" * 200)
    (books / "b.txt").write_text("second book line\n" * 200)
    (books / "notes.md").write_text("not text for training")
    one = prepare([books], out_dir=workdir / "one", tokenizer="char")
    two = prepare([books], out_dir=workdir / "two", tokenizer="char")
    assert one.meta["sources"] == [str(books / "a.txt"), str(books / "b.txt")]
    assert (workdir / "one" / "val.bin").read_bytes() == (workdir / "two" / "val.bin").read_bytes()


def test_train_bytes_of_a_dataset_from_before_they_were_recorded(corpus):
    folder = prepare([corpus], tokenizer="bpe", vocab_size=300).out_dir
    recorded = TokenData(folder).train_bytes
    meta = json.loads((folder / "meta.json").read_text())
    del meta["train_bytes"]
    (folder / "meta.json").write_text(json.dumps(meta))
    assert TokenData(folder).train_bytes == recorded == meta["bytes"] - meta["val_bytes"]


def test_batches_are_shifted_by_one(corpus):
    data = TokenData(prepare([corpus], tokenizer="char").out_dir)
    ix = data.random_starts("train", (4,), 8, torch.Generator().manual_seed(0))
    x, y, _ = data.batch("train", ix, 8)
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "No such file"),
        (b"", "is empty"),
        (b"   \n\n", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks binary"),
        ("caf\u00e9 cr\u00e8me".encode("latin-1"), "not UTF-8"),
    ],
)
def test_bad_input_is_explained(workdir, content, message):
    path = workdir / "input.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        prepare([path])


def test_corpus_too_small_for_the_context(workdir):
    path = workdir / "tiny.txt"
    path.write_text("just a few words of text here\n" * 3)
    data = TokenData(prepare([path], tokenizer="char").out_dir)
    with pytest.raises(DataError, match="smaller --block-size"):
        data.check_fits(256)


def test_a_val_split_of_a_token_or_two_names_val_fraction(workdir):
    path = workdir / "long.txt"
    path.write_text("a line of text that goes on for a while\n" * 500)
    data = TokenData(prepare([path], tokenizer="char", val_fraction=1e-9).out_dir)
    assert len(data.splits["val"]) < 3
    with pytest.raises(DataError, match=r"val split has only .* or a larger --val-fraction\.$"):
        data.check_fits(8)


def test_no_dataset_yet(workdir):
    with pytest.raises(DataError, match="bladegpt prepare"):
        latest_dataset()


@pytest.mark.parametrize("n_val, block", [(41, 8), (40, 8), (9, 8), (1778, 1024)])
def test_covering_windows_make_each_val_token_a_target_once(workdir, n_val, block):
    """Back-to-back windows, then one ending at the split's end for a tail: every target (all tokens but the
    first) is scored once, none twice, the tail too (officer_k's 1,778 SmolLM2 val tokens at 1,024)."""
    import torch

    data = TokenData.__new__(TokenData)
    data.splits = {"val": torch.arange(n_val)}
    starts, skips = data.covering_windows("val", block)
    scored = [s + 1 + j for s, k in zip(starts.tolist(), skips.tolist()) for j in range(k, block)]
    assert sorted(scored) == scored == list(range(1, n_val))


@pytest.mark.parametrize("n_train, block", [(41, 8), (40, 8), (16721, 1024)])
def test_an_epoch_reads_every_window_once_in_a_resumable_order(workdir, n_train, block):
    """Each epoch is the back-to-back windows at one offset, each once, in a random order; all but fewer
    than `block` targets are read; the order is a function of (seed, window index) alone."""
    import torch

    data = TokenData.__new__(TokenData)
    data.splits = {"train": torch.arange(n_train)}
    per_epoch = (n_train - 1) // block
    offsets, shuffled = set(), False
    for epoch in range(4):
        starts = data.epoch_starts("train", epoch * per_epoch, per_epoch, block, seed=7).tolist()
        offset = min(starts)
        offsets.add(offset)
        assert sorted(starts) == [offset + k * block for k in range(per_epoch)]
        shuffled |= starts != sorted(starts)
        assert max(starts) + block <= n_train - 1  # every window has its targets
        assert n_train - 1 - per_epoch * block < block
    assert shuffled
    whole = data.epoch_starts("train", 0, 5 * per_epoch + 14, block, seed=7)
    assert torch.equal(data.epoch_starts("train", 5, 9, block, seed=7), whole[5:14])  # a resume draws the same
    assert not torch.equal(data.epoch_starts("train", 0, per_epoch, block, seed=8), whole[:per_epoch])
    big = data.epoch_starts("train", 0, per_epoch, block, seed=2**63 - 1025)  # the largest --seed fits 64 bits
    assert sorted(big.tolist()) == [min(big.tolist()) + k * block for k in range(per_epoch)]


def test_unigram_noise_replaces_a_share_of_tokens_by_draws_from_the_text():
    from bladegpt.data.dataset import stream_seed

    data = TokenData.__new__(TokenData)
    data.splits = {"train": torch.tensor([7] * 300 + [9] * 100, dtype=torch.uint16)}  # 7 three times as common
    x = torch.zeros(64, 128, dtype=torch.long)
    noised = data.unigram_noise(x, 0.25, torch.Generator().manual_seed(stream_seed(1, "token-noise", 0)))
    hit = noised != 0
    assert 0.22 < hit.float().mean() < 0.28
    assert set(noised[hit].tolist()) == {7, 9} and 2.5 < (noised == 7).sum() / (noised == 9).sum() < 3.5
    again = data.unigram_noise(x, 0.25, torch.Generator().manual_seed(stream_seed(1, "token-noise", 0)))
    assert torch.equal(noised, again) and torch.equal(x, torch.zeros_like(x))  # the same draw; x untouched
    other = data.unigram_noise(x, 0.25, torch.Generator().manual_seed(stream_seed(1, "token-noise", 1)))
    assert not torch.equal(noised, other)
    assert len({stream_seed(s, name, i) for s in (1, 2) for name in ("a", "b") for i in range(3)}) == 12
    assert all(0 <= stream_seed(2**63 - 1, "token-noise", i) < 2**64 for i in range(3))


def test_a_model_that_expects_bos_reads_it_first_in_every_window(corpus):
    data = TokenData(prepare([corpus], tokenizer="char").out_dir)
    ix = data.random_starts("train", (4,), 8, torch.Generator().manual_seed(0))
    plain_x, plain_y, _ = data.batch("train", ix, 8)
    data.tokenizer.bos_id, data.tokenizer.add_bos = 0, True  # as Gemma's and Llama 3's tokenizers say
    x, y, _ = data.batch("train", ix, 8)
    assert (x[:, 0] == 0).all() and torch.equal(x[:, 1:], plain_x[:, 1:]) and torch.equal(y, plain_y)
