"""What `quantize` writes beside the int8 model, which ops dynamic int8 takes, and what it refuses."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter

import onnx
import pytest

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.squad import load_squad
from edgeqa.export.quantize import QuantizeConfig, preset_record, quantize


def _ops(folder) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node)


def test_dynamic_int8_takes_the_op_types_asked(onnx_dir, tmp_path):
    """By default ONNX Runtime's dynamic set: the 13 MatMuls with a weight (2 layers x 6, the QA head) and the 3
    embedding Gathers (words, positions, segments, dequantized at run time); asked for MatMul only, the Gathers
    stay float."""
    default = _ops(quantize(onnx_dir, tmp_path / "all", QuantizeConfig()))
    assert (default["MatMulInteger"], default["DequantizeLinear"]) == (13, 3)
    matmuls = _ops(quantize(onnx_dir, tmp_path / "mm", QuantizeConfig(op_types=("MatMul",))))
    assert (matmuls["MatMulInteger"], matmuls["DequantizeLinear"]) == (13, 0)
    gathers = _ops(quantize(onnx_dir, tmp_path / "g", QuantizeConfig(op_types=("Gather",))))
    assert (gathers["MatMulInteger"], gathers["DequantizeLinear"]) == (0, 3)


def test_the_folder_records_its_source_settings_preset_and_parity(onnx_dir, toy_squad, tmp_path, caplog):
    examples = load_squad(toy_squad).examples
    info = preset_record("arm64")  # does not fit this x86 machine: its warning is logged
    with caplog.at_level(logging.WARNING, logger="edgeqa.export.quantize"):
        out = quantize(onnx_dir, tmp_path / "q", QuantizeConfig(), parity_examples=examples, preset_info=info)
    record = json.loads((out / "quantization.json").read_text())
    assert record == {**QuantizeConfig().to_dict(), "excluded_nodes": [], "source": str(onnx_dir), "preset": info}
    parity = json.loads((out / "parity.json").read_text())
    assert parity["reference"] == str(onnx_dir) and parity["questions"] == 3
    # int8 moves logits: parity informs (the defaults export and fusion fail by) and does not fail the step
    assert (parity["tolerance"], parity["min_same_answer_share"]) == (1e-3, 0.995)
    assert f"{tmp_path / 'q'}: {info['warning']}" in caplog.messages


def test_quantize_refuses_what_it_cannot_read_or_calibrate(onnx_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(onnx_dir, broken)
    (broken / "model.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(EdgeQAError) as e:
        quantize(broken, tmp_path / "q", QuantizeConfig())
    assert str(e.value).startswith(f"{broken / 'model.onnx'}: cannot read this ONNX model: ")
    with pytest.raises(EdgeQAError) as e:
        quantize(onnx_dir, tmp_path / "s", QuantizeConfig(mode="static"))
    assert str(e.value) == "static quantization needs calibration data (a SQuAD file)"
    assert not (tmp_path / "q").exists() and not (tmp_path / "s").exists()
