"""`bladegpt bench`: the speed ladder, or generation beside transformers, as a table or JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bladegpt.cli.app import DeviceOpt, app, console, err_console, fail, friendly

@app.command()
@friendly
def bench(
    preset: Annotated[str, typer.Option(help="Model to time: nano, mini, small or gpt2 (mini is the one `train` uses).")] = "mini",
    batch: Annotated[Optional[int], typer.Option(help="Sequences per step \\[default: the preset's].")] = None,
    block: Annotated[Optional[int], typer.Option(help="Context length \\[default: the preset's].")] = None,
    steps: Annotated[int, typer.Option(help="Timed steps per rung, after 2 warm-up steps.")] = 10,
    device: DeviceOpt = "auto",
    rungs: Annotated[Optional[str], typer.Option(help="Comma-separated subset: vanilla,mixed,compile,flash,auto.")] = None,
    generate: Annotated[bool, typer.Option("--generate", help="Time generation instead, beside transformers' generate.")] = False,
    init_from: Annotated[Optional[str], typer.Option(help="With --generate: time this pretrained model (a GGUF file, ollama:NAME, a Hugging Face folder or hub id) instead of the preset; with --wall-time: the model fine-tuned.")] = None,
    wall_time: Annotated[Optional[Path], typer.Option("--wall-time", help="Time the default voice run on this text instead, phase by phase: `prepare TEXT --tokenizer-from` and `train --init-from` the --init-from model, on a cold and a warm compile cache (a few minutes a run).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="With --wall-time: train's --seed.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON, nothing else.")] = False,
    remeasure: Annotated[bool, typer.Option("--remeasure", help="First take every measurement `auto` cached for this machine again (matmul peaks, attention; decode precision is measured again when next needed).")] = False,
) -> None:
    """Time training steps up the speed ladder on this machine (random tokens, no dataset needed)."""
    from bladegpt import bench as benchmark, strictjson
    from bladegpt.cli.tables import bench_table, generate_table
    from bladegpt.runtime import remeasure as retake

    if init_from is not None and not generate and wall_time is None:
        fail("--init-from times generation of that model: add --generate (the training step beside "
             "transformers' is scripts/finetune_bench.py).")
    if remeasure:
        with err_console.status("Re-measuring what `auto` cached for this machine..."):
            retake(say=lambda line: err_console.print(line, style="dim", highlight=False))
    if wall_time is not None:
        if str(wall_time).startswith("-"):  # `bench --wall-time --help`: the option took the flag as its text
            fail(f"--wall-time takes a text file or folder, e.g. --wall-time corpora/officer_k.txt --init-from "
                 f"MODEL, not {wall_time}; `bladegpt bench --help` lists the flags.")
        if generate:
            fail("--wall-time times training and --generate times generation: choose one.")
        from bladegpt.cli.tables import wall_time_table
        from bladegpt.walltime import bench_wall_time

        with console.status("Timing prepare and train, each in a fresh process, on a cold then a warm compile cache..."):
            result = bench_wall_time(str(wall_time), init_from, seed)
        if json_out:
            print(strictjson.dumps(result, indent=2))
        else:
            console.print(wall_time_table(result))
        return
    if generate:
        result = benchmark.bench_generate(preset, device=device, source=init_from)
        if json_out:
            print(strictjson.dumps(result, indent=2))
        else:
            console.print(generate_table(result))
        return
    names = [r.strip() for r in rungs.split(",")] if rungs else None
    if json_out:
        print(strictjson.dumps(benchmark.bench(preset, batch, block, steps, device, names), indent=2))
        return
    with console.status("Measuring (each rung runs in a fresh process; compiles take a while)..."):
        result = benchmark.bench(preset, batch, block, steps, device, names,
                                 on_rung=lambda row: console.print(f"  measured [bold]{row['name']}[/]"))
    console.print(bench_table(result, console.width))
