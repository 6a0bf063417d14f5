"""`prepare --speaker NAME`: one character's lines as the training targets, what comes before them as context.

The sources are read as turns (data/voices) and written in the play frame (data/frames.py): a scene heading,
action or narration as a paragraph of its own, and each speech as `NAME:` on its own line, the speech, then a
blank line, which `chat` continues as it stands. The targets are the speaker's speech and the blank line that
ends it (so the voice learns where to stop); their own `NAME:` and everyone else's turns are context, the loss
masked there (TRL's completion-only training, mlx-lm's --mask-prompt). The text is encoded whole, as chat will
encode it (pieces encoded one by one give GPT-2 a "\n\n" token at the end of a turn where the whole text has
two "\n"), and each token's bytes, which every tokenizer kind gives, place it in its piece; a token that
would straddle a boundary is prevented by encoding the two sides apart (encode_pieces).
"""

from __future__ import annotations

import re
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bladegpt.data.dataset import DATASET_FILES, MASK_FILES, TOKENIZER_FILE, fingerprint
from bladegpt.data.frames import USER, Frame
from bladegpt.data.prepare import MAX_VOCAB, MIN_VOCAB, PrepareResult, _write_meta, check_out_dir, default_out_dir
from bladegpt.data.voices import Turn, closest_names, find_files, read, speaker_key
from bladegpt.data.voices.screenplay import HEADING
from bladegpt.errors import DataError
from bladegpt.files import publish_dir, temp_dir
from bladegpt.tokenizer import CharTokenizer, Tokenizer, train_tokenizer
from bladegpt.tokenizer.bpe import bpe_vocab_size

Piece = tuple[str, bool]  # a piece of the framed text, and whether it is a target
OPENING_TURNS = 4  # context turns an opening keeps before the speaker's first cue (a heading besides)
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")


@dataclass
class Script:
    """The files read for one speaker: the text as exchanges (runs of pieces, each ending in the speaker's
    turn; a file's turns after their last one close its last exchange), and how it was read."""

    exchanges: list[list[Piece]]
    name: str  # the speaker, as the frame writes them (the commonest spelling of their cues)
    aliases: list[str]
    interlocutor: str | None  # whose turn comes before theirs most often: whom `chat` speaks as
    formats: list[dict]  # {"path", "format"} a file
    target_lines: int
    context_lines: int
    cast: list[str]  # everyone who speaks, as the frame writes them, most lines first: whom `chat --as` can be


def target_bytes(exchange: list[Piece]) -> int:
    return sum(len(text.encode("utf-8")) for text, target in exchange if target)


def framed(turn: Turn, name: str | None) -> str:
    """A turn as the play frame writes it: `NAME:` over the speech, or a paragraph of its own."""
    text = _BLANK_LINES.sub("\n", turn.text.strip())  # a blank line inside a turn would end it
    if turn.kind != "speech":
        return f"{text}\n\n"
    if name is None:  # speech no one is named for (a novel's unattributed quote): context, as it reads
        return f'"{text}"\n\n' if not text.startswith(('"', "“")) else f"{text}\n\n"
    return f"{name}:\n{text}\n\n"


def read_script(inputs: list[Path], names: list[str]) -> Script:
    """The files' turns as exchanges for the speaker called any of `names`; DataError (one line) on a
    file that names no speakers (SRT) or a name that no file has, with the closest names that are."""
    files = find_files(inputs)
    readings = []
    for path in files:
        kind, reading = read(path)
        if kind == "srt":
            raise DataError(f"{path} is an SRT subtitle file, which names no speakers, so --speaker cannot find "
                            f"whose lines are whose; use a WebVTT file with <v Name> voices or a transcript "
                            f"(NAME: line), or prepare it without --speaker to train on all its text.")
        readings.append((path, kind, reading.turns))
    spellings: dict[str, Counter] = defaultdict(Counter)
    for _, _, turns in readings:
        for t in turns:
            if t.kind == "speech" and t.speaker is not None:
                spellings[speaker_key(t.speaker)][t.speaker] += 1
    shown = {key: counts.most_common(1)[0][0] for key, counts in spellings.items()}
    keys = {speaker_key(n) for n in names}
    where = ", ".join(str(p) for p, _, _ in readings)
    if not spellings:
        read_as = ", ".join(sorted({kind for _, kind, _ in readings}))
        raise DataError(f"{where} names no speakers (read as {read_as}), so --speaker has no lines to choose; give a "
                        "screenplay, play, transcript, subtitles with voices, a novel or a chat export, or prepare "
                        "it without --speaker.")
    for n in names:
        if speaker_key(n) not in spellings:
            close = closest_names(n, sorted(shown.values()))
            hint = f"the closest are {', '.join(close)}" if close else "`--list-speakers` shows who speaks"
            raise DataError(f"No speaker '{n}' in {where}; {hint}.")
    ours = Counter({k: sum(spellings[k].values()) for k in keys})
    name = shown[ours.most_common(1)[0][0]]
    exchanges, before, lines = [], Counter(), Counter()
    for _, _, turns in readings:
        current: list[Piece] = []
        last_speaker, first = None, len(exchanges)
        for t in turns:
            key = speaker_key(t.speaker) if t.speaker is not None else None
            if t.kind == "speech" and key in keys:
                lines["target"] += 1
                if last_speaker is not None and last_speaker not in keys:
                    before[last_speaker] += 1
                text = framed(t, name)
                current += [(f"{name}:\n", False), (text[len(name) + 2 :], True)]
                exchanges.append(current)
                current = []
            else:
                lines["context"] += 1
                current.append((framed(t, shown.get(key) if key else None), False))
            if t.kind == "speech":
                last_speaker = key
        if current and len(exchanges) > first:
            exchanges[-1] += current  # what follows their last line: context, kept with it
        elif current:
            exchanges.append(current)  # a file where they never speak
    interlocutor = shown[before.most_common(1)[0][0]] if before else None
    formats = [{"path": str(p), "format": kind} for p, kind, _ in readings]
    cast = [shown[key] for key, _ in Counter({k: sum(c.values()) for k, c in spellings.items()}).most_common()]
    return Script(exchanges, name, list(names), interlocutor, formats, lines["target"], lines["context"], cast)


def split_exchanges(exchanges: list[list[Piece]], val_fraction: float, name: str) -> tuple[list, list]:
    """(train, val): val is the last whole exchanges, about `val_fraction` of the speaker's target bytes
    (at least one exchange), train the rest (at least one exchange with a target)."""
    if not 0.0 < val_fraction < 0.5:
        raise DataError(f"--val-fraction must be between 0 and 0.5, got {val_fraction}.")
    sizes = [target_bytes(e) for e in exchanges]
    if sum(1 for s in sizes if s) < 2:
        raise DataError(f"{name} speaks only once in these files, too little to learn from and validate on; "
                        "give prepare more of their lines.")
    want, held, cut = val_fraction * sum(sizes), 0, len(exchanges)
    while held < want or not held:
        cut -= 1
        held += sizes[cut]
    if not any(sizes[:cut]):
        raise DataError(f"Keeping {val_fraction:.0%} of {name}'s lines for validation leaves none to train on; "
                        "use a smaller --val-fraction.")
    return exchanges[:cut], exchanges[cut:]


def opening(exchanges: list[list[Piece]]) -> str:
    """The context of the first exchange the speaker speaks in, up to their cue (the last OPENING_TURNS turns,
    after the scene heading where there is one): what `sample` with no prompt starts from, so that the voice
    speaks in a scene."""
    first = next(e for e in exchanges if any(target for _, target in e))
    context = [text for text, _ in first[: next(i for i, (_, target) in enumerate(first) if target)]]
    kept = context[-OPENING_TURNS - 1 :]
    headings = [text for text in context[: len(context) - len(kept)] if HEADING.match(text)]
    return "".join(headings[-1:] + kept)


def encode_pieces(tok: Tokenizer, pieces: list[Piece], dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The ids of the pieces' text and a mask (uint8, 1: a target) a token. The text is encoded whole, as
    chat and sample will encode it, and each token is a target when its first byte is in a target piece;
    where a token would cross from context into a target or back (a merge across the boundary), the text is
    cut there and its sides encoded apart, again until no token crosses one: a boundary is a token boundary."""
    lengths = np.array([len(tok.token_bytes(i)) for i in range(tok.vocab_size)], dtype=np.int64)
    sizes = np.array([len(text.encode("utf-8")) for text, _ in pieces], dtype=np.int64)
    ends = np.cumsum(sizes)
    edges = {int(ends[k - 1]) for k in range(1, len(pieces)) if pieces[k][1] != pieces[k - 1][1]}
    cuts: set[int] = set()  # piece indices the text is cut before
    while True:
        bounds = [0, *sorted(cuts), len(pieces)]
        ids = [i for a, b in zip(bounds, bounds[1:]) for i in tok.encode("".join(t for t, _ in pieces[a:b]))]
        offsets = np.cumsum(lengths[ids]) if ids else np.zeros(0, np.int64)
        if len(ids) and offsets[-1] != ends[-1]:  # a tokenizer whose ids do not spell the text's bytes
            raise DataError(f"The {tok.kind} tokenizer's ids do not spell the text byte for byte, so the speaker's "
                            "lines cannot be told apart in its tokens; use another --tokenizer.")
        crossed = edges - set(offsets.tolist())
        if not crossed:
            break
        cuts |= {int(np.searchsorted(ends, edge)) + 1 for edge in crossed}
    starts = offsets - lengths[ids] if ids else offsets
    piece_of = np.searchsorted(ends, starts, side="right")  # the piece each token's first byte is in
    mask = np.array([target for _, target in pieces], dtype=np.uint8)[piece_of] if ids else np.zeros(0, np.uint8)
    return np.array(ids, dtype=dtype), mask


def speaker_tokenizer(kind: str, vocab_size: int | None, tokenizer_from: str | None, train_text: str,
                      all_text: str) -> Tokenizer:
    """The dataset's tokenizer, as prepare makes it: a BPE learnt from the train text, the characters of all
    of it, GPT-2's, or a pretrained model's."""
    if tokenizer_from is not None:
        from bladegpt.sources import load_tokenizer_from

        return load_tokenizer_from(tokenizer_from)
    if kind == "char":
        return CharTokenizer.train(all_text)
    if kind == "bpe":
        return train_tokenizer(kind, train_text, vocab_size or bpe_vocab_size(len(train_text.encode("utf-8"))))
    return train_tokenizer(kind, "")


def write_split(folder: Path, split: str, ids: np.ndarray, mask: np.ndarray | None) -> None:
    (folder / f"{split}.bin").write_bytes(ids.tobytes())
    if mask is not None:
        (folder / MASK_FILES[split]).write_bytes(mask.tobytes())


def write_dataset(out_dir: Path, tok: Tokenizer, splits: dict[str, list[Piece]], masked: dict[str, bool],
                  meta: dict, force: bool) -> dict:
    """Encode the pieces of each split and write the dataset folder whole (atomically, as prepare does):
    token files, mask files for the `masked` splits, tokenizer.json and meta.json (given keys, and the
    counts added); returns the meta written. Nothing is written on any error."""
    dtype = "uint16" if tok.vocab_size <= 1 << 16 else "uint32"
    encode_start = time.perf_counter()
    encoded = {split: encode_pieces(tok, pieces, dtype) for split, pieces in splits.items()}
    encode_seconds = time.perf_counter() - encode_start
    for split, (ids, mask) in encoded.items():
        if not mask.any():
            raise DataError(f"The {split} split has no line of the speaker's to learn from; give prepare more text.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out_dir, DATASET_FILES)
    try:
        for split, (ids, mask) in encoded.items():
            write_split(tmp, split, ids, mask if masked[split] else None)
        tok.save(tmp / TOKENIZER_FILE)
        text = {split: "".join(t for t, _ in pieces) for split, pieces in splits.items()}
        target = {split: "".join(t for t, is_target in pieces if is_target) for split, pieces in splits.items()}
        meta = {
            "format": 1,
            "tokenizer": tok.kind,
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
            "stop_ids": list(tok.stop_ids),
            "dtype": dtype,
            **{f"{split}_tokens": len(ids) for split, (ids, _) in encoded.items()},
            "fingerprint": fingerprint(tmp),
            "chars": sum(map(len, text.values())),
            "bytes": sum(len(t.encode("utf-8")) for t in text.values()),
            **{f"{split}_bytes": len(t.encode("utf-8")) for split, t in text.items()},
            "masks": [split for split in encoded if masked[split]],
            **{f"{split}_target_tokens": int(encoded[split][1].sum()) if masked[split] else len(encoded[split][0])
               for split in encoded},
            **{f"{split}_target_bytes": len(target[split].encode("utf-8")) if masked[split]
               else len(text[split].encode("utf-8")) for split in encoded},
            "target_tokens": sum(int(mask.sum()) for _, mask in encoded.values()),
            "context_tokens": sum(int(len(mask) - mask.sum()) for _, mask in encoded.values()),
            "encode_seconds": round(encode_seconds, 3),
            **meta,
        }
        _write_meta(tmp, meta)
        check_out_dir(out_dir, force)  # again: another prepare may have written it meanwhile
        publish_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def speaker_dir(inputs: list[Path], name: str, tokenizer_from: str | None) -> Path:
    """datasets/NAME-SPEAKER[-SOURCE]: beside the text's own dataset, never over it."""
    plain = default_out_dir(inputs, tokenizer_from)
    first = default_out_dir(inputs).name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "speaker"
    return plain.with_name(f"{first}-{slug}{plain.name[len(first):]}")


def prepare_speaker(
    inputs: list[Path],
    speakers: list[str],
    out_dir: Path | None = None,
    tokenizer: str = "bpe",
    vocab_size: int | None = None,
    val_fraction: float = 0.1,
    force: bool = False,
    tokenizer_from: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PrepareResult:
    """A dataset whose targets are one speaker's lines (any of `speakers`, aliases of one character), the
    rest context: train.bin, val.bin, train_mask.bin and val_mask.bin (uint8 a token, 1: a target),
    tokenizer.json and meta.json (the speaker, each file's format, target and context lines and tokens, the
    play frame chat talks in and the opening sample starts from). The val split is the last whole exchanges,
    about `val_fraction` of the speaker's bytes."""
    started = time.perf_counter()
    if vocab_size is not None and not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise DataError(f"--vocab-size must be between {MIN_VOCAB} and {MAX_VOCAB:,}, got {vocab_size:,}; "
                        "leave it out to size it to the text.")
    script = read_script(inputs, speakers)
    out_dir = Path(out_dir) if out_dir is not None else speaker_dir(inputs, script.name, tokenizer_from)
    check_out_dir(out_dir, force)
    train, val = split_exchanges(script.exchanges, val_fraction, script.name)
    splits = {"train": [p for e in train for p in e], "val": [p for e in val for p in e]}
    train_text = "".join(t for t, _ in splits["train"])
    tok = speaker_tokenizer(tokenizer, vocab_size, tokenizer_from, train_text,
                            train_text + "".join(t for t, _ in splits["val"]))
    frame = Frame("play", script.name, script.interlocutor or USER)
    meta = speaker_meta(script, frame, opening(train), val_fraction, tokenizer_from, len(val))
    meta = write_dataset(out_dir, tok, splits, {"train": True, "val": True}, meta, force)
    meta["seconds"] = round(time.perf_counter() - started, 3)
    if progress:
        progress(meta["bytes"], meta["bytes"])
    return PrepareResult(out_dir, meta, [])


def speaker_meta(script: Script, frame: Frame, opening_text: str, val_fraction: float, tokenizer_from: str | None,
                 val_exchanges: int) -> dict:
    """What meta.json says of a speaker's dataset beyond the token counts."""
    return {
        "tokenizer_from": tokenizer_from,
        "sources": [f["path"] for f in script.formats],
        "source_formats": script.formats,
        "val_fraction": val_fraction,
        "speaker": {"name": script.name, "aliases": script.aliases, "interlocutor": script.interlocutor,
                    "target_lines": script.target_lines, "context_lines": script.context_lines,
                    "val_exchanges": val_exchanges, "cast": script.cast},
        "chat_frame": frame.to_dict(),
        "opening": opening_text,
    }
