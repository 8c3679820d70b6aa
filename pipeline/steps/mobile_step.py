"""`mobile`: ONNX Runtime's mobile format (.ort), with one question answered by the converted model as a smoke test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from edgeqa.bench.engines import load_qa_model
from edgeqa.bench.files import write_json
from edgeqa.bench.squad import load_squad
from edgeqa.export.mobile import convert_to_ort
from edgeqa.pipeline.context import RecipeRun
from edgeqa.pipeline.step import MadeStep, register_step


@register_step
@dataclass(frozen=True, kw_only=True)
class MobileStep(MadeStep):
    kind: ClassVar[str] = "mobile"

    def describe(self, run: RecipeRun) -> str:
        return f"ONNX Runtime's mobile format (.ort) of {self.source}"

    def make(self, run: RecipeRun, out: Path) -> None:
        convert_to_ort(run.source(self.source).path, out)
        example = load_squad(run.recipe.eval.data, 1).examples[0]
        model = load_qa_model(out, run.recipe.bench.threads)
        answer = model.answer([example], run.recipe.qa, progress=False)[example.id]
        write_json(out / "smoke.json", {"question": example.question, "answer": answer.text, "gold": example.answers})
