"""What a model file really holds: parameters, zeros in its weight matrices, and its size raw and gzip-compressed.

Measured on the artefact that ships (model.onnx, model.ort or model.safetensors), never taken from the recipe
that made it, so a report cannot claim sparsity that the file does not have. A weight matrix is any 2-D float
initializer or tensor with at least 16 elements in each dimension (embeddings included); for int8 ONNX weights a
zero is a value equal to its zero point.
"""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgeqa.bench.engines import TORCH_WEIGHTS, resolve_model

MIN_DIM = 16


def gzip_size(path: Path) -> int:
    """Bytes of `path` after gzip (level 6): the size a sparse model takes to download or store compressed."""

    class Counter:
        n = 0

        def write(self, b) -> int:
            self.n += len(b)
            return len(b)

        def flush(self) -> None:
            pass

    counter = Counter()
    with open(path, "rb") as src, gzip.GzipFile(fileobj=counter, mode="wb", compresslevel=6, mtime=0) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return counter.n


def _matrices_onnx(path: Path) -> tuple[dict[str, tuple[int, int]], int]:
    """(zeros, size) of each 2-D weight initializer, and the parameter count.

    int8 weights count values equal to their zero point as zeros. Parameters are the elements of the float and
    8-bit initializers other than quantisation scales and zero points, so an exported model counts as its
    PyTorch source does (give or take constants the exporter folds in).
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    zero_points: dict[str, tuple[np.ndarray, int]] = {}  # weight: (zero points, the axis they run along)
    for node in model.graph.node:
        if node.op_type in ("DequantizeLinear", "MatMulInteger") and len(node.input) >= 3:
            # DequantizeLinear's axis defaults to 1; MatMulInteger's B has one zero point per column (axis 1).
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            for weight, zp in ((node.input[0], node.input[2]), (node.input[1], node.input[-1])):
                if weight in inits and zp in inits:
                    zero_points[weight] = numpy_helper.to_array(inits[zp]), axis
    first_quant_input = {"DequantizeLinear": 1, "QuantizeLinear": 1, "MatMulInteger": 2}  # scales, zero points
    quant_params = {
        name
        for node in model.graph.node
        if node.op_type in first_quant_input
        for name in node.input[first_quant_input[node.op_type] :]
    }
    kinds = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT8, TensorProto.UINT8}
    params = sum(int(np.prod(i.dims)) for i in inits.values() if i.data_type in kinds and i.name not in quant_params)
    consumer: dict[str, str] = {}  # the exporter names MatMul weights "onnx::MatMul_756"; their nodes keep the path
    for node in model.graph.node:
        for name in node.input:
            consumer.setdefault(name, node.name)
    out = {}
    for name, init in inits.items():
        if len(init.dims) != 2 or min(init.dims) < MIN_DIM:
            continue
        arr = numpy_helper.to_array(init)
        zp, axis = zero_points.get(name, (np.zeros((), dtype=arr.dtype), 1))
        if zp.ndim == 1:  # one zero point per row (axis 0) or per column
            zp = zp.reshape((-1, 1) if axis % 2 == 0 else (1, -1))
        module = consumer.get(name, "").strip("/").rpartition("/")[0].replace("/", ".")
        out[name if not name.startswith("onnx::") or not module else module] = (int((arr == zp).sum()), arr.size)
    return out, params


def _matrices_torch(folder: Path) -> tuple[dict[str, tuple[int, int]], int]:
    from safetensors.numpy import load_file

    files = sorted(folder.glob("*.safetensors"))
    out, params = {}, 0
    for f in files:
        for name, arr in load_file(str(f)).items():
            params += arr.size
            if arr.ndim == 2 and min(arr.shape) >= MIN_DIM:
                out[name] = (int((arr == 0).sum()), arr.size)
    return out, params


def _by_layer(matrices: dict[str, tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """(zeros, size) per encoder layer, over the matrices whose name says their layer ("...layer.3.attention...")."""
    layers: dict[int, tuple[int, int]] = {}
    for name, (zeros, size) in matrices.items():
        m = re.search(r"layer\.(\d+)\.", name)
        if m:
            z, n = layers.get(int(m.group(1)), (0, 0))
            layers[int(m.group(1))] = (z + zeros, n + size)
    return dict(sorted(layers.items()))


def weight_stats(path: str | Path) -> dict[str, Any]:
    """Zeros per weight matrix and overall, parameter count, and file size raw and gzipped."""

    backend, model_path, folder = resolve_model(path)
    if backend == "onnxruntime":
        weights_file = model_path
        matrices, params = _matrices_onnx(model_path) if model_path.suffix == ".onnx" else ({}, None)
    else:  # resolve_model has found one of them
        weights_file = next(folder / w for w in TORCH_WEIGHTS if (folder / w).exists())
        matrices, params = _matrices_torch(folder)
    zeros = sum(z for z, _ in matrices.values())
    size = sum(n for _, n in matrices.values())
    layers = _by_layer(matrices)
    layer_zeros, layer_size = sum(z for z, _ in layers.values()), sum(n for _, n in layers.values())
    return {
        "file": weights_file.name,
        "file_bytes": weights_file.stat().st_size,
        "gzip_bytes": gzip_size(weights_file),
        "parameters": params,
        "matrix_sparsity": round(zeros / size, 4) if size else None,
        # What the pruners target: the encoder layers' matrices (embeddings and the QA head stay dense).
        "encoder_sparsity": round(layer_zeros / layer_size, 4) if layer_size else None,
        "per_layer_sparsity": {str(i): round(z / n, 4) for i, (z, n) in layers.items()},
        "per_matrix_sparsity": {k: round(z / n, 4) for k, (z, n) in matrices.items()},
    }
