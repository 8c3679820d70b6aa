"""`export`: a PyTorch QA folder to ONNX, checked against PyTorch on the recipe's parity questions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.qa import QAConfig
from edgeqa.export.onnx import MIN_OPSET, export_onnx
from edgeqa.pipeline.context import RecipeRun
from edgeqa.pipeline.step import MadeStep, register_step


@register_step
@dataclass(frozen=True, kw_only=True)
class ExportStep(MadeStep):
    kind: ClassVar[str] = "export"
    opset: int = 17

    @classmethod
    def parse(cls, raw: dict[str, Any], line: int, qa: QAConfig) -> ExportStep:
        step = super().parse(raw, line, qa)
        if not isinstance(step.opset, int) or isinstance(step.opset, bool) or step.opset < MIN_OPSET:
            raise EdgeQAError(f"export opset must be a whole number >= {MIN_OPSET}, got {step.opset!r}")
        return step

    def identity(self, run: RecipeRun) -> dict[str, Any]:
        return {**super().identity(run), "opset": self.opset}

    def describe(self, run: RecipeRun) -> str:
        return f"ONNX export of {self.source} at opset {self.opset}, checked against PyTorch"

    def make(self, run: RecipeRun, out: Path) -> None:
        export_onnx(run.source(self.source).path, out, self.opset, **run.parity())
