"""Weight pruning: Wanda, SparseGPT and magnitude; unstructured, N:M or N:M-out; layer by layer.

``prune_model`` prunes a loaded model in place; ``save_pruned`` writes the result. Masks follow
the exact rules in ``masks``; the algorithms are pure tensor functions in ``wanda``,
``sparsegpt`` and ``magnitude``; ``sequential`` is the layer-by-layer engine.
"""
from sparsekit.pruning.masks import METHODS, NM, check_settings, parse_structure
from sparsekit.pruning.prune import PruneReport, prune_model
from sparsekit.pruning.save import save_pruned

__all__ = ["METHODS", "NM", "PruneReport", "check_settings", "parse_structure", "prune_model", "save_pruned"]
