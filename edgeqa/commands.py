"""The commands behind `edgeqa COMMAND`: each a thin shell over a library function. No module imported here loads
torch or transformers (the library imports them inside the functions that need them: `bench.engines` for PyTorch
folders, `pipeline/steps/` for training and export), so `edgeqa answer` on an ONNX model runs without them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgeqa.api import ExportConfig, quantize, report, to_onnx
from edgeqa.bench.engines import load_qa_model, resolve_model
from edgeqa.bench.evaluate import evaluate
from edgeqa.bench.files import EdgeQAError, read_json
from edgeqa.bench.latency import LatencyConfig, benchmark
from edgeqa.bench.metric import load_predictions, score
from edgeqa.bench.qa import QAConfig
from edgeqa.bench.shapes import TABLE, Shape, candidate_shapes, shapes_markdown, time_shapes
from edgeqa.bench.squad import SquadExample, load_squad
from edgeqa.bench.targets import Target
from edgeqa.pipeline.context import is_main_process
from edgeqa.pipeline.recipe import load_recipe
from edgeqa.pipeline.run import run_recipe
from edgeqa.pipeline.shapes import make_shapes, teacher_shape


def _print_json(obj: dict) -> None:
    print(json.dumps(obj, sort_keys=False))


def _print_metrics(m: dict) -> None:
    line = f"EM {m['exact_match']:.2f}  F1 {m['f1']:.2f}  questions {m['total']}  missing {m['missing']}"
    if "HasAns_f1" in m:
        line += (
            f"  HasAns EM/F1 {m['HasAns_exact']:.2f}/{m['HasAns_f1']:.2f}"
            f"  NoAns EM/F1 {m['NoAns_exact']:.2f}/{m['NoAns_f1']:.2f}"
        )
    print(line)


def _qa_config(args: argparse.Namespace):
    return QAConfig(
        max_length=args.max_length,
        doc_stride=args.doc_stride,
        n_best=args.n_best,
        max_answer_length=args.max_answer_length,
    )


def cmd_score(args: argparse.Namespace) -> int:
    dataset = load_squad(args.data)
    metrics = score(dataset, load_predictions(args.predictions))
    _print_metrics(metrics)
    if args.json:
        _print_json(metrics)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    metrics = evaluate(
        args.model,
        args.data,
        limit=args.limit,
        cfg=_qa_config(args),
        batch_size=args.batch_size,
        threads=args.threads,
        out_dir=args.out,
    )
    _print_metrics(metrics)
    if args.out:
        print(f"wrote {Path(args.out) / 'predictions.json'} and {Path(args.out) / 'metrics.json'}")
    if args.json:
        _print_json(metrics)
    return 0


def cmd_answer(args: argparse.Namespace) -> int:
    if not args.question.strip() or not args.context.strip():
        raise EdgeQAError("--question and --context must not be empty")
    model = load_qa_model(args.model, args.threads)
    example = SquadExample("q", args.question, args.context, (), ())
    answer = model.answer([example], _qa_config(args), progress=False)["q"]
    if args.json:
        _print_json(
            {
                "answer": answer.text,
                "score": answer.score,
                "probability": answer.probability,
                "start": answer.start_char,
                "end": answer.end_char,
            }
        )
    else:
        print(f"{answer.text}\t(score {answer.score:.3f}, probability {answer.probability:.3f})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """`edgeqa export` is the Python API's `to_onnx`: the recipe's export, fuse and mobile steps, made once."""
    parity = args.parity_data if args.parity_limit > 0 else None
    config = ExportConfig(args.opset, args.fuse, parity, args.parity_limit, mobile=args.mobile)
    out = to_onnx(args.model, args.out, config)
    if args.fuse:
        print(f"fused ops: {read_json(out / 'fusion.json')['fused_ops']}")
    if (out / "parity.json").exists():
        p = read_json(out / "parity.json")
        print(f"parity: max |logit diff| {p['max_abs_diff']:.2e}, same answers {100 * p['same_answer_share']:.2f}%")
    print(f"wrote {out}" + (f" and {out.name}-ort" if args.mobile else ""))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    """`edgeqa quantize` is the Python API's `quantize`: the recipe's quantize step, made once."""
    raw = {
        "mode": args.mode,
        "calibration_method": args.calibration_method,
        "calibration_samples": args.calibration_samples,
    }
    for key in ("per_channel", "reduce_range", "exclude", "op_types"):
        if getattr(args, key) not in (None, []):
            raw[key] = getattr(args, key)
    parity = args.parity_data if args.parity_limit > 0 else None
    out = quantize(args.model, args.out, args.preset, args.calibration_data, parity, args.parity_limit, **raw)
    info = read_json(out / "quantization.json", "quantization record")["preset"]
    print(f"wrote {out} ({args.mode} int8, preset {info['description']})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    cfg = LatencyConfig(
        tuple(args.batch_sizes),
        tuple(args.seq_lens),
        args.warmup,
        args.repeats,
        args.threads,
        torch_int8=args.torch_int8,
        questions=args.questions,
    )
    result = benchmark(args.model, cfg, data=args.data)
    for s in result["latency"]:
        print(
            f"batch {s['batch_size']} x {s['seq_len']}: p50 {s['p50_ms']:.2f} ms, p90 {s['p90_ms']:.2f}, "
            f"p99 {s['p99_ms']:.2f}, mean {s['mean_ms']:.2f}, {s['throughput']:.1f} seq/s"
        )
    q = result["questions"]
    if q:
        print(
            f"per question ({q['questions']} questions, {q['windows']} windows of {q['mean_tokens']:.0f} tokens on "
            f"average, batch 1): p50 {q['p50_ms']:.2f} ms, p90 {q['p90_ms']:.2f}, mean {q['mean_ms']:.2f}"
        )
    print(f"size {result['file_bytes'] / 2**20:.1f} MiB, peak RSS {result['peak_rss_mb']:.0f} MiB")
    if args.json:
        for s in [*result["latency"], *([q] if q else [])]:
            s.pop("samples_ms", None)
        _print_json(result)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """`edgeqa report` is the Python API's `report`: a recipe's bench and report steps on named models."""
    targets = tuple(Target.parse(t) for t in args.target)  # a bad target is refused before any work
    models = {}
    for item in args.variant:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise EdgeQAError(f"--variant takes NAME=PATH, got {item!r}")
        resolve_model(path)  # a missing or foreign model is refused before any work
        models[name] = Path(path)
    bench = LatencyConfig(tuple(args.batch_sizes), tuple(args.seq_lens), args.warmup, args.repeats, args.threads,
                          args.rounds, questions=args.questions)  # fmt: skip
    out = report(models, args.data, args.out, args.limit, args.reference, targets, args.name, bench, args.batch_size)
    for name in ("report.json", "report.md", "pareto.png"):
        if (out / name).exists():
            print(f"wrote {out / name}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    root = run_recipe(args.recipe, args.out, args.shared, retime=args.retime, only=tuple(args.only or ()))
    if args.only:  # a part: its models are made, the report is the whole run's
        for name in args.only:
            print(f"made: {root / 'models' / name}")
        return 0
    if (root / "report.md").exists():
        print((root / "report.md").read_text())
    print(f"run folder: {root}")
    if (root / "report.json").exists():  # said last, where a reader of the output looks
        report = json.loads((root / "report.json").read_text())
        for warning in report.get("warnings", []):
            print(f"edgeqa: warning: {warning}", file=sys.stderr)
        if any(row.get("timing_flags") for row in report.get("rows", [])):
            print(f"edgeqa: time them again on a quiet machine: edgeqa run {args.recipe} --retime", file=sys.stderr)
    return 0


def _run_training_steps(args: argparse.Namespace, kind: str, columns: list[str], row) -> int:
    """Run a recipe up to its last `kind` step; print a Markdown table with `row(name, folder)` per such step."""
    root = run_recipe(args.recipe, args.out, args.shared, until=kind)
    if not is_main_process():
        return 0
    print("| " + " | ".join(columns) + " |")
    print("| --- |" + " ---: |" * (len(columns) - 2) + " --- |")
    for step in load_recipe(args.recipe, args.shared).steps:
        if step.kind == kind:
            folder = root / "models" / step.name
            print("| " + " | ".join([step.name, *row(folder), str(folder)]) + " |")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    def row(folder: Path) -> list[str]:
        info = read_json(folder / "training.json", "training record")
        best = info["best"]
        scores = [f"{best['exact']:.2f}", f"{best['f1']:.2f}"] if best.get("step") else ["-", "-"]
        return [
            f"{info['parameters'] / 1e6:.1f}M",
            str(info["questions"]),
            f"{info['train_seconds'] / 60:.1f}",
            *scores,
        ]

    columns = ["student", "parameters", "training questions", "minutes", "dev-subset EM", "dev-subset F1", "folder"]
    return _run_training_steps(args, "distill", columns, row)


def cmd_prune(args: argparse.Namespace) -> int:
    def row(folder: Path) -> list[str]:
        r = read_json(folder / "prune.json", "pruning record")
        return [
            r["method"],
            f"{r['pruned_matrices_sparsity']:.1%}",
            f"{r['parameters'] / 1e6:.2f}M",
            f"{r['nonzero_parameters'] / 1e6:.2f}M",
        ]

    columns = ["pruned", "method", "zeros in pruned matrices", "parameters", "nonzero parameters", "folder"]
    return _run_training_steps(args, "prune", columns, row)


def cmd_shapes(args: argparse.Namespace) -> int:
    """Make a teacher's candidate shapes and time them here, or (`--time DIR`) time a shapes folder made elsewhere."""
    cfg = LatencyConfig((1,), tuple(args.seq_lens), args.warmup, args.repeats, args.threads, args.rounds,
                        questions=args.questions)  # fmt: skip
    if args.time:
        folder = Path(args.time)
    else:
        if not args.model or not args.out:
            raise EdgeQAError("shapes needs --model and --out to make shapes, or --time DIR to time a made folder")
        full = teacher_shape(args.model)
        shapes = ([Shape.parse(s) for s in args.shapes] if args.shapes else
                  candidate_shapes(full, args.layers, args.heads, args.ffn))  # fmt: skip
        folder = make_shapes(args.model, args.out, shapes, args.preset)
        if args.no_time:
            print(f"made {len(shapes)} shapes in {folder}; time them with: edgeqa shapes --time {folder}")
            return 0
    table = time_shapes(folder, cfg, args.data)
    print("\n".join(shapes_markdown(table)))
    for flag in table["flags"]:
        print(f"edgeqa: warning: {flag}", file=sys.stderr)
    if table["busy"]:
        print(f"edgeqa: time them again on a quiet machine: edgeqa shapes --time {folder}", file=sys.stderr)
    print(f"wrote {folder / TABLE} ({table['machine']['cpu']}, int8 class {table['machine']['isa']})")
    return 0
