"""Novels as turns: EPUB (its spine in reading order, read with ebooklib, front and back matter left out)
and plain-text prose; quoted speech attributed by explicit patterns ("...," K said / said K / K asked),
the rest kept as speech with speaker None."""

from __future__ import annotations

import re
from pathlib import Path

import ebooklib
import lxml.etree
import lxml.html
from ebooklib import epub

from bladegpt.data.voices.turns import Format, Reading, Turn, head_text, read_text
from bladegpt.errors import DataError

VERBS = ("said|says|asked|asks|replied|replies|answered|answers|whispered|whispers|shouted|shouts|cried|cries|"
         "called|calls|muttered|mutters|murmured|murmurs|added|adds|continued|continues|told|tells|yelled|yells|"
         "exclaimed|began|insisted|repeated|snapped|growled|sighed|laughed|explained|demanded|agreed|admitted|"
         "protested|suggested|warned|interrupted|observed|remarked|returned|retorted|rejoined|screamed|"
         "breathed|hissed|pleaded|begged|announced|declared|wondered|went on")
TITLES = r"(?:(?:Mr|Mrs|Ms|Dr|St|Prof|Capt|Col|Sgt|Lt|Gen|Rev)\.\s+)?"  # a full stop inside a name
NAME = rf"(?P<name>{TITLES}[A-Z][\w'’\-]*(?:\s+[A-Z][\w'’\-]*){{0,2}})"
NOT_NAMES = {"I", "He", "She", "They", "We", "You", "It", "The", "Then", "But", "And", "A", "Someone", "Everyone"}
AFTER = [re.compile(rf"^[\s,;:—–-]*{NAME}\s+(?:{VERBS})\b"), re.compile(rf"^[\s,;:—–-]*(?:{VERBS})\s+{NAME}")]
LINKS = re.compile(r"^[\s,;:—–-]*(?:then|and|but|so|now|finally|still|later)\s+", re.IGNORECASE)
BEFORE = re.compile(rf"{NAME}\s+(?:{VERBS})(?:\s+\w+ly)?\s*[,:]?\s*$")
QUOTE = re.compile(r"“[^”]*”?|\"[^\"]*\"?")  # curly or straight; one left open runs to the paragraph's end
# Front and back matter by EPUB 2 guide / EPUB 3 landmark type, and by file name.
MATTER = {"cover", "title-page", "titlepage", "copyright-page", "copyright", "toc", "index", "colophon",
          "dedication", "acknowledgements", "acknowledgments", "loi", "lot", "bibliography", "imprint",
          "halftitlepage", "frontmatter", "backmatter", "other.backmatter", "about-the-author"}
MATTER_NAME = re.compile(r"(?:^|[^a-z])(cover|title|titlepage|copyright|toc|contents|colophon|dedication|"
                         r"acknowledg\w*|imprint|about[-_]?the[-_]?author|also[-_]?by)(?:[^a-z]|$)", re.IGNORECASE)
BLOCKS = ("p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "blockquote")


def speaker_near(before: str, after: str) -> str | None:
    """The name a quote is attributed to by the narration right after it ("," K said) or right before
    it (K said, "..."), or None (a pronoun or no pattern: who speaks is the reader's guess, not ours)."""
    after = LINKS.sub("", after[:80])  # "," then Wren said
    m = next((m for pattern in AFTER if (m := pattern.match(after))), None) or BEFORE.search(before[-80:])
    return None if m is None or m["name"] in NOT_NAMES else m["name"]


def paragraph_turns(text: str, line: int) -> list[Turn]:
    """A paragraph as narration and speech turns, in order; one attributed quote names the paragraph's other
    quotes too (a paragraph is one speaker's, as novels are set)."""
    text = " ".join(text.split())
    quotes = list(QUOTE.finditer(text))
    if not quotes:
        return [Turn(None, text, "narration", line)] if text else []
    names = [speaker_near(text[:q.start()], text[q.end():]) for q in quotes]
    known = next((n for n in names if n), None)
    turns, at = [], 0
    for q, name in zip(quotes, names):
        if text[at:q.start()].strip():
            turns.append(Turn(None, text[at:q.start()].strip(), "narration", line))
        said = q.group().strip("“”\"").strip()
        if said:
            turns.append(Turn(name or known, said, "speech", line))
        at = q.end()
    if text[at:].strip():
        turns.append(Turn(None, text[at:].strip(), "narration", line))
    return turns


def read_prose(path: Path) -> Reading:
    """Plain-text prose as turns: paragraphs are parted by blank lines; `line` is a paragraph's first line."""
    turns, para, start = [], [], 0
    for number, raw in enumerate(read_text(path).splitlines() + [""], 1):
        if raw.strip():
            start = start if para else number
            para.append(raw)
        elif para:
            turns += paragraph_turns(" ".join(para), start)
            para = []
    return Reading(turns)


def _open(path: Path) -> epub.EpubBook:
    try:
        return epub.read_epub(str(path), {"ignore_ncx": True})
    except Exception as e:  # ebooklib's many ways to refuse a damaged book (zip, container, OPF), said in one line
        raise DataError(f"{path} is not a readable EPUB ({type(e).__name__}: {e}); check the file, or convert "
                        "it again.") from None


def landmarks(book: epub.EpubBook) -> dict[str, str]:
    """File name -> matter type, from the EPUB 2 guide and the EPUB 3 navigation's landmarks."""
    found = {g["href"].split("#")[0]: g.get("type", "").lower() for g in book.guide if g.get("href")}
    for nav in book.get_items_of_type(ebooklib.ITEM_NAVIGATION):
        html = nav.get_content().decode("utf-8", "ignore")
        part = re.search(r"<nav[^>]*landmarks.*?</nav>", html, re.DOTALL)
        for kind, href in re.findall(r"<a[^>]*epub:type=\"([^\"]+)\"[^>]*href=\"([^\"#]+)", part.group() if part else ""):
            found[href.split("/")[-1]] = kind.lower()
    return found


def matter(item, marks: dict[str, str]) -> str | None:
    """Why a spine document is front or back matter (its landmark type, its name), or None for the story."""
    name = item.get_name()
    kind = marks.get(name) or marks.get(name.split("/")[-1])
    if kind in MATTER:
        return kind
    if isinstance(item, epub.EpubNav) or "nav" in getattr(item, "properties", []):
        return "toc"
    if m := MATTER_NAME.search(Path(name).stem):
        return m.group(1).lower()
    body = item.get_content().decode("utf-8", "ignore")
    if m := re.search(r"epub:type=\"([^\"]*)\"", body):
        if m.group(1).split()[0].lower() in MATTER:
            return m.group(1).split()[0].lower()
    return None


def story(path: Path) -> tuple[list, list[str]]:
    """The spine's story documents in reading order, and the names of those left out (and why)."""
    book = _open(path)
    marks, kept, left = landmarks(book), [], []
    for idref, linear in book.spine:
        item = book.get_item_with_id(idref)
        if item is None:
            continue
        why = "not in the reading order" if linear == "no" else matter(item, marks)
        (left.append(f"{item.get_name()} ({why})") if why else kept.append(item))
    return kept, left


def read_epub(path: Path) -> Reading:
    """An EPUB's story as turns, paragraph by paragraph (`line` counts paragraphs from 1); headings kept;
    the front and back matter left out, by name."""
    turns, number = [], 0
    kept, left = story(path)
    for item in kept:
        content = item.get_content()
        if not content.strip():
            continue
        try:
            doc = lxml.html.document_fromstring(content)
        except (lxml.etree.ParserError, ValueError) as e:
            raise DataError(f"{path} has a page that is not HTML ({item.get_name()}: {e}); check the book, or "
                            "convert it again.") from None
        for el in doc.iter(*BLOCKS):
            if any(child.tag in BLOCKS for child in el.iterdescendants()):
                continue  # a container: its own paragraphs come one by one
            text = " ".join(el.text_content().split())
            if not text:
                continue
            number += 1
            turns += ([Turn(None, text, "heading", number)] if el.tag.startswith("h")
                      else paragraph_turns(text, number))
    return Reading(turns, pages_left_out=left)


def score_epub(head: bytes, suffix: str) -> float:
    return 1.0 if head.startswith(b"PK\x03\x04") and b"application/epub+zip" in head[:200] else 0.0


def score_prose(head: bytes, suffix: str) -> float:
    """Anything that is text reads as prose, the fallback; quotes make it likelier."""
    text = head_text(head)
    if not text.strip() or head.startswith(b"PK\x03\x04"):
        return 0.0
    return 0.15 + min(0.1, len(QUOTE.findall(text)) / 1000)


FORMATS = [Format("epub", score_epub, read_epub), Format("prose", score_prose, read_prose)]
