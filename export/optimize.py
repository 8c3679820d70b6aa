"""Graph fusion with onnxruntime.transformers: Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNorm.

Fused ops run ONNX Runtime's hand-written CPU kernels and, once quantized, its int8 QAttention, which is where most
of the int8 speed-up on BERT comes from. A separate step with its own parity check, because fusion rewrites the
graph and a rewrite that silently changes answers must not reach a report.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from edgeqa.bench.engines import ONNX_NAME, resolve_model
from edgeqa.bench.families import family
from edgeqa.bench.files import EdgeQAError, atomic_dir, write_json
from edgeqa.bench.qa import QAConfig
from edgeqa.bench.squad import SquadExample
from edgeqa.export.onnx import check_parity, copy_model_metadata, write_parity

log = logging.getLogger(__name__)


FUSIONS = ("attention", "skip_layer_norm", "gelu", "embed_layer_norm")


def fuse(
    onnx_dir: str | Path,
    out_dir: str | Path,
    parity_examples: list[SquadExample] | None = None,
    tolerance: float = 1e-3,
    min_same_answer_share: float = 0.995,
    fusions: tuple[str, ...] = FUSIONS,
    qa_cfg: QAConfig = QAConfig(),
) -> dict[str, int]:
    """Write a fused copy of `onnx_dir` to `out_dir`; return the count of each fused op in the new graph.

    `fusions` picks the rewrites. All of them suit fp32; before int8 dynamic quantization, attention alone was
    fastest here (ONNX Runtime's SkipLayerNormalization kernel was slower than LayerNormalization plus Add in the
    int8 graph, see docs/results/deploy.md), so recipes can leave the others out.
    With `parity_examples` the fused model must match the unfused one within the tolerance, or nothing is written.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    unknown = sorted(set(fusions) - set(FUSIONS))
    if unknown:
        raise EdgeQAError(f"unknown fusion(s) {', '.join(unknown)}; choose from {', '.join(FUSIONS)}")

    backend, model_path, folder = resolve_model(onnx_dir)
    if backend != "onnxruntime":
        raise EdgeQAError(f"{onnx_dir}: fusion needs an ONNX model; export it first")
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    kind = family(config.get("model_type", "bert"))
    model_type = kind.fusion if kind else None
    if model_type is None:
        raise EdgeQAError(f"{folder}: no fusion rules for model type {config.get('model_type')!r}")
    options = FusionOptions(model_type)
    options.enable_attention = "attention" in fusions
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = "skip_layer_norm" in fusions
    options.enable_gelu = options.enable_bias_gelu = "gelu" in fusions
    options.enable_embed_layer_norm = "embed_layer_norm" in fusions
    # 0 lets the optimizer read heads and hidden size from the graph, which also covers MobileBERT's bottlenecks.
    # opt_level 1: ONNX Runtime's portable basic optimisations (constant folding, ...) before the fusions.
    optimized = optimize_model(
        str(model_path),
        model_type=model_type,
        num_heads=0,
        hidden_size=0,
        optimization_options=options,
        opt_level=1,
        use_gpu=False,
    )
    counts = Counter(node.op_type for node in optimized.model.graph.node)
    fused = {
        op: counts[op]
        for op in (
            "Attention",
            "SkipLayerNormalization",
            "BiasGelu",
            "Gelu",
            "FastGelu",
            "EmbedLayerNormalization",
            "LayerNormalization",
        )
        if counts[op]
    }
    with atomic_dir(out_dir) as tmp:
        optimized.save_model_to_file(str(tmp / ONNX_NAME))
        copy_model_metadata(folder, tmp)
        write_json(tmp / "fusion.json", {"source": str(onnx_dir), "fusions": list(fusions), "fused_ops": fused})
        if parity_examples:
            result = check_parity(onnx_dir, tmp, parity_examples, tolerance, min_same_answer_share, cfg=qa_cfg)
            write_parity(tmp, result, onnx_dir)
    if not fused:  # MobileBERT's bottleneck layers and NoNorm match none of onnxruntime's BERT rules
        log.warning("%s: no fusion rule matched this graph; %s is an unfused copy", onnx_dir, out_dir)
    log.info("fused %s -> %s: %s", onnx_dir, out_dir, fused)
    return fused
