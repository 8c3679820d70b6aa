"""The neural-compressor backend: pattern pruning (NxM blocks, N:M) during recovery training, driven from the
training loop's hooks. Only its pruner is used: its own optimiser and model patching, including its replacement of
torch.save, are not."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from edgeqa.bench.files import EdgeQAError
from edgeqa.compress.prune_magnitude import at_target, prunable_linears

if TYPE_CHECKING:
    from edgeqa.compress.prune_config import PruneConfig


def check_pattern(layers: dict, pattern: str) -> None:
    """Refuse a block or N:M pattern that does not tile a weight matrix (out x in), naming the first such one."""
    if re.fullmatch(r"\d+x\d+", pattern):
        rows, cols = (int(x) for x in pattern.split("x"))
    else:
        n, m = (int(x) for x in pattern.split(":"))
        if not 0 < n < m:
            raise EdgeQAError(f"pattern {pattern}: N:M needs 0 < N < M")
        rows, cols = 1, m
    for name, m in layers.items():
        out_features, in_features = m.weight.shape
        if out_features % rows or in_features % cols:
            raise EdgeQAError(
                f"pattern {pattern} does not divide {name}'s weight shape ({out_features} x {in_features})"
            )


INC_STATE = ("global_step", "masks", "current_sparsity_ratio", "init_sparsity_ratio", "completed_pruned_cnt")


def inc_hooks(cfg: PruneConfig):
    """Drive neural-compressor's pattern pruner from the loop's hooks. Its masks and counters go into the
    checkpoint, so a killed recovery resumes with them."""
    from edgeqa.compress.train_config import Hooks

    held: dict[str, Any] = {}

    def start_stage(student, optimizer, stage: int, total: int) -> None:
        from neural_compressor import WeightPruningConfig
        from neural_compressor.compression.pruner.pruning import BasicPruning
        from neural_compressor.compression.pruner.utils import process_config

        layers = prunable_linears(student, cfg.include, cfg.exclude)
        check_pattern(layers, cfg.pattern)
        gradual = cfg.schedule == "cubic"
        config = WeightPruningConfig(
            pruning_configs=[{"op_names": [f"^{re.escape(n)}$" for n in layers]}],
            target_sparsity=cfg.sparsity,
            pattern=cfg.pattern,
            pruning_type=cfg.criterion,
            start_step=0,
            end_step=max(1, round(total * cfg.ramp)) if gradual else 0,
            pruning_frequency=cfg.update_every if gradual else 1,
            pruning_scope="global" if cfg.scope == "global" else "local",
            sparsity_decay_type="cube" if gradual else "exp",
        )
        held["pruning"] = BasicPruning(process_config(config), student)
        held["pruning"].on_train_begin()

    def state() -> list[dict]:
        return [{k: getattr(p, k) for k in INC_STATE if hasattr(p, k)} for p in held["pruning"].pruners]

    def load_state(saved: list[dict]) -> None:
        for pruner, values in zip(held["pruning"].pruners, saved, strict=True):
            for k, v in values.items():
                setattr(pruner, k, v)

    def after_step(student, stage: int, step: int, total: int) -> None:
        held["pruning"].on_after_optimizer_step()
        held["pruning"].on_step_end()

    return Hooks(
        start_stage=start_stage,
        before_step=lambda stage, step: held["pruning"].on_step_begin(step),
        before_optimizer=lambda: held["pruning"].on_before_optimizer_step(),
        after_step=after_step,
        may_keep=lambda stage, step, total: at_target(cfg, step, total),
        state=state,
        load_state=load_state,
        fingerprint={"prune": cfg.to_dict()},
    )
