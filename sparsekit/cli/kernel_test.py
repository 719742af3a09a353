"""sparsekit kernel-test."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from sparsekit.cli import options as o

NAME = "kernel-test"


def command(
    device: o.Device = "auto",
    shapes: Annotated[str, typer.Option(help="tiny, llama2-7b, llama3-8b or all.")] = "tiny",
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="float16, bfloat16 or float32 (default: every dtype the device supports).")] = None,
    backend: Annotated[Optional[str], typer.Option(help="Only this backend: reference, cpu, triton or cuda.")] = None,
    bench: Annotated[bool, typer.Option("--bench", help="Also time each op against the dense baseline.")] = False,
    seed: o.Seed = 0,
    json: o.Json = False,
) -> None:
    """Check every kernel against the reference (and time it with --bench)."""
    from sparsekit import kernel_test as kt
    from sparsekit.errors import Failure

    dev, shape_list, dtypes, backends = kt.resolve(device, shapes, dtype, backend)
    with _progress_bar() as bar:
        checks = kt.correctness(dev, shape_list, dtypes, backends, seed, progress=bar)
        rows = kt.bench(dev, shape_list, dtypes, backends, seed, progress=bar) if bench else []
    _render(checks, rows, json)
    failed = [c for c in checks if not c.passed]
    if failed:
        worst = failed[0]
        raise Failure(f"{len(failed)} of {len(checks)} kernel checks failed (first: {worst.op} on {worst.backend}, "
                      f"{worst.dtype}, {worst.shape}, T={worst.tokens}: error {worst.max_rel_err:.2e} > {worst.tol:.0e}).")


def _progress_bar():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]kernel-test[/]"), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True), transient=True)


def _render(checks, rows, as_json: bool) -> None:
    import json as json_module

    from rich import box
    from rich.console import Console
    from rich.table import Table

    from sparsekit.kernel_test import as_dicts

    console = Console(stderr=as_json)
    if not console.is_terminal:  # logs and pipes: do not cut the columns at 80 characters
        console = Console(stderr=as_json, width=150)
    groups: dict[tuple, list] = {}
    for c in checks:
        groups.setdefault((c.op, c.backend, c.dtype, c.shape), []).append(c)
    table = Table(title="kernels vs reference (error = max |y - ref| / max |ref|, worst over tokens)",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("op", "backend", "dtype", "K->N", "tokens"):
        table.add_column(col, no_wrap=True)
    table.add_column("max rel err", justify="right", no_wrap=True)
    table.add_column("tol", justify="right", no_wrap=True)
    table.add_column("result", no_wrap=True)
    for (op, backend, dtype, shape), cs in groups.items():
        err = max(c.max_rel_err for c in cs)
        ok = all(c.passed for c in cs)
        notes = {c.note for c in cs if c.note}
        result = "[green]pass[/]" if ok else f"[red]FAIL[/]{' (' + ', '.join(sorted(notes)) + ')' if notes else ''}"
        table.add_row(op, backend, dtype, shape, ",".join(str(c.tokens) for c in cs), f"{err:.2e}", f"{cs[0].tol:.0e}", result)
    console.print(table)
    passed = sum(c.passed for c in checks)
    console.print(f"{passed} of {len(checks)} checks passed.")
    if rows:
        bt = Table(title=f"timings on {rows[0].device} (T = tokens; speedup over dense x @ W.T; x floor = time / "
                         "(bytes touched / copy bandwidth))", box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("op", "backend", "dtype", "K->N", "T", "s1", "s2"):
            bt.add_column(col, no_wrap=True)
        for col in ("ms", "GB/s", "dense ms", "speedup", "x floor"):
            bt.add_column(col, justify="right", no_wrap=True)
        for r in rows:
            bt.add_row(r.op, r.backend, r.dtype, r.shape, str(r.tokens), f"{r.s1:g}", f"{r.s2:g}", f"{r.ms:.3f}",
                       f"{r.gbs:.1f}", f"{r.dense_ms:.3f}", f"{r.speedup:.2f}x", f"{r.x_floor:.2f}")
        console.print(bt)
    if as_json:
        print(json_module.dumps({"checks": as_dicts(checks), "bench": as_dicts(rows)}, indent=1, default=str))
