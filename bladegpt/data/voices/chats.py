"""Chat exports as turns: WhatsApp's "Export chat" .txt (both its layouts), Telegram Desktop's result.json and
DiscordChatExporter's JSON. Each message is one speech turn by its author; media placeholders, system
messages and attachment-only messages carry no words and are left out. `line` is a WhatsApp message's
line, a JSON export's message number (1-based)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from bladegpt.data.voices.turns import Format, Reading, Turn, head_text, read_text
from bladegpt.errors import DataError

DATE = r"\d{1,4}[./-]\d{1,2}[./-]\d{1,4}"
TIME = r"\d{1,2}[:.]\d{2}(?:[:.]\d{2})?(?:[\s\u202f]?[APap]\.?\s?[Mm]\.?)?"
BRACKET = re.compile(rf"^\[{DATE},?\s{TIME}\]\s(?P<rest>.*)$")  # [12/31/23, 9:15:02 PM] Name: text (iOS)
DASH = re.compile(rf"^{DATE},?\s{TIME}\s[-–]\s(?P<rest>.*)$")  # 31/12/2023, 21:15 - Name: text (Android)
AUTHOR = re.compile(r"^(?P<name>[^:]{1,60}?):\s(?P<text>.*)$")
# What WhatsApp writes instead of a message's words, in English exports.
PLACEHOLDER = re.compile(r"^(?:<Media omitted>|<attached: [^>]*>|(?:image|video|audio|sticker|GIF|document|"
                         r"Contact card) omitted|This message was deleted\.?|You deleted this message\.?|"
                         r"null|Waiting for this message\. This may take a while\.?)$", re.IGNORECASE)
SYSTEM = re.compile(r"^(?:Messages and calls are end-to-end encrypted|Messages to this (?:group|chat) are now "
                    r"secured with end-to-end encryption|Your security code with .* changed)", re.IGNORECASE)
LRM = "\u200e"  # iOS opens a system line's or a placeholder's text with it, never a typed message's
MARKS = str.maketrans("", "", "\u200e\u200f\u202a\u202c")  # direction marks iOS puts before lines and names


def read_whatsapp(path: Path) -> Reading:
    """A WhatsApp export as turns: a message runs on over lines without a date; placeholders ("<Media
    omitted>", "image omitted") and system lines (encryption notice, group changes) are left out."""
    messages: list[list] = []  # [speaker, line, [text lines], marked (iOS opened its text with LRM)]
    for number, raw in enumerate(read_text(path).splitlines(), 1):
        m = BRACKET.match(raw.lstrip(LRM)) or DASH.match(raw.lstrip(LRM))
        author = AUTHOR.match(m["rest"]) if m else None
        if m:
            messages.append([author["name"].translate(MARKS).strip(), number, [author["text"]],
                             author["text"].startswith(LRM)] if author else [None, number, [m["rest"]], True])
        elif messages:
            messages[-1][2].append(raw)
    turns, left = [], Counter()
    for name, number, lines, marked in messages:
        text = "\n".join(lines).translate(MARKS).replace("<This message was edited>", "").strip()
        if PLACEHOLDER.match(text):
            left["media placeholders and deleted messages"] += 1
        elif marked or SYSTEM.search(text):
            left["system lines (encryption notice, group changes)"] += 1
        elif not text:
            left["empty messages"] += 1
        else:
            turns.append(Turn(name, text, "speech", number))
    return Reading(turns, +left)


def load_json(path: Path) -> dict:
    """A JSON export's object; broken JSON is a DataError naming its line."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno}: not valid JSON ({e.msg}); export the chat again.") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} line 1: a chat export is a JSON object with \"messages\"; this is not one.")
    return data


def _messages(path: Path, data: dict) -> list:
    messages = data.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise DataError(f"{path} line 1: its \"messages\" is not a list of messages; export the chat again.")
    return messages


def telegram_text(text) -> str:
    """A Telegram message's text: a string, or a list of strings and entities ({"type": "bold", "text": ...})."""
    if isinstance(text, str):
        return text
    if isinstance(text, list):
        return "".join(part if isinstance(part, str) else str(part.get("text", "")) for part in text
                       if isinstance(part, (str, dict)))
    return ""


def read_telegram(path: Path) -> Reading:
    """Telegram Desktop's result.json (one chat, or a whole export's chats one after another) as turns;
    service messages (joins, pins, calls) and media without a caption are left out."""
    data = load_json(path)
    chats = data.get("chats", {}).get("list") if isinstance(data.get("chats"), dict) else None
    messages = [m for chat in chats if isinstance(chat, dict) for m in _messages(path, chat)] if chats \
        else _messages(path, data)
    turns, left = [], Counter()
    for number, m in enumerate(messages, 1):
        text = telegram_text(m.get("text")).strip()
        if m.get("type", "message") != "message":
            left["service messages (joins, pins, calls)"] += 1
        elif not text:
            left["media without a caption"] += 1
        elif not m.get("from"):
            left["messages without an author (deleted accounts)"] += 1
        else:
            turns.append(Turn(str(m["from"]), text, "speech", number))
    return Reading(turns, +left)


def read_discord(path: Path) -> Reading:
    """DiscordChatExporter's JSON as turns, by the author's server nickname (else their name); system
    messages (joins, pins) and attachment-only messages are left out."""
    turns, left = [], Counter()
    for number, m in enumerate(_messages(path, load_json(path)), 1):
        author = m.get("author") if isinstance(m.get("author"), dict) else {}
        name = author.get("nickname") or author.get("name")
        text = str(m.get("content") or "").strip()
        if m.get("type", "Default") not in ("Default", "Reply"):
            left["system messages (joins, pins)"] += 1
        elif not text:
            left["attachment-only or empty messages"] += 1
        elif not name:
            left["messages without an author"] += 1
        else:
            turns.append(Turn(str(name), text, "speech", number))
    return Reading(turns, +left)


def score_whatsapp(head: bytes, suffix: str) -> float:
    lines = [line.translate(MARKS) for line in head_text(head).splitlines() if line.strip()][:500]
    share = sum(bool(BRACKET.match(line) or DASH.match(line)) for line in lines) / max(len(lines), 1)
    return 0.5 + share / 2 if share >= 0.3 else 0.0


def _json_head(head: bytes) -> str:
    text = head_text(head).lstrip("\ufeff \t\r\n")
    return text if text.startswith("{") and '"messages"' in text else ""


def score_telegram(head: bytes, suffix: str) -> float:
    text = _json_head(head)
    return 0.95 if text and ('"from_id"' in text or '"text_entities"' in text or '"from":' in text) else 0.0


def score_discord(head: bytes, suffix: str) -> float:
    text = _json_head(head)
    return 0.95 if text and ('"guild"' in text or '"author"' in text) else 0.0


FORMATS = [Format("whatsapp", score_whatsapp, read_whatsapp), Format("telegram", score_telegram, read_telegram),
           Format("discord", score_discord, read_discord)]
