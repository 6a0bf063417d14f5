import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from bladegpt.cli import app

runner = CliRunner()
TINY = ["--preset", "nano", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
        "--batch-size", "4", "--steps", "20", "--eval-interval", "10", "--eval-iters", "2", "--compile", "off"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_is_instant_and_torch_free():
    code = ("import sys; from bladegpt.cli import app; heavy = {'torch', 'matplotlib', 'tensorboard', 'wandb'}; "
            "assert not heavy & set(sys.modules), heavy & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
    for command in ([], ["prepare"], ["train"], ["sample"], ["serve"], ["bench"], ["export"], ["runs"]):
        result = invoke(*command, "--help")
        assert result.exit_code == 0 and "Usage" in result.output
    assert "bladegpt" in invoke("--version").output


def test_quick_start(corpus, workdir):
    result = invoke("prepare", corpus)
    assert result.exit_code == 0, result.output
    assert "bytes per token" in result.output and "datasets/tales" in result.output
    result = invoke("train", *TINY)
    assert result.exit_code == 0, result.output
    assert "runs/tales-1" in result.output and "val loss" in result.output
    first = invoke("sample", "The hunter", "--seed", "3", "--max-new-tokens", "20")
    again = invoke("sample", "The hunter", "--seed", "3", "--max-new-tokens", "20")
    assert first.exit_code == 0, first.output
    assert first.stdout == again.stdout and first.stdout.startswith("The hunter")
    assert len(first.stdout) > len("The hunter") + 5
    three = invoke("sample", "The", "--num-samples", "3", "--max-new-tokens", "12", "--seed", "1")
    assert three.exit_code == 0, three.output
    texts = three.stdout.rstrip("\n").split("\n" + "-" * 40 + "\n")
    alone = [invoke("sample", "The", "--max-new-tokens", "12", "--seed", str(1 + i)).stdout.rstrip("\n")
             for i in range(3)]
    assert texts == alone  # sample i of a batch is what seed + i gives alone
    with pytest.MonkeyPatch.context() as mp:  # many samples run in turns of a bounded batch
        mp.setattr("bladegpt.generate.sampler.MAX_BATCH", 2)
        turns = invoke("sample", "The", "--num-samples", "3", "--max-new-tokens", "12", "--seed", "1")
    assert turns.stdout == three.stdout
    for precision in ("fp32", "bf16", "int8", "int4"):
        result = invoke("sample", "The", "--precision", precision, "--max-new-tokens", "3")
        assert result.exit_code == 0 or "bf16 is not supported" in result.output, result.output
    result = invoke("sample", "The", "--precision", "fp8")
    assert result.exit_code == 1 and "Unknown precision" in result.output



def test_choice_words_are_read_in_any_case(corpus, workdir):
    assert invoke("prepare", corpus, "--tokenizer", "Char").exit_code == 0
    loud = [{"nano": "NANO", "off": "Off"}.get(a, a) for a in TINY]
    result = invoke("train", *loud, "--steps", "2", "--optimizer", "AdamW", "--sampling", "Epochs",
                    "--block", "Modern", "--precision", "FP32", "--device", "CPU", "--run", "loud")
    assert result.exit_code == 0, result.output
    config = json.loads((workdir / "loud" / "run.json").read_text())
    assert config["train"]["optimizer"] == "adamw" and config["train"]["sampling"] == "epochs"
    result = invoke("sample", "The", "--checkpoint", "loud", "--precision", "FP32", "--max-new-tokens", "3")
    assert result.exit_code == 0, result.output

@pytest.mark.slow
def test_sampling_knobs_at_their_limits_from_the_cli(corpus, workdir):
    """sample --temperature 1e-40 once failed with an index past the vocabulary; now it is greedy, and
    the other knobs' limits give the text their definitions say."""
    invoke("prepare", corpus, "--tokenizer", "char")
    invoke("train", *TINY)
    text = lambda *knobs: invoke("sample", "The", "--max-new-tokens", "30", "--seed", "4", *knobs)
    greedy = text("--temperature", "0")
    assert greedy.exit_code == 0, greedy.output
    for knobs in (["--temperature", "1e-40"], ["--top-k", "1"], ["--min-p", "1"], ["--top-p", "1e-9"]):
        assert text(*knobs).stdout == greedy.stdout, knobs
    plain = text("--top-k", "1000000")  # past the vocabulary: all of it
    assert plain.stdout == text("--top-k", "1000000", "--min-p", "0", "--top-p", "1").stdout
    hot = text("--temperature", "1e300", "--min-p", "0.5")
    # near-uniform over what min-p keeps: a sample, not greedy's text (it may draw the end of text early)
    assert hot.exit_code == 0 and hot.stdout != greedy.stdout, hot.output
    talk = CliRunner().invoke(app, ["chat", "--frame", "lines", "--temperature", "1e-40", "--min-p", "0.1",
                                    "--max-new-tokens", "10"], input="The hunter\n")
    assert talk.exit_code == 0 and "Traceback" not in talk.output, talk.output


def test_resume_from_the_cli(corpus, workdir):
    invoke("prepare", corpus, "--tokenizer", "char")
    first = invoke("train", *TINY, "--optimizer", "muon")
    assert first.exit_code == 0 and "Muon + AdamW" in first.output, first.output
    result = invoke("train", "--resume", "--steps", "30", "--compile", "off")
    assert result.exit_code == 0, result.output
    assert "step 30" in result.output and "Muon + AdamW" in result.output  # the run's own optimizer


def test_a_damaged_run_file_names_the_checkpoint_that_still_reads(corpus, workdir):
    from tests.safety import assert_one_line_error

    invoke("prepare", corpus, "--tokenizer", "char")
    assert invoke("train", *TINY).exit_code == 0
    run = workdir / "runs" / "tales-1"
    for name, other in (("last", "best"), ("state", "best"), ("best", "last")):
        damaged = run / f"{name}.safetensors"
        kept = damaged.read_bytes()
        damaged.unlink()  # best may be a hard link to last: the other keeps its bytes
        damaged.write_bytes(kept[:1000])
        command = ["train", "--resume", "--steps", "50"] if name != "best" else ["sample", "The"]
        line = assert_one_line_error(invoke(*command), f"Use {run.relative_to(workdir)}/{other}.safetensors")
        assert f"{name}.safetensors is not a readable" in line and ("cannot be resumed" in line) == (name != "best")
        damaged.unlink()
        damaged.write_bytes(kept)


@pytest.mark.parametrize(
    "args, message",
    [
        (["prepare", "missing.txt"], "No such file"),
        (["prepare", "CORPUS", "--tokenizer", "bpee"], "Unknown tokenizer 'bpee'"),
        (["train"], "bladegpt prepare"),
        (["sample", "hi"], "bladegpt train"),
        (["train", "--preset", "huge"], "Unknown preset"),
        (["train", "--optimizer", "sgd"], "Unknown optimizer 'sgd'; use one of: adamw, muon"),
        (["train", "--resume"], "Nothing to resume: no run in runs/ has a checkpoint yet"),
        (["train", "--data", "nope"], "No dataset at nope; check the path"),
        (["train", "--data", "."], "is not a dataset made by `bladegpt prepare`"),
        (["prepare", "CORPUS", "--tokenizer-from", "CORPUS"], "is not a model file BladeGPT reads"),
        (["prepare", "ONE_CHAR"], "too short to keep 10% of it for validation"),  # found once encoding began
    ],
)
def test_user_errors_are_one_line(workdir, corpus, args, message):
    if args[0] == "train" and len(args) > 1:
        invoke("prepare", corpus, "--tokenizer", "char")
    if "ONE_CHAR" in args:
        (workdir / "one.txt").write_text("a")
        args = [str(workdir / "one.txt") if a == "ONE_CHAR" else a for a in args]
    result = invoke(*(corpus if a == "CORPUS" else a for a in args))
    assert result.exit_code == 1
    assert message in result.output.replace("\n", " ")
    assert "Traceback" not in result.output and not result.output.startswith("\n")  # no blank line above it


def test_damaged_checkpoint_and_unseen_characters(corpus, workdir):
    invoke("prepare", corpus, "--tokenizer", "char")
    assert invoke("train", *TINY).exit_code == 0
    result = invoke("sample", "Zebra ~ 42")
    assert result.exit_code == 1 and "never saw" in result.output
    best = workdir / "runs" / "tales-1" / "best.safetensors"
    best.write_bytes(best.read_bytes()[:1000])
    result = invoke("sample", "The")
    assert result.exit_code == 1 and "damaged" in result.output.replace("\n", " ")
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--device", "foo"], "Unknown --device 'foo'"),
        (["train", "--time", "nan"], "positive and finite"),
        (["train", "--time", "inf"], "positive and finite"),
        (["train", "--seed", str(2**70)], "--seed must be between 0 and"),
        (["train", "--min-lr-ratio", "1.5"], "--min-lr-ratio must be in [0, 1]"),
        (["train", "--weight-decay", "-1"], "--weight-decay must be 0 or a positive number"),
        (["train", "--warmup-steps", "-3"], "--warmup-steps must be 0 (none) or a number of steps"),
        (["train", "--sample-tokens", "-1"], "--sample-tokens must be 0 (no sample) or a number of tokens"),
        (["sample", "--top-k", "0"], "--top-k must be at least 1"),
        (["sample", "--top-k", "-3"], "--top-k must be at least 1"),
        (["sample", "--top-p", "0"], "--top-p must be in (0, 1]"),
        (["sample", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["sample", "--temperature", "nan"], "--temperature must be 0"),
        (["sample", "--temperature", "inf"], "--temperature must be 0"),
        (["sample", "--min-p", "-0.1"], "--min-p must be in [0, 1]"),
        (["sample", "--min-p", "1.01"], "--min-p must be in [0, 1]"),
        (["chat", "--min-p", "nan"], "--min-p must be in [0, 1]"),
        (["sample", "--repetition-penalty", "0"], "--repetition-penalty must be a positive number"),
        (["chat", "--repetition-penalty", "inf"], "--repetition-penalty must be a positive number"),
        (["sample", "--seed", str(2**70)], "--seed must be between 0 and"),
        (["sample", "--num-samples", "0"], "--num-samples and --max-new-tokens must be at least 1"),
        (["bench", "--steps", "0"], "must be at least 1"),
        (["bench", "--batch", "0"], "must be at least 1"),
        (["bench", "--block", "0"], "--block (the context length) must be at least 1, got 0."),
        (["bench", "--rungs", ","], "Unknown rung(s) ''; choose from"),
    ],
)
def test_bad_values_are_one_line(workdir, corpus, args, message):
    from tests.safety import assert_one_line_error

    if args[0] == "train":
        invoke("prepare", corpus, "--tokenizer", "char")
    assert_one_line_error(invoke(*args), message)
    assert not (workdir / "runs").exists() or not list((workdir / "runs").iterdir())


def test_a_file_where_a_folder_is_needed_is_named(workdir, corpus):
    from tests.safety import assert_one_line_error

    (workdir / "datasets").write_text("my list of data sets")
    assert_one_line_error(invoke("prepare", corpus, "--tokenizer", "char"), "Cannot make datasets: a file")
    assert invoke("prepare", corpus, "--tokenizer", "char", "--out", "data").exit_code == 0
    for args in (["prepare", corpus, "--out", "tales.txt/data"], ["train", *TINY, "--data", "data", "--run", "tales.txt/run"]):
        assert_one_line_error(invoke(*args), "a file (or a link) stands where a folder is needed", "move it away")
    assert (workdir / "datasets").read_text() == "my list of data sets" and corpus.is_file()


def test_read_only_folders_are_one_line(workdir, corpus, monkeypatch):
    from tests.safety import assert_one_line_error, read_only

    invoke("prepare", corpus, "--tokenizer", "char")
    (workdir / "locked").mkdir()
    with read_only(workdir / "locked"):
        assert_one_line_error(invoke("prepare", corpus, "--out", "locked/data"), "Read-only file system")
        assert_one_line_error(invoke("train", *TINY, "--run", "locked/run"), "Read-only file system")
    with read_only(workdir):
        monkeypatch.chdir(workdir)  # into the mount: the old working directory is the folder beneath it
        assert_one_line_error(invoke("train", *TINY), "Read-only file system")
        assert_one_line_error(invoke("prepare", corpus, "--out", "again"), "Read-only file system")


def test_prepare_names_the_train_command_that_finds_its_dataset(corpus, workdir):
    result = invoke("prepare", corpus)
    assert result.exit_code == 0 and "Next: bladegpt train (it picks up this dataset)." in result.output
    elsewhere = invoke("prepare", corpus, "--out", "my data")
    assert elsewhere.exit_code == 0, elsewhere.output
    assert "Next: bladegpt train --data 'my data'" in elsewhere.output  # train alone would take datasets/' newest


def one_line_shown(capsys, error: Exception) -> str:
    """What a command that raises `error` prints under the CLI's `friendly` wrapper; it must end it with exit
    code 1 and one line."""
    from bladegpt.cli.app import friendly

    @friendly
    def command():
        raise error

    with pytest.raises(typer.Exit) as exit_:
        command()
    shown = capsys.readouterr().err
    assert exit_.value.exit_code == 1 and shown.count("\n") == 1, shown
    return shown


def test_a_library_message_over_several_lines_is_still_one_line(capsys):
    from bladegpt.errors import SourceError

    shown = one_line_shown(capsys, SourceError("Could not download x (first\nsecond  line\n); check the connection."))
    assert "Error: Could not download x (first second line ); check the connection." in shown


def test_a_failed_download_names_the_first_line_of_its_reason(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from bladegpt.errors import SourceError
    from bladegpt.sources.hub import hf_folder

    def offline_download(repo, local_files_only=False, **_):
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        raise OSError("ConnectError: no route\nAn error happened while trying to locate the files on the Hub.")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(SourceError) as error:
        hf_folder("Someone/Model", weights=False)
    message = str(error.value)
    assert "\n" not in message and "ConnectError: no route" in message and "An error happened" not in message
    assert "--init-from" not in message  # prepare --tokenizer-from fails here too: the fix names no one flag


def test_the_commands_a_run_names_are_quoted_for_the_shell(corpus, workdir):
    """A run named after a dataset 'my notes' said 'Next: bladegpt sample --checkpoint runs/my notes-1', and a run
    killed in its first save 'bladegpt train --run runs/my notes-2': two words each to a shell. Each command a run
    names is now quoted, and pasted back it reaches the run."""
    import shlex

    from bladegpt.runs import LOCK, RUN_FILE

    assert invoke("prepare", corpus, "--tokenizer", "char", "--out", "datasets/my notes").exit_code == 0
    done = invoke("train", *TINY, "--data", "datasets/my notes")
    assert done.exit_code == 0, done.output
    said = " ".join(done.output.split("Next:")[-1].split())
    assert said.startswith("bladegpt sample --checkpoint 'runs/my notes-1'"), said
    killed = workdir / "runs" / "my notes-2"  # stopped in its first save: run.json, no checkpoint
    killed.mkdir()
    (killed / RUN_FILE).write_text((workdir / "runs" / "my notes-1" / RUN_FILE).read_text())
    (killed / LOCK).write_text("1")
    refused = invoke("train", "--resume", "--run", killed)
    command = refused.output.split("`")[1]
    assert refused.exit_code == 1 and shlex.split(command) == ["bladegpt", "train", "--run", str(killed)], refused.output


def test_the_commands_export_and_a_tokenizer_mismatch_name_are_quoted_for_the_shell(corpus, workdir):
    """export said 'bladegpt sample --checkpoint my model [v1].safetensors' (and read the [v1] as markup), a
    fine-tune on another tokenizer's text 'bladegpt prepare ... --tokenizer-from my model [v1].safetensors'."""
    import shlex

    assert invoke("prepare", corpus, "--tokenizer", "char").exit_code == 0
    assert invoke("train", *TINY, "--steps", "2").exit_code == 0
    out = "my model [v1].safetensors"
    done = invoke("export", out, "--format", "safetensors")
    assert done.exit_code == 0, done.output
    assert shlex.split(done.output.split("with: ")[-1]) == ["bladegpt", "sample", "--checkpoint", out], done.output
    assert invoke("prepare", corpus, "--out", "datasets/bpe").exit_code == 0
    refused = invoke("train", "--init-from", out, "--data", "datasets/bpe", "--steps", "2")
    assert refused.exit_code == 1, refused.output
    words = shlex.split(" ".join(refused.output.split()).split("`")[1])
    assert words[:2] == ["bladegpt", "prepare"] and words[-2:] == ["--tokenizer-from", out], refused.output


def test_a_full_disk_under_a_writer_that_names_no_file_is_one_line(capsys):
    """`export --format gguf` on a full disk: numpy's tofile raised OSError('884736 requested and 310168 written'),
    which names no file, and the user got a traceback (seen when the disk of CI's machine filled)."""
    shown = one_line_shown(capsys, OSError("884736 requested and 310168 written"))
    assert "A read or write failed (884736 requested and 310168 written)" in shown


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path, monkeypatch):
    """`bladegpt runs --json | head -c 600` said "Error: A read or write failed ([Errno 32] Broken pipe). Check the
    free space on the disk...": a pipe whose reader left is no disk's failure, and `head` is the user's choice."""
    import errno

    from bladegpt.cli import speakers

    def reader_gone(*args, **kwargs):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(speakers, "show_speakers", reader_gone)
    (tmp_path / "play.txt").write_text("ANNA: Where were you?\n\nBEN: Out.\n")
    done = invoke("prepare", tmp_path / "play.txt", "--list-speakers")
    assert done.exit_code == 1 and done.output == ""
