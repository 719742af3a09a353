"""``sparsekit search``: the best split of a total sparsity budget between weights and activations.

For each total F and each weight sparsity s1 <= F of the grid, the activation sparsity is
s2 = 1 - (1 - F) / (1 - s1); the model is pruned at s1 (once per s1), calibrated (once per s1) and
its perplexity measured with activation sparsity s2. Parts:

- ``plan``: the grid, the rows and the settings that identify a search (torch-free);
- ``results``: results.csv / best.json / the plot;
- ``work``: one s1 unit (prune, calibrate, cache, evaluate);
- ``pool``: units on one device in-process, or one spawned worker per device;
- ``run``: ``run_search``, which ties them together and resumes from the search dir.
"""
from __future__ import annotations

from sparsekit.search.plan import DEFAULT_GRID, Config, Settings, configs_for, grids, parse_grid, s2_for
from sparsekit.search.results import Result, best_per_total, by_total
from sparsekit.search.run import Outcome, Progress, run_search

__all__ = ["DEFAULT_GRID", "Config", "Outcome", "Progress", "Result", "Settings", "best_per_total", "by_total",
           "configs_for", "grids", "parse_grid", "run_search", "s2_for"]
