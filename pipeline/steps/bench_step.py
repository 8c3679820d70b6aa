"""`bench`: score every variant on the recipe's dev data, then time them all side by side (at fixed shapes, and per
question on a sample of the same dev data); both cached per variant identity and settings, so a rerun measures only
what changed."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from edgeqa.bench.engines import answers_depend_on_batch
from edgeqa.bench.evaluate import evaluate
from edgeqa.bench.files import read_json, write_json
from edgeqa.bench.latency import benchmark_interleaved
from edgeqa.pipeline.context import RecipeRun, Variant
from edgeqa.pipeline.records import same_settings
from edgeqa.pipeline.step import Step, register_step

log = logging.getLogger(__name__)


def _score(run: RecipeRun, name: str, v: Variant) -> None:
    r = run.recipe
    eval_dir = run.root / "eval" / name
    made = v.made
    batch_size = r.eval.dynamic_int8_batch_size if answers_depend_on_batch(v.path, v.torch_int8) else r.eval.batch_size
    key = {"data": r.eval.data, "limit": r.eval.limit, "model": str(v.path), "made": made, "batch_size": batch_size,
           "settings": r.qa.to_dict()}  # fmt: skip
    metrics_path = eval_dir / "metrics.json"
    if metrics_path.exists():
        cached = read_json(metrics_path)
        if same_settings({k: cached.get(k) for k in key}, key, paths=("data", "model")):
            return
    log.info("scoring %s on %s at batch %d", name, r.eval.data, batch_size)
    metrics = evaluate(v.path, r.eval.data, r.eval.limit, torch_int8=v.torch_int8, cfg=r.qa, batch_size=batch_size,
                       threads=r.bench.threads, out_dir=eval_dir)  # fmt: skip
    write_json(metrics_path, {**metrics, "made": made})


def bench_path(run: RecipeRun, name: str) -> Path:
    return run.root / "bench" / f"{name}.json"


@register_step
@dataclass(frozen=True, kw_only=True)
class BenchStep(Step):
    kind: ClassVar[str] = "bench"
    variants: tuple[str, ...] = ()  # empty: every variant made so far

    def references(self) -> list[str]:
        return list(self.variants)

    def run(self, run: RecipeRun) -> None:
        """Score each variant, then time all of them in interleaved passes."""
        names = list(self.variants) or list(run.variants)
        for name in names:
            _score(run, name, run.variants[name])

        def settings(name: str) -> dict:
            return dataclasses.replace(run.recipe.bench, torch_int8=run.variants[name].torch_int8).to_dict()

        r = run.recipe
        # The questions timed per question: which file, cut into which windows (none when the setting is 0).
        asked = {"data": r.eval.data, "qa": r.qa.to_dict()} if r.bench.questions else None

        def timed(name: str) -> bool:
            if not bench_path(run, name).exists():
                return False
            result = read_json(bench_path(run, name))
            same = result.get("settings") == settings(name) and result.get("made") == run.variants[name].made
            return same and same_settings(result.get("questions_from") or {}, asked or {}, paths=("data",))

        # Speed-ups are only true side by side: if one variant needs timing, all of this step's variants are timed
        # again, together, in interleaved passes.
        if run.retime or not all(timed(name) for name in names):
            todo = {name: (run.variants[name].path, run.variants[name].torch_int8) for name in names}
            benchmark_interleaved(
                todo,
                r.bench,
                done=lambda name, result: write_json(
                    bench_path(run, name), {**result, "made": run.variants[name].made, "questions_from": asked}
                ),  # fmt: skip
                data=r.eval.data if asked else None,
                qa=r.qa,
            )
        run.benched.extend(n for n in names if n not in run.benched)
