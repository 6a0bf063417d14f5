"""`bladegpt runs`: the runs side by side as a table or JSON, or their curves drawn (--plot)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from bladegpt.cli.app import app, console, err_console, friendly
from bladegpt.errors import UserError

@app.command("runs")
@friendly
def runs_table(
    paths: Annotated[Optional[list[Path]], typer.Argument(help="Run folders, or folders of runs \\[default: runs/; with --plot, the latest run].", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the runs as JSON, nothing else.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="FILE.png", help="Draw the runs' train and val curves against step and wall time into this PNG (needs pip install 'bladegpt\\[plot]').")] = None,
    bpb: Annotated[bool, typer.Option("--bpb", help="With --plot: bits per byte instead of loss, comparable across tokenizers.")] = False,
) -> None:
    """Compare runs at a glance: how each started, how far it got, its best val loss, its state."""
    from bladegpt import strictjson
    from bladegpt.cli.tables import runs_table as table
    from bladegpt.runs import (RUNS_DIR, latest_run, remove_stale_staged_if_idle, run_folders, said_removed,
                               summarize)

    if bpb and plot is None:
        raise UserError("--bpb sets the unit of --plot's curves; add --plot FILE.png, or drop --bpb.")
    if plot is not None:
        from bladegpt.cli.plot import check_out, plot as draw

        check_out(plot)  # before looking for runs: a wrong file name is the first thing to say
        written = draw(run_folders(paths) if paths else [latest_run()], plot, bpb)
        console.print(f"Wrote {written}.", markup=False)
        return
    folders = run_folders(paths or [RUNS_DIR])
    for folder in folders:
        if removed := remove_stale_staged_if_idle(folder):  # said on stderr: stdout is --json's alone
            err_console.print(said_removed(folder, removed), markup=False, highlight=False, soft_wrap=True)
    found = [summarize(p) for p in folders]
    if json_out:
        print(strictjson.dumps(found, indent=2))
    elif not found:
        where = ", ".join(f"{p}/" for p in paths or [RUNS_DIR])
        console.print(f"No runs in {where} yet; start one with `bladegpt train`.", markup=False, highlight=False)
    else:
        console.print(table(found, console.width, shlex.join(["bladegpt", "runs", *map(str, paths or [])])))
