import pytest

from bladegpt.data.prepare import pieces
from bladegpt.tokenizer import CharTokenizer, load_tokenizer, tokenizer_from_dict, train_tokenizer
from bladegpt.tokenizer.bpe import bpe_vocab_size
from bladegpt.errors import TokenizerError
from tests.conftest import SHAKESPEARE, corpus_text

MIXED = "Hello,  world!\n\n\tcafé — naïve 😀 3.14159 x=1000000 'tis don't   <|endoftext|>  \r\n end"


@pytest.mark.parametrize("kind", ["bpe", "gpt2", "char"])
def test_round_trip(kind, tmp_path):
    text = corpus_text() + MIXED
    tok = train_tokenizer(kind, text, vocab_size=512)
    assert tok.decode(tok.encode(MIXED)) == MIXED
    tok.save(tmp_path / "tok.json")
    again = load_tokenizer(tmp_path / "tok.json")
    assert again.encode(MIXED) == tok.encode(MIXED)
    assert b"".join(tok.token_bytes(i) for i in tok.encode(MIXED)) == MIXED.encode("utf-8")


def test_gpt2_is_gpt2():
    tok = train_tokenizer("gpt2", "")
    assert tok.vocab_size == 50257
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]


def test_bpe_learns_the_corpus():
    text = corpus_text(2000)
    tok = train_tokenizer("bpe", text, vocab_size=512)
    assert 256 < tok.vocab_size <= 512  # stops early when no pair repeats
    assert len(tok.encode(text)) < len(text.encode("utf-8")) / 3  # merges pay off on its own text


def test_char_rejects_unseen_characters():
    tok = CharTokenizer.train("abc ")
    with pytest.raises(TokenizerError, match="never saw"):
        tok.encode("abz")


def test_bpe_vocab_is_sized_to_the_text():
    assert bpe_vocab_size(10_000_000) == bpe_vocab_size(250_000) == 4096
    assert bpe_vocab_size(140_483) == 3072  # witcher's training text: 3,072 beat 2,048 and 4,096
    assert bpe_vocab_size(59_013) == 2048  # officer_k's: the best of 512-3,583 ids measured
    assert bpe_vocab_size(10_000) == 512


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(TokenizerError, match="Unknown tokenizer"):
        train_tokenizer("wordpiece", "x")
    with pytest.raises(TokenizerError):
        tokenizer_from_dict({"kind": "nope"})


@pytest.mark.parametrize("kind", ["bpe", "gpt2", "char"])
def test_pieces_encode_exactly_as_the_whole(kind):
    """prepare encodes a stream in pieces cut at line breaks, or inside long lines before a single space."""
    text = SHAKESPEARE.read_text()[:200_000] if SHAKESPEARE.exists() else corpus_text(5000)
    one_line = " ".join(text.split())[:50_000] + "  x\n\n\n" + MIXED * 50  # no line breaks to cut at
    tok = train_tokenizer(kind, text + one_line, vocab_size=1024)
    for whole in (text, one_line):
        blocks = (whole[i : i + 777] for i in range(0, len(whole), 777))  # as a file is read, in blocks
        cut = list(pieces(blocks, size=2_000))
        assert len(cut) > 10 and "".join(cut) == whole
        assert [i for p in cut for i in tok.encode(p)] == tok.encode(whole)
