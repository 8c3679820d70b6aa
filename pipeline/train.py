"""The training-side steps: distillation and pruning (with or without recovery), and the checks that fail a bad
student or pruning spec against the teacher's config before any step runs."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

from edgeqa.bench.families import families_with, has
from edgeqa.bench.files import EdgeQAError, atomic_dir, write_json
from edgeqa.pipeline.context import Run, is_main_process
from edgeqa.pipeline.make import window_identity
from edgeqa.pipeline.recipe import DistillStep, PruneStep
from edgeqa.pipeline.records import make_once


def check_distill(run: Run, step: DistillStep) -> None:
    """Student shape and layer maps against the teacher's config."""
    from transformers import AutoConfig

    from edgeqa.bench.engines import check_qa_config
    from edgeqa.compress.train import check_student

    cfg = step.config
    src = run.variants.get(step.source)
    teacher_config = None
    if src is not None and cfg.needs_teacher and (src.path / "config.json").exists():  # else made by a later step
        check_qa_config(src.path)
        teacher_config = AutoConfig.from_pretrained(src.path)
    elif cfg.needs_teacher:
        return
    try:
        check_student(cfg, teacher_config)
    except EdgeQAError as e:
        raise EdgeQAError(f"{run.recipe.path}:{step.line}: {e}") from e
    if not Path(cfg.train.data).exists():
        raise EdgeQAError(f"{run.recipe.path}:{step.line}: training data {cfg.train.data} does not exist")


def _check_magnitude_layers(config, step: PruneStep) -> None:
    import torch
    from transformers import AutoModelForQuestionAnswering

    from edgeqa.compress.prune import block_of, check_pattern, prunable_linears

    pcfg = step.prune
    with torch.device("meta"):  # shapes without weights
        skeleton = AutoModelForQuestionAnswering.from_config(config)
    layers = prunable_linears(skeleton, pcfg.include, pcfg.exclude)
    if pcfg.backend == "neural-compressor":
        check_pattern(layers, pcfg.pattern)
    if pcfg.refit:
        for name in layers:
            block_of(name)


def check_prune(run: Run, step: PruneStep) -> None:
    """What the source model's config can tell before any work: its type, and whether pruning empties a layer."""
    from transformers import AutoConfig

    src = run.variants.get(step.source)
    if src is None or not (src.path / "config.json").exists():
        return  # made by an earlier step of this run: checked when it exists
    pcfg = step.prune
    try:
        config = AutoConfig.from_pretrained(src.path)
    except Exception as e:
        raise EdgeQAError(f"{src.path}: cannot read the model config: {e}") from e
    where = f"{run.recipe.path}:{step.line}"
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
    if step.recovery is None and pcfg.backend == "neural-compressor":
        raise EdgeQAError(f"{where}: neural-compressor prunes during training; give train and stages")
    if step.recovery is None and pcfg.needs_data and step.data is None:
        why = "gradient importance measures the loss" if pcfg.ranks_by_gradient else "refit fits the kept weights"
        raise EdgeQAError(f"{where}: {why} on training data; give train: {{data: ...}}")
    if pcfg.method == "magnitude":
        try:
            _check_magnitude_layers(config, step)
        except EdgeQAError as e:
            raise EdgeQAError(f"{where}: {e}") from e


def _train_once(run: Run, step, settings: dict, train: Callable[[], Path], work: Path,
                record: Callable[[Path], None] | None = None) -> None:  # fmt: skip
    """Every data-parallel process trains; the first then copies the result and its logs into the step's folder."""

    def make(out: Path) -> None:
        best = train()
        with atomic_dir(out) as tmp:
            shutil.copytree(best, tmp, dirs_exist_ok=True)
            for name in ("training.json", "train_log.jsonl"):
                shutil.copy2(work / name, tmp / name)
            if record is not None:
                record(tmp)

    if is_main_process():
        make_once(run.model_dir(step.name), step.kind, settings, make)
    elif not (run.model_dir(step.name) / "step.json").exists():
        train()
    run.add(step.name)


def step_distill(run: Run, step: DistillStep) -> None:
    """Train a student from the `from` variant (the teacher) into a transformers QA folder."""
    from edgeqa.compress.train import distill

    src = run.source(step.source)
    work = run.root / "work" / step.name
    teacher = src.path if step.config.needs_teacher else None

    def train() -> Path:
        return distill(step.config, teacher, work, run.recipe.eval.data, cache_root=run.cache_root)

    _train_once(run, step, {"from": str(src.path), **step.config.to_dict()}, train, work)


def _prune_record(step: PruneStep, source: Path, summary: dict) -> Callable[[Path], None]:
    """Writes prune.json into a pruned folder: the sparsity it has and, for structured pruning, what is left."""

    def record(folder: Path) -> None:
        from edgeqa.bench.engines import load_torch_qa_model
        from edgeqa.compress.prune import sparsity_report

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
        write_json(folder / "prune.json", report)

    return record


def _prune_without_recovery(run: Run, step: PruneStep, source: Path) -> None:
    """Prune at once; `train: {data}` only feeds gradient importance or refits."""
    from edgeqa.bench.engines import load_tokenizer, load_torch_qa_model
    from edgeqa.compress.prune import bake_masks, prune_now
    from edgeqa.compress.student import save_student

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


def step_prune(run: Run, step: PruneStep) -> None:
    """Prune the `from` variant; with stages, recover by distillation from `teacher` (default: the recipe's model)."""
    from edgeqa.compress.prune import pruning_hooks
    from edgeqa.compress.train import distill

    src = run.source(step.source)
    if step.recovery is None:
        _prune_without_recovery(run, step, src.path)
        return
    teacher = run.source(step.teacher)
    cfg = recovery_for(step, src.path)
    hooks = pruning_hooks(step.prune)
    work = run.root / "work" / step.name

    def train() -> Path:
        teacher_path = teacher.path if cfg.needs_teacher else None
        return distill(cfg, teacher_path, work, run.recipe.eval.data, run.cache_root, hooks=hooks)

    settings = {"from": str(src.path), "teacher": str(teacher.path), **step.prune.to_dict(), **cfg.to_dict()}
    summary = {"recovery": {"teacher": str(teacher.path), **cfg.to_dict()}}
    _train_once(run, step, settings, train, work, _prune_record(step, src.path, summary))
