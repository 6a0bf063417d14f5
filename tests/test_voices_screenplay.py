"""Screenplays read as turns: the plain-text industry layout and Fountain."""

from bladegpt.data.voices import closest_names, read_turns, same_speaker
from tests.voices import list_speakers, write

PLAIN = """\
                                                    FADE IN:

INT. LIGHTHOUSE KITCHEN - NIGHT

Rain hammers the glass. ODILE (60s) stirs a pot that has
stopped needing stirring.

A GULL SCREAMS.
Odile does not look up.

                    ODILE
          You came back.

                    BRAM (O.S.)
          The ferry was late.

Bram steps in, dripping.

                    BRAM (CONT'D)
               (shaking off his coat)
          Three hours late. The captain
          sang the whole way.
                    (MORE)

                    ODILE                         BRAM
          Sang what?                    Nothing I knew.

12   EXT. CLIFF PATH - LATER   12

                    ODILE (V.O.)
          He never told me the song.

                                                    CUT TO:
"""

FOUNTAIN = """\
Title: The Lamp Keeper
Author: Nobody In Particular

INT. LIGHTHOUSE - NIGHT #1#

Odile winds the lamp. [[Make this longer.]]

@McCLANE
Hold the light steady.

ODILE
(quietly)
I always do.

/* An old version:
BRAM
This was cut.
*/

BRAM
Always?

ODILE ^
*Always.*

.FLASHBACK

> CUT TO:
"""


def speech(turns):
    return [(t.speaker, t.text) for t in turns if t.kind == "speech"]


def test_plain_screenplay(tmp_path):
    name, turns = read_turns(write(tmp_path, "lamp.txt", PLAIN))
    assert name == "screenplay"
    assert speech(turns) == [("ODILE", "You came back."), ("BRAM", "The ferry was late."),
                             ("BRAM", "Three hours late. The captain sang the whole way."),
                             ("ODILE", "Sang what?"), ("BRAM", "Nothing I knew."),
                             ("ODILE", "He never told me the song.")]
    headings = [(t.text, t.line) for t in turns if t.kind == "heading"]
    assert headings == [("INT. LIGHTHOUSE KITCHEN - NIGHT", 3), ("EXT. CLIFF PATH - LATER", 28)]
    action = [t.text for t in turns if t.kind == "action"]
    assert "(shaking off his coat)" in action  # a parenthetical is action, out of the speech
    assert "A GULL SCREAMS. Odile does not look up." in action  # capitals at the margin are not a cue
    assert "CUT TO:" in action and "FADE IN:" in action
    assert not any("MORE" in t.text for t in turns)
    assert next(t.line for t in turns if t.text == "You came back.") == 12


def test_fountain(tmp_path):
    name, turns = read_turns(write(tmp_path, "lamp.fountain", FOUNTAIN))
    assert name == "fountain"
    assert speech(turns) == [("McCLANE", "Hold the light steady."), ("ODILE", "I always do."),
                             ("BRAM", "Always?"), ("ODILE", "Always.")]
    text = " ".join(t.text for t in turns)
    assert "Make this longer" not in text and "This was cut" not in text  # notes and boneyard
    assert "Lamp Keeper" not in text and "Nobody" not in text  # the title page
    assert [t.text for t in turns if t.kind == "heading"] == ["INT. LIGHTHOUSE - NIGHT", "FLASHBACK"]
    assert "(quietly)" in [t.text for t in turns if t.kind == "action"]
    assert next(t.line for t in turns if t.text == "Always?") == 21  # lines hold past the boneyard


def test_fountain_told_by_content(tmp_path):
    assert read_turns(write(tmp_path, "lamp.txt", FOUNTAIN))[0] == "fountain"


def test_list_speakers(workdir):
    plain, fountain = write(workdir, "lamp.txt", PLAIN), write(workdir, "lamp.fountain", FOUNTAIN)
    result = list_speakers(workdir, plain, fountain)
    assert result.exit_code == 0, result.output
    assert "screenplay" in result.output and "fountain" in result.output
    out = " ".join(result.output.split())
    assert "lamp.txt: left out page marks ((MORE), CONTINUED:, page numbers): 1." in out
    assert "lamp.fountain: left out boneyard passages /* */: 1, notes [[...]]: 1, title page lines: 2." in out
    rows = [line for line in result.output.splitlines() if "ODILE" in line or "BRAM" in line or "McCLANE" in line]
    assert len(rows) == 3 and "ODILE" in rows[0] and " 5 " in rows[0]  # ODILE: 3 + 2 lines, most first


def test_missing_file_is_one_line(workdir):
    result = list_speakers(workdir, workdir / "nope.fountain")
    assert result.exit_code == 1 and "No such file or folder" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_speaker_names_fold_case_and_extensions():
    assert same_speaker("Officer K", "OFFICER K (V.O.)") and same_speaker("k (cont'd)", "K (O.S.)")
    assert not same_speaker("K", "KAY")
    assert closest_names("ODIL", ["BRAM", "ODILE (V.O.)", "OTTO"]) == ["ODILE (V.O.)"]
    assert closest_names("ZZZ", ["BRAM", "ODILE"]) == []
