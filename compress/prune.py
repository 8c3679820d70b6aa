"""Pruning: the registered methods, and the two verbs the recipe pipeline uses.

Each method is one config class in its own module, registered with `compress.prune_config.register_pruning`:
- `prune_magnitude.MagnitudeConfig` (`method: magnitude`): unstructured magnitude sparsity, at once or along a
  cubic schedule, the choice inside each matrix by input-weighted magnitude (`select: input`), and least-squares
  refits of what the masks keep (`refit`, with `select: obs` choosing the mask inside the refit, in `prune_refit`);
- `prune_structured.StructuredConfig` (`method: structured`): attention heads and feed-forward neurons removed so
  the matrices really shrink;
- `prune_inc.PatternConfig` (`method: pattern`): neural-compressor's block and N:M patterns during training.
The two that zero weights along a schedule share their settings and checks through `ScheduledSparsity`.
Importing this module registers them all. `prune_now` applies a config at once, `pruning_hooks` follows it
through recovery training.
"""

from __future__ import annotations

from typing import Any

from edgeqa.bench.files import EdgeQAError
from edgeqa.compress import prune_inc, prune_magnitude, prune_structured
from edgeqa.compress.prune_config import PRUNING_METHODS, PruneConfig, prune_config_from_dict, prune_keys
from edgeqa.compress.prune_magnitude import MagnitudeConfig, bake_masks, prunable_linears, sparsity_report
from edgeqa.compress.prune_structured import StructuredConfig

METHOD_MODULES = (prune_magnitude, prune_structured, prune_inc)  # importing them registered their methods

__all__ = [
    "PRUNING_METHODS",
    "MagnitudeConfig",
    "PruneConfig",
    "StructuredConfig",
    "bake_masks",
    "prunable_linears",
    "prune_config_from_dict",
    "prune_keys",
    "prune_now",
    "pruning_hooks",
    "sparsity_report",
]


def prune_now(model, cfg: PruneConfig, trainset=None, gradual: bool = False) -> dict[str, Any]:
    """Apply `cfg` to `model` in place; with `gradual`, as it stands before recovery (a cubic schedule starts at
    its initial sparsity)."""
    if cfg.needs_training:
        raise EdgeQAError(f"prune method {cfg.method} prunes during recovery training only; give train and stages")
    return cfg.apply(model, trainset, gradual)


def pruning_hooks(cfg: PruneConfig):
    """Hooks for `compress.train.distill`: prune before training, follow the schedule, save what the masks make."""
    return cfg.hooks()


def describe_pruning(record: dict[str, Any] | None) -> str:
    """A prune.json record in one line: the description its step wrote, or, for records written before steps kept
    one, the one its settings give now."""
    if not record:
        return ""
    if record.get("description"):
        return record["description"]
    try:
        return prune_config_from_dict(record.get("settings") or {}, record=True).describe(record)
    except EdgeQAError:  # settings this version cannot read: say what little is sure
        return str(record.get("method", ""))
