"""Run search units on one device in this process, or on several devices with one worker each.

Workers are spawned processes (``torch.multiprocessing``, spawn), one per device; they take units
(one s1 each) from a shared queue and send events back. The parent records the rows, so what ends
up on disk does not depend on which worker computed which unit or in what order they finished.
"""
from __future__ import annotations

import os
import queue
from typing import Callable

import torch

from sparsekit.errors import Failure, SparsekitError
from sparsekit.search.work import Job, Unit, run_unit

OnEvent = Callable[[int, str, object], None]  # (worker index, kind, payload)


def run_units(job: Job, units: list[Unit], devices: list[torch.device], on_event: OnEvent) -> None:
    if len(devices) == 1 or len(units) <= 1:
        for unit in units:
            run_unit(job, unit, devices[0], lambda kind, payload: on_event(0, kind, payload))
        return
    _run_parallel(job, units, devices, on_event)


def _worker(index: int, device: str, threads: int, job: Job, tasks, events, parent: int) -> None:
    torch.set_num_threads(threads)

    def emit(kind, payload):
        events.put((index, kind, payload))

    try:
        dev = torch.device(device)
        if dev.type == "cuda":  # this worker's default GPU; CUDA initialised before any memory-stat call
            torch.cuda.set_device(dev)
            torch.cuda.init()
        while (unit := tasks.get()) is not None:
            if os.getppid() != parent:  # the parent was killed: stop instead of computing unrecorded rows
                return
            run_unit(job, unit, dev, emit)
    except KeyboardInterrupt:
        return
    except SparsekitError as exc:
        events.put((index, "error", exc))
        return
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        first = (str(exc).strip().splitlines() or [""])[0]
        events.put((index, "error", Failure(f"the search worker on {device} failed: {type(exc).__name__}: {first}")))
        return
    events.put((index, "exit", None))


def _run_parallel(job: Job, units: list[Unit], devices: list[torch.device], on_event: OnEvent) -> None:
    ctx = torch.multiprocessing.get_context("spawn")
    tasks, events = ctx.Queue(), ctx.Queue()
    for unit in units:
        tasks.put(unit)
    for _ in devices:
        tasks.put(None)
    # CPU workers share this process's threads; a GPU worker keeps them all for its host-side work
    on_cpu = sum(d.type == "cpu" for d in devices)
    threads = {"cpu": max(1, torch.get_num_threads() // max(1, on_cpu))}
    procs = [ctx.Process(target=_worker, daemon=True, args=(i, str(d), threads.get(d.type, torch.get_num_threads()),
                                                            job, tasks, events, os.getpid()))
             for i, d in enumerate(devices)]
    for p in procs:
        p.start()
    exited: set[int] = set()
    try:
        while len(exited) < len(procs):
            try:
                index, kind, payload = events.get(timeout=1.0)
            except queue.Empty:
                for i, p in enumerate(procs):
                    if i not in exited and not p.is_alive():
                        raise Failure(f"the search worker on {devices[i]} died (exit code {p.exitcode}); "
                                      "finished rows are saved, run the same command again to resume.")
                continue
            if kind == "exit":
                exited.add(index)
            elif kind == "error":
                raise payload
            else:
                on_event(index, kind, payload)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(timeout=10)
