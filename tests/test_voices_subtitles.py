"""Subtitles read as turns: WebVTT voice spans, ASS/SSA's Name field, and SRT (no speakers)."""

from bladegpt.data.voices import read_turns
from tests.voices import list_speakers, write

VTT = """\
WEBVTT

NOTE Written for BladeGPT's tests.

00:00:01.000 --> 00:00:03.500
<v Nadia>The kettle is <i>singing</i> again.

00:00:04.000 --> 00:00:06.000 align:start
<v.loud Tomas Berg>Let it sing.</v>

00:00:07.000 --> 00:00:09.000
- <v Nadia>It wakes the cat.
- <v Tomas Berg>The cat &amp; I agree.

00:00:10.000 --> 00:00:11.000
[a cat yawns]
"""

ASS = """\
[Script Info]
Title: Tests
ScriptType: v4.00+

[V4+ Styles]
Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding
Style: Default,Arial,20,&H00FFFFFF,&H000000FF,&H00000000,&H00000000,0,0,0,0,100,100,0,0,1,2,2,2,10,10,10,1

[Events]
Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text
Dialogue: 0,0:00:01.00,0:00:03.00,Default,Nadia,0,0,0,,{\\i1}The kettle{\\i0} is singing.
Comment: 0,0:00:03.00,0:00:04.00,Default,Tomas,0,0,0,,translator's note, not spoken
Dialogue: 0,0:00:04.00,0:00:06.00,Default,Tomas,0,0,0,,Let it sing.\\NIt means well.
Dialogue: 0,0:00:06.00,0:00:07.00,Default,,0,0,0,,{\\p1}m 0 0 l 100 0 100 100 0 100{\\p0}
Dialogue: 0,0:00:07.00,0:00:08.00,Default,,0,0,0,,Somewhere, a door.
"""

SRT = """\
1
00:00:01,000 --> 00:00:03,000
<i>The kettle is singing.</i>

2
00:00:04,000 --> 00:00:06,000
{\\an8}Let it sing.
It means well.

"""


def test_webvtt_voices(tmp_path):
    name, turns = read_turns(write(tmp_path, "kettle.vtt", VTT))
    assert name == "webvtt"
    assert [(t.speaker, t.text, t.line) for t in turns] == [
        ("Nadia", "The kettle is singing again.", 5), ("Tomas Berg", "Let it sing.", 8),
        ("Nadia", "It wakes the cat.", 11), ("Tomas Berg", "The cat & I agree.", 11), (None, "[a cat yawns]", 15)]
    assert all(t.kind == "speech" for t in turns)


def test_ass_names(tmp_path):
    name, turns = read_turns(write(tmp_path, "kettle.ass", ASS))
    assert name == "ass"
    assert [(t.speaker, t.text, t.line) for t in turns] == [
        ("Nadia", "The kettle is singing.", 11), ("Tomas", "Let it sing. It means well.", 13),
        (None, "Somewhere, a door.", 15)]  # the comment and the drawing are no one's words


def test_srt_text_without_numbers_timings_or_tags(tmp_path):
    name, turns = read_turns(write(tmp_path, "kettle.srt", SRT))
    assert name == "srt"
    assert [(t.speaker, t.text, t.line) for t in turns] == [
        (None, "The kettle is singing.", 2), (None, "Let it sing. It means well.", 6)]


def test_told_by_content_not_extension(tmp_path):
    assert read_turns(write(tmp_path, "a.txt", VTT))[0] == "webvtt"
    assert read_turns(write(tmp_path, "b.txt", ASS))[0] == "ass"
    assert read_turns(write(tmp_path, "c.txt", SRT))[0] == "srt"


def test_list_speakers_says_srt_has_none(workdir):
    result = list_speakers(workdir, write(workdir, "kettle.srt", SRT), write(workdir, "kettle.vtt", VTT))
    assert result.exit_code == 0, result.output
    assert "SRT names no speakers: 2 cues of text only" in " ".join(result.output.split())
    assert "Nadia" in result.output and "Tomas Berg" in result.output
    assert "kettle.vtt: speech without a speaker: 1; left out NOTE, STYLE and REGION blocks: 1." in " ".join(
        result.output.split())


def test_list_speakers_says_what_ass_left_out(workdir):
    result = list_speakers(workdir, write(workdir, "kettle.ass", ASS))
    assert "kettle.ass: speech without a speaker: 1; left out Comment lines: 1, drawings: 1." in " ".join(
        result.output.split())


def test_malformed_timing_is_one_line(workdir):
    broken = write(workdir, "broken.srt", SRT.replace("00:00:04,000 --> 00:00:06,000", "00:00:04,000 -> 00:0"))
    result = list_speakers(workdir, broken)
    assert result.exit_code == 1 and "broken.srt line 6 is not a subtitle timing" in " ".join(result.output.split())
    broken = write(workdir, "broken.vtt", VTT.replace("00:00:04.000 --> 00:00:06.000", "00:00:04 --> 00:00:06"))
    result = list_speakers(workdir, broken)
    assert result.exit_code == 1 and "broken.vtt line 8 is not a subtitle timing" in " ".join(result.output.split())
    broken = write(workdir, "broken.ass", ASS.replace("0:00:04.00,0:00:06.00", "soon,later"))
    result = list_speakers(workdir, broken)
    assert result.exit_code == 1 and "broken.ass line 13 is not a subtitle Dialogue line" in " ".join(result.output.split())
    assert len(result.output.strip().splitlines()) == 1
