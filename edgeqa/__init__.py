"""edgeqa: make BERT question-answering models small and fast for CPUs and phones, and measure what it cost.

The subpackages are `edgeqa.bench` (SQuAD data, EM/F1, inference, latency, reports), `edgeqa.export` (ONNX export,
graph fusion, int8, mobile format), `edgeqa.compress` (students, losses, training, pruning) and `edgeqa.pipeline`
(recipes). In a wheel they sit inside this folder; in a checkout they are the top-level folders beside it, which the
`__path__` line below makes importable under the same names without an install (the device machine and mutmut's copy
of the tree run that way).
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
if not (_HERE / "bench").is_dir():
    __path__.append(str(_HERE.parent))  # noqa: F821 (the package's own __path__)

API = ("to_onnx", "quantize", "evaluate", "latency", "answer", "report", "run", "ExportConfig", "LatencyConfig",
       "QAConfig", "QuantizeConfig", "Target")  # fmt: skip
__all__ = list(API)


def __getattr__(name: str):
    """The API's verbs and configs, imported on first use so that `import edgeqa.bench` stays light."""
    if name in ("LatencyConfig", "QAConfig", "QuantizeConfig", "Target"):
        from edgeqa.bench.latency import LatencyConfig
        from edgeqa.bench.qa import QAConfig
        from edgeqa.bench.targets import Target
        from edgeqa.export.quantize import QuantizeConfig

        configs = {
            "LatencyConfig": LatencyConfig,
            "QAConfig": QAConfig,
            "QuantizeConfig": QuantizeConfig,
            "Target": Target,
        }
        return configs[name]
    if name in API:
        from edgeqa import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgeqa' has no attribute {name!r}")
