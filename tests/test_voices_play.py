"""Plays and transcripts read as turns: `NAME: line`, `NAME. line`, and a name line over its speech."""

from collections import Counter

import pytest

from bladegpt.data.voices import read_turns
from tests.conftest import SHAKESPEARE
from tests.voices import list_speakers, write

TRANSCRIPT = """\
HOST: Welcome back. Tonight we talk about bees.
Dr. Amara Osei: Thank you for having me.
HOST: Why bees?
Dr. Amara Osei: Because they vote.
They really do, with dances.
[laughter]
HOST: Of course they do.
"""

GUTENBERG = """\
ACT I

SCENE 1. A harbour at dawn.

Enter MIRELLE and the PILOT.

MIRELLE. The tide is turning, and so am I.

PILOT.
Then turn slowly, lady;
the rocks are patient.

MIRELLE. (aside) Patient as a creditor.

[Exeunt.]
"""

NAME_LINES = """\
First Sailor:
The wind is up, and the gulls are low.

Second Sailor:
Low gulls, high water.
Away:
we sail at noon.

First Sailor:
Noon it is.
"""


def test_colon_transcript(tmp_path):
    name, turns = read_turns(write(tmp_path, "show.txt", TRANSCRIPT))
    assert name == "play"
    speech = [(t.speaker, t.text, t.line) for t in turns if t.kind == "speech"]
    assert speech == [("HOST", "Welcome back. Tonight we talk about bees.", 1),
                      ("Dr. Amara Osei", "Thank you for having me.", 2), ("HOST", "Why bees?", 3),
                      ("Dr. Amara Osei", "Because they vote. They really do, with dances.", 4),
                      ("HOST", "Of course they do.", 7)]
    assert [(t.text, t.kind) for t in turns if t.kind != "speech"] == [("[laughter]", "action")]


def test_capitals_with_a_full_stop(tmp_path):
    name, turns = read_turns(write(tmp_path, "harbour.txt", GUTENBERG))
    assert name == "play"
    assert [(t.speaker, t.text) for t in turns if t.kind == "speech"] == [
        ("MIRELLE", "The tide is turning, and so am I."), ("PILOT", "Then turn slowly, lady; the rocks are patient."),
        ("MIRELLE", "Patient as a creditor.")]
    assert [t.text for t in turns if t.kind == "heading"] == ["ACT I", "SCENE 1. A harbour at dawn."]
    assert [t.text for t in turns if t.kind == "action"] == ["Enter MIRELLE and the PILOT.", "(aside)", "[Exeunt.]"]


def test_name_lines_over_speech(tmp_path):
    name, turns = read_turns(write(tmp_path, "sailors.txt", NAME_LINES))
    assert name == "play"
    assert [(t.speaker, t.text, t.line) for t in turns] == [
        ("First Sailor", "The wind is up, and the gulls are low.", 1),
        ("Second Sailor", "Low gulls, high water. Away: we sail at noon.", 4),  # "Away:" mid-speech is no name
        ("First Sailor", "Noon it is.", 9)]


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="tinyshakespeare is not on this machine")
def test_tinyshakespeare_reads_as_a_play():
    name, turns = read_turns(SHAKESPEARE)
    assert name == "play"
    speakers = Counter(t.speaker for t in turns if t.kind == "speech")
    assert speakers.most_common(3) == [("GLOUCESTER", 211), ("DUKE VINCENTIO", 189), ("MENENIUS", 161)]
    assert turns[0].speaker == "First Citizen" and turns[0].text == "Before we proceed any further, hear me speak."
    assert sum(t.speaker is None for t in turns) < 10  # all but a handful of odd names ("Senators, &C:")


def test_list_speakers(workdir):
    result = list_speakers(workdir, write(workdir, "show.txt", TRANSCRIPT), write(workdir, "harbour.txt", GUTENBERG))
    assert result.exit_code == 0, result.output
    table = result.output[result.output.index("speakers, most lines first"):]
    rows = [line.split("│")[1:5] for line in table.splitlines() if line.count("│") == 5]
    cells = [[c.strip() for c in row] for row in rows]
    assert cells[:3] == [["HOST", "3", "37.5%", "13"], ["Dr. Amara Osei", "2", "25.0%", "13"],
                         ["MIRELLE", "2", "25.0%", "12"]]
    assert "play" in result.output


def test_undecodable_file_is_one_line(workdir):
    path = workdir / "latin1.txt"
    path.write_bytes("HOST: Ça va?\nGUEST: Très bien.\n".encode("latin-1"))
    result = list_speakers(workdir, path)
    assert result.exit_code == 1 and "latin1.txt is not UTF-8 text" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_empty_file_is_one_line(workdir):
    result = list_speakers(workdir, write(workdir, "empty.txt", ""))
    assert result.exit_code == 1 and "empty.txt is empty or not a text" in " ".join(result.output.split())


def test_folder_lists_every_file_in_it(workdir):
    (workdir / "scripts").mkdir()
    write(workdir / "scripts", "show.txt", TRANSCRIPT)
    write(workdir / "scripts", "harbour.play", GUTENBERG)
    write(workdir / "scripts", ".hidden", "not read")
    result = list_speakers(workdir, workdir / "scripts")
    assert result.exit_code == 0, result.output
    assert "show.txt" in result.output and "harbour.play" in result.output and ".hidden" not in result.output
