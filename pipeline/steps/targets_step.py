"""`targets`: speed targets and a training budget in, one model per target out, its shape chosen from the shapes
table of the machine it is for (pipeline/targets.py states the rule).

    - targets:
        targets: [{speedup: 3, f1_share: 0.98}, {speedup: 8, f1_share: 0.90}, {ms: 20, f1_share: 0.9}]
        over: pytorch-fp32      # what the speed-ups are over (or teacher-int8)
        shapes: auto            # made and timed here, under runs/NAME/shapes; or a shapes.json timed on the target
        train: {data: ..., limit: 60000, batch_size: 16, dropout: 0.0}
        loss: {hard: 0.5, soft: 0.5, temperature: 2.0}
        steps: 5000             # training steps per model: distillation and recovery together
        lr: 1.5e-4

Each target's model is made by ordinary distill/prune/export/fuse/quantize steps named `{prefix}{label}...` and
ships as `{prefix}{label}-int8` (t3x-int8, t20ms-int8); the choice is written to runs/NAME/choice.json and into the
report, so the same recipe on another CPU class makes other models on purpose, and says so.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from edgeqa.bench.files import EdgeQAError, write_json
from edgeqa.bench.qa import QAConfig
from edgeqa.bench.shapes import (
    SHAPES_BENCH,
    TABLE,
    TEACHER_INT8,
    Shape,
    candidate_shapes,
    read_shapes_table,
    time_shapes,
)
from edgeqa.bench.targets import TARGET_FORM, Target
from edgeqa.pipeline.context import RecipeRun
from edgeqa.pipeline.shapes import make_shapes, teacher_shape
from edgeqa.pipeline.step import BASE_VARIANT, NAME, STEP_KINDS, Step, register_step
from edgeqa.pipeline.targets import pick_shape, plan_steps

log = logging.getLogger(__name__)

TRAINING_KEYS = {"train", "loss", "steps", "lr", "warmup", "distill_share"}
GRID_KEYS = ("layers", "heads", "ffn")


@register_step
@dataclass(frozen=True, kw_only=True)
class TargetsStep(Step):
    kind: ClassVar[str] = "targets"
    targets: tuple[Target, ...]
    over: str = BASE_VARIANT
    shapes: str = "auto"
    margin: float = 0.05
    accept_busy: bool = False  # use a table some of whose timings were flagged
    prefix: str = "t"
    training: dict[str, Any] = field(default_factory=dict)  # train, stage (loss, lr, warmup), steps, distill_share
    grid: dict[str, tuple[int, ...]] = field(default_factory=dict)  # the table made here: levels of each axis

    @classmethod
    def keys(cls) -> set[str]:
        return {"targets", "over", "shapes", "margin", "accept_busy", "prefix", *TRAINING_KEYS, *GRID_KEYS}

    @classmethod
    def parse(cls, raw: dict[str, Any], line: int, qa: QAConfig) -> TargetsStep:
        targets = raw.get("targets")
        if not isinstance(targets, list) or not targets or not all(isinstance(t, dict) for t in targets):
            raise EdgeQAError(f"targets needs a list of {TARGET_FORM}")
        if raw.get("over", BASE_VARIANT) not in (BASE_VARIANT, TEACHER_INT8):
            raise EdgeQAError(f"targets.over must be {BASE_VARIANT} or {TEACHER_INT8}, got {raw['over']!r}")
        if "train" not in raw or "steps" not in raw:
            raise EdgeQAError("targets needs train (the training data and settings) and steps (the budget per model)")
        steps, share = raw["steps"], raw.get("distill_share", 0.5)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
            raise EdgeQAError(f"targets.steps must be a whole number of training steps >= 2, got {steps!r}")
        if not isinstance(share, int | float) or not 0 < share < 1:
            raise EdgeQAError(f"targets.distill_share must be between 0 and 1, got {share!r}")
        stage = {"loss": raw.get("loss", {"hard": 0.5, "soft": 0.5, "temperature": 2.0}),
                 "lr": raw.get("lr", 1e-4), "warmup": raw.get("warmup", 0.05)}  # fmt: skip
        training = {"train": raw["train"], "stage": stage, "steps": steps, "distill_share": share}
        step = cls(line=line, targets=tuple(Target(**t) for t in targets), over=raw.get("over", BASE_VARIANT),
                   shapes=str(raw.get("shapes", "auto")), margin=raw.get("margin", 0.05),
                   accept_busy=raw.get("accept_busy", False), prefix=str(raw.get("prefix", "t")), training=training,
                   grid={k: tuple(raw[k]) for k in GRID_KEYS if k in raw})  # fmt: skip
        if len({t.label for t in step.targets}) < len(step.targets) or not NAME.fullmatch(step.prefix):
            raise EdgeQAError("targets: each speed once, and a prefix of letters, digits, '.', '_', '-'")
        # Every training setting is checked now, as the steps a layer-dropping and pruned shape would need.
        for kind, sub in plan_steps("check", Shape(1, 1, 1), Shape(2, 2, 2), training):
            STEP_KINDS[kind].parse(sub, line, qa)
        return step

    def made_names(self) -> list[str]:
        """The variants it ships, known before the shapes are: bench and report steps may name them."""
        return [f"{self.prefix}{t.label}-int8" for t in self.targets]

    def making(self, names: tuple[str, ...]) -> TargetsStep | None:
        kept = tuple(t for t, name in zip(self.targets, self.made_names(), strict=True) if name in names)
        return dataclasses.replace(self, targets=kept) if kept else None

    def table(self, run: RecipeRun) -> tuple[Path, dict[str, Any]]:
        """The given table, or this machine's, made and timed once under the run folder (again on --retime)."""
        if self.shapes != "auto":
            return Path(self.shapes), read_shapes_table(self.shapes)
        folder = run.root / "shapes"
        if (folder / TABLE).exists() and not run.retime:
            return folder / TABLE, read_shapes_table(folder)
        shapes = candidate_shapes(teacher_shape(run.recipe.model), *(self.grid.get(k) for k in GRID_KEYS))
        make_shapes(run.recipe.model, folder, shapes)
        questions = any(t.latency == "questions" for t in self.targets)
        cfg = dataclasses.replace(SHAPES_BENCH, threads=run.recipe.bench.threads)
        time_shapes(folder, cfg, run.recipe.eval.data if questions else None)
        return folder / TABLE, read_shapes_table(folder)

    def run(self, run: RecipeRun) -> None:
        where = f"{run.recipe.path}:{self.line}"
        path, table = self.table(run)
        if table["busy"] and not self.accept_busy:
            raise EdgeQAError(f"{where}: {path} was timed on a busy machine ({table['flags'][0]}); time it again "
                              f"(edgeqa shapes --time {path.parent}) or set accept_busy: true")  # fmt: skip
        teacher = teacher_shape(run.recipe.model)
        if table.get("teacher_shape") != teacher.name:
            raise EdgeQAError(f"{where}: {path} holds shapes of a {table.get('teacher_shape')} teacher, the recipe's "
                              f"model is {teacher.name}")  # fmt: skip
        machine = table["machine"]
        choices = []
        for target in self.targets:
            choice = pick_shape(table, target, self.over, self.margin)
            prefix = f"{self.prefix}{target.label}"
            choice.update(variant=f"{prefix}-int8", table=str(path), cpu=machine.get("cpu"), isa=machine.get("isa"))
            log.info("target %s: %s (%s)", target.label, choice["shape"], choice["why"])
            for kind, raw in plan_steps(prefix, Shape.parse(choice["shape"]), teacher, self.training):
                step = STEP_KINDS[kind].parse(raw, self.line, run.recipe.qa)
                step.check(run)
                step.run(run)
            choices.append(choice)
        write_json(run.root / "choice.json", {"table": str(path), "machine": machine, "choices": choices})
        run.choices = choices
