"""The commands behind `edgeqa COMMAND`: each a thin shell over a library function. No module imported here loads
torch or transformers (the library imports them inside the functions that need them: `bench.engines` for PyTorch
folders, `pipeline/steps/` for training and export), so `edgeqa answer` on an ONNX model runs without them."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from edgeqa.api import ExportConfig, to_onnx
from edgeqa.bench.engines import load_qa_model, resolve_model
from edgeqa.bench.evaluate import evaluate
from edgeqa.bench.files import EdgeQAError, check_writable_dir, read_json, removed_on_failure
from edgeqa.bench.latency import LatencyConfig, benchmark, benchmark_interleaved
from edgeqa.bench.metric import load_predictions, score
from edgeqa.bench.qa import QAConfig
from edgeqa.bench.report import Target, write_report
from edgeqa.bench.squad import SquadExample, load_squad
from edgeqa.export.mobile import convert_to_ort
from edgeqa.export.quantize import preset, preset_record, quantize
from edgeqa.pipeline.context import is_main_process
from edgeqa.pipeline.recipe import load_recipe
from edgeqa.pipeline.rows import assemble_report, eval_info, report_row, weight_stats_cached
from edgeqa.pipeline.run import run_recipe


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


def _parity_examples(args: argparse.Namespace):
    return load_squad(args.parity_data, args.parity_limit).examples if args.parity_limit > 0 else None


def cmd_export(args: argparse.Namespace) -> int:
    """`edgeqa export` is the Python API's `to_onnx` (one implementation), plus the mobile format when asked."""
    parity = args.parity_data if args.parity_limit > 0 else None
    out = to_onnx(args.model, args.out, ExportConfig(args.opset, args.fuse, parity, args.parity_limit))
    if args.fuse:
        print(f"fused ops: {read_json(out / 'fusion.json')['fused_ops']}")
    if args.mobile:
        convert_to_ort(out, out.with_name(out.name + "-ort"))
    if (out / "parity.json").exists():
        p = read_json(out / "parity.json")
        print(f"parity: max |logit diff| {p['max_abs_diff']:.2e}, same answers {100 * p['same_answer_share']:.2f}%")
    print(f"wrote {out}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    raw = {
        "mode": args.mode,
        "calibration_method": args.calibration_method,
        "calibration_samples": args.calibration_samples,
    }
    if args.per_channel is not None:
        raw["per_channel"] = args.per_channel
    if args.reduce_range is not None:
        raw["reduce_range"] = args.reduce_range
    if args.exclude:
        raw["exclude"] = args.exclude
    if args.op_types:
        raw["op_types"] = args.op_types
    info = preset_record(args.preset)
    cfg = preset(args.preset, **raw)
    examples = _parity_examples(args)
    quantize(args.model, args.out, cfg, args.calibration_data, parity_examples=examples, preset_info=info)
    print(f"wrote {args.out} ({cfg.mode} int8, preset {info['chosen']} for a CPU of class {info['cpu']['isa']})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    cfg = LatencyConfig(
        tuple(args.batch_sizes),
        tuple(args.seq_lens),
        args.warmup,
        args.repeats,
        args.threads,
        torch_int8=args.torch_int8,
    )
    result = benchmark(args.model, cfg)
    for s in result["latency"]:
        print(
            f"batch {s['batch_size']} x {s['seq_len']}: p50 {s['p50_ms']:.2f} ms, p90 {s['p90_ms']:.2f}, "
            f"p99 {s['p99_ms']:.2f}, mean {s['mean_ms']:.2f}, {s['throughput']:.1f} seq/s"
        )
    print(f"size {result['file_bytes'] / 2**20:.1f} MiB, peak RSS {result['peak_rss_mb']:.0f} MiB")
    if args.json:
        for s in result["latency"]:
            s.pop("samples_ms", None)
        _print_json(result)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """A report for named models: each scored and timed here, side by side, assembled as a recipe's report is."""
    targets = tuple(Target.parse(t) for t in args.target)  # a bad target is refused before any work
    models = {}
    for item in args.variant:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise EdgeQAError(f"--variant takes NAME=PATH, got {item!r}")
        models[name] = (Path(path), resolve_model(path)[2])  # the model, and the folder that holds its records
    load_squad(args.data, args.limit)  # a bad data file is refused before the output folder exists
    # A model that fails to load or run fails the command only after the output folder exists: whatever of it this
    # command made (the folder itself, eval/ and the other models' scores) is removed again.
    with removed_on_failure(args.out):
        out = check_writable_dir(args.out)
        with contextlib.ExitStack() as made:
            for name in models:
                made.enter_context(removed_on_failure(out / "eval" / name))
            _report(args, out, models, targets)
    return 0


def _report(args: argparse.Namespace, out: Path, models: dict[str, tuple[Path, Path]], targets: tuple) -> None:
    """`edgeqa report` once its arguments are checked: score and time each model, and write the report to `out`."""
    cfg = LatencyConfig(
        tuple(args.batch_sizes), tuple(args.seq_lens), args.warmup, args.repeats, args.threads, args.rounds
    )
    metrics = {
        name: evaluate(path, args.data, args.limit, threads=cfg.threads, batch_size=args.batch_size,
                       out_dir=out / "eval" / name)
        for name, (path, _) in models.items()
    }  # fmt: skip
    timings = benchmark_interleaved({name: (path, False) for name, (path, _) in models.items()}, cfg)
    rows = [
        report_row(name, folder, False, metrics[name], timings[name], weight_stats_cached(path, None))
        for name, (path, folder) in models.items()
    ]
    first = next(iter(models))
    info = eval_info(args.data, args.limit, metrics[first])
    report = assemble_report(args.name, rows, args.reference or first, info, timings[first], targets)
    for path in write_report(report, out):
        print(f"wrote {path}")


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
