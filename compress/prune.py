"""Pruning: prune a student once, or ride the training loop's hooks while it recovers.

The methods live one per module, each read top to bottom:
- `prune_config`: `PruneConfig`, the one record of every method's settings (a recipe's `prune` section, prune.json);
- `prune_magnitude`: unstructured magnitude sparsity, its cubic schedule, masks while training, plain weights when
  saved, and the choice inside each matrix by input-weighted magnitude (`select: input`);
- `prune_refit`: the least-squares refit of the weights a mask keeps, and the mask chosen inside it by Optimal
  Brain Surgeon's saliency (`select: obs`);
- `prune_structured`: attention heads and feed-forward neurons removed so the matrices really shrink;
- `prune_inc`: the neural-compressor backend's block and N:M patterns.
This module joins them: `prune_now` applies a config at once, `pruning_hooks` follows it through recovery
training. The names a recipe uses are importable from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.qa import pad
from edgeqa.compress.prune_config import PruneConfig
from edgeqa.compress.prune_inc import check_pattern, inc_hooks
from edgeqa.compress.prune_magnitude import (
    apply_magnitude_masks,
    at_target,
    bake_masks,
    cubic_sparsity,
    input_rms,
    prunable_linears,
    sparsity_report,
)
from edgeqa.compress.prune_refit import block_of, refit_kept_weights
from edgeqa.compress.prune_structured import (
    ffn_scores_by_magnitude,
    gradient_scores,
    head_scores_by_magnitude,
    heads_to_remove,
    prune_ffn_,
    prune_heads_,
)

if TYPE_CHECKING:
    import torch

# What the recipe pipeline (edgeqa.pipeline) imports from here.
__all__ = [
    "PruneConfig",
    "bake_masks",
    "block_of",
    "check_pattern",
    "prunable_linears",
    "prune_now",
    "pruning_hooks",
    "sparsity_report",
]

REFIT_MIN_RISE = 0.005  # cubic: a mask update that adds fewer zeros than this (0.5 points) is not worth a refit


def prune_now(model, cfg: PruneConfig, trainset=None, gradual: bool = False) -> dict[str, Any]:
    """Apply `cfg` to `model` in place; with `gradual`, as it stands before recovery (a cubic schedule starts at 0)."""
    if cfg.method == "structured":
        return _prune_structured(model, cfg, trainset)
    layers = prunable_linears(model, cfg.include, cfg.exclude)
    first = cfg.initial if gradual and cfg.schedule == "cubic" else cfg.sparsity
    if cfg.select == "input" and trainset is None:
        raise EdgeQAError("select: input measures the layers' inputs on training windows; give training data")
    rms = _measured_rms(model, layers, trainset, cfg, seed=0) if cfg.select == "input" and first > 0 else None
    apply_magnitude_masks(layers, first, cfg.scope, rms)
    summary: dict[str, Any] = {"matrices": len(layers)}
    if cfg.refit and first > 0:
        if trainset is None:
            raise EdgeQAError("refit fits the kept weights on training windows; give training data")
        batches = _label_batches(trainset, cfg.refit_batches)
        inputs = [_inputs(b) for b in batches]
        summary["refit"] = refit_kept_weights(model, layers, inputs, cfg.refit_to, choose=cfg.select == "obs")
    return summary


def _prune_structured(model, cfg: PruneConfig, trainset) -> dict[str, Any]:
    """Rank heads and neurons (by weight norms, or by the loss on training windows), then remove them."""
    if cfg.ranks_by_gradient:
        if trainset is None:
            raise EdgeQAError("gradient importance needs training data to measure the loss on")
        head_scores, ffn_scores = gradient_scores(model, _label_batches(trainset, cfg.importance_batches), _span_loss)
    else:
        head_scores, ffn_scores = head_scores_by_magnitude(model), ffn_scores_by_magnitude(model)
    if cfg.heads and model.config.pruned_heads:
        raise EdgeQAError("this model already lost heads to pruning; prune its heads once, from the unpruned model")
    plan = heads_to_remove(head_scores, cfg.heads) if cfg.heads else {}
    prune_heads_(model, plan)
    width = prune_ffn_(model, cfg.ffn, ffn_scores) if cfg.ffn else model.config.intermediate_size
    return {"heads_removed": {str(k): v for k, v in plan.items()}, "intermediate_size": width}


def pruning_hooks(cfg: PruneConfig):
    """Hooks for `compress.train.distill`: prune before training, follow the schedule, save baked weights."""
    import copy

    import torch

    from edgeqa.compress.train_config import Hooks

    held: dict[str, Any] = {}

    def prepare(student, trainset) -> None:
        held["trainset"] = trainset
        prune_now(student, cfg, trainset, gradual=True)

    def after_step(student, stage: int, step: int, total: int) -> None:
        if cfg.method == "magnitude" and cfg.schedule == "cubic" and (step % cfg.update_every == 0 or step == total):
            layers = prunable_linears(student, cfg.include, cfg.exclude)
            target = cubic_sparsity(step, total, cfg.sparsity, cfg.ramp, cfg.initial)
            last = cubic_sparsity(step - cfg.update_every, total, cfg.sparsity, cfg.ramp, cfg.initial)
            refit = cfg.refit and target - last >= REFIT_MIN_RISE  # the mask grew: fit the survivors again
            if refit:
                for m in layers.values():  # weights pruned earlier become zeros: the refit's target is this model
                    with torch.no_grad():
                        m.weight_orig.mul_(m.weight_mask)
            rms = None
            if cfg.select == "input" and target > last:  # after the ramp the mask keeps every nonzero weight
                rms = _measured_rms(student, layers, held["trainset"], cfg, seed=step)
            apply_magnitude_masks(layers, target, cfg.scope, rms)
            if refit:
                batches = _label_batches(held["trainset"], cfg.refit_batches, seed=step)
                inputs = [_inputs(b) for b in batches]
                refit_kept_weights(student, layers, inputs, cfg.refit_to, choose=cfg.select == "obs")

    def to_save(student):
        baked = copy.deepcopy(student)
        bake_masks(baked)
        return baked

    if cfg.backend == "neural-compressor":
        return inc_hooks(cfg)
    return Hooks(
        prepare=prepare,
        after_step=after_step,
        to_save=to_save,
        may_keep=lambda stage, step, total: at_target(cfg, step, total),
        fingerprint={"prune": cfg.to_dict()},
    )


def _label_batches(trainset, n: int, size: int = 16, seed: int = 0):
    """n batches of labelled training windows drawn at random (seeded), as model inputs plus labels.

    A random draw, not the first windows: those would be the longest contexts only, a biased sample of the loss.
    """
    import numpy as np
    import torch

    pick = np.random.default_rng(seed).choice(len(trainset), size=min(n * size, len(trainset)), replace=False)
    pick = pick[np.argsort(-trainset.lengths[pick], kind="stable")]  # similar lengths together: less padding
    names = ("input_ids", "attention_mask", "token_type_ids")
    for lo in range(0, len(pick), size):
        idx = pick[lo : lo + size]
        arrays = pad(trainset, idx, 0)
        batch = {k: torch.from_numpy(arrays[k]) for k in names if k in arrays}
        batch["labels"] = torch.from_numpy(trainset.labels[idx])
        yield batch


def _measured_rms(model, layers, trainset, cfg: PruneConfig, seed: int) -> dict:
    batches = [_inputs(b) for b in _label_batches(trainset, cfg.refit_batches, seed=seed)]
    return input_rms(model, layers, batches)


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def _span_loss(model, batch) -> torch.Tensor:
    from edgeqa.compress.losses import span_ce

    inputs = _inputs(batch)
    out = model(**inputs)
    return span_ce(out.start_logits, out.end_logits, batch["labels"], inputs["attention_mask"].bool())
