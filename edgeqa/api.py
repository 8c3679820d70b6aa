"""The Python API: one verb per operation, each with a small frozen config, for people who do not want the CLI.

    import edgeqa
    onnx = edgeqa.to_onnx("teacher/", "out/onnx")
    int8 = edgeqa.quantize(onnx, "out/int8")
    print(edgeqa.evaluate(int8, "dev-v1.1.json", limit=200)["f1"])

The verb for export is `to_onnx` because `edgeqa.export` is the subpackage, as `edgeqa.bench` is; timing is
`latency`. `import edgeqa` loads this module on the first use of a verb (`edgeqa/__init__.py`), and nothing it
imports loads torch: the library does that inside the functions that need it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeqa.bench.engines import load_qa_model
from edgeqa.bench.evaluate import evaluate as evaluate_model
from edgeqa.bench.files import check_field_types, known_fields
from edgeqa.bench.latency import LatencyConfig, benchmark
from edgeqa.bench.qa import QAConfig
from edgeqa.bench.squad import SquadExample, load_squad
from edgeqa.export.onnx import export_onnx
from edgeqa.export.optimize import fuse
from edgeqa.export.quantize import preset, preset_record
from edgeqa.export.quantize import quantize as quantize_onnx
from edgeqa.pipeline.run import run_recipe


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export settings. With `parity_data`, the export (and the fused model) must match PyTorch on its first
    `parity_limit` questions, or nothing is written."""

    opset: int = 17
    fuse: bool = True  # onnxruntime.transformers fusions (attention, LayerNorm, GELU), each with its own parity check
    parity_data: str | None = None
    parity_limit: int = 200
    tolerance: float = 1e-3

    def __post_init__(self) -> None:
        check_field_types(self, "export")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExportConfig:
        return cls(**known_fields(cls, raw, "export"))


def to_onnx(model: str | Path, out: str | Path, config: ExportConfig = ExportConfig()) -> Path:
    """Export a transformers QA folder to an ONNX folder (model.onnx, config, tokenizer); returns `out`."""
    out = Path(out)
    examples = load_squad(config.parity_data, config.parity_limit).examples if config.parity_data else None
    if not config.fuse:
        return export_onnx(model, out, config.opset, examples, config.tolerance)
    unfused = out.with_name(out.name + "-unfused")
    export_onnx(model, unfused, config.opset, examples, config.tolerance)
    fuse(unfused, out, examples, config.tolerance)
    return out


def quantize(
    model: str | Path, out: str | Path, config: Any = "auto", calibration_data: str | Path | None = None
) -> Path:
    """int8 of an ONNX folder. `config` is a `QuantizeConfig` or a preset name ("auto": the one for this CPU);
    static quantization calibrates on `calibration_data` (a SQuAD file)."""
    info = preset_record(config) if isinstance(config, str) else None
    cfg = preset(config) if isinstance(config, str) else config
    return quantize_onnx(model, out, cfg, calibration_data, preset_info=info)


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
