"""Static (QDQ) int8 settings reaching the graph, on the tiny BERT calibrated with the toy questions.

Each setting is read back from the quantized graph, not from what was asked: the int8 weights and their
DequantizeLinear scales, the activations' QuantizeLinear scales and zero points, and which ops read dequantized
tensors. Expected values follow from the definitions: symmetric int8 maps a weight's largest |value| to 127 (64
with reduce_range's 7 bits), per channel with one scale per output column; symmetric uint8 activations sit on zero
point 128; a calibration that sees fewer windows, or clips the tails (percentile), can only narrow a range.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeqa.export.quantize import QuantizeConfig, quantize


def _static(onnx_dir, toy, out, **settings):
    cfg = QuantizeConfig(**{"mode": "static", "calibration_samples": 8, **settings})
    graph = onnx.load(str(quantize(onnx_dir, out, cfg, calibration_data=toy) / "model.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return graph, inits


def _activations(graph, inits) -> dict[str, tuple[float, int]]:
    """Each quantized activation: (scale, zero point) of the QuantizeLinear that reads it."""
    return {
        n.input[0]: (float(inits[n.input[1]]), int(inits[n.input[2]]))
        for n in graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits
    }


def _matmul_weights(graph, inits) -> list[tuple[np.ndarray, np.ndarray]]:
    """(int8 weight, its scale) of every MatMul weight the graph dequantizes."""
    dq = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    return [(inits[dq[n.input[1]].input[0]], inits[dq[n.input[1]].input[1]])
            for n in graph.node if n.op_type == "MatMul" and n.input[1] in dq]  # fmt: skip


@pytest.mark.parametrize("per_channel, reduce_range, top", [(True, False, 127), (False, False, 127), (True, True, 64)])
def test_weights_are_int8_on_their_scales_and_width(onnx_dir, toy_squad, tmp_path, per_channel, reduce_range, top):
    graph, inits = _static(onnx_dir, toy_squad, tmp_path / "q", per_channel=per_channel, reduce_range=reduce_range)
    weights = _matmul_weights(graph, inits)
    assert len(weights) == 2 * 6 + 1  # q, k, v, attention output, FFN in and out per layer, the QA head
    for q, scale in weights:
        assert q.dtype == np.int8
        peak = np.abs(q.astype(np.int64)).max(axis=0)
        if per_channel:
            assert scale.shape == (q.shape[1],) and (peak == top).all()  # every column reaches the top
        else:
            assert scale.shape == () and peak.max() == top


def test_symmetric_activations_sit_on_zero_point_128(onnx_dir, toy_squad, tmp_path):
    symmetric = _activations(*_static(onnx_dir, toy_squad, tmp_path / "sym", symmetric_activations=True))
    asymmetric = _activations(*_static(onnx_dir, toy_squad, tmp_path / "asym"))
    assert set(symmetric) == set(asymmetric) and len(symmetric) > 50
    # 0 only where a range starts at 0 (after Softmax); every other activation centred
    assert {z for _, z in symmetric.values()} == {0, 128}
    assert len({z for _, z in asymmetric.values()}) > 10  # each range placed on its own zero point


def test_only_the_op_types_asked_read_int8(onnx_dir, toy_squad, tmp_path):
    def readers(graph):
        dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        return {n.op_type for n in graph.node if any(i in dq for i in n.input)}

    everything = readers(_static(onnx_dir, toy_squad, tmp_path / "all")[0])
    assert {"MatMul", "Gather", "LayerNormalization", "Softmax"} <= everything  # ONNX Runtime's default set
    only = readers(_static(onnx_dir, toy_squad, tmp_path / "mm", op_types=("MatMul",))[0])
    assert "MatMul" in only and not {"Gather", "LayerNormalization", "Softmax"} & only


def test_fewer_calibration_windows_can_only_narrow_a_min_max_range(onnx_dir, toy_squad, tmp_path):
    three = _activations(*_static(onnx_dir, toy_squad, tmp_path / "three"))
    one = _activations(*_static(onnx_dir, toy_squad, tmp_path / "one", calibration_samples=1))
    assert set(one) == set(three)
    assert all(one[t][0] <= three[t][0] * (1 + 1e-6) for t in one)
    assert sum(one[t][0] < three[t][0] * (1 - 1e-6) for t in one) > len(one) // 4  # one window does not see it all


def test_histogram_calibrations_run_on_windows_of_one_length_and_clip_the_tails(onnx_dir, toy_squad, tmp_path):
    """The toy windows differ in length: entropy and percentile stack them, so they must be padded to one."""
    minmax = _activations(*_static(onnx_dir, toy_squad, tmp_path / "minmax"))
    p90 = _activations(*_static(onnx_dir, toy_squad, tmp_path / "p90", calibration_method="percentile",
                                calibration_percentile=90.0))  # fmt: skip
    assert set(p90) == set(minmax)
    narrower = sum(p90[t][0] < 0.95 * minmax[t][0] for t in p90)
    assert narrower > len(p90) // 2  # the middle 80% of values (10th to 90th percentile) needs far less range
    assert len({z for _, z in p90.values()}) > 10  # a range of its own per tensor, not one symmetric about 0
    entropy = _activations(*_static(onnx_dir, toy_squad, tmp_path / "entropy", calibration_method="entropy"))
    assert set(entropy) == set(minmax) and any(abs(entropy[t][0] - minmax[t][0]) > 1e-6 for t in entropy)
