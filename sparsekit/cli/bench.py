"""sparsekit bench."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sparsekit.cli import options as o

NAME = "bench"


def command(
    model: o.Model = "demo",
    baseline: Annotated[Optional[str], typer.Option(help="dense (same harness) or hf (transformers generate).")] = None,
    input_tokens: Annotated[int, typer.Option(min=1, help="Prompt length.")] = 32,
    max_new_tokens: Annotated[int, typer.Option(min=2, help="Tokens generated per repeat.")] = 256,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences decoded together.")] = 1,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed repeats first.")] = 5,
    repeat: Annotated[int, typer.Option(min=1, help="Timed repeats.")] = 15,
    attn: Annotated[str, typer.Option(help="sdpa, flash_attention_2 or eager.")] = "sdpa",
    mode: Annotated[Optional[str], typer.Option(help="graph (CUDA-graph decode; GPU default) or eager.")] = None,
    weight_sparsity: Annotated[float, typer.Option("--weight-sparsity", help="Synthetic models: weight sparsity S1.")] = 0.0,
    activation_sparsity: Annotated[float, typer.Option("--activation-sparsity", help="Synthetic models: activation sparsity S2.")] = 0.0,
    format: Annotated[str, typer.Option("--format", help="Synthetic models: weight format.")] = "dense",
    structure: Annotated[str, typer.Option("--structure", help="Synthetic models: structure of the random weight masks: unstructured, N:M (such as 2:4) or N:M-out (such as 2:4-out: N of every M output rows of each column); N:M sets --weight-sparsity to N/M. --format 2:4 always uses 2:4.")] = "unstructured",
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the prefill and the decode step (default: on in graph mode).")] = None,
    autotune: Annotated[Optional[bool], typer.Option("--autotune/--no-autotune", help="Tune the compiled forwards' generated kernels by coordinate descent, for every variant alike (default: on in graph mode; about a minute more of compile per variant, and a faster dense baseline).")] = None,
    fuse: Annotated[bool, typer.Option("--fuse/--no-fuse", help="One launch for q/k/v and one for gate/up.")] = True,
    save_per_iter: Annotated[bool, typer.Option("--save-per-iter", help="Keep every repeat's timings in the JSON.")] = False,
    outdir: Annotated[Optional[Path], typer.Option(help="Write bench.json here.")] = None,
    device: o.Device = "auto",
    dtype: o.DTypeOpt = o.DType.auto,
    seed: o.Seed = 0,
    json: o.Json = False,
) -> None:
    """Time TTFT and TPOT of decoding, sparse against dense in one run."""
    from sparsekit import bench as b

    settings = b.Settings(
        model=model, baselines=b.parse_baselines(baseline), input_tokens=input_tokens,
        max_new_tokens=max_new_tokens, batch_size=batch_size, warmup=warmup, repeat=repeat, attn=attn,
        mode=mode, weight_sparsity=weight_sparsity, activation_sparsity=activation_sparsity, format=format,
        structure=structure,
        save_per_iter=save_per_iter, device=device, dtype=dtype.value, seed=seed, fuse=fuse, compile=compile,
        autotune=autotune,
    )
    b.check_outdir(outdir)
    with _progress_bar() as bar:
        tasks: dict[str, int] = {}

        def on_progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done, total=total)

        result = b.run(settings, progress=on_progress)
    path = b.write(result, outdir) if outdir is not None else None
    _render(result, json, path)


def _progress_bar():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]bench[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=True)


def _render(result: dict, as_json: bool, path) -> None:
    import json as json_module

    from rich.console import Console
    from rich.table import Table

    from sparsekit.bench import table as summary_table

    st = result["settings"]
    err = Console(stderr=True)
    for w in result["warnings"]:
        err.print(f"[yellow]warning:[/] {w}")
    console = Console(stderr=as_json)
    where = "CPU timings" if result["timing_device"] == "cpu" else (result["environment"].get("gpu") or "GPU")
    table = Table(title=f"{result['model']} - {where}, {st['dtype']}, batch {st['batch_size']}, "
                        f"{st['input_tokens']} in / {st['max_new_tokens']} out, mode {st['mode']}, "
                        f"{st['repeat']} repeats (ms)")
    header, rows = summary_table(result)
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"device bandwidth {result['device_bandwidth_gbs']:.1f} GB/s (large copy, read + write); "
                  f"floor TPOT {result['floor_tpot_ms']:.3f} ms for {result['bytes_per_step'] / 1e9:.3f} GB per step"
                  + (f"; written to {path}" if path else ""))
    for key, r in result["runs"].items():
        for note in r.get("notes", []):
            err.print(f"[dim]{r['name']}: {note}[/]")
    if as_json:
        print(json_module.dumps(result, indent=2, default=str))
