"""Which shapes can reach a speed-up at all: int8 latency of the teacher cut to candidate shapes, before training any.

Each shape keeps the first `layers` teacher layers, the first `heads` heads of each and a fresh FFN of `ffn`
neurons (the weights are meaningless; only the shapes matter), is exported, attention-fused and int8-quantized as
the front recipe does, and timed in interleaved passes beside the teacher's int8 model. Ratios are over the
teacher's int8 model, which is steadier between runs than the PyTorch fp32 time (docs/results/front.md).

    python scripts/front/shape_latency.py --teacher ../shared/models/minilm-l6-h384-squad1 \
        --teacher-int8 runs/front-cpu/models/teacher-int8 --out runs/shapes
"""

import argparse
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertForQuestionAnswering

import edgeqa
from edgeqa.bench.latency import LatencyConfig, benchmark_interleaved
from edgeqa.export.optimize import FUSIONS, fuse

SHAPES = {  # name: (layers, heads kept in each layer, FFN neurons kept in each layer)
    "l6-h6-f384": (6, 6, 384),
    "l6-h12-f384": (6, 12, 384),
    "l6-h3-f768": (6, 3, 768),
    "l6-h4-f256": (6, 4, 256),
    "l6-h4-f384": (6, 4, 384),
    "l4-h8-f768": (4, 8, 768),
    "l4-h6-f768": (4, 6, 768),
    "l4-h6-f384": (4, 6, 384),
    "l4-h4-f512": (4, 4, 512),
    "l3-h12-f1536": (3, 12, 1536),
    "l3-h12-f768": (3, 12, 768),
    "l3-h6-f1536": (3, 6, 1536),
    "l3-h8-f768": (3, 8, 768),
    "l3-h6-f768": (3, 6, 768),
    "l3-h6-f384": (3, 6, 384),
    "l3-h4-f768": (3, 4, 768),
    "l2-h12-f1536": (2, 12, 1536),
}


def make_shape(teacher: str, out: Path, layers: int, heads: int, ffn: int, fusions: tuple[str, ...]) -> Path:
    model = BertForQuestionAnswering.from_pretrained(teacher)
    n_heads = model.config.num_attention_heads
    model.bert.encoder.layer = model.bert.encoder.layer[:layers]
    model.config.num_hidden_layers = layers
    if heads < n_heads:
        model.prune_heads({i: list(range(heads, n_heads)) for i in range(layers)})
    hidden = model.config.hidden_size
    for layer in model.bert.encoder.layer:
        layer.intermediate.dense = torch.nn.Linear(hidden, ffn)
        layer.output.dense = torch.nn.Linear(ffn, hidden)
    model.config.intermediate_size = ffn
    model.save_pretrained(out / "pt")
    AutoTokenizer.from_pretrained(teacher).save_pretrained(out / "pt")
    onnx = edgeqa.to_onnx(out / "pt", out / "onnx", edgeqa.ExportConfig(fuse=False))
    fuse(onnx, out / "fused", fusions=fusions)
    return edgeqa.quantize(out / "fused", out / "int8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--teacher-int8", required=True, help="the recipe's teacher-int8 folder, the yardstick")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--pytorch", action="store_true", help="time the PyTorch fp32 teacher too")
    ap.add_argument("--fusions", nargs="+", default=["attention"], choices=FUSIONS,
                    help="fused before int8 (default: attention alone, as the front recipe's fuse steps)")  # fmt: skip
    ap.add_argument("--also", nargs="*", default=[], metavar="NAME=FOLDER", help="made models to time beside them")
    args = ap.parse_args()
    models = {"teacher-int8": (args.teacher_int8, False)}
    if args.pytorch:
        models["pytorch-fp32"] = (args.teacher, False)
    models.update({item.split("=", 1)[0]: (item.split("=", 1)[1], False) for item in args.also})
    for name in args.shapes:
        int8 = args.out / name / "int8"
        if not (int8 / "model.onnx").exists():
            make_shape(args.teacher, args.out / name, *SHAPES[name], tuple(args.fusions))
        models[name] = (str(int8), False)
    cfg = LatencyConfig(seq_lens=(384,), repeats=40, rounds=2, threads=2)
    results = benchmark_interleaved(models, cfg)
    base = results["teacher-int8"]["latency"][0]["p50_ms"]
    for name, result in results.items():
        shape = result["latency"][0]
        print(f"{name:14s} p50 {shape['p50_ms']:6.2f} ms  {base / shape['p50_ms']:4.2f}x teacher-int8  "
              f"pass spread {shape['pass_spread']}")  # fmt: skip


if __name__ == "__main__":
    main()
