"""Export the teacher with one exporter (argv[1]: ts | dynamo), then fuse and int8-quantize it with edgeqa."""

import json
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import onnx
import torch

from edgeqa.bench.engines import load_tokenizer, load_torch_qa_model, model_input_names
from edgeqa.bench.squad import load_squad
from edgeqa.export.onnx import check_parity, copy_model_metadata
from edgeqa.export.optimize import fuse
from edgeqa.export.quantize import QuantizeConfig, quantize

warnings.simplefilter("always")
T = Path("/work/shared/models/minilm-l6-h384-squad1")
DEV = "/work/shared/data/squad/dev-v1.1.json.gz"
kind = sys.argv[1]
out = Path(f"/tmp/tao/{kind}{sys.argv[2]}")
(out / "onnx").mkdir(parents=True, exist_ok=True)
model, tok = load_torch_qa_model(T), load_tokenizer(T)
if kind.endswith("eager"):
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(str(T), attn_implementation="eager").eval()
print("attention:", model.config._attn_implementation)
names = list(model_input_names(model))
sample = tok(["what is it?"] * 2, ["it is a small example context."] * 2, return_tensors="pt")
args = tuple(sample[n] for n in names)
axes = {n: {0: "batch", 1: "sequence"} for n in names}
axes.update({"start_logits": {0: "batch", 1: "sequence"}, "end_logits": {0: "batch", 1: "sequence"}})
t = time.perf_counter()
with torch.inference_mode() if kind == "ts" else torch.no_grad():
    torch.onnx.export(
        model,
        args,
        str(out / "onnx/model.onnx"),
        input_names=names,
        output_names=["start_logits", "end_logits"],
        dynamic_axes=axes,
        opset_version=int(sys.argv[2]),
        do_constant_folding=True,
        dynamo=kind.startswith("dynamo"),
    )
export_s = time.perf_counter() - t
copy_model_metadata(T, out / "onnx")
m = onnx.load(str(out / "onnx/model.onnx"))
dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
odims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.output}
ex = load_squad(DEV, 200).examples
par = check_parity(T, out / "onnx", ex, raise_on_failure=False, threads=2)
t = time.perf_counter()
fused = fuse(out / "onnx", out / "fused", fusions=("attention", "skip_layer_norm", "gelu", "embed_layer_norm"))
fuse_s = time.perf_counter() - t
attn = fuse(out / "onnx", out / "fused-attn", fusions=("attention",))
quantize(out / "fused-attn", out / "int8", QuantizeConfig())
quantize(out / "fused", out / "int8-allfused", QuantizeConfig())
q_ops = Counter(n.op_type for n in onnx.load(str(out / "int8/model.onnx")).graph.node)
res = {
    "kind": kind,
    "export_s": round(export_s, 1),
    "fuse_s": round(fuse_s, 1),
    "inputs": dims,
    "outputs": odims,
    "nodes": len(m.graph.node),
    "opset": [(o.domain, o.version) for o in m.opset_import],
    "bytes": (out / "onnx/model.onnx").stat().st_size + sum(p.stat().st_size for p in (out / "onnx").glob("*.data")),
    "parity_vs_torch": par.to_dict(),
    "fused_all": fused,
    "fused_attention_only": attn,
    "int8_ops": {
        k: q_ops[k]
        for k in ("MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "Attention", "QAttention")
        if q_ops[k]
    },
}
print(json.dumps(res, indent=1))
(out / "result.json").write_text(json.dumps(res, indent=1))
