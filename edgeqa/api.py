"""The Python API: one verb per operation, each with a small frozen config, for people who do not want the CLI.

    import edgeqa
    onnx = edgeqa.to_onnx("teacher/", "out/onnx")
    int8 = edgeqa.quantize(onnx, "out/int8")
    print(edgeqa.evaluate(int8, "dev-v1.1.json", limit=200)["f1"])

`to_onnx`, `quantize` and `report` build a recipe in memory and run the pipeline's step kinds on it, so they
make, record and cache exactly as `edgeqa run` does (a second call with the same settings reuses what the first
made or measured). The verb for export is `to_onnx` because `edgeqa.export` is the subpackage, as `edgeqa.bench`
is; timing is `latency`. `import edgeqa` loads this module on the first use of a verb (`edgeqa/__init__.py`), and
nothing it imports loads torch: the library does that inside the functions that need it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeqa.bench.engines import load_qa_model
from edgeqa.bench.evaluate import evaluate as evaluate_model
from edgeqa.bench.files import EdgeQAError, check_field_types, check_writable_dir, removed_on_failure
from edgeqa.bench.latency import LatencyConfig, benchmark
from edgeqa.bench.qa import QAConfig
from edgeqa.bench.serial import added_later, config_from_dict, config_to_dict
from edgeqa.bench.squad import SquadExample, load_squad
from edgeqa.bench.targets import Target
from edgeqa.export.quantize import preset
from edgeqa.pipeline.recipe import EvalSettings, ParitySettings, Recipe
from edgeqa.pipeline.run import run_in_memory, run_recipe
from edgeqa.pipeline.step import BASE_VARIANT
from edgeqa.pipeline.steps.bench_step import BenchStep
from edgeqa.pipeline.steps.export_step import ExportStep
from edgeqa.pipeline.steps.fuse_step import FuseStep
from edgeqa.pipeline.steps.mobile_step import MobileStep
from edgeqa.pipeline.steps.quantize_step import QuantizeStep
from edgeqa.pipeline.steps.report_step import ReportStep


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export settings. With `parity_data`, the export (and the fused model) must match PyTorch on its first
    `parity_limit` questions, or nothing is written."""

    opset: int = 17
    fuse: bool = True  # onnxruntime.transformers fusions (attention, LayerNorm, GELU), each with its own parity check
    parity_data: str | None = None
    parity_limit: int = 200
    tolerance: float = 1e-3
    mobile: bool = added_later(False)  # also ONNX Runtime's mobile format (.ort) in OUT-ort/, smoke-tested

    def __post_init__(self) -> None:
        check_field_types(self, "export")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExportConfig:
        return config_from_dict(cls, raw, "export")


def _in_memory(command: str, model: str | Path, steps: list, parity_data=None, parity_limit: int = 0,
               tolerance: float = 1e-3, **settings: Any) -> Recipe:  # fmt: skip
    """A recipe without a file, for one verb: the same step kinds, records and caches as `edgeqa run`."""
    parity = ParitySettings(limit=parity_limit if parity_data else 0, tolerance=tolerance)
    eval_settings = settings.pop("eval", None) or EvalSettings(data=str(parity_data or ""))
    return Recipe(path=Path(f"<edgeqa {command}>"), name=command, model=str(model), eval=eval_settings,
                  parity=parity, steps=tuple(steps), **settings)  # fmt: skip


def to_onnx(model: str | Path, out: str | Path, config: ExportConfig = ExportConfig()) -> Path:
    """Export a transformers QA folder to an ONNX folder (model.onnx, config, tokenizer); returns `out`. Made once:
    a second call with the same settings from the same model reuses `out`."""
    out = Path(out).absolute()
    steps: list = [ExportStep(line=0, name="onnx", opset=config.opset)]
    placed = {"onnx": out.with_name(out.name + "-unfused") if config.fuse else out}
    if config.fuse:
        steps.append(FuseStep(line=0, name="fused", source="onnx"))
        placed["fused"] = out
    if config.mobile:
        steps.append(MobileStep(line=0, name="ort", source=steps[-1].name))
        placed["ort"] = out.with_name(out.name + "-ort")
    recipe = _in_memory("export", model, steps, config.parity_data, config.parity_limit, config.tolerance)
    run_in_memory(recipe, out.parent, {BASE_VARIANT: Path(model).absolute()}, placed)
    return out


def quantize(
    model: str | Path,
    out: str | Path,
    config: Any = "auto",
    calibration_data: str | Path | None = None,
    parity_data: str | Path | None = None,
    parity_limit: int = 200,
    **overrides: Any,
) -> Path:
    """int8 of an ONNX folder. `config` is a preset name ("auto": the one for this CPU), with `overrides` of its
    settings, or a `QuantizeConfig`; static quantization calibrates on `calibration_data` (a SQuAD file). With
    `parity_data`, parity.json records how far int8 moved answers on its first `parity_limit` questions. Made
    once, as `to_onnx`."""
    out = Path(out).absolute()
    if isinstance(config, str):
        step = QuantizeStep(line=0, name="int8", preset=config, config=preset(config, **overrides))
    elif overrides:
        raise EdgeQAError("settings over a preset need a preset name; give a QuantizeConfig with them instead")
    else:
        step = QuantizeStep(line=0, name="int8", preset=None, config=config)
    if step.config.mode == "static" and calibration_data is None:
        raise EdgeQAError("static quantization needs calibration data (a SQuAD file)")
    recipe = _in_memory("quantize", model, [step], parity_data, parity_limit,
                        calibration_data=str(calibration_data) if calibration_data else None)  # fmt: skip
    run_in_memory(recipe, out.parent, {BASE_VARIANT: Path(model).absolute()}, {"int8": out})
    return out


def report(
    models: dict[str, str | Path],
    data: str | Path,
    out: str | Path,
    limit: int | None = None,
    reference: str | None = None,
    targets: tuple[Target, ...] = (),
    name: str = "report",
    bench: LatencyConfig = LatencyConfig(),
    batch_size: int | None = None,
) -> Path:
    """Score and time named models side by side and write out/report.{json,md} and pareto.png, as a recipe's bench
    and report steps do (and with their caches: a second call measures only what changed). `batch_size`: windows
    per forward pass (default: 1 for dynamic int8, whose answers depend on the batch, else 16)."""
    names = list(models)
    steps = [
        BenchStep(line=0, variants=tuple(names)),
        ReportStep(line=0, reference=reference or names[0], variants=tuple(names), targets=tuple(targets)),
    ]
    eval_settings = EvalSettings(data=str(data), limit=limit, batch_size=batch_size or 16,
                                 dynamic_int8_batch_size=batch_size or 1)  # fmt: skip
    recipe = _in_memory(name, next(iter(models.values())), steps, eval=eval_settings, bench=bench)
    load_squad(data, limit)  # a bad data file is refused before the output folder exists
    # A model that fails to load or run fails the call only after the output folder exists: whatever of it this
    # call made (the folder itself, eval/ and the other models' scores) is removed again.
    with removed_on_failure(out):
        root = check_writable_dir(out)
        with contextlib.ExitStack() as made:
            for variant in names:
                made.enter_context(removed_on_failure(root / "eval" / variant))
            run_in_memory(recipe, root, {n: Path(path) for n, path in models.items()})
    return root


def evaluate(model: str | Path, data: str | Path, limit: int | None = None, qa: QAConfig = QAConfig()) -> dict:
    """SQuAD EM/F1 of a model (PyTorch folder, ONNX folder or .ort) on the first `limit` questions of `data`."""
    return evaluate_model(model, data, limit, cfg=qa, progress=False)


def latency(model: str | Path, config: LatencyConfig = LatencyConfig()) -> dict:
    """p50/p90/p99 latency at each (batch, sequence length) of `config`, with the machine it ran on."""
    return benchmark(model, config)


def answer(model: str | Path, question: str, context: str, qa: QAConfig = QAConfig()) -> str:
    """The answer span a model finds for one question about one context."""
    example = SquadExample("q", question, context, (), ())
    return load_qa_model(model).answer([example], qa, progress=False)["q"].text


def run(recipe: str | Path, out: str | Path = "runs", shared: str | Path | None = None) -> Path:
    """Run a YAML recipe into out/<name>/ (resuming what an earlier run completed); returns the run folder."""
    return run_recipe(recipe, out, shared)
