"""`report`: the latency-accuracy report of the benched variants (JSON, Markdown, a Pareto plot), with targets."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from edgeqa.bench.files import EdgeQAError, read_json
from edgeqa.bench.qa import QAConfig
from edgeqa.bench.report import write_report
from edgeqa.bench.targets import TARGET_FORM, TARGET_KEYS, Target
from edgeqa.pipeline.context import RecipeRun
from edgeqa.pipeline.rows import assemble_report, eval_info, report_row, target_results, weight_stats_cached
from edgeqa.pipeline.step import BASE_VARIANT, Step, register_step

log = logging.getLogger(__name__)


@register_step
@dataclass(frozen=True, kw_only=True)
class ReportStep(Step):
    kind: ClassVar[str] = "report"
    reference: str | None = None
    variants: tuple[str, ...] = ()  # empty: every variant benched so far
    targets: tuple[Target, ...] = ()  # speed-ups at shares of the reference's F1 (fixed shape or per question)
    notes: tuple[str, ...] = ()  # the author's word in the report: what was tried for a missed target

    @classmethod
    def parse(cls, raw: dict[str, Any], line: int, qa: QAConfig) -> ReportStep:
        targets = raw.get("targets") or []
        notes = raw.get("notes") or []
        if not isinstance(targets, list) or not all(isinstance(t, dict) and set(t) <= TARGET_KEYS for t in targets):
            raise EdgeQAError(f"report targets must be a list of {TARGET_FORM}")
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise EdgeQAError("report notes must be a list of strings")
        return cls(line=line, reference=raw.get("reference"), variants=tuple(raw.get("variants", ())),
                   targets=tuple(Target(**t) for t in targets), notes=tuple(notes))  # fmt: skip

    def references(self) -> list[str]:
        return [*self.variants, *([self.reference] if self.reference else [])]

    def run(self, run: RecipeRun) -> None:
        names = list(self.variants) or run.benched
        missing = [n for n in names if not (run.root / "bench" / f"{n}.json").exists()]
        if missing:
            raise EdgeQAError(
                f"{run.recipe.path}:{self.line}: report needs a bench step for {', '.join(missing)} first"
            )
        rows, bench = [], {}
        for name in names:
            v = run.variants[name]
            metrics = read_json(run.root / "eval" / name / "metrics.json")
            bench[name] = read_json(run.root / "bench" / f"{name}.json")
            weights = weight_stats_cached(v.path, run.root / "bench" / f"{name}.weights.json")
            rows.append(report_row(name, v.path, v.torch_int8, metrics, bench[name], weights))
        first_metrics = read_json(run.root / "eval" / names[0] / "metrics.json")
        reference = self.reference or (BASE_VARIANT if BASE_VARIANT in names else names[0])
        info = eval_info(run.recipe.eval.data, run.recipe.eval.limit, first_metrics)
        report = assemble_report(run.recipe.name, rows, reference, info, bench[names[0]], self.targets, self.notes)
        if run.choices:  # a targets step chose the shapes of some of these models
            report["choices"] = target_results(run.choices, report["rows"], reference)
        for path in write_report(report, run.root):
            log.info("wrote %s", path)
        for warning in report["warnings"]:
            log.warning("report %s: %s", run.recipe.name, warning)
