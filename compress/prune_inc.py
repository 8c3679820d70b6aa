"""Pattern pruning (`method: pattern`, which recipes may still spell `backend: neural-compressor`): Intel Neural
Compressor's pruner zeroes NxM blocks or N of every M weights during recovery training, driven from the training
loop's hooks. Only its pruner is used: its own optimiser and model patching, including its replacement of
torch.save, are not."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from edgeqa.bench.files import EdgeQAError
from edgeqa.compress.prune_config import register_pruning
from edgeqa.compress.prune_magnitude import ScheduledSparsity, describe_magnitude, prunable_linears, skeleton

if TYPE_CHECKING:
    from edgeqa.compress.train_config import DistillConfig, Hooks


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


@register_pruning
@dataclass(frozen=True, kw_only=True)
class PatternConfig(ScheduledSparsity):
    """Block or N:M pattern pruning by neural-compressor, during recovery training only (needs `edgeqa[prune]`);
    `scope: layer` is neural-compressor's local scope."""

    method: ClassVar[str] = "pattern"
    needs_training: ClassVar[bool] = True
    pattern: str = "1x1"  # "NxM" blocks (4x1: 4 output rows) or "N:M" (2:4 along the input)
    criterion: str = "magnitude"  # "magnitude" or "snip_momentum" (|weight x gradient|)

    def validate(self) -> None:
        super().validate()
        if not re.fullmatch(r"\d+x\d+|\d+:\d+", self.pattern):
            raise EdgeQAError(f"pattern must look like 4x1 (blocks) or 2:4 (N of every M), got {self.pattern!r}")
        if self.criterion not in ("magnitude", "snip_momentum"):
            raise EdgeQAError(f"criterion must be 'magnitude' or 'snip_momentum', got {self.criterion!r}")

    def check_model(self, config) -> None:
        check_pattern(prunable_linears(skeleton(config), self.include, self.exclude), self.pattern)

    def check_recovery(self, recovery: DistillConfig) -> None:
        if len(recovery.stages) != 1:
            raise EdgeQAError("neural-compressor pruning runs over one training stage; give exactly one")

    def describe(self, record: dict[str, Any]) -> str:
        return describe_magnitude(self, self.sparsity, "" if self.pattern == "1x1" else self.pattern)

    def hooks(self) -> Hooks:
        return inc_hooks(self)


def inc_hooks(cfg: PatternConfig) -> Hooks:
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
        may_keep=lambda stage, step, total: cfg.at_target(step, total),
        state=state,
        load_state=load_state,
        fingerprint={"prune": cfg.to_dict()},
    )
