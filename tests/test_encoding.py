"""Bytes that are not UTF-8 at every edge (issue #28, items 1 and 4): prompts and typed lines, file and
folder names under a strict or an ASCII locale, and text files saved in UTF-16 or UTF-32."""

import codecs
import os
import subprocess
import sys

import pytest

from bladegpt.data import prepare as prepare_module
from bladegpt.data.dataset import TokenData
from bladegpt.encoding import as_text, read_typed
from bladegpt.train import train
from bladegpt.data.prepare import prepare
from bladegpt.data.textfile import TextFile
from tests.conftest import TINY_MODEL, TINY_TRAIN, corpus_text
from tests.safety import REPO

STRICT = {"PYTHONIOENCODING": "utf-8:strict"}  # a desktop terminal: printing a lone surrogate raises
ASCII = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}  # argv, stdin, stdout and files in ASCII
LOCALES = [STRICT, pytest.param(ASCII, marks=pytest.mark.slow), pytest.param({"LC_ALL": "C"}, marks=pytest.mark.slow)]


def run(*args: str | bytes, cwd, env: dict, stdin: bytes = b"") -> tuple[int, str]:
    """`bladegpt ARGS` as a real process (argv bytes reach it as they would from a shell); its exit
    code and its output, stdout and stderr together, read leniently (it may print raw name bytes)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("LANG", "LC_ALL", "LC_CTYPE", "PYTHONIOENCODING")}
    done = subprocess.run([sys.executable, "-m", "bladegpt", *args], cwd=cwd, input=stdin, capture_output=True,
                          env={**environ, "PYTHONPATH": str(REPO), **env}, timeout=300)
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert "Traceback" not in output, output
    return done.returncode, output


@pytest.fixture(scope="module")
def voice(tmp_path_factory):
    """A tiny model with a corpus BPE (it can spell é) in its own folder."""
    folder = tmp_path_factory.mktemp("voice")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        (folder / "tales.txt").write_text(corpus_text() + "Le café au lait était chaud.\n" * 20)
        prepare([folder / "tales.txt"], vocab_size=300)
        train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 10}, compile="off")
    finally:
        os.chdir(cwd)
    return folder


def test_escaped_bytes_read_as_utf8_where_they_are_and_latin1_where_not():
    assert as_text("caf\udce9 au lait") == ("café au lait", [0xE9])
    assert as_text("caf\udcc3\udca9") == ("café", [])  # UTF-8 typed under an ASCII locale
    assert as_text("plain, naïve") == ("plain, naïve", [])
    assert as_text("a\ud800b") == ("a\ufffdb", [])  # a surrogate no decoder made: unreadable
    text, note = read_typed("caf\udce9", "prompt")
    assert text == "café" and "0xE9" in note and "Latin-1" in note and "\n" not in note
    assert read_typed("café", "prompt") == ("café", None)


@pytest.mark.parametrize("env", LOCALES, ids=["strict", "ascii", "C"])
def test_a_latin1_prompt_and_chat_line_are_read_and_said(voice, env):
    """The issue's instance: `sample -- "caf\\xe9 au lait"` ended in UnicodeEncodeError when the prompt
    was echoed, `chat` with that line on stdin in UnicodeDecodeError."""
    code, out = run("sample", "--seed", "1", "--max-new-tokens", "8", "--", b"caf\xe9 au lait", cwd=voice, env=env)
    assert code == 0 and "0xE9" in out and "caf" in out, out
    code, out = run("chat", "--seed", "1", "--max-new-tokens", "8", "--frame", "lines", cwd=voice, env=env,
                    stdin=b"caf\xe9 au lait\nThe hunter\n")
    assert code == 0 and "0xE9" in out, out
    code, out = run("sample", "--max-new-tokens", "8", "--", "café".encode(), cwd=voice, env=env)  # UTF-8 is UTF-8
    shown = "caf\\xe9" if env is ASCII else "café"  # an ASCII terminal gets a backslash escape
    assert code == 0 and "not UTF-8" not in out and shown in out, out


@pytest.mark.slow
@pytest.mark.parametrize("env", [STRICT, ASCII], ids=["strict", "ascii"])
def test_names_that_are_not_utf8_work_in_every_command(tmp_path, env):
    """A corpus file, a folder of them, a dataset --out, a --run folder, export targets and a
    --checkpoint path, each named with byte 0xE9: every command works and prints them; a path that
    is not there is one line naming it."""
    (tmp_path / os.fsdecode(b"pi\xe8ce.txt")).write_text(corpus_text())
    (tmp_path / os.fsdecode(b"d\xe9")).mkdir()
    (tmp_path / os.fsdecode(b"d\xe9") / "a.txt").write_text(corpus_text(seed=1))
    tiny = ["--preset", "nano", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
            "--batch-size", "4", "--steps", "6", "--eval-interval", "3", "--eval-iters", "1", "--sample-tokens", "0",
            "--compile", "off"]
    steps = [
        ["prepare", b"pi\xe8ce.txt", "--tokenizer", "char"],
        ["prepare", b"d\xe9", "--tokenizer", "char", "--out", b"datasets/o\xf9"],
        ["train", "--data", b"datasets/o\xf9", "--run", b"runs/r\xe9", *tiny],
        ["train", "--data", "datasets/pièce", *tiny],  # the name prepare made
        ["runs"],
        ["sample", "--max-new-tokens", "5", "--checkpoint", b"runs/r\xe9"],
        ["export", b"x\xe9.gguf", "--format", "gguf", "--checkpoint", b"runs/r\xe9"],
        ["export", b"h\xe9", "--checkpoint", b"runs/r\xe9"],
        ["export", b"s\xe9", "--format", "safetensors", "--checkpoint", b"runs/r\xe9/best.safetensors"],
        ["sample", "--max-new-tokens", "5", "--checkpoint", b"s\xe9.safetensors"],
        ["train", "--resume", "--run", b"runs/r\xe9", "--steps", "9"],
    ]
    for args in steps:
        code, out = run(*args, cwd=tmp_path, env=env)
        assert code == 0, (args, out)
    assert (tmp_path / "datasets" / "pièce").is_dir()  # names BladeGPT makes are UTF-8
    assert (tmp_path / "runs" / "pièce-1").is_dir()
    for name in (b"x\xe9.gguf", b"h\xe9/model.safetensors", b"s\xe9.safetensors"):
        assert (tmp_path / os.fsdecode(name)).is_file()
    code, out = run("sample", "--checkpoint", b"runs/n\xe9/best.safetensors", cwd=tmp_path, env=env)
    assert code == 1 and len(out.strip().splitlines()) == 1 and "runs/n" in out, out


ENCODED = ["utf-16", "utf-16-be-bom", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be-bom", "utf-8-sig"]


def encode_as(text: str, how: str) -> bytes:
    """`text` in an encoding, with a byte-order mark where `how` says -bom (or the codec writes one)."""
    if how.endswith("-bom"):
        codec = how.removesuffix("-bom")
        return codecs.BOM_UTF16_BE + text.encode(codec) if codec == "utf-16-be" else codecs.BOM_UTF32_BE + text.encode(codec)
    return text.encode(how)


def decoded(folder) -> str:
    data = TokenData(folder)
    return "".join(data.tokenizer.decode(data.splits[s].tolist()) for s in ("train", "val"))


@pytest.mark.parametrize("how", ENCODED)
def test_utf16_and_utf32_files_are_read_as_text(workdir, monkeypatch, how):
    """The issue's instance: a file Windows Notepad saves as "Unicode" (UTF-16-LE with a BOM) was
    refused as binary. Each of UTF-16/32, with a byte-order mark or UTF-16/32 by its NUL pattern, and
    UTF-8 with a BOM, gives the dataset the same text in UTF-8 gives (BOM never trained on), also read
    in blocks of 7 bytes, which split characters and UTF-16 surrogate pairs (the emoji)."""
    text = corpus_text(60) + "Unicode: café, naïve, “quoted” 😀 and 日本.\r\n" * 3
    (workdir / "plain.txt").write_text(text, encoding="utf-8")
    (workdir / "saved.txt").write_bytes(encode_as(text, how))
    plain = prepare([workdir / "plain.txt"], out_dir=workdir / "plain", tokenizer="char")
    saved = prepare([workdir / "saved.txt"], out_dir=workdir / "saved", tokenizer="char")
    assert decoded(saved.out_dir) == decoded(plain.out_dir) == text
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (saved.out_dir / name).read_bytes() == (plain.out_dir / name).read_bytes(), name
    assert saved.meta["bytes"] == plain.meta["bytes"] and saved.meta["val_tokens"] == plain.meta["val_tokens"]
    monkeypatch.setattr("bladegpt.data.textfile.READ_BYTES", 7)
    assert "".join(TextFile.open(workdir / "saved.txt").blocks()) == text
    if how == "utf-8-sig":
        assert saved.notes == []
    else:
        assert len(saved.notes) == 1 and ("UTF-16" in saved.notes[0] or "UTF-32" in saved.notes[0])
        assert saved.meta["source_encodings"][0].startswith("utf-")


def test_a_notepad_file_from_the_cli_and_a_sampled_bpe(workdir, monkeypatch):
    """From the CLI the encoding is said in one line; a corpus BPE trained on spans drawn across a large
    UTF-16 file (spans mapped into its bytes) still encodes every byte of the text."""
    from typer.testing import CliRunner

    from bladegpt.cli import app

    text = corpus_text(400)
    (workdir / "notes.txt").write_bytes(codecs.BOM_UTF16_LE + text.replace("\n", "\r\n").encode("utf-16-le"))
    result = CliRunner().invoke(app, ["prepare", "notes.txt", "--tokenizer", "char"])
    assert result.exit_code == 0, result.output
    assert "as UTF-16 (little-endian) (its byte-order mark)" in result.output
    monkeypatch.setattr(prepare_module, "SAMPLE_BYTES", 4096)  # the BPE learns from 64 spans of 64 bytes
    bpe = prepare([workdir / "notes.txt"], out_dir=workdir / "bpe", vocab_size=300)
    assert decoded(bpe.out_dir) == text.replace("\n", "\r\n")


@pytest.mark.parametrize(
    "data, fragments",
    [
        (codecs.BOM_UTF16_LE + "ok\n".encode("utf-16-le") + b"\x00\xd8" + "x\n".encode("utf-16-le"),
         ["not valid UTF-16 (little-endian)", "iconv -f UTF-16-LE -t UTF-8"]),  # a lone high surrogate
        ("café\n".encode("latin-1") * 50, ["is not UTF-8 text", "iconv -f latin1"]),
        (bytes(range(256)) * 8, ["looks binary"]),
        (codecs.BOM_UTF32_LE + b"\x00\x00\x11\x00" * 10, ["not valid UTF-32 (little-endian)"]),
    ],
)
def test_files_in_other_encodings_are_one_line(workdir, data, fragments):
    from tests.safety import assert_one_line_error, invoke

    (workdir / "odd.txt").write_bytes(data)
    assert_one_line_error(invoke("prepare", workdir / "odd.txt"), *fragments)
