"""bladegpt chat through piped input and through a pseudo-terminal."""

import os
import pty
import select
import sys
import time

import pytest
from typer.testing import CliRunner

from bladegpt.cli import app
from bladegpt.launch import train
from bladegpt.prepare import prepare
from tests.conftest import TINY_MODEL, TINY_TRAIN


@pytest.fixture
def voice(workdir, corpus):
    text = corpus.read_text()
    corpus.write_text("".join(f'"{line}"\n\n' for line in text.splitlines()))  # quoted dialogue, as the corpora
    prepare([corpus], tokenizer="char")
    train(None, "nano", {**TINY_MODEL, "block_size": 32}, {**TINY_TRAIN, "steps": 40}, compile="off")
    return workdir


def test_piped_conversation_is_reproducible(voice):
    runner = CliRunner()
    talk = lambda seed: runner.invoke(app, ["chat", "--seed", str(seed), "--max-new-tokens", "40"],
                                      input="The hunter counted the coins.\n\nWho lit the lamp?\n")
    first, again, other = talk(1), talk(1), talk(2)
    assert first.exit_code == 0, first.output
    answers = first.stdout.splitlines()
    assert len(answers) == 2 and all('"' not in a for a in answers)  # one answer a line, ended at its quote
    assert first.stdout == again.stdout != other.stdout
    bad = runner.invoke(app, ["chat", "--seed", "1"], input="Zebra ~ 42\nThe hunter\n")
    assert bad.exit_code == 0 and "never saw" in bad.output and len(bad.stdout.splitlines()) >= 1
    assert runner.invoke(app, ["chat", "--frame", "xml"]).exit_code == 1


@pytest.mark.slow
def test_terminal_conversation_ends_on_ctrl_d(voice):
    pid, fd = pty.fork()
    if pid == 0:  # the child: bladegpt chat on a terminal
        os.execv(sys.executable, [sys.executable, "-m", "bladegpt", "chat", "--seed", "3", "--max-new-tokens", "20"])
    seen = b""

    def read_until(marker: bytes, count: int, timeout: float = 60) -> None:
        nonlocal seen
        end = time.time() + timeout
        while seen.count(marker) < count and time.time() < end:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break

    read_until(b"> ", 1)
    os.write(fd, b"Who lit the lamp?\n")
    read_until(b"> ", 2)  # the answer, then the next prompt
    assert seen.count(b"> ") >= 2, seen
    os.write(fd, b"\x04")  # Ctrl-D
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and b"Traceback" not in seen
