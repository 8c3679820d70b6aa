"""A recipe parsed once: the YAML file's sections and steps become typed, validated configs before any work starts.

    name: quickstart
    model: ${shared}/models/minilm-l6-h384-squad1
    qa: {max_length: 384, doc_stride: 128}
    eval: {data: ${shared}/data/squad/dev-v1.1.json.gz, limit: 1000}
    calibration: {data: ${shared}/data/squad/train-v1.1.rebuilt.json.gz}
    bench: {threads: 2, batch_sizes: [1], seq_lens: [384, 128]}
    steps:
      - export: {name: onnx-fp32}
      - quantize: {name: onnx-int8, from: onnx-fp32, preset: auto}
      - bench: {}
      - report: {reference: pytorch-fp32}

`qa:` is the one place for the question-answering windows and span search: training, pruning data, calibration,
parity checks and scoring all use it. Unknown keys and steps are errors that name the file and the line.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import edgeqa.pipeline.steps  # noqa: F401  (registers every step kind)
from edgeqa.bench.files import EdgeQAError, check_field_types, known_fields
from edgeqa.bench.latency import LatencyConfig
from edgeqa.bench.qa import QAConfig
from edgeqa.pipeline.step import BASE_VARIANT, NAME, STEP_KINDS, MadeStep, Step
from edgeqa.pipeline.yamlfile import Mapping, check_keys, expand, read_yaml

# --- the recipe's sections ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSettings:
    data: str
    limit: int | None = None
    batch_size: int = 32
    # Dynamic int8 scales activations per batch, so its answers depend on the windows batched together: such models
    # are scored as they are deployed, one question at a time, unless the recipe says otherwise.
    dynamic_int8_batch_size: int = 1

    def __post_init__(self) -> None:
        for key in ("limit", "batch_size", "dynamic_int8_batch_size"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise EdgeQAError(f"eval.{key} must be a positive whole number, got {value!r}")
        check_field_types(self, "eval")


@dataclass(frozen=True)
class ParitySettings:
    limit: int = 200
    tolerance: float = 1e-3
    min_same_answer_share: float = 0.995

    def __post_init__(self) -> None:
        if not isinstance(self.limit, int) or isinstance(self.limit, bool) or self.limit < 0:
            raise EdgeQAError(f"parity.limit must be a whole number >= 0, got {self.limit!r}")
        if not isinstance(self.tolerance, int | float) or self.tolerance <= 0:
            raise EdgeQAError(f"parity.tolerance must be a positive number, got {self.tolerance!r}")
        share = self.min_same_answer_share
        if not isinstance(share, int | float) or isinstance(share, bool) or not 0 <= share <= 1:
            raise EdgeQAError(f"parity.min_same_answer_share must be in [0, 1], got {self.min_same_answer_share!r}")


@dataclass(frozen=True)
class Recipe:
    path: Path
    name: str
    model: str
    eval: EvalSettings
    qa: QAConfig = QAConfig()
    parity: ParitySettings = ParitySettings()
    calibration_data: str | None = None
    bench: LatencyConfig = LatencyConfig()
    steps: tuple[Step, ...] = field(default_factory=tuple)


# --- parsing --------------------------------------------------------------------------------------------------

SECTION_KEYS = {
    "qa": {"max_length", "doc_stride", "n_best", "max_answer_length"},
    "eval": {f.name for f in dataclasses.fields(EvalSettings)},
    "calibration": {"data"},
    "parity": {f.name for f in dataclasses.fields(ParitySettings)},
    "bench": {f.name for f in dataclasses.fields(LatencyConfig)} - {"torch_int8"},
}
TOP_KEYS = {"name", "model", "steps"} | set(SECTION_KEYS)


def _sections(path: Path, doc: Mapping) -> dict[str, dict[str, Any]]:
    sections = {}
    for section, allowed in SECTION_KEYS.items():
        value = doc.get(section, Mapping())
        if not isinstance(value, dict):
            raise EdgeQAError(f"{path}:{doc.key_lines[section]}: {section!r} should be a mapping")
        if isinstance(value, Mapping) and value:
            check_keys(path, value, allowed, section)
        sections[section] = dict(value)
    if "data" not in sections["eval"]:
        raise EdgeQAError(f"{path}: eval.data (the SQuAD file to score on) is missing")
    return sections


def _make_recipe(path: Path, doc: Mapping) -> Recipe:
    s = _sections(path, doc)
    try:
        qa = QAConfig(**known_fields(QAConfig, s["qa"], "qa"))
        check_field_types(qa, "qa")
        return Recipe(
            path=path,
            name=str(doc["name"]),
            model=str(doc["model"]),
            eval=EvalSettings(**s["eval"]),
            qa=qa,
            parity=ParitySettings(**s["parity"]),
            calibration_data=s["calibration"].get("data"),
            bench=LatencyConfig.from_dict(s["bench"]),
        )
    except (EdgeQAError, TypeError, ValueError) as e:
        raise EdgeQAError(f"{path}: bad setting: {e}") from e


def _check_references(path: Path, step: Step, raw: dict[str, Any], names: set[str], steps: list[Step]) -> None:
    """Names are new and sources, teachers and listed variants exist: each step sees what earlier steps make."""
    where = f"{path}:{step.line}"
    if isinstance(step, MadeStep):
        if not step.name or not NAME.fullmatch(str(step.name)):
            raise EdgeQAError(f"{where}: step {step.kind!r} needs a name of letters, digits, '.', '_', '-'")
        if step.name in names:
            raise EdgeQAError(f"{where}: variant name {step.name!r} is used twice")
        if step.source not in names:
            raise EdgeQAError(f"{where}: step {step.kind!r} takes from {step.source!r}, which no earlier step makes")
    if "teacher" in raw and raw["teacher"] not in names:
        raise EdgeQAError(f"{where}: unknown teacher variant {raw['teacher']!r}")
    for ref in step.references():
        if ref not in names:
            raise EdgeQAError(f"{where}: unknown variant {ref!r} (known so far: {', '.join(sorted(names))})")
    if step.kind == "report" and not any(s.kind == "bench" for s in steps):
        raise EdgeQAError(f"{where}: a report needs a bench step before it (it reports benched variants)")


def load_recipe(path: str | Path, shared: str | Path | None = None) -> Recipe:
    """Parse and validate a recipe; every mistake is reported before any work starts."""
    path = Path(path)
    shared = Path(shared or os.environ.get("EDGEQA_SHARED", "../shared"))
    doc = expand(read_yaml(path), shared)
    check_keys(path, doc, TOP_KEYS, "the recipe")
    for key in ("name", "model", "steps"):
        if key not in doc:
            raise EdgeQAError(f"{path}: the recipe has no {key!r}")
    if not NAME.fullmatch(str(doc["name"])):
        raise EdgeQAError(f"{path}:{doc.key_lines['name']}: name may hold letters, digits, '.', '_' and '-' only")
    recipe = _make_recipe(path, doc)
    if not isinstance(doc["steps"], list) or not doc["steps"]:
        raise EdgeQAError(f"{path}:{doc.key_lines['steps']}: steps should be a non-empty list")
    names, steps = {BASE_VARIANT}, []
    for item in doc["steps"]:
        if not isinstance(item, Mapping) or len(item) != 1:
            line = item.line if isinstance(item, Mapping) else doc.key_lines["steps"]
            raise EdgeQAError(f"{path}:{line}: each step is a mapping with one key, the step kind")
        kind, raw = next(iter(item.items()))
        line = item.key_lines[kind]
        if kind not in STEP_KINDS:
            raise EdgeQAError(f"{path}:{line}: unknown step {kind!r} (known: {', '.join(STEP_KINDS)})")
        raw = raw if raw is not None else Mapping()
        if not isinstance(raw, dict):
            raise EdgeQAError(f"{path}:{line}: the settings of step {kind!r} should be a mapping")
        if isinstance(raw, Mapping) and raw:
            check_keys(path, raw, STEP_KINDS[kind].keys(), f"step {kind!r}")
        try:
            step = STEP_KINDS[kind].parse(dict(raw), line, recipe.qa)
        except (EdgeQAError, TypeError, ValueError) as e:
            raise EdgeQAError(f"{path}:{line}: {e}") from e
        _check_references(path, step, raw, names, steps)
        if isinstance(step, MadeStep):
            names.add(step.name)
        names.update(step.made_names())
        steps.append(step)
    return dataclasses.replace(recipe, steps=tuple(steps))
