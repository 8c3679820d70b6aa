"""`distill`: train a student from the `from` variant (its teacher) into a transformers QA folder; every process of a
data-parallel run trains, the first then files the result."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from edgeqa.bench.engines import check_qa_config
from edgeqa.bench.files import EdgeQAError, atomic_dir
from edgeqa.bench.qa import QAConfig
from edgeqa.pipeline.context import RecipeRun, is_main_process
from edgeqa.pipeline.records import make_once
from edgeqa.pipeline.step import MadeStep, register_step


def _with_window(train: dict[str, Any], qa: QAConfig) -> dict[str, Any]:
    """Training settings with the recipe's QA window: one window for training, pruning data, calibration and scoring."""
    for key in ("max_length", "doc_stride"):
        if key in train and train[key] != getattr(qa, key):
            raise EdgeQAError(f"train.{key} is {train[key]} but the recipe's qa.{key} is {getattr(qa, key)}; "
                              "set the window once, in the recipe's qa: section")  # fmt: skip
    return {**train, "max_length": qa.max_length, "doc_stride": qa.doc_stride}


def distill_config(raw: dict[str, Any], qa: QAConfig, student: dict[str, Any] | None = None):
    """The recipe's training settings as compress's DistillConfig (which pulls in torch, so it is read here)."""
    from edgeqa.compress.train_config import DistillConfig

    raw = {k: v for k, v in raw.items() if k not in ("name", "from")}
    if "train" in raw:
        raw["train"] = _with_window(dict(raw["train"] or {}), qa)
    if student is not None:
        raw["student"] = student
    return DistillConfig.from_dict(raw)


def train_once(run: RecipeRun, step: MadeStep, settings: dict, train: Callable[[], Path], work: Path,
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
        make_once(run.model_dir(step.name), step.kind, settings, make, description=step.describe(run))
    elif not (run.model_dir(step.name) / "step.json").exists():
        train()
    run.add(step.name)


@register_step
@dataclass(frozen=True, kw_only=True)
class DistillStep(MadeStep):
    kind: ClassVar[str] = "distill"
    config: Any  # compress.train_config.DistillConfig

    @classmethod
    def keys(cls) -> set[str]:
        return {"name", "from", "student", "train", "loss", "stages"}

    @classmethod
    def parse(cls, raw: dict[str, Any], line: int, qa: QAConfig) -> DistillStep:
        return cls(line=line, name=raw.get("name"), source=raw.get("from", cls.source), config=distill_config(raw, qa))

    def check(self, run: RecipeRun) -> None:
        """Student shape and layer maps against the teacher's config."""
        from transformers import AutoConfig

        from edgeqa.compress.train import check_student

        cfg = self.config
        src = run.variants.get(self.source)
        teacher_config = None
        if src is not None and cfg.needs_teacher and (src.path / "config.json").exists():  # else made by a later step
            check_qa_config(src.path)
            teacher_config = AutoConfig.from_pretrained(src.path)
        elif cfg.needs_teacher:
            return
        try:
            check_student(cfg, teacher_config)
        except EdgeQAError as e:
            raise EdgeQAError(f"{run.recipe.path}:{self.line}: {e}") from e
        if not Path(cfg.train.data).exists():
            raise EdgeQAError(f"{run.recipe.path}:{self.line}: training data {cfg.train.data} does not exist")

    def describe(self, run: RecipeRun) -> str:
        student = self.config.student
        layers = student.num_hidden_layers or "the teacher's number of"
        shape = (f"from {student.pretrained}" if student.pretrained else
                 f"of teacher layers {list(student.layers)}" if student.layers else f"of {layers} layers")  # fmt: skip
        losses = " then ".join("+".join(s.loss.terms) for s in self.config.stages)
        how = f"distilled from {self.source}" if self.config.needs_teacher else "trained on labels alone"
        return f"student {shape}, {how} ({losses})"

    def run(self, run: RecipeRun) -> None:
        from edgeqa.compress.train import distill

        src = run.source(self.source)
        work = run.root / "work" / self.name
        teacher = src.path if self.config.needs_teacher else None

        def train() -> Path:
            return distill(self.config, teacher, work, run.recipe.eval.data, cache_root=run.cache_root)

        train_once(run, self, {"from": str(src.path), **self.config.to_dict()}, train, work)
