"""Chat exports read as turns: WhatsApp (both layouts), Telegram Desktop's result.json, DiscordChatExporter."""

import json

from bladegpt.data.voices import read_turns
from tests.voices import list_speakers, write

IOS = """\
[12/31/23, 9:15:02 PM] Lunch Club: \u200eMessages and calls are end-to-end encrypted. No one outside of this chat, not even WhatsApp, can read or listen to them.
[12/31/23, 9:15:40 PM] Priya: Are we still on for noodles?
[12/31/23, 9:16:05 PM] Sam Okafor: Yes!
Bring the good chopsticks.
And napkins.
[12/31/23, 9:16:30 PM] Priya: \u200eimage omitted
[12/31/23, 9:17:00 PM] Sam Okafor: This message was deleted.
[12/31/23, 9:18:12 PM] Priya: See you at eight <This message was edited>
[12/31/23, 9:18:30 PM] Lunch Club: \u200ePriya added Dana
[12/31/23, 9:19:00 PM] Sam Okafor: I just left
"""

ANDROID = """\
31/12/2023, 21:15 - Messages and calls are end-to-end encrypted. No one outside of this chat, not even WhatsApp, can read or listen to them. Tap to learn more.
31/12/2023, 21:15 - Priya created group "Lunch Club"
31/12/2023, 21:16 - Priya: Noodles at eight?
31/12/2023, 21:17 - Sam Okafor: <Media omitted>
31/12/2023, 21:18 - Sam Okafor: Eight works.
Noodles always work.
"""

TELEGRAM = {"name": "Lunch Club", "type": "private_group", "id": 42, "messages": [
    {"id": 1, "type": "service", "date": "2023-12-31T21:15:00", "actor": "Priya", "action": "create_group", "text": ""},
    {"id": 2, "type": "message", "date": "2023-12-31T21:16:00", "from": "Priya", "from_id": "user1",
     "text": "Noodles?", "text_entities": [{"type": "plain", "text": "Noodles?"}]},
    {"id": 3, "type": "message", "date": "2023-12-31T21:17:00", "from": "Sam Okafor", "from_id": "user2",
     "text": ["Only at ", {"type": "bold", "text": "Golden Bowl"}, "."]},
    {"id": 4, "type": "message", "date": "2023-12-31T21:18:00", "from": "Sam Okafor", "from_id": "user2",
     "photo": "photos/bowl.jpg", "text": ""}]}

DISCORD = {"guild": {"id": "1", "name": "Noodle Fans"}, "channel": {"id": "2", "name": "general"}, "messages": [
    {"id": "10", "type": "Default", "timestamp": "2023-12-31T21:16:00+00:00", "content": "who's hungry",
     "author": {"id": "5", "name": "priya_p", "nickname": "Priya"}, "attachments": []},
    {"id": "11", "type": "GuildMemberJoin", "content": "", "author": {"id": "6", "name": "sam_o", "nickname": None}},
    {"id": "12", "type": "Default", "content": "", "author": {"id": "6", "name": "sam_o", "nickname": None},
     "attachments": [{"id": "1", "url": "bowl.png", "fileName": "bowl.png"}]},
    {"id": "13", "type": "Reply", "content": "me, always", "author": {"id": "6", "name": "sam_o", "nickname": None}}]}


def said(turns):
    return [(t.speaker, t.text, t.line) for t in turns]


def test_whatsapp_bracketed(tmp_path):
    name, turns = read_turns(write(tmp_path, "WhatsApp Chat with Lunch Club.txt", IOS))
    assert name == "whatsapp"
    assert said(turns) == [("Priya", "Are we still on for noodles?", 2),
                           ("Sam Okafor", "Yes!\nBring the good chopsticks.\nAnd napkins.", 3),
                           ("Priya", "See you at eight", 8), ("Sam Okafor", "I just left", 10)]
    assert all(t.kind == "speech" for t in turns)


def test_whatsapp_dash(tmp_path):
    name, turns = read_turns(write(tmp_path, "chat.txt", ANDROID))
    assert name == "whatsapp"
    assert said(turns) == [("Priya", "Noodles at eight?", 3), ("Sam Okafor", "Eight works.\nNoodles always work.", 5)]


def test_telegram(tmp_path):
    name, turns = read_turns(write(tmp_path, "result.json", json.dumps(TELEGRAM, indent=1)))
    assert name == "telegram"
    assert said(turns) == [("Priya", "Noodles?", 2), ("Sam Okafor", "Only at Golden Bowl.", 3)]


def test_discord(tmp_path):
    name, turns = read_turns(write(tmp_path, "general.json", json.dumps(DISCORD, indent=2)))
    assert name == "discord"
    assert said(turns) == [("Priya", "who's hungry", 1), ("sam_o", "me, always", 4)]


def test_list_speakers(workdir):
    files = [write(workdir, "ios.txt", IOS), write(workdir, "android.txt", ANDROID),
             write(workdir, "result.json", json.dumps(TELEGRAM)), write(workdir, "discord.json", json.dumps(DISCORD))]
    result = list_speakers(workdir, *files)
    assert result.exit_code == 0, result.output
    table = result.output[result.output.index("speakers, most lines first"):]
    rows = [[c.strip() for c in line.split("│")[1:5]] for line in table.splitlines() if line.count("│") == 5]
    # Priya: 2 on iOS, 1 on Android, 1 on Telegram, 1 by her Discord nickname; words summed alike
    assert rows == [["Priya", "5", "50.0%", "16"], ["Sam Okafor", "4", "40.0%", "19"], ["sam_o", "1", "10.0%", "2"]]
    for fmt in ("whatsapp", "telegram", "discord"):
        assert fmt in result.output
    out = " ".join(result.output.split())
    for note in ("ios.txt: left out system lines (encryption notice, group changes): 2, media placeholders and "
                 "deleted messages: 2.",
                 "android.txt: left out system lines (encryption notice, group changes): 2, media placeholders and "
                 "deleted messages: 1.",
                 "result.json: left out service messages (joins, pins, calls): 1, media without a caption: 1.",
                 "discord.json: left out system messages (joins, pins): 1, attachment-only or empty messages: 1."):
        assert note in out


def test_broken_json_is_one_line(workdir):
    text = json.dumps(DISCORD, indent=2)
    broken = write(workdir, "broken.json", text[:400])
    result = list_speakers(workdir, broken)
    line = text[:400].count("\n") + 1
    assert result.exit_code == 1 and f"broken.json line {line}: not valid JSON" in " ".join(result.output.split())
    assert len(result.output.strip().splitlines()) == 1
