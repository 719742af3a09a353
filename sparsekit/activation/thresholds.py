"""Calibration: what ``sparsekit calibrate`` records, and thresholds for any activation sparsity S2.

Per decoder layer and input site (attn: q/k/v, o, mlp: gate/up, down) a calibration holds:

- the dense histogram of |x| (``histograms.py``);
- the *in-use correction* of the o and down sites: their inputs are computed from already
  sparsified q/k/v (resp. gate/up) inputs, so with every site at S2 they are smaller than in the
  dense model and a dense-quantile threshold over-sparsifies them (on the demo model o_proj gets
  0.55-0.57 at S2 = 0.5). For levels g = 0.1 .. 0.9 the calibration measured, with the layer's
  other sites at g, the threshold giving sparsity g, stored as the equivalent quantile of the
  dense histogram; thresholds for any S2 interpolate it. ``corrected=False`` gives TEAL's
  dense-quantile thresholds instead;
- with ``--greedy``, the greedy allocation table per layer (``greedy.py``).

The threshold *rule* (``rule``, recorded in calibration.json):

- ``relative`` (default): at the o site (the attention output, which no norm precedes) a token
  keeps x where |x| > t * mean|x| over its own channels, and the o histograms hold |x| / mean|x|
  (``kernels.reference.relative_magnitude``). Why: the scale of the o input moves with the text.
  On the demo model, exact absolute quantiles from the calibration plays reach +0.016 at layer
  0's o input on the evaluation plays at S2 = 0.5; relative ones +0.001. The attn and mlp inputs
  come out of an RMSNorm; the down input (no norm either) lands within ±0.002 under both rules, so
  it keeps the absolute rule, which costs no extra reduction at decode (benchmarks/NOTES.md);
- ``absolute``: |x| > t at every site, TEAL's rule (calibrations written before version 2).

A calibration dir holds ``histograms.safetensors`` (``counts`` [L, 4, bins] int64, ``stats``
[L, 4, 4] float64: zeros, under, over, max; ``compound`` [L, 4, levels] float64;
``greedy.<layer>`` [steps, columns] float64), ``calibration.json`` (model signature, linear
names, bin layout, levels, data and settings) and the ``sparsekit.json`` manifest (kind
"calibrate", sha256 of both files).
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sparsekit.activation import greedy as greedy_mod
from sparsekit.activation.histograms import NBINS, STATS, Quantiles, layout
from sparsekit.activation.sparsify import Thresholds
from sparsekit.errors import BadInput, check_fraction
from sparsekit.formats.checkpoint import MANIFEST, atomic_dir, sha256_file, verify, write_json_atomic
from sparsekit.models import ROLES, SITE_OF_ROLE, SITES, signature

HIST_FILE = "histograms.safetensors"
META_FILE = "calibration.json"
FORMAT = "sparsekit-calibration"
VERSION = 2
READS = (1, 2)  # version 1: no rule recorded, every site absolute
KIND = "calibrate"
SITE_NAMES = tuple(SITES)  # attn o mlp down
SITE_INDEX = {s: i for i, s in enumerate(SITE_NAMES)}
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
RULES = ("relative", "absolute")
RELATIVE_SITES = ("o",)  # the sites the relative rule applies to (see the module doc)


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise BadInput(f"the threshold rule must be relative or absolute, got {rule!r}.")
    return rule


def relative_sites(rule: str) -> tuple[str, ...]:
    """The sites whose thresholds are relative to the token's mean |x| under ``rule``."""
    return RELATIVE_SITES if check_rule(rule) == "relative" else ()


def describe(sig: dict) -> str:
    return (f"{sig.get('model_type')}, {sig.get('num_hidden_layers')} layers, hidden {sig.get('hidden_size')}, "
            f"intermediate {sig.get('intermediate_size')}, {sig.get('num_attention_heads')}/"
            f"{sig.get('num_key_value_heads')} heads, vocab {sig.get('vocab_size')}")


def _interp(x: float, xs: list[float], ys: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of rows ``ys[..., len(xs)]`` at ``x`` (xs increasing)."""
    for j in range(1, len(xs)):
        if x <= xs[j] or j == len(xs) - 1:
            a = (x - xs[j - 1]) / (xs[j] - xs[j - 1])
            return ys[..., j - 1] + a * (ys[..., j] - ys[..., j - 1])
    raise AssertionError("unreachable")


@dataclass
class Calibration:
    signature: dict
    names: list[dict[str, str]]  # per layer: role -> linear name
    counts: torch.Tensor  # [L, 4, NBINS] int64
    stats: torch.Tensor  # [L, 4, len(STATS)] float64
    params: dict[str, int]  # role -> weights per layer
    compound: torch.Tensor | None = None  # [L, 4, len(levels)] equivalent dense sparsity at each level
    levels: tuple[float, ...] = LEVELS
    greedy: list[torch.Tensor] | None = None  # per layer [steps, len(greedy.COLUMNS)]
    info: dict = field(default_factory=dict)  # model, data, settings, timing
    source: str = ""  # where it was loaded from (for messages)
    rule: str = "absolute"  # "relative": the o sites hold |x| / mean|x| (see the module doc)

    @property
    def layers(self) -> int:
        return self.counts.shape[0]

    @functools.cached_property
    def quantiles(self) -> Quantiles:
        return Quantiles.of(self.counts, self.stats)

    def _where(self) -> str:
        return f" in {self.source}" if self.source else ""

    # ---------------------------------------------------------------- thresholds
    def sparsities(self, s2: float, greedy: bool = False, corrected: bool = True) -> dict[str, float]:
        """Per linear, the quantile of its site's dense histogram that its threshold sits at."""
        check_fraction("activation sparsity S2", s2)
        if greedy:
            if self.greedy is None:
                raise BadInput(f"the calibration{self._where()} has no greedy allocation; run sparsekit calibrate with --greedy.")
            out = {}
            for i, layer in enumerate(self.names):
                alloc = greedy_mod.allocation_at(self.greedy[i], s2)
                out.update({layer[r]: alloc[r] for r in ROLES})
            return out
        site_s = torch.full((self.layers, len(SITE_NAMES)), float(s2), dtype=torch.float64)
        if corrected and self.compound is not None and s2 > 0:
            xs = [0.0, *self.levels, 1.0]
            ys = torch.cat([torch.zeros(*self.compound.shape[:2], 1, dtype=torch.float64), self.compound.double(),
                            torch.ones(*self.compound.shape[:2], 1, dtype=torch.float64)], -1)
            site_s = _interp(float(s2), xs, ys).clamp(0, 1)
        return {layer[r]: float(site_s[i, SITE_INDEX[SITE_OF_ROLE[r]]])
                for i, layer in enumerate(self.names) for r in ROLES}

    def relative_names(self) -> frozenset[str]:
        """The linears whose threshold is relative to the token's mean |x|."""
        sites = relative_sites(self.rule)
        return frozenset(layer[r] for layer in self.names for r in ROLES if SITE_OF_ROLE[r] in sites)

    def thresholds(self, s2: float, greedy: bool = False, corrected: bool = True) -> Thresholds:
        """One threshold per linear name (keep x where |x| > t, or |x| > t * mean|x| for the names
        in ``.relative``); uniform: a site's linears share it.

        Uniform thresholds give sparsity S2 at every site with all thresholds on (``corrected``);
        greedy ones give achieved effective sparsity S2 per layer, unevenly spread over projections.
        """
        quantile = self.sparsities(s2, greedy, corrected)
        s = torch.zeros(self.layers, len(ROLES), len(SITE_NAMES), dtype=torch.float64)
        for i, layer in enumerate(self.names):
            for j, r in enumerate(ROLES):
                s[i, j, :] = quantile[layer[r]]
        out = {}
        for j, r in enumerate(ROLES):
            t = self.quantiles.thresholds(s[:, j].reshape(-1)).reshape(self.layers, len(SITE_NAMES))
            site = SITE_INDEX[SITE_OF_ROLE[r]]
            for i, layer in enumerate(self.names):
                out[layer[r]] = float(t[i, site])
        return Thresholds({name: out[name] for layer in self.names for name in layer.values()}, self.relative_names())

    def expected(self, s2: float, greedy: bool = False) -> dict[str, float]:
        """The sparsity each linear's input is expected to reach in use (all thresholds on)."""
        if not greedy:
            self.sparsities(s2)  # validates s2
            return {name: float(s2) for layer in self.names for name in layer.values()}
        self.sparsities(s2, greedy=True)
        out = {}
        for i, layer in enumerate(self.names):
            ach = greedy_mod.achieved_at(self.greedy[i], s2)
            out.update({layer[r]: ach[r] for r in ROLES})
        return out

    # ---------------------------------------------------------------- checks
    def check_model(self, model_or_config) -> None:
        sig = signature(model_or_config)
        if sig != self.signature:
            raise BadInput(f"the calibration{self._where()} was made for a different model ({describe(self.signature)}) "
                           f"than this one ({describe(sig)}).")

    # ---------------------------------------------------------------- files
    def meta(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "kind": KIND, "rule": self.rule, "signature": self.signature,
                "sites": {s: list(r) for s, r in SITES.items()}, "names": self.names, "params": self.params,
                "bins": layout(), "stats": list(STATS),
                "levels": list(self.levels) if self.compound is not None else None,
                "greedy": None if self.greedy is None else {"columns": list(greedy_mod.COLUMNS),
                                                            "steps": [int(t.shape[0]) for t in self.greedy]},
                "info": self.info}

    def save(self, out: str | Path) -> Path:
        """Write the calibration dir atomically (replacing an earlier calibration there)."""
        from safetensors.torch import save_file

        from sparsekit.env import environment

        tensors = {"counts": self.counts.to(torch.int64).contiguous(), "stats": self.stats.double().contiguous()}
        if self.compound is not None:
            tensors["compound"] = self.compound.double().contiguous()
        for i, table in enumerate(self.greedy or []):
            tensors[f"greedy.{i}"] = table.double().contiguous()
        with atomic_dir(Path(out)) as tmp:
            save_file(tensors, str(tmp / HIST_FILE))
            write_json_atomic(tmp / META_FILE, self.meta())
            manifest = {"kind": KIND, "format": FORMAT, "version": VERSION,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": self.info,
                        "environment": environment(),
                        "sha256": {name: sha256_file(tmp / name) for name in (HIST_FILE, META_FILE)}}
            write_json_atomic(tmp / MANIFEST, manifest)
        return Path(out)

    @classmethod
    def load(cls, directory: str | Path, model=None) -> "Calibration":
        """Read a calibration dir; BadInput if it is missing, corrupt, or (with ``model``) for another model."""
        d = Path(directory)
        if not d.is_dir():
            raise BadInput(f"calibration dir {d} does not exist.")
        manifest = verify(d)  # missing manifest or files, or a sha256 mismatch -> BadInput
        if manifest.get("kind") != KIND:
            raise BadInput(f"{d} is a 'sparsekit {manifest.get('kind')}' output, not a calibration dir.")
        try:
            meta = json.loads((d / META_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BadInput(f"{d / META_FILE} is missing or not valid JSON; the calibration dir is corrupt.") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") not in READS \
                or meta.get("bins") != layout() or meta.get("rule", "absolute") not in RULES:
            raise BadInput(f"{d} was written by an incompatible sparsekit version; calibrate again.")
        tensors = _read_tensors(d / HIST_FILE)
        corrupt = BadInput(f"{d / HIST_FILE} does not hold what {META_FILE} describes; the calibration dir is corrupt.")
        try:
            names, sig, params = meta["names"], meta["signature"], {r: int(meta["params"][r]) for r in ROLES}
            n, s = len(names), len(SITE_NAMES)
            counts, stats = tensors["counts"], tensors["stats"].double()
            levels = tuple(meta["levels"]) if meta.get("levels") else None
            compound = tensors["compound"].double() if levels else None
            tables = [tensors[f"greedy.{i}"].double() for i in range(n)] if meta.get("greedy") else None
        except (KeyError, TypeError, ValueError) as exc:
            raise corrupt from exc
        ok = (n == sig.get("num_hidden_layers") and all(set(layer) == set(ROLES) for layer in names)
              and counts.shape == (n, s, NBINS) and stats.shape == (n, s, len(STATS))
              and bool((counts >= 0).all()) and bool((counts.sum(-1) + stats[..., :3].sum(-1) > 0).all()))
        if compound is not None:
            ok = ok and compound.shape == (n, s, len(levels)) and bool(torch.isfinite(compound).all())
        if tables is not None:
            ok = ok and all(t.dim() == 2 and t.shape[1] == len(greedy_mod.COLUMNS) and t.shape[0] >= 1
                            and bool(torch.isfinite(t[:, :-1]).all()) for t in tables)
        if not ok:
            raise corrupt
        cal = cls(signature=sig, names=names, counts=counts, stats=stats, params=params, compound=compound,
                  levels=levels or LEVELS, greedy=tables, info=meta.get("info") or {}, source=str(d),
                  rule=meta.get("rule", "absolute"))
        if model is not None:
            cal.check_model(model)
        return cal


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated / garbled files
        raise BadInput(f"{path} is missing or corrupt; calibrate again.") from exc
