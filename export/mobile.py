"""ONNX -> ONNX Runtime's mobile format (.ort): a flatbuffer that the minimal mobile runtime loads without protobuf.

Graph optimisations are applied before saving at the "extended" level: the rewrites that hold for the CPU
execution provider on any processor (the "all" level adds x86-only memory layouts, and "basic" is for NNAPI/Core ML
delegation). A .ort file is not re-optimised when it loads, so the optimisers the source folder's session.json
switches off stay off on the phone. The result is loaded and asked a question to prove it works.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgeqa.bench.engines import ORT_NAME, resolve_model, session_settings
from edgeqa.bench.files import EdgeQAError, atomic_dir
from edgeqa.export.onnx import copy_model_metadata

log = logging.getLogger(__name__)


def convert_to_ort(onnx_dir: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir/model.ort` (plus config and tokenizer) from the ONNX model in `onnx_dir`."""
    import onnxruntime as ort

    backend, model_path, folder = resolve_model(onnx_dir)
    if backend != "onnxruntime" or model_path.suffix != ".onnx":
        raise EdgeQAError(f"{onnx_dir}: the mobile format is made from an ONNX model; export it first")
    disabled = session_settings(folder).get("disabled_optimizers") or None
    with atomic_dir(out_dir) as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(tmp / ORT_NAME)
        opts.add_session_config_entry("session.save_model_format", "ORT")
        try:
            ort.InferenceSession(
                str(model_path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
            )
        except Exception as e:  # ORT raises its own exception types
            raise EdgeQAError(f"{model_path}: conversion to the ORT format failed: {e}") from e
        copy_model_metadata(folder, tmp)
    log.info("converted %s -> %s", model_path, Path(out_dir) / ORT_NAME)
    return Path(out_dir)
