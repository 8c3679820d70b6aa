"""What a running recipe knows: its settings, its folder, and the variants made so far."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeqa.bench.engines import weight_files
from edgeqa.bench.squad import load_squad
from edgeqa.pipeline.records import made_id
from edgeqa.pipeline.step import BASE_VARIANT

if TYPE_CHECKING:
    from edgeqa.pipeline.recipe import Recipe


@dataclass(frozen=True)
class Variant:
    name: str
    path: Path
    torch_int8: bool = False  # PyTorch dynamic int8 applied at load: a variant without an artefact of its own
    given: bool = False  # a model the caller names by path (`edgeqa report`), not the recipe's nor a step's

    @property
    def made(self) -> str | None:
        """What its scores and timings are cached against: the identity of the step that made it; for a given model
        no step made, its weight files' names, sizes and times (replaced in place, it is measured again)."""
        made = made_id(self.path)
        if made is None and self.given:
            return "files " + " ".join(
                f"{f.name} {f.stat().st_size} {f.stat().st_mtime_ns}" for f in weight_files(self.path)
            )
        return made


@dataclass
class RecipeRun:
    recipe: Recipe
    root: Path
    variants: dict[str, Variant] = field(default_factory=dict)
    benched: list[str] = field(default_factory=list)
    retime: bool = False  # time the bench steps again though their timings are cached (a busy machine's)
    placed: dict[str, Path] = field(default_factory=dict)  # made variants the caller puts elsewhere than models/
    choices: list[dict[str, Any]] = field(default_factory=list)  # a targets step's shapes, for the report

    def model_dir(self, name: str) -> Path:
        return self.placed.get(name, self.root / "models" / name)

    def source(self, name: str) -> Variant:
        return self.variants[name]

    def add(self, name: str, torch_int8: bool = False, path: Path | None = None) -> None:
        self.variants[name] = Variant(name, path or self.model_dir(name), torch_int8)

    @property
    def cache_root(self) -> Path:
        """Teacher outputs shared by every recipe run under the same parent folder."""
        return self.root.parent / "cache"

    def parity(self) -> dict[str, Any]:
        """The parity settings every model-making step passes to its exporter or quantizer."""
        p = self.recipe.parity
        return {"parity_examples": self.parity_examples, "tolerance": p.tolerance,
                "min_same_answer_share": p.min_same_answer_share, "qa_cfg": self.recipe.qa}  # fmt: skip

    @functools.cached_property
    def parity_examples(self):
        """The questions every model-making step checks parity on, read once per run (None: no parity check)."""
        if not self.recipe.eval.data or not self.recipe.parity.limit:
            return None
        return load_squad(self.recipe.eval.data, self.recipe.parity.limit).examples


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def base_variant(recipe: Recipe) -> Variant:
    return Variant(BASE_VARIANT, Path(recipe.model))
