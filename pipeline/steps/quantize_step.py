"""`quantize`: ONNX int8, dynamic or static (calibrated on the recipe's calibration data), from a preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.qa import QAConfig
from edgeqa.export.quantize import AUTO, QuantizeConfig, preset, preset_record, quantize
from edgeqa.pipeline.context import RecipeRun
from edgeqa.pipeline.step import MadeStep, register_step, window_identity

QUANTIZE_KEYS = {f.name for f in dataclasses.fields(QuantizeConfig)}


@register_step
@dataclass(frozen=True, kw_only=True)
class QuantizeStep(MadeStep):
    kind: ClassVar[str] = "quantize"
    preset: str | None = AUTO  # None: `config` as given, no preset under it (the Python API's QuantizeConfig)
    config: QuantizeConfig  # the step's settings over its preset's

    @classmethod
    def keys(cls) -> set[str]:
        return {"name", "from", "preset"} | QUANTIZE_KEYS

    @classmethod
    def parse(cls, raw: dict[str, Any], line: int, qa: QAConfig) -> QuantizeStep:
        asked = raw.get("preset", AUTO)
        config = preset(asked, **{k: v for k, v in raw.items() if k in QUANTIZE_KEYS})
        return cls(line=line, name=raw.get("name"), source=raw.get("from", cls.source), preset=asked, config=config)

    def check(self, run: RecipeRun) -> None:
        if self.config.mode == "static" and not run.recipe.calibration_data:
            raise EdgeQAError(
                f"{run.recipe.path}:{self.line}: static quantization needs calibration.data in the recipe"
            )

    def identity(self, run: RecipeRun) -> dict[str, Any]:
        # The preset chosen, not "auto", is the identity: the same recipe on another machine class makes another model.
        settings = {**super().identity(run), **self.config.to_dict()}
        if self.preset is not None:
            settings["preset"] = preset_record(self.preset)["chosen"]
        if self.config.mode == "static":
            settings.update(window_identity(run.recipe.qa))
        return settings

    def describe(self, run: RecipeRun) -> str:
        how = f"preset {preset_record(self.preset)['description']}" if self.preset is not None else "settings as given"
        bits = "7-bit" if self.config.reduce_range else "8-bit"
        return f"{self.config.mode} int8 of {self.source} ({bits} weights, {how})"

    def remade_when_machine_differs(self, run: RecipeRun) -> bool:
        return self.preset == AUTO

    def make(self, run: RecipeRun, out: Path) -> None:
        quantize(run.source(self.source).path, out, self.config, run.recipe.calibration_data, qa_cfg=run.recipe.qa,
                 parity_examples=run.parity_examples,
                 preset_info=preset_record(self.preset) if self.preset is not None else None)  # fmt: skip
