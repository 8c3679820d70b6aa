"""`prune`: magnitude or structured pruning of the `from` variant, at once or during recovery training by
distillation from `teacher` (default: the recipe's model)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from edgeqa.bench.engines import load_tokenizer, load_torch_qa_model
from edgeqa.bench.files import EdgeQAError, atomic_dir, write_json
from edgeqa.bench.qa import QAConfig
from edgeqa.compress.prune import (
    PruneConfig,
    bake_masks,
    prune_config_from_dict,
    prune_keys,
    prune_now,
    pruning_hooks,
    sparsity_report,
)
from edgeqa.compress.student import save_student
from edgeqa.pipeline.context import RecipeRun
from edgeqa.pipeline.records import make_once
from edgeqa.pipeline.step import BASE_VARIANT, MadeStep, register_step, window_identity
from edgeqa.pipeline.steps.distill_step import distill_config, train_once


@register_step
@dataclass(frozen=True, kw_only=True)
class PruneStep(MadeStep):
    kind: ClassVar[str] = "prune"
    teacher: str = BASE_VARIANT
    prune: PruneConfig
    recovery: Any = None  # DistillConfig whose student is the pruned model; None: prune only
    data: str | None = None  # training data that pruning itself reads (importance, refit), without recovery

    @classmethod
    def keys(cls) -> set[str]:
        return {"name", "from", "teacher", "train", "stages"} | prune_keys()

    @classmethod
    def parse(cls, raw: dict[str, Any], line: int, qa: QAConfig) -> PruneStep:
        pcfg = prune_config_from_dict({k: v for k, v in raw.items() if k in prune_keys()})
        recovery = None
        if "stages" in raw:
            # The student is the pruned source model, known when the step runs (`recovery_for`).
            recovery = distill_config({k: raw[k] for k in ("train", "stages") if k in raw}, qa, {"pretrained": ""})
            pcfg.check_recovery(recovery)
        elif set(raw.get("train") or {}) - {"data"}:
            raise EdgeQAError("recovery training needs stages; without them, train takes only data")
        data = None if recovery else (raw.get("train") or {}).get("data")
        return cls(line=line, name=raw.get("name"), source=raw.get("from", BASE_VARIANT),
                   teacher=raw.get("teacher", BASE_VARIANT), prune=pcfg, recovery=recovery, data=data)  # fmt: skip

    def references(self) -> list[str]:
        return [self.teacher]

    def describe(self, run: RecipeRun) -> str:
        recovery = f", recovered by distillation from {self.teacher}" if self.recovery is not None else ""
        return f"{self.prune.describe({})} of {self.source}{recovery}"

    def check(self, run: RecipeRun) -> None:
        """What the source model's config can tell before any work: its type, and whether pruning empties a layer."""
        from transformers import AutoConfig

        src = run.variants.get(self.source)
        if src is None or not (src.path / "config.json").exists():
            return  # made by an earlier step of this run: checked when it exists
        pcfg = self.prune
        try:
            config = AutoConfig.from_pretrained(src.path)
        except Exception as e:
            raise EdgeQAError(f"{src.path}: cannot read the model config: {e}") from e
        where = f"{run.recipe.path}:{self.line}"
        if self.recovery is None and pcfg.needs_training:
            raise EdgeQAError(f"{where}: prune method {pcfg.method} prunes during training; give train and stages")
        if self.recovery is None and pcfg.needs_data and self.data is None:
            raise EdgeQAError(f"{where}: {pcfg.why_data} on training data; give train: {{data: ...}}")
        try:
            pcfg.check_model(config)
        except EdgeQAError as e:
            raise EdgeQAError(f"{where}: {src.path}: {e}") from e

    def run(self, run: RecipeRun) -> None:
        from edgeqa.compress.train import distill

        src = run.source(self.source)
        if self.recovery is None:
            _prune_without_recovery(run, self, src.path)
            return
        teacher = run.source(self.teacher)
        cfg = recovery_for(self, src.path)
        hooks = pruning_hooks(self.prune)
        work = run.root / "work" / self.name

        def train() -> Path:
            teacher_path = teacher.path if cfg.needs_teacher else None
            return distill(cfg, teacher_path, work, run.recipe.eval.data, run.cache_root, hooks=hooks)

        settings = {"from": str(src.path), "teacher": str(teacher.path), **self.prune.to_dict(), **cfg.to_dict()}
        summary = {"recovery": {"teacher": str(teacher.path), **cfg.to_dict()}}
        train_once(run, self, settings, train, work, _prune_record(self, src.path, summary))


def _prune_record(step: PruneStep, source: Path, summary: dict) -> Callable[[Path], None]:
    """Writes prune.json into a pruned folder: the sparsity it has and, for structured pruning, what is left."""

    def record(folder: Path) -> None:
        pcfg = step.prune
        model = load_torch_qa_model(folder)
        report = sparsity_report(model, *pcfg.sparsity_scope())
        report.update(method=pcfg.method, settings=pcfg.to_dict(), source=str(source), **summary)
        report.update(pcfg.record(model))
        report["description"] = pcfg.describe(report)
        write_json(folder / "prune.json", report)

    return record


def _prune_without_recovery(run: RecipeRun, step: PruneStep, source: Path) -> None:
    """Prune at once; `train: {data}` only feeds gradient importance or refits."""
    pcfg = step.prune

    def make(out: Path) -> None:
        model = load_torch_qa_model(source)
        trainset = None
        if pcfg.needs_data:
            from edgeqa.compress.trainset import load_trainset

            trainset = load_trainset(step.data, pcfg.data_windows, load_tokenizer(source), run.recipe.qa)
        summary = prune_now(model, pcfg, trainset)
        bake_masks(model)
        with atomic_dir(out) as tmp:
            save_student(model, load_tokenizer(source), tmp)
            _prune_record(step, source, {"removed": summary, "recovery": None})(tmp)

    settings = {"from": str(source), **pcfg.to_dict()}
    if step.data:
        settings.update(data=step.data, **window_identity(run.recipe.qa))
    make_once(run.model_dir(step.name), step.kind, settings, make, description=step.describe(run))
    run.add(step.name)


def recovery_for(step: PruneStep, source: Path):
    """The step's recovery training with the pruned source model as its student."""
    cfg = step.recovery
    return dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, pretrained=str(source)))
