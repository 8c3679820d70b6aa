"""`prune`: magnitude or structured pruning of the `from` variant, at once or during recovery training by
distillation from `teacher` (default: the recipe's model)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from edgeqa.bench.engines import load_tokenizer, load_torch_qa_model
from edgeqa.bench.families import families_with, has
from edgeqa.bench.files import EdgeQAError, atomic_dir, write_json
from edgeqa.bench.qa import QAConfig
from edgeqa.compress.prune import (
    PruneConfig,
    bake_masks,
    block_of,
    check_pattern,
    prunable_linears,
    prune_now,
    pruning_hooks,
    sparsity_report,
)
from edgeqa.compress.prune_config import describe_pruning
from edgeqa.compress.student import save_student
from edgeqa.pipeline.context import RecipeRun
from edgeqa.pipeline.records import make_once
from edgeqa.pipeline.step import BASE_VARIANT, MadeStep, register_step, window_identity
from edgeqa.pipeline.steps.distill import distill_config, train_once

PRUNE_KEYS = {f.name for f in dataclasses.fields(PruneConfig)}


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
        return {"name", "from", "teacher", "train", "stages"} | PRUNE_KEYS

    @classmethod
    def parse(cls, raw: dict[str, Any], line: int, qa: QAConfig) -> PruneStep:
        pcfg = PruneConfig.from_dict({k: v for k, v in raw.items() if k in PRUNE_KEYS})
        recovery = None
        if "stages" in raw:
            # The student is the pruned source model, known when the step runs (`recovery_for`).
            recovery = distill_config({k: raw[k] for k in ("train", "stages") if k in raw}, qa, {"pretrained": ""})
            if pcfg.method == "structured" and pcfg.heads and any(s.loss.attention for s in recovery.stages):
                raise EdgeQAError("attention transfer needs the teacher's head count; heads are being pruned")
            if pcfg.backend == "neural-compressor" and len(recovery.stages) != 1:
                raise EdgeQAError("neural-compressor pruning runs over one training stage; give exactly one")
        elif set(raw.get("train") or {}) - {"data"}:
            raise EdgeQAError("recovery training needs stages; without them, train takes only data")
        data = None if recovery else (raw.get("train") or {}).get("data")
        return cls(line=line, name=raw.get("name"), source=raw.get("from", BASE_VARIANT),
                   teacher=raw.get("teacher", BASE_VARIANT), prune=pcfg, recovery=recovery, data=data)  # fmt: skip

    def references(self) -> list[str]:
        return [self.teacher]

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
        if pcfg.method == "structured" and not has(config.model_type, "bert_layout"):
            raise EdgeQAError(f"{where}: structured pruning knows {', '.join(families_with('bert_layout'))} models; "
                              f"{src.path} is {config.model_type!r}")  # fmt: skip
        if pcfg.method == "structured" and pcfg.heads:
            if config.pruned_heads:
                raise EdgeQAError(
                    f"{where}: {src.path} already lost heads to pruning; prune heads once, from the unpruned model"
                )
            n = config.num_hidden_layers * config.num_attention_heads
            if round(pcfg.heads * n) >= n:
                raise EdgeQAError(f"{where}: heads={pcfg.heads} removes every head")
        if self.recovery is None and pcfg.backend == "neural-compressor":
            raise EdgeQAError(f"{where}: neural-compressor prunes during training; give train and stages")
        if self.recovery is None and pcfg.needs_data and self.data is None:
            why = "gradient importance measures the loss" if pcfg.ranks_by_gradient else "refit fits the kept weights"
            raise EdgeQAError(f"{where}: {why} on training data; give train: {{data: ...}}")
        if pcfg.method == "magnitude":
            try:
                _check_magnitude_layers(config, pcfg)
            except EdgeQAError as e:
                raise EdgeQAError(f"{where}: {e}") from e

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


def _check_magnitude_layers(config, pcfg: PruneConfig) -> None:
    import torch
    from transformers import AutoModelForQuestionAnswering

    with torch.device("meta"):  # shapes without weights
        skeleton = AutoModelForQuestionAnswering.from_config(config)
    layers = prunable_linears(skeleton, pcfg.include, pcfg.exclude)
    if pcfg.backend == "neural-compressor":
        check_pattern(layers, pcfg.pattern)
    if pcfg.refit:
        for name in layers:
            block_of(name)


def _prune_record(step: PruneStep, source: Path, summary: dict) -> Callable[[Path], None]:
    """Writes prune.json into a pruned folder: the sparsity it has and, for structured pruning, what is left."""

    def record(folder: Path) -> None:
        pcfg = step.prune
        model = load_torch_qa_model(folder)
        include = pcfg.include if pcfg.method == "magnitude" else ("*encoder.layer.*",)
        report = sparsity_report(model, include, pcfg.exclude)
        report.update(method=pcfg.method, settings=pcfg.to_dict(), source=str(source), **summary)
        if pcfg.method == "structured":  # what is left, as the config the folder loads with records it
            heads = model.config.num_attention_heads
            removed = {str(k): len(v) for k, v in (model.config.pruned_heads or {}).items()}
            report["heads_per_layer"] = [heads - removed.get(str(i), 0) for i in range(model.config.num_hidden_layers)]
            report["intermediate_size"] = model.config.intermediate_size
        report["description"] = describe_pruning(report)
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
    make_once(run.model_dir(step.name), step.kind, settings, make)
    run.add(step.name)


def recovery_for(step: PruneStep, source: Path):
    """The step's recovery training with the pruned source model as its student."""
    cfg = step.recovery
    return dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, pretrained=str(source)))
