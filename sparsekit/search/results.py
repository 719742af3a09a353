"""The files of a search dir: ``results.csv``, ``best.json`` and ``ppl_vs_sparsity.png``.

``results.csv`` starts with ``s1,s2,Uniform_PPL`` (the layout the SPDP sweep scripts read), then
the settings columns. The whole file is rewritten atomically after every finished row, with the
rows in one canonical order (by s1, then total), so it is the same bytes whatever order the rows
finished in, and an interrupted search resumes from it.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from sparsekit.formats.checkpoint import write_bytes_atomic, write_json_atomic
from sparsekit.search.plan import Config, Settings

COLUMNS = ("s1", "s2", "Uniform_PPL", "total", "method", "structure", "greedy", "dataset", "seqlen", "nsamples")
RESULTS = "results.csv"
BEST = "best.json"
PLOT = "ppl_vs_sparsity.png"


@dataclass(frozen=True)
class Result:
    config: Config
    ppl: float

    @property
    def kind(self) -> str:
        c = self.config
        if c.dense:
            return "dense"
        if c.s1 == 0:
            return "activations only"
        if c.s2 == 0:
            return "weights only"
        return "mixed"

    def as_dict(self) -> dict:
        c = self.config
        return {"total": c.total, "s1": c.s1, "s2": c.s2, "Uniform_PPL": self.ppl, "kind": self.kind}


def read_results(directory: Path) -> dict[Config, Result]:
    """Finished rows of ``results.csv`` (none if it is missing); malformed lines are ignored."""
    path = Path(directory) / RESULTS
    if not path.is_file():
        return {}
    found = {}
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            try:
                config = Config(s1=float(rec["s1"]), total=float(rec["total"]))
                ppl = float(rec["Uniform_PPL"])
            except (KeyError, TypeError, ValueError):
                continue
            found[config] = Result(config, ppl)
    return found


def write_results(directory: Path, results: dict[Config, Result], settings: Settings) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for config in sorted(results):
        r = results[config]
        # repr-exact floats: s2 reads back as exactly the value the formula gave
        w.writerow([repr(config.s1), repr(config.s2), repr(r.ppl), repr(config.total), settings.method,
                    settings.structure, settings.greedy, settings.eval_dataset, settings.seqlen, settings.nsamples])
    write_bytes_atomic(Path(directory) / RESULTS, buf.getvalue().encode())


def by_total(results: dict[Config, Result]) -> dict[float, list[Result]]:
    """The non-dense rows grouped by total, each group sorted by s1."""
    groups: dict[float, list[Result]] = {}
    for config in sorted(results):
        if not config.dense:
            groups.setdefault(config.total, []).append(results[config])
    return dict(sorted(groups.items()))


def best_per_total(results: dict[Config, Result]) -> dict[float, Result]:
    """The lowest-perplexity row of each total (ties: the lower s1); NaN never wins."""
    def key(r: Result):
        return (math.isnan(r.ppl), r.ppl, r.config.s1)

    return {total: min(rows, key=key) for total, rows in by_total(results).items()}


def summary(results: dict[Config, Result], settings: Settings) -> dict:
    """What ``best.json`` holds (and ``--json`` prints)."""
    dense = results.get(Config(0.0, 0.0))
    return {
        "kind": "search",
        "settings": settings.as_dict(),
        "dense_ppl": dense.ppl if dense else None,
        "best": [r.as_dict() for r in best_per_total(results).values()],
        "rows": [results[c].as_dict() for c in sorted(results)],
    }


def write_best(directory: Path, results: dict[Config, Result], settings: Settings) -> None:
    write_json_atomic(Path(directory) / BEST, summary(results, settings))


def plot(directory: Path, results: dict[Config, Result], settings: Settings) -> Path:
    """Perplexity against s1 for each total; the best of each total (and both endpoints) against total."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    groups = by_total(results)
    best = best_per_total(results)
    dense = results.get(Config(0.0, 0.0))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for total, rows in groups.items():
        left.plot([r.config.s1 for r in rows], [r.ppl for r in rows], marker="o", label=f"total {total:g}")
        b = best[total]
        left.scatter([b.config.s1], [b.ppl], s=140, facecolors="none", edgecolors="black", zorder=3)
    for ax in (left, right):
        if dense is not None:
            ax.axhline(dense.ppl, color="gray", linestyle="--", linewidth=1, label=f"dense {dense.ppl:.2f}")
        ax.set_yscale("log")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_ylabel(f"perplexity ({settings.eval_dataset}, seqlen {settings.seqlen})")
        ax.grid(True, which="both", alpha=0.3)
    left.set_xlabel("weight sparsity s1 (the rest of the budget is activation sparsity s2)")
    left.set_title("perplexity against the split (circle: best)")
    totals = list(groups)
    right.plot(totals, [best[t].ppl for t in totals], marker="o", label="best split")
    for kind, pick in (("activations only (s1 = 0)", lambda rows: rows[0]),
                       ("weights only (s2 = 0)", lambda rows: rows[-1])):
        ends = [(t, pick(groups[t])) for t in totals]
        ends = [(t, r.ppl) for t, r in ends if r.kind == kind.split(" (")[0]]
        if ends:
            right.plot(*zip(*ends), marker=".", linestyle=":", label=kind)
    right.set_xlabel("total sparsity budget F = 1 - (1 - s1)(1 - s2)")
    right.set_title("best split against the total budget")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    model = settings.model if len(settings.model) < 40 else "..." + settings.model[-37:]
    fig.suptitle(f"{model}: {settings.method} ({settings.structure}) x TEAL "
                 f"({'greedy' if settings.greedy else 'uniform'})", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path = Path(directory) / PLOT
    write_bytes_atomic(path, buf.getvalue())
    return path
