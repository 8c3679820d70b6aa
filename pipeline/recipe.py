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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from edgeqa.bench.files import EdgeQAError, check_field_types, known_fields
from edgeqa.bench.latency import LatencyConfig
from edgeqa.bench.qa import QAConfig
from edgeqa.bench.report import Target
from edgeqa.compress.prune import PruneConfig
from edgeqa.export.onnx import MIN_OPSET
from edgeqa.export.optimize import FUSIONS
from edgeqa.export.quantize import AUTO, QuantizeConfig, preset
from edgeqa.pipeline.yamlfile import Mapping, check_keys, expand, read_yaml

BASE_VARIANT = "pytorch-fp32"  # the recipe's model itself
NAME = re.compile(r"[A-Za-z0-9._-]+")


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


# --- the steps, one typed config each -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MadeStep:
    """What every model-making step has: the recipe line, the variant it makes, and the variant it starts from."""

    line: int
    name: str
    source: str = BASE_VARIANT


@dataclass(frozen=True, kw_only=True)
class ExportStep(MadeStep):
    kind: ClassVar[str] = "export"
    opset: int = 17


@dataclass(frozen=True, kw_only=True)
class FuseStep(MadeStep):
    kind: ClassVar[str] = "fuse"
    fusions: tuple[str, ...] = FUSIONS


@dataclass(frozen=True, kw_only=True)
class QuantizeStep(MadeStep):
    kind: ClassVar[str] = "quantize"
    preset: str = AUTO
    config: QuantizeConfig  # the step's settings over its preset's


@dataclass(frozen=True, kw_only=True)
class TorchInt8Step(MadeStep):
    kind: ClassVar[str] = "torch_int8"


@dataclass(frozen=True, kw_only=True)
class MobileStep(MadeStep):
    kind: ClassVar[str] = "mobile"


@dataclass(frozen=True, kw_only=True)
class DistillStep(MadeStep):
    kind: ClassVar[str] = "distill"
    config: Any  # compress.train.DistillConfig (imported lazily: it pulls in torch)


@dataclass(frozen=True, kw_only=True)
class PruneStep(MadeStep):
    kind: ClassVar[str] = "prune"
    teacher: str = BASE_VARIANT
    prune: PruneConfig
    recovery: Any = None  # DistillConfig whose student is the pruned model; None: prune only
    data: str | None = None  # training data that pruning itself reads (importance, refit), without recovery


@dataclass(frozen=True, kw_only=True)
class BenchStep:
    kind: ClassVar[str] = "bench"
    name: ClassVar[None] = None
    line: int
    variants: tuple[str, ...] = ()  # empty: every variant made so far


@dataclass(frozen=True, kw_only=True)
class ReportStep:
    kind: ClassVar[str] = "report"
    name: ClassVar[None] = None
    line: int
    reference: str | None = None
    variants: tuple[str, ...] = ()  # empty: every variant benched so far
    targets: tuple[Target, ...] = ()  # speed-ups at shares of the reference's F1, each reported met or missed
    notes: tuple[str, ...] = ()  # the author's word in the report: what was tried for a missed target


STEP_TYPES = (ExportStep, FuseStep, QuantizeStep, TorchInt8Step, MobileStep, BenchStep, ReportStep, DistillStep,
              PruneStep)  # fmt: skip
QUANTIZE_KEYS = {f.name for f in dataclasses.fields(QuantizeConfig)}
PRUNE_KEYS = {f.name for f in dataclasses.fields(PruneConfig)}
STEP_KEYS: dict[str, set[str]] = {
    "export": {"name", "from", "opset"},
    "fuse": {"name", "from", "fusions"},
    "quantize": {"name", "from", "preset"} | QUANTIZE_KEYS,
    "torch_int8": {"name", "from"},
    "mobile": {"name", "from"},
    "bench": {"variants"},
    "report": {"reference", "variants", "targets", "notes"},
    "distill": {"name", "from", "student", "train", "loss", "stages"},
    "prune": {"name", "from", "teacher", "train", "stages"} | PRUNE_KEYS,
}
Step = (
    ExportStep | FuseStep | QuantizeStep | TorchInt8Step | MobileStep | BenchStep | ReportStep | DistillStep | PruneStep
)


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


def _with_window(train: dict[str, Any], qa: QAConfig) -> dict[str, Any]:
    """Training settings with the recipe's QA window: one window for training, pruning data, calibration and scoring."""
    for key in ("max_length", "doc_stride"):
        if key in train and train[key] != getattr(qa, key):
            raise EdgeQAError(f"train.{key} is {train[key]} but the recipe's qa.{key} is {getattr(qa, key)}; "
                              "set the window once, in the recipe's qa: section")  # fmt: skip
    return {**train, "max_length": qa.max_length, "doc_stride": qa.doc_stride}


def distill_config(raw: dict[str, Any], qa: QAConfig, student: dict[str, Any] | None = None):
    from edgeqa.compress.train import DistillConfig

    raw = {k: v for k, v in raw.items() if k not in ("name", "from")}
    if "train" in raw:
        raw["train"] = _with_window(dict(raw["train"] or {}), qa)
    if student is not None:
        raw["student"] = student
    return DistillConfig.from_dict(raw)


def _prune_step(raw: dict[str, Any], line: int, qa: QAConfig) -> PruneStep:
    pcfg = PruneConfig.from_dict({k: v for k, v in raw.items() if k in PRUNE_KEYS})
    recovery = None
    if "stages" in raw:
        # The student is the pruned source model, known when the step runs (`recovery_for`).
        recovery = distill_config({k: raw[k] for k in ("train", "stages") if k in raw}, qa, {"pretrained": ""})
        if pcfg.method == "structured" and pcfg.heads and any(s.loss.attention for s in recovery.stages):
            raise EdgeQAError("attention transfer needs the teacher's head count; heads are being pruned")
        if pcfg.backend == "neural-compressor" and len(recovery.stages) != 1:
            raise EdgeQAError("neural-compressor pruning runs over one training stage; give exactly one")
    elif set(raw.get("train") or {}) - {"data"}:
        raise EdgeQAError("recovery training needs stages; without them, train takes only data")
    data = None if recovery else (raw.get("train") or {}).get("data")
    return PruneStep(line=line, name=raw["name"], source=raw.get("from", BASE_VARIANT),
                     teacher=raw.get("teacher", BASE_VARIANT), prune=pcfg, recovery=recovery, data=data)  # fmt: skip


def _report_step(raw: dict[str, Any], line: int) -> ReportStep:
    targets = raw.get("targets") or []
    notes = raw.get("notes") or []
    if not isinstance(targets, list) or not all(isinstance(t, dict) and set(t) == {"speedup", "f1_share"}
                                                for t in targets):  # fmt: skip
        raise EdgeQAError("report targets must be a list of {speedup: X, f1_share: Y}")
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise EdgeQAError("report notes must be a list of strings")
    return ReportStep(line=line, reference=raw.get("reference"), variants=tuple(raw.get("variants", ())),
                      targets=tuple(Target(**t) for t in targets), notes=tuple(notes))  # fmt: skip


def parse_step(kind: str, raw: dict[str, Any], line: int, qa: QAConfig) -> Step:
    """One step's settings as its typed config; a setting that is wrong in itself fails here."""
    if kind == "bench":
        return BenchStep(line=line, variants=tuple(raw.get("variants", ())))
    if kind == "report":
        return _report_step(raw, line)
    if kind == "prune":
        return _prune_step(raw, line, qa)
    made = {"line": line, "name": raw.get("name"), "source": raw.get("from", BASE_VARIANT)}
    if kind == "export":
        opset = raw.get("opset", 17)
        if not isinstance(opset, int) or isinstance(opset, bool) or opset < MIN_OPSET:
            raise EdgeQAError(f"export opset must be a whole number >= {MIN_OPSET}, got {opset!r}")
        return ExportStep(**made, opset=opset)
    if kind == "fuse":
        fusions = tuple(raw.get("fusions", FUSIONS))
        if set(fusions) - set(FUSIONS):
            raise EdgeQAError(f"unknown fusion(s) in {list(fusions)}; choose from {', '.join(FUSIONS)}")
        return FuseStep(**made, fusions=fusions)
    if kind == "quantize":
        asked = raw.get("preset", AUTO)
        config = preset(asked, **{k: v for k, v in raw.items() if k in QUANTIZE_KEYS})
        return QuantizeStep(**made, preset=asked, config=config)
    if kind == "distill":
        return DistillStep(**made, config=distill_config(raw, qa))
    return (TorchInt8Step if kind == "torch_int8" else MobileStep)(**made)


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
    if "name" in STEP_KEYS[step.kind]:
        if not step.name or not NAME.fullmatch(str(step.name)):
            raise EdgeQAError(f"{where}: step {step.kind!r} needs a name of letters, digits, '.', '_', '-'")
        if step.name in names:
            raise EdgeQAError(f"{where}: variant name {step.name!r} is used twice")
        if step.source not in names:
            raise EdgeQAError(f"{where}: step {step.kind!r} takes from {step.source!r}, which no earlier step makes")
    if "teacher" in raw and raw["teacher"] not in names:
        raise EdgeQAError(f"{where}: unknown teacher variant {raw['teacher']!r}")
    for ref in [*raw.get("variants", []), *([raw["reference"]] if "reference" in raw else [])]:
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
        if kind not in STEP_KEYS:
            raise EdgeQAError(f"{path}:{line}: unknown step {kind!r} (known: {', '.join(STEP_KEYS)})")
        raw = raw if raw is not None else Mapping()
        if not isinstance(raw, dict):
            raise EdgeQAError(f"{path}:{line}: the settings of step {kind!r} should be a mapping")
        if isinstance(raw, Mapping) and raw:
            check_keys(path, raw, STEP_KEYS[kind], f"step {kind!r}")
        try:
            step = parse_step(kind, dict(raw), line, recipe.qa)
        except (EdgeQAError, TypeError, ValueError) as e:
            raise EdgeQAError(f"{path}:{line}: {e}") from e
        _check_references(path, step, raw, names, steps)
        if step.name:
            names.add(step.name)
        steps.append(step)
    return dataclasses.replace(recipe, steps=tuple(steps))
