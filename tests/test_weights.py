"""What a model file holds, measured on the file: parameters, zeros in its weight matrices (int8 zeros at their zero
point), per encoder layer and per matrix, and its size raw and gzip-compressed. Files built by hand, counts by hand."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from edgeqa.bench.weights import gzip_size, weight_stats


def _with_zeros(shape, zeros, dtype=np.float32, zero=0):
    arr = np.full(shape, 1, dtype=dtype) if zero == 0 else np.full(shape, zero + 1, dtype=dtype)
    arr.flat[:zeros] = zero
    return arr


def test_a_pytorch_folder_is_measured_on_its_safetensors(tmp_path):
    """Matrices (2-D, at least 16 each way): layer 0's query 64 zeros of 256 and output 16 of 256, layer 1's output 0
    of 16 x 32 = 512, the word embeddings 20 of 320 (not in a layer). The QA head (2 x 16) and a bias are parameters,
    not matrices. Parameters 256 + 256 + 512 + 320 + 32 + 16 = 1,392; matrices 100 zeros of 1,344 = 0.0744; encoder
    layers 80 of 1,024 = 0.0781; layer 0 80 of 512 = 0.15625, kept to four places as 0.1562."""
    from safetensors.numpy import save_file

    tensors = {
        "bert.encoder.layer.0.attention.self.query.weight": _with_zeros((16, 16), 64),
        "bert.encoder.layer.0.output.dense.weight": _with_zeros((16, 16), 16),
        "bert.encoder.layer.1.output.dense.weight": _with_zeros((16, 32), 0),
        "bert.embeddings.word_embeddings.weight": _with_zeros((20, 16), 20),
        "qa_outputs.weight": _with_zeros((2, 16), 32),
        "bert.encoder.layer.0.attention.self.query.bias": _with_zeros((16,), 16),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    stats = weight_stats(tmp_path)
    raw = (tmp_path / "model.safetensors").read_bytes()
    assert stats["file"] == "model.safetensors" and stats["file_bytes"] == len(raw)
    assert stats["gzip_bytes"] == len(gzip.compress(raw, compresslevel=6, mtime=0))
    assert stats["parameters"] == 1392
    assert stats["matrix_sparsity"] == 0.0744 and stats["encoder_sparsity"] == 0.0781
    assert stats["per_layer_sparsity"] == {"0": 0.1562, "1": 0.0}
    assert stats["per_matrix_sparsity"] == {
        "bert.encoder.layer.0.attention.self.query.weight": 0.25,
        "bert.encoder.layer.0.output.dense.weight": 0.0625,
        "bert.encoder.layer.1.output.dense.weight": 0.0,
        "bert.embeddings.word_embeddings.weight": 0.0625,
    }


def _onnx_model(path):
    """Initializers, each consumed as an exported int8 model consumes them:
    - a float MatMul weight under an exporter's name (its node's path names the module): 33 zeros of 256;
    - an int8 weight behind DequantizeLinear, one zero point (3): 128 values of 256 at it;
    - an int8 square weight behind DequantizeLinear with axis 0, row i's zero point i, its first 8 rows at their
      zero points: 128 of 256 (read along the wrong axis, only the 8 diagonal cells of those rows would be);
    - a uint8 16 x 24 weight behind MatMulInteger, column j's zero point j, its first 8 rows off by one: 192 of 384;
    - a MatMulInteger whose zero point is computed, not stored, and a Gemm whose bias is its third input: plain
      matrices, their zeros the zeros (0 and 16 of 256);
    - scales and zero points of QuantizeLinear and MatMulInteger inputs, an 8 x 8 constant (too small to be a
      matrix), and an exporter-named matrix no node uses (0 zeros of 256)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    uint8_w = np.tile(np.arange(24, dtype=np.uint8), (16, 1))
    uint8_w[:8] += 1
    rows = np.tile(np.arange(16, dtype=np.int8)[:, None], (1, 16)) + 1
    rows[:8] -= 1
    inits = [
        numpy_helper.from_array(_with_zeros((16, 16), 33), "onnx::MatMul_7"),
        numpy_helper.from_array(_with_zeros((16, 16), 128, np.int8, zero=3), "bert.encoder.layer.1.output.w_quantized"),
        numpy_helper.from_array(np.array(0.1, np.float32), "w8_scale"),
        numpy_helper.from_array(np.array(3, np.int8), "w8_zp"),
        numpy_helper.from_array(rows, "rows_quantized"),
        numpy_helper.from_array(rows, "rows_again"),  # the same, its axis counted from the end (-2: rows)
        numpy_helper.from_array(np.ones(16, np.float32), "rows_scale"),
        numpy_helper.from_array(np.arange(16, dtype=np.int8), "rows_zp"),
        numpy_helper.from_array(uint8_w, "qa_outputs.w_quantized"),
        numpy_helper.from_array(np.arange(24, dtype=np.uint8), "wu8_zp"),
        numpy_helper.from_array(np.array(0, np.uint8), "xq_zp"),
        numpy_helper.from_array(_with_zeros((16, 16), 0, np.uint8), "dyn_w"),
        numpy_helper.from_array(_with_zeros((16, 16), 16), "gemm_w"),
        numpy_helper.from_array(np.full(16, 0.5, np.float32), "gemm_b"),
        numpy_helper.from_array(np.array(0.5, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(1, np.uint8), "x_zp"),
        numpy_helper.from_array(np.zeros((8, 8), np.float32), "small"),
        numpy_helper.from_array(_with_zeros((16, 16), 0), "onnx::Unused_9"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "onnx::MatMul_7"], ["a"],
                         name="/bert/encoder/layer.0/attention/self/query/MatMul"),
        helper.make_node("DequantizeLinear", ["bert.encoder.layer.1.output.w_quantized", "w8_scale", "w8_zp"], ["w8f"],
                         name="/bert/encoder/layer.1/output/dq"),
        helper.make_node("DequantizeLinear", ["rows_quantized", "rows_scale", "rows_zp"], ["rf"], axis=0),
        helper.make_node("DequantizeLinear", ["rows_again", "rows_scale", "rows_zp"], ["rf2"], axis=-2),
        helper.make_node("MatMulInteger", ["xq", "qa_outputs.w_quantized", "xq_zp", "wu8_zp"], ["c"]),
        helper.make_node("MatMulInteger", ["xq", "dyn_w", "xq_zp", "computed_zp"], ["e"]),
        helper.make_node("Gemm", ["x", "gemm_w", "gemm_b"], ["g"]),
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
        helper.make_node("Add", ["a", "small"], ["d"]),
    ]  # fmt: skip
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [8, 16]) for n in ("x", "d")]
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [io[0]], [io[1]], inits)), str(path))


def test_an_onnx_file_counts_int8_zeros_at_their_zero_points(tmp_path):
    """Parameters: seven 16 x 16 matrices (1,792), the 16 x 24 one (384), the Gemm's 16 bias values and the 8 x 8
    constant: 2,256; scales and zero points are not parameters. Matrices: 33 + 128 + 128 + 128 + 192 + 0 + 16 + 0 =
    625 zeros of 2,176 = 0.2872; encoder layers 0 and 1: 161 of 512 = 0.3145, layer 0 33 / 256 = 0.1289."""
    _onnx_model(tmp_path / "model.onnx")
    stats = weight_stats(tmp_path)
    assert stats["file"] == "model.onnx" and stats["parameters"] == 2256
    assert stats["matrix_sparsity"] == 0.2872 and stats["encoder_sparsity"] == 0.3145
    assert stats["per_layer_sparsity"] == {"0": 0.1289, "1": 0.5}
    assert stats["per_matrix_sparsity"] == {
        "bert.encoder.layer.0.attention.self.query": 0.1289,  # named after its node, not "onnx::MatMul_7"
        "bert.encoder.layer.1.output.w_quantized": 0.5,  # its own name, though its node has a path
        "rows_quantized": 0.5,
        "rows_again": 0.5,
        "qa_outputs.w_quantized": 0.5,
        "dyn_w": 0.0,
        "gemm_w": 0.0625,
        "onnx::Unused_9": 0.0,
    }
    assert weight_stats(tmp_path / "model.onnx") == stats  # the file itself, or its folder


def test_an_ort_file_has_a_size_but_no_matrices_to_read(tmp_path):
    (tmp_path / "model.ort").write_bytes(b"\0" * 1000)
    stats = weight_stats(tmp_path)
    assert (stats["file"], stats["file_bytes"], stats["parameters"]) == ("model.ort", 1000, None)
    assert stats["matrix_sparsity"] is None and stats["encoder_sparsity"] is None
    assert stats["per_layer_sparsity"] == {} and stats["per_matrix_sparsity"] == {}
    assert stats["gzip_bytes"] == len(gzip.compress(b"\0" * 1000, compresslevel=6, mtime=0)) < 100


@pytest.mark.parametrize("size", [0, 1, (1 << 20) + 5])
def test_the_compressed_size_is_that_of_gzip_level_6(tmp_path, size):
    data = np.random.default_rng(0).integers(0, 4, size, dtype=np.uint8).tobytes()
    (tmp_path / "f").write_bytes(data)
    assert gzip_size(tmp_path / "f") == len(gzip.compress(data, compresslevel=6, mtime=0))
