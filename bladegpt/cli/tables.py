"""Rich tables for benchmark results and the runs folder (kept apart from the measuring, which needs torch)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bladegpt.config import plural


def prepared_table(result, vocab_sized: bool) -> Table:
    """What `prepare` made: the text, its tokens and tokenizer, the chat frame found, the speed, the folder."""
    from bladegpt.data.frames import Frame

    m = result.meta
    table = Table(title=f"Prepared {', '.join(Path(s).name for s in m['sources'][:3])}"
                        + (f" and {len(m['sources']) - 3} more" if len(m["sources"]) > 3 else ""))
    table.add_column("", style="bold")
    table.add_column("", justify="right", overflow="fold")  # a long path folds, whole, never cut to "…"
    for label, value in [
        ("characters", f"{m['chars']:,}"),
        ("tokens", f"{m['train_tokens'] + m['val_tokens']:,}"),
        ("tokenizer", m["tokenizer"]),
        ("vocabulary", f"{m['vocab_size']:,}" + (" (sized to the text; --vocab-size N to choose)"
                                                  if vocab_sized and m["tokenizer"] == "bpe" else "")),
        ("bytes per token", f"{m['bytes'] / (m['train_tokens'] + m['val_tokens']):.2f}"),
        ("train tokens", f"{m['train_tokens']:,}"),
        ("val tokens", f"{m['val_tokens']:,}"),
        *speaker_rows(m),
        ("chat frame", Frame.from_dict(m["chat_frame"]).describe()),
        ("took", f"{m['seconds']:.1f} s ({m['bytes'] / 1e6 / max(m['encode_seconds'], 1e-9):.1f} MB/s encoding)"),
        ("written to", str(result.out_dir)),
    ]:
        table.add_row(label, value)
    return table


def speaker_rows(m: dict) -> list[tuple[str, str]]:
    """A speaker's dataset's rows: whose lines are the targets, and how much is target and context."""
    if "speaker" not in m:
        return []
    s = m["speaker"]
    formats = ", ".join(sorted({f["format"] for f in m["source_formats"]}))
    return [("read as", formats),
            ("speaker", s["name"] + (f" (as {', '.join(s['aliases'])})" if len(s["aliases"]) > 1 else "")),
            ("target lines / tokens", f"{s['target_lines']:,} / {m['target_tokens']:,}"),
            ("context lines / tokens", f"{s['context_lines']:,} / {m['context_tokens']:,}"),
            ("val", f"the last {plural(s['val_exchanges'], 'exchange')}, "
                    f"{plural(m['val_target_tokens'], 'target token')}")]


def _widest(col: str, cells: list[dict]) -> int:
    """A column's width with every cell (and the header) whole on one line, as shown."""
    return max([len(col), *(Text.from_markup(row[col]).cell_len for row in cells)])


def _table_width(columns: list[str], widths: dict[str, int]) -> int:
    """Characters a table of these columns takes: their widths plus each one's borders and padding."""
    return sum(widths[c] + 3 for c in columns) + 1


def _fit(columns: list[str], widths: dict[str, int], spare: tuple[str, ...], width: int) -> tuple[list[str], list[str]]:
    """(kept, left out): the `spare` columns shown go, in that order, until the rest fit in `width` characters;
    the left-out ones in table order, for the reader to be told."""
    kept = list(columns)
    for col in (c for c in spare if c in columns):
        if _table_width(kept, widths) <= width:
            break
        kept.remove(col)
    return kept, [c for c in columns if c not in kept]


BENCH_SPARE_COLUMNS = ("min–max", "compile", "peak mem")  # left out first at a narrow terminal, shown below


def bench_table(result: dict, width: int = 200) -> RenderableType:
    """The speed ladder, a rung a row. Numbers are never cut short; where the terminal is too narrow for every
    column, BENCH_SPARE_COLUMNS move to a second table under it (a measurement takes minutes to take again)."""
    table = Table(
        title=f"Training step, {result['preset']} preset ({result['params'] / 1e6:.1f}M params), "
        f"batch {result['batch']} x block {result['block']}",
        caption=f"{result['device']} · torch {result['torch']} · median of {result['steps']} steps after warm-up · "
        f"MFU against {result['peak_flops'] / 1e12:.2f} TFLOP/s peak",
    )
    columns = ["rung", "setup", "ms/step", "min–max", "tok/s", "speed-up", "MFU", "compile", "peak mem"]
    cells, slower = [], False
    for r in result["rungs"]:
        if not r["available"]:  # the reason is a sentence: it wraps under the setup, never in a number's column
            cells.append({"rung": r["name"], "setup": f"{r['label']} [yellow](not run: {r['reason']})[/]",
                          **{c: "-" for c in columns[2:]}})
            continue
        speed = f"{r['speedup']:.2f}x" if r["speedup"] is not None else "—"
        if r.get("slower_than_previous"):
            speed, slower = f"[red]▼ {speed}[/]", True
        cells.append({
            "rung": r["name"], "setup": r["label"], "ms/step": f"{r['ms_per_step']:.1f}",
            "min–max": f"{r['ms_min']:.1f}–{r['ms_max']:.1f}", "tok/s": f"{r['tok_per_s']:,.0f}", "speed-up": speed,
            "MFU": f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "—",
            "compile": f"{r['compile_s']:.0f} s" if r["compile_s"] is not None else "",
            "peak mem": f"{r['peak_mem_mb']:,.0f} MiB",
        })
    widths = {c: _widest(c, cells) for c in columns}
    widths["setup"] = max(len(word) for row in cells for word in Text.from_markup(row["setup"]).plain.split())
    kept, left = _fit(columns, widths, BENCH_SPARE_COLUMNS, width)
    _fill(table, kept, cells, text=("rung", "setup"))
    if slower:
        table.caption += "\n[red]▼[/] slower than the rung above it on this machine"
    if not left:
        return table
    rest = Table(title=f"Left out above at {width} columns: {', '.join(left)}")
    _fill(rest, ["rung", *left], cells, text=("rung",))
    return Group(table, rest)


def _fill(table: Table, columns: list[str], cells: list[dict], text: tuple[str, ...],
          widest: dict[str, int | None] | None = None) -> None:
    """Add the columns and rows: `text` columns fold a long word onto the next line, whole (no wider than
    `widest` says, where it names them); the others are numbers, right-aligned and never cut ("1.…" reads as
    nothing), their headers wrapped at a space if need be."""
    for col in columns:
        if col in text:
            table.add_column(col, overflow="fold", max_width=(widest or {}).get(col))
        else:
            least = max([*map(len, col.split()), *(Text.from_markup(row[col]).cell_len for row in cells)])
            table.add_column(col, justify="right", min_width=least)
    for row in cells:
        table.add_row(*(row[c] for c in columns))


def generate_table(result: dict) -> Table:
    """BladeGPT's generation beside transformers', each row's speed-up against transformers at the
    same number of samples, and against llama.cpp's one sample where it ran."""
    table = Table(title=f"Generation, {result['preset']} preset (vocab {result['vocab']:,}, block {result['block']}): "
                        f"{result['new_tokens']} new tokens after a {result['prompt_tokens']}-token prompt",
                  caption=f"{result['device']} · torch {result['torch']} · median of {result['repeats']} runs · "
                          "1 sample greedy, more sampled (top-k 200); tok/s counts every sample")
    llama = next((r["tok_per_s"] for r in result["rows"] if r["generator"].startswith("llama.cpp")), None)
    columns = ["generator", "precision", "samples", "tok/s", "vs transformers"] + (["vs llama.cpp's 1"] if llama else [])
    peer = {r["samples"]: r["tok_per_s"] for r in result["rows"] if r["generator"].startswith("transformers")}
    cells = [{"generator": r["generator"], "precision": r["precision"], "samples": str(r["samples"]),
              "tok/s": f"{r['tok_per_s']:,.0f}",
              "vs transformers": f"{r['tok_per_s'] / peer[r['samples']]:.2f}x" if r["samples"] in peer else "-",
              **({"vs llama.cpp's 1": f"{r['tok_per_s'] / llama:.2f}x"} if llama else {})} for r in result["rows"]]
    _fill(table, columns, cells, text=("generator",))  # "llama.cpp (llama-cpp-python)" folds, whole
    if result.get("compile_s") is not None:
        table.caption += (f"\ncompiled: the one-token step over a static cache (a CUDA graph on CUDA), "
                          f"{result['compile_s']:.0f} s to compile it once per batch size")
    if llama:
        table.caption += ("\nvs llama.cpp's 1: every row's tok/s (all its samples) against llama.cpp's one sample, "
                          "greedy on the same GGUF file and prompt, on as many threads")
    for note in (result.get("peer"), result.get("llama_cpp")):
        if note:
            table.caption += "\n" + note
    return table


def wall_time_table(result: dict) -> Table:
    """The voice run's wall time by phase, cold and warm compile cache side by side: each phase's total, how
    many times it ran, and its first time where it ran more than once (a compile or a first measurement)."""
    runs = result["runs"]
    table = Table(title=f"Where the voice run's wall time goes: prepare + train --init-from {result['source']} "
                        f"on {Path(result['text']).name}",
                  caption=f"{result['device']} · torch {result['torch']} · each command in a fresh process · "
                          "cold: an empty inductor cache; warm: the same cache again")
    table.add_column("phase")
    for cache in runs:
        table.add_column(f"{cache} s", justify="right")
        table.add_column(f"{cache}: n, first", justify="right")
    phases = list(dict.fromkeys(name for run in runs.values() for name in run["phases"]))
    for name in phases:
        cells = []
        for run in runs.values():
            times = run["phases"].get(name, [])
            cells += [f"{sum(times):.1f}" if times else "-", f"{len(times)}, {times[0]:.1f}" if len(times) > 1 else ""]
        table.add_row(name, *cells)
    other = [run["wall_s"] - sum(sum(t) for t in run["phases"].values()) for run in runs.values()]
    table.add_row("the rest (untimed)", *[cell for o in other for cell in (f"{o:.1f}", "")])
    table.add_row("[bold]wall, prepare + train[/]", *[c for run in runs.values() for c in (f"[bold]{run['wall_s']:.1f}[/]", "")])
    table.add_row("steps trained", *[c for run in runs.values() for c in (str(run["steps"]), "")])
    table.add_row("best val bits per byte", *[c for run in runs.values()
                                               for c in (f"{run['best_val_bpb']:.4f}" if run["best_val_bpb"] else "-", "")])
    return table


def _copied(row: dict) -> str:
    """The last eval sample's copy meter: the share of 50-character spans copied, and the longest copy."""
    from bladegpt.data.copyindex import percent

    if row.get("copied") is None:
        return "-"
    return percent(row["copied"]) + (f" {row['longest_copy']:,}ch" if row.get("longest_copy") else "")


def _style(row: dict) -> str:
    """The last eval sample's style distance from the held-out text, the base's sample's after it."""
    if row.get("style") is None:
        return "-"
    return f"{row['style']:.2f}" + (f" ({row['base_style']:.2f})" if row.get("base_style") is not None else "")


def _shown(value) -> str:
    """A setting's value as a flag takes it; `-` where a run recorded none (an older run, or no such setting)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


MODEL_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "block")  # train's flags for the model
LORA_FLAGS = ("rank", "alpha", "dropout", "targets", "base_dtype")  # train's --lora-* flags
IN_STEPS_COLUMN = ("steps", "time_budget_s")


def _flags(settings: dict) -> dict[str, object]:
    """A run's recorded settings under the names of the train flags that set them (batch-size, lr,
    context-weight, block-size, lora-rank, precision...)."""
    part = lambda name: settings.get(name) if isinstance(settings.get(name), dict) else {}
    model, lora = part("model"), part("lora")
    flags = {name: value for name, value in part("train").items() if name not in IN_STEPS_COLUMN}
    flags |= {name: model[name] for name in MODEL_FLAGS if name in model}
    flags |= {f"lora_{name}": lora[name] for name in LORA_FLAGS if name in lora}
    flags |= part("runtime")
    return {name.replace("_", "-"): value for name, value in flags.items()}


def settings_apart(rows: list[dict]) -> list[list[str]]:
    """Each run's settings that are not the same in every run listed, as `flag=value` items (`flag=-`: not
    recorded by that run): what tells the runs apart, without the dozens of settings they share."""
    flags = [_flags(row.get("settings") or {}) for row in rows]
    names = dict.fromkeys(name for found in flags for name in found)
    apart = [name for name in names if len({_shown(found.get(name)) for found in flags}) > 1]
    return [[f"{name}={_shown(found.get(name))}" for name in apart] for found in flags]


RUN_FOLDED = 20  # characters a run name is counted at where it must fold: 'officer_k-SmolLM2-135M-' on a line
# Left out, in this order, where the terminal is too narrow for every column to be read whole (the last four only
# below about 60 columns, where run, steps and state still fit: at 40 rich cut state to 'fi' and dropped copied).
RUNS_SPARE_COLUMNS = ("start", "curve", "val loss", "loops", "data", "style", "settings", "copied", "wall", "best at",
                      "bpb")


def runs_table(rows: list[dict], width: int = 200, command: str = "bladegpt runs") -> RenderableType:
    """The runs, a row each; columns from RUNS_SPARE_COLUMNS are left out until the rest fit in `width`
    characters (at 80 columns every column was cut to two letters), and a line under the table names them and
    how `command` shows them."""
    table = Table(title="Runs")
    names = [Path(r["run"]).name for r in rows]
    colors = {"running": "cyan", "finished": "green", "stopped early": "green", "interrupted": "yellow"}
    cells = []
    for name, r, apart in zip(names, rows, settings_apart(rows)):
        planned = f"/{r['steps']:,}" if r["steps"] else (f" of {r['time_budget_s']:.0f}s" if r["time_budget_s"] else "")
        best = r["best_val_loss"] is not None
        cells.append({
            # names and values as written: a file's or a setting's [brackets] are not markup
            "run": escape(name), "data": escape(r["dataset"]), "start": escape(r["start"]),
            "steps": f"{r['step']:,}{planned}",
            "val loss": f"{r['best_val_loss']:.3f}" if best else "-",
            "bpb": f"{r['best_val_bpb']:.3f}" if r["best_val_bpb"] is not None else "-",
            "best at": f"{r['best_step']:,}" if best else "-",
            "wall": f"{r['elapsed_s']:.0f}s" if r["elapsed_s"] is not None else "-",
            "state": f"[{colors.get(r['state'], 'red')}]{r['state']}[/]", "curve": sparkline(r["val_bpb"]),
            "copied": _copied(r), "loops": f"{r['loops']:.0%}" if r.get("loops") is not None else "-",
            "style": _style(r), "settings": escape(" ".join(apart)),
        })
    columns = ["run", "data", "start", *(["settings"] if any(c["settings"] for c in cells) else []), "steps",
               "val loss", "bpb", "best at", "wall", "state", "curve", "copied", "loops", "style"]

    widths = {c: _widest(c, cells) for c in columns}
    name = widths["run"]
    widths["run"] = min(name, RUN_FOLDED)  # a long name folds, whole, rather than push a number out
    whole = widths.get("settings", 0)
    if "settings" in columns:  # it wraps between its items, never inside one, in the room the others leave
        widths["settings"] = max(len(item) for c in cells for item in ["settings", *c["settings"].split()])
    every = columns
    columns, left = _fit(every, widths, RUNS_SPARE_COLUMNS, width)
    if "settings" in columns:
        widths["settings"] = min(whole, widths["settings"] + width - _table_width(columns, widths))
    notes = {"settings": "settings: the train flags not the same in every run listed (-: not recorded)",
             "bpb": "bpb: bits per byte of the validation text (lower is better), best at its step",
             "curve": "the curve is val bpb at each evaluation",
             "copied": "copied: the share of the last eval sample's 50-character spans found verbatim in the "
                       "training text, and its longest copy in characters",
             "loops": "loops: the share of its word 4-grams repeated",
             "style": "style: its Burrows's Delta from the held-out text (lower is closer; the base model's "
                      "sample's in brackets)"}
    table.caption = "; ".join(note for col, note in notes.items() if col in columns) or None
    # a long run name folds onto a second line, whole (`--run` needs it), never cut to "…"
    _fill(table, columns, cells, text=("run", "data", "start", "settings", "state", "curve"),
          widest={"settings": widths.get("settings")})
    if not left:
        return table
    wide = _table_width(every, {**widths, "run": name})  # where nothing folds
    return Group(table, Text(f"Left out at {width} columns: {', '.join(left)}. `COLUMNS={wide} {command}` (or a "
                             f"terminal that wide) shows them; `{command} --json` gives every field.", style="yellow"))


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 10) -> str:
    """Values as bars, lowest ▁ to highest █, at most `width` of them (evenly picked, the last kept)."""
    if not values:
        return ""
    if len(values) > width:
        values = [values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]
    low, high = min(values), max(values)
    return "".join(SPARK[round((v - low) / (high - low) * (len(SPARK) - 1)) if high > low else 0] for v in values)
