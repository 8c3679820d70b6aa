"""`torch_int8`: PyTorch dynamic int8 of nn.Linear, applied at load; a variant without an artefact of its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from edgeqa.bench.files import EdgeQAError
from edgeqa.pipeline.context import RecipeRun
from edgeqa.pipeline.step import MadeStep, register_step


@register_step
@dataclass(frozen=True, kw_only=True)
class TorchInt8Step(MadeStep):
    kind: ClassVar[str] = "torch_int8"

    def run(self, run: RecipeRun) -> None:
        src = run.source(self.source)
        if src.torch_int8 or (src.path / "model.onnx").exists():
            raise EdgeQAError(f"{run.recipe.path}:{self.line}: torch_int8 needs a PyTorch fp32 variant as 'from'")
        run.add(self.name, torch_int8=True, path=src.path)
