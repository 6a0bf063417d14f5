"""The shipped corpora: the sizes the quick start promises, clean UTF-8, nothing repeated to pad them."""

from collections import Counter
from pathlib import Path

import pytest

from bladegpt.data.voices import list_speakers, same_speaker

CORPORA = Path(__file__).resolve().parent.parent / "corpora"
MIN_BYTES = {"witcher.txt": 150 * 1024, "officer_k.txt": 60 * 1024, "officer_k_script.txt": 40 * 1024}


@pytest.mark.parametrize("name", sorted(MIN_BYTES))
def test_corpus_is_big_clean_and_unrepeated(name):
    raw = (CORPORA / name).read_bytes()
    assert len(raw) >= MIN_BYTES[name]
    text = raw.decode("utf-8")  # raises on anything that is not UTF-8
    assert "\x00" not in text and "\r" not in text
    paragraphs = Counter(p.strip() for p in text.split("\n\n") if len(p.strip()) >= 80)
    assert [p[:60] for p, n in paragraphs.items() if n > 1] == []


def test_readme_lists_every_corpus():
    readme = (CORPORA / "README.md").read_text()
    for name in MIN_BYTES:
        assert f"`{name}`" in readme
    assert sorted(p.name for p in CORPORA.glob("*.txt")) == sorted(MIN_BYTES)


def test_screenplay_reads_as_one_with_k_a_third_of_the_lines():
    path = CORPORA / "officer_k_script.txt"
    assert path.stat().st_size <= 80 * 1024  # the voice quick start's size: 40-80 KB
    files, speakers = list_speakers([path])
    assert [f.format for f in files] == ["screenplay"] and files[0].unattributed == 0
    assert files[0].left_out == []  # no page marks or anything else dropped
    lines = {s.name: s.lines for s in speakers}
    assert 0.25 <= lines["K"] / sum(lines.values()) <= 0.45
    assert sum(n >= 20 for name, n in lines.items() if not same_speaker(name, "K")) >= 5  # several others
    assert not any("(" in s.name or s.name.startswith(("INT", "EXT")) for s in speakers)  # cues only
