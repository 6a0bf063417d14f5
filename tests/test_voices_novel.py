"""Novels read as turns: EPUB in reading order without front and back matter, plain-text prose, and
quotes attributed by explicit patterns only."""

from ebooklib import epub

from bladegpt.data.voices import read_turns
from tests.voices import list_speakers, write

PROSE = """\
The orchard was quiet when Wren came down the hill.

“You are late,” said Old Hollis. “The pears will not wait.”

Wren set down her basket. “Then they can rot,” she said.

“Nobody is rotting today,” Hollis answered, and handed her a ladder.

Marek asked, "Is there tea?"

"There is always tea."

"Good," then Marek said. It was a strange thing to say.

“Who’s there?” asked Tam. Mr. Pell said, “Only me.”
"""


def speech(turns):
    return [(t.speaker, t.text) for t in turns if t.kind == "speech"]


def test_prose_attribution(tmp_path):
    name, turns = read_turns(write(tmp_path, "orchard.txt", PROSE))
    assert name == "prose"
    assert speech(turns) == [
        ("Old Hollis", "You are late,"), ("Old Hollis", "The pears will not wait."),  # one speaker a paragraph
        (None, "Then they can rot,"),  # "she said": a pronoun names no one
        ("Hollis", "Nobody is rotting today,"), ("Marek", "Is there tea?"), (None, "There is always tea."),
        ("Marek", "Good,"), ("Tam", "Who’s there?"), ("Mr. Pell", "Only me.")]
    narration = [(t.text, t.line) for t in turns if t.kind == "narration"]
    assert narration[0] == ("The orchard was quiet when Wren came down the hill.", 1)
    assert ("Wren set down her basket.", 5) in narration


def chapter(name: str, title: str, body: str) -> epub.EpubHtml:
    page = epub.EpubHtml(title=title, file_name=name, lang="en")
    page.content = f"<html><body><h1>{title}</h1>{body}</body></html>"
    return page


def make_epub(path):
    """A small book: cover, title page and copyright before the story, an about-the-author page after it."""
    book = epub.EpubBook()
    book.set_identifier("bladegpt-test")
    book.set_title("The Orchard")
    book.set_language("en")
    cover = chapter("cover.xhtml", "Cover", "<p>THE ORCHARD</p>")
    title = chapter("titlepage.xhtml", "The Orchard", "<p>a novel</p>")
    rights = chapter("rights.xhtml", "Rights", "<p>All rights reserved. ISBN 000.</p>")
    one = chapter("ch1.xhtml", "One", "<p>“You are late,” said Old Hollis.</p><p>Wren shrugged.</p>")
    two = chapter("ch2.xhtml", "Two", "<div><p>“The pears,” Wren said, “are ready.”</p></div>")
    notes = chapter("notes.xhtml", "Notes", "<p>“A note,” said Nobody.</p>")
    about = chapter("about-the-author.xhtml", "About the Author", "<p>She lives by an orchard.</p>")
    for item in (cover, title, rights, one, two, notes, about):
        book.add_item(item)
    book.guide = [{"href": "rights.xhtml", "title": "Copyright", "type": "copyright-page"}]
    book.toc = (one, two)
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", cover, title, rights, one, two, (notes, "no"), about]
    epub.write_epub(str(path), book)
    return path


def test_epub_reading_order_without_matter(tmp_path):
    path = make_epub(tmp_path / "orchard.epub")
    name, turns = read_turns(path)
    assert name == "epub"
    assert [(t.text, t.kind) for t in turns if t.kind != "speech"] == [
        ("One", "heading"), ("said Old Hollis.", "narration"), ("Wren shrugged.", "narration"),
        ("Two", "heading"), ("Wren said,", "narration")]
    assert speech(turns) == [("Old Hollis", "You are late,"), ("Wren", "The pears,"), ("Wren", "are ready.")]
    assert [t.line for t in turns if t.kind == "speech"] == [2, 5, 5]  # paragraphs, counted in the story


def test_epub_told_by_content(tmp_path):
    path = make_epub(tmp_path / "orchard.zip")
    assert read_turns(path)[0] == "epub"


def test_list_speakers(workdir):
    result = list_speakers(workdir, make_epub(workdir / "orchard.epub"), write(workdir, "orchard.txt", PROSE))
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "orchard.epub: 3 quotes attributed, 0 not; left out" in out
    for left in ("nav.xhtml (toc)", "cover.xhtml (cover)", "titlepage.xhtml (titlepage)", "rights.xhtml (copyright-page)",
                 "notes.xhtml (not in the reading order)", "about-the-author.xhtml (about-the-author)"):
        assert left in out
    assert "orchard.txt: 7 quotes attributed, 2 not" in out
    assert "Old Hollis" in out and "prose" in out


def test_broken_epub_is_one_line(workdir):
    path = workdir / "broken.epub"
    path.write_bytes(make_epub(workdir / "whole.epub").read_bytes()[:3000])
    before = list_speakers(workdir, path)
    assert before.exit_code == 1 and "broken.epub is not a readable EPUB" in before.output
    assert len(before.output.strip().splitlines()) == 1
