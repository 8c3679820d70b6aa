"""The torch-int8 baseline really quantizes: int8 Linear weights, logits that move a little but not far."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeqa.bench.engines import load_qa_model, load_torch_qa_model
from edgeqa.bench.torch_int8 import quantize_linear_int8


def _linears(model: torch.nn.Module) -> dict[str, type]:
    return {name: type(m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _inputs(seed: int = 0) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(5, 60, size=(2, 24), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def test_every_linear_gets_int8_weights(tiny_qa_model):
    fp32 = load_torch_qa_model(tiny_qa_model)
    before = _linears(fp32)
    int8 = quantize_linear_int8(fp32)
    quantized = {n: m for n, m in int8.named_modules() if n in before}
    assert before and set(quantized) == set(before)  # the QA head too
    assert not _linears(int8), "an nn.Linear was left in float"
    assert all(m.weight().dtype == torch.qint8 for m in quantized.values())
    assert _linears(fp32) == before  # a copy: the float model is untouched


def test_loaded_torch_int8_model_is_quantized_and_close_to_fp32(tiny_qa_model):
    fp32, int8 = load_qa_model(tiny_qa_model, 1), load_qa_model(tiny_qa_model, 1, torch_int8=True)
    assert (fp32.engine.backend, int8.engine.backend) == ("torch", "torch-int8")
    assert _linears(fp32.engine.model) and not _linears(int8.engine.model)
    x = _inputs()
    for ref, out in zip(fp32.engine(x), int8.engine(x), strict=True):
        diff = np.abs(ref - out)
        scale = np.abs(ref).max()
        assert diff.max() > 1e-6 * scale, "int8 logits equal fp32's: nothing was quantized"
        assert diff.max() < 0.1 * scale, f"int8 moved logits by {diff.max():.3g} (scale {scale:.3g})"


def test_torch_int8_refuses_onnx(tiny_qa_model, tmp_path):
    from edgeqa.bench.files import EdgeQAError
    from edgeqa.export.onnx import export_onnx

    exported = export_onnx(tiny_qa_model, tmp_path / "onnx")
    with pytest.raises(EdgeQAError, match="torch int8 applies to PyTorch folders"):
        load_qa_model(exported, 1, torch_int8=True)
