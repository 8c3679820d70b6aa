"""`fuse`: ONNX Runtime's transformer fusions (attention, skip layer norm, GELU), checked against the unfused graph."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.qa import QAConfig
from edgeqa.export.optimize import FUSIONS, fuse
from edgeqa.pipeline.context import RecipeRun
from edgeqa.pipeline.step import MadeStep, register_step


@register_step
@dataclass(frozen=True, kw_only=True)
class FuseStep(MadeStep):
    kind: ClassVar[str] = "fuse"
    fusions: tuple[str, ...] = FUSIONS

    @classmethod
    def parse(cls, raw: dict[str, Any], line: int, qa: QAConfig) -> FuseStep:
        step = super().parse(raw, line, qa)
        if set(step.fusions) - set(FUSIONS):
            raise EdgeQAError(f"unknown fusion(s) in {list(step.fusions)}; choose from {', '.join(FUSIONS)}")
        return step

    def identity(self, run: RecipeRun) -> dict[str, Any]:
        return {**super().identity(run), "fusions": list(self.fusions)}

    def describe(self, run: RecipeRun) -> str:
        return f"ONNX Runtime's {', '.join(self.fusions)} fusions of {self.source}"

    def make(self, run: RecipeRun, out: Path) -> None:
        fuse(run.source(self.source).path, out, fusions=self.fusions, **run.parity())
