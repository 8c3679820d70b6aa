"""A recipe step kind: one frozen dataclass whose fields are the step's recipe keys, registered once.

    @register_step
    @dataclass(frozen=True, kw_only=True)
    class FuseStep(MadeStep):
        kind: ClassVar[str] = "fuse"
        fusions: tuple[str, ...] = FUSIONS

        def identity(self, run): ...   # what step.json records and compares: the same identity is made once
        def describe(self, run): ...   # what it made, in one line, kept in step.json beside the identity
        def make(self, run, out): ...  # write the model into `out` (a staging folder, renamed into place)

The recipe parser takes a step's allowed keys, its parsing and its reference checks from here, and `run_recipe`
calls its `check` (before any work) and `run`; adding a step kind is one module in `pipeline/steps/` plus its test.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgeqa.bench.qa import QAConfig
from edgeqa.pipeline.records import make_once

if TYPE_CHECKING:
    from edgeqa.pipeline.context import RecipeRun

BASE_VARIANT = "pytorch-fp32"  # the recipe's model itself
NAME = re.compile(r"[A-Za-z0-9._-]+")
STEP_KINDS: dict[str, type[Step]] = {}


def register_step(cls: type[Step]) -> type[Step]:
    if cls.kind in STEP_KINDS:
        raise ValueError(f"step kind {cls.kind!r} is registered twice")
    STEP_KINDS[cls.kind] = cls
    return cls


def window_identity(qa: QAConfig) -> dict[str, Any]:
    """The QA window as part of a model's identity where windows shape the model (calibration, pruning data); the
    default window is left out, so models made before the recipe's `qa:` section keep their identity."""
    return {} if qa == QAConfig() else {"qa": qa.to_dict()}


@dataclass(frozen=True, kw_only=True)
class Step:
    """What every step has: its kind and the recipe line it was written on (for errors)."""

    kind: ClassVar[str]
    line: int

    @classmethod
    def keys(cls) -> set[str]:
        """The recipe keys the step takes: its fields, `source` spelled `from` as in the recipe."""
        return {"from" if f.name == "source" else f.name for f in dataclasses.fields(cls) if f.name != "line"}

    @classmethod
    def parse(cls, raw: dict[str, Any], line: int, qa: QAConfig) -> Step:
        """The step from its recipe settings; lists become tuples. A kind with settings of its own overrides this."""
        values = {("source" if k == "from" else k): tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        return cls(line=line, **values)

    def references(self) -> list[str]:
        """The variants the step reads besides its source, which earlier steps must make."""
        return []

    def made_names(self) -> list[str]:
        """The variants a step that is not one MadeStep makes (a `targets` step), which later steps may name."""
        return []

    def making(self, names: tuple[str, ...]) -> Step | None:
        """Such a step cut down to making the named variants (`--only`), or None when it makes none of them."""
        return None

    def check(self, run: RecipeRun) -> None:
        """Fail a bad step against what exists before any step runs (a source made by a later step is not there)."""

    def run(self, run: RecipeRun) -> None:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class MadeStep(Step):
    """A step that makes a model variant, `name`, from another, `source`, once per identity."""

    name: str | None = None
    source: str = BASE_VARIANT

    def identity(self, run: RecipeRun) -> dict[str, Any]:
        return {"from": str(run.source(self.source).path)}

    def describe(self, run: RecipeRun) -> str:
        """What the step made, in one line, kept in its step.json (`description`) for a reader of the folder."""
        return f"{self.kind} of {self.source}"

    def make(self, run: RecipeRun, out: Path) -> None:
        raise NotImplementedError

    def remade_when_machine_differs(self, run: RecipeRun) -> bool:
        """Whether the identity holds a setting the machine chose (remade, not refused, when it changes)."""
        return False

    def run(self, run: RecipeRun) -> None:
        make_once(run.model_dir(self.name), self.kind, self.identity(run), lambda out: self.make(run, out),
                  remake_on_change=self.remade_when_machine_differs(run), description=self.describe(run))  # fmt: skip
        run.add(self.name)
