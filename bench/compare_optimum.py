"""Side-by-side benchmark: edgeqa's int8 model against what a user gets from Hugging Face Optimum's own path.

Optimum's path, as its documentation shows it: `ORTModelForQuestionAnswering.from_pretrained(teacher,
export=True)`, then `ORTQuantizer` with the dynamic `AutoQuantizationConfig` preset for this CPU (`avx512_vnni`
on AMX and AVX-512 VNNI, `avx512`, `avx2`, or `arm64`), as a user of that CPU would pick it. Both models are
timed in alternating passes (a fresh process per model and pass) so that drift on a shared machine hits both,
and scored on the same questions with the same engine and metric.

    python -m edgeqa.bench.compare_optimum --teacher ../shared/models/minilm-l6-h384-squad1 \
        --ours runs/quickstart/models/onnx-int8-dynamic --out runs/compare-optimum
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from edgeqa.bench.cpu import this_cpu
from edgeqa.bench.evaluate import evaluate
from edgeqa.bench.files import EdgeQAError, atomic_dir, write_json
from edgeqa.bench.latency import LatencyConfig, benchmark_interleaved, library_versions, machine_info

log = logging.getLogger(__name__)


# bench.cpu's int8 class -> Optimum's AutoQuantizationConfig preset (Optimum has no AMX or AVX-VNNI preset).
OPTIMUM_PRESETS = {
    "amx_int8": "avx512_vnni",
    "avx512_vnni": "avx512_vnni",
    "avx512": "avx512",
    "avx_vnni": "avx2",
    "avx2": "avx2",
    "other": "avx2",
    "arm64_i8mm": "arm64",
    "arm64_dotprod": "arm64",
    "arm64": "arm64",
}


def optimum_int8(teacher: Path, out: Path, preset: str) -> Path:
    """Optimum's export plus its dynamic quantization with `preset`, renamed to model.onnx for our engine."""
    if (out / "model.onnx").exists():
        return out
    from optimum.onnxruntime import ORTModelForQuestionAnswering, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    from transformers import AutoTokenizer

    with atomic_dir(out) as tmp:
        fp32 = tmp / "fp32"
        ORTModelForQuestionAnswering.from_pretrained(str(teacher), export=True).save_pretrained(fp32)
        quantizer = ORTQuantizer.from_pretrained(fp32)
        qconfig = getattr(AutoQuantizationConfig, preset)(is_static=False)
        quantizer.quantize(save_dir=tmp, quantization_config=qconfig)
        (tmp / "model_quantized.onnx").rename(tmp / "model.onnx")
        AutoTokenizer.from_pretrained(str(teacher)).save_pretrained(tmp)
        shutil.rmtree(fp32)
    return out


def compare(
    teacher: Path, ours: Path, data: str, limit: int | None, out: Path, cfg: LatencyConfig, preset: str = "auto"
) -> dict:
    """Time both int8 models side by side and score both, each at batch 1 (dynamic int8, as deployed)."""
    preset = OPTIMUM_PRESETS[this_cpu().isa] if preset == "auto" else preset
    theirs = optimum_int8(teacher, out / f"optimum-int8-{preset}", preset)
    timed = benchmark_interleaved({"edgeqa": (ours, False), "optimum": (theirs, False)}, cfg)
    scores = {
        name: evaluate(path, data, limit, threads=cfg.threads, out_dir=out / "eval" / name)
        for name, path in (("edgeqa", ours), ("optimum", theirs))
    }
    result = {
        "models": {"edgeqa": str(ours), "optimum": str(theirs)},
        "optimum_preset": preset,
        "scored_batch_size": {k: v["batch_size"] for k, v in scores.items()},
        "shape": {"batch_size": cfg.batch_sizes[0], "seq_len": cfg.seq_lens[0], "threads": cfg.threads},
        "latency": {k: {f: x for f, x in v["latency"][0].items() if f != "samples_ms"} for k, v in timed.items()},
        "p50_ms": {k: v["latency"][0]["p50_ms"] for k, v in timed.items()},
        "f1": {k: round(v["f1"], 3) for k, v in scores.items()},
        "exact_match": {k: round(v["exact_match"], 3) for k, v in scores.items()},
        "eval": {"data": data, "limit": limit, "questions": scores["edgeqa"]["total"]},
        "machine": machine_info(),
        "versions": library_versions(),
    }
    result["speedup_over_optimum"] = round(result["p50_ms"]["optimum"] / result["p50_ms"]["edgeqa"], 3)
    write_json(out / "compare.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, default=Path("../shared/models/minilm-l6-h384-squad1"))
    parser.add_argument("--ours", type=Path, required=True, help="edgeqa int8 model folder")
    parser.add_argument("--data", default="../shared/data/squad/dev-v1.1.json.gz")
    parser.add_argument("--limit", type=int, default=None, help="first N dev questions (default: all)")
    parser.add_argument("--rounds", type=int, default=10, help="alternating passes; repeats are split among them")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/compare-optimum"))
    parser.add_argument(
        "--preset", choices=["auto", *sorted(set(OPTIMUM_PRESETS.values()))], default="auto",
        help="Optimum's quantization preset (default auto: the one for this CPU)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = LatencyConfig(
        batch_sizes=(1,), seq_lens=(384,), repeats=args.repeats, threads=args.threads, rounds=args.rounds
    )
    try:
        r = compare(args.teacher, args.ours, args.data, args.limit, args.out, cfg, args.preset)
    except EdgeQAError as e:
        print(f"compare_optimum: error: {e}", file=sys.stderr)
        return 2
    print(
        f"p50 ms: edgeqa {r['p50_ms']['edgeqa']:.2f}, optimum {r['p50_ms']['optimum']:.2f} "
        f"({r['speedup_over_optimum']:.2f}x, Optimum preset {r['optimum_preset']}); "
        f"F1: edgeqa {r['f1']['edgeqa']:.2f}, optimum {r['f1']['optimum']:.2f}"
    )
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
