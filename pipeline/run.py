"""`run_recipe`: execute a recipe's steps in order into runs/<name>/, resuming whatever an earlier run completed."""

from __future__ import annotations

import logging
from pathlib import Path

from edgeqa.bench.engines import resolve_model
from edgeqa.bench.files import EdgeQAError, check_writable_dir, remove_stale_temporaries, write_json
from edgeqa.pipeline.context import RecipeRun, Variant, base_variant, is_main_process
from edgeqa.pipeline.recipe import Recipe, load_recipe
from edgeqa.pipeline.step import MadeStep, Step

log = logging.getLogger(__name__)


def _check_inputs(recipe: Recipe) -> None:
    backend, _, _ = resolve_model(recipe.model)
    if backend != "torch":
        raise EdgeQAError(f"{recipe.model}: a recipe's model is a transformers PyTorch QA folder")
    for data in filter(None, (recipe.eval.data, recipe.calibration_data)):
        if not Path(data).exists():
            raise EdgeQAError(f"{recipe.path}: data file {data} does not exist")


def steps_making(recipe: Recipe, names: tuple[str, ...]) -> tuple[Step, ...]:
    """The steps that make the named variants and everything they are made from (sources and teachers), in recipe
    order: one part of a recipe, runnable on its own and reused by the whole run later."""
    by_name = {s.name: s for s in recipe.steps if isinstance(s, MadeStep)}
    parts = {id(s): part for s in recipe.steps if (part := s.making(names)) is not None}  # a targets step's targets
    made = {n for part in parts.values() for n in part.made_names()}
    unknown = [n for n in names if n not in by_name and n not in made]
    if unknown:
        every = [*by_name, *(n for s in recipe.steps for n in s.made_names())]
        raise EdgeQAError(f"{recipe.path}: no step makes {', '.join(unknown)} (it makes {', '.join(every)})")
    needed, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in by_name and name not in needed:
            needed.add(name)
            todo += [by_name[name].source, *by_name[name].references()]
    return tuple(parts.get(id(s), s) for s in recipe.steps
                 if (isinstance(s, MadeStep) and s.name in needed) or id(s) in parts)  # fmt: skip


def run_recipe(
    path: str | Path,
    out_root: str | Path = "runs",
    shared: str | Path | None = None,
    until: str | None = None,
    retime: bool = False,
    only: tuple[str, ...] = (),
) -> Path:
    """Execute a recipe into out_root/<name>/, resuming whatever an earlier run of it completed.

    `until="distill"` stops after the last distill step (`edgeqa distill`). `only` makes just the named variants
    and what they are made from, without bench or report steps. `retime` times every bench step again, for a
    report whose timings were flagged. Under torchrun every process runs the distill steps together; all other
    steps run in the first process only.
    """
    recipe = load_recipe(path, shared)
    _check_inputs(recipe)
    steps = steps_making(recipe, tuple(only)) if only else recipe.steps
    if until is not None:
        last = max((i for i, s in enumerate(steps) if s.kind == until), default=None)
        if last is None:
            raise EdgeQAError(f"{recipe.path}: the recipe has no {until} step")
        steps = steps[: last + 1]
    root = check_writable_dir(Path(out_root) / recipe.name)
    base = base_variant(recipe)
    run = RecipeRun(recipe, root, {base.name: base}, retime=retime)
    _check_steps(run, steps)
    if is_main_process():
        for folder in (root, run.cache_root):  # what killed runs were writing: this run writes it anew
            remove_stale_temporaries(folder)
        write_json(root / "recipe.json", {"path": str(recipe.path), "text": recipe.path.read_text(encoding="utf-8")})
    _run_steps(run, steps)
    return root


def run_in_memory(
    recipe: Recipe, root: Path, given: dict[str, Path], placed: dict[str, Path] | None = None
) -> RecipeRun:
    """Run a recipe built in memory on models given by path, each made model where `placed` puts it (else under
    root/models/): how `edgeqa export`, `quantize` and `report` and the Python API make, record and cache exactly as
    `edgeqa run` does, through the same step kinds."""
    run = RecipeRun(recipe, root, {name: Variant(name, Path(path), given=True) for name, path in given.items()},
                    placed=dict(placed or {}))  # fmt: skip
    _check_steps(run, recipe.steps)
    _run_steps(run, recipe.steps, logging.DEBUG)  # one verb's steps: its own output says what it did
    return run


def _check_steps(run: RecipeRun, steps: tuple[Step, ...]) -> None:
    """Every check before any work; later checks see the variants earlier steps will make."""
    given = dict(run.variants)
    for step in steps:
        step.check(run)
        if isinstance(step, MadeStep) and step.name not in run.variants:
            run.add(step.name)
    run.variants = given


def _run_steps(run: RecipeRun, steps: tuple[Step, ...], level: int = logging.INFO) -> None:
    for i, step in enumerate(steps, 1):
        if step.kind != "distill" and not is_main_process():
            continue
        log.log(level, "step %d/%d: %s %s", i, len(steps), step.kind, getattr(step, "name", ""))
        step.run(run)
