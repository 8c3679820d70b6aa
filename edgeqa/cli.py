"""The `edgeqa` command line: one subcommand per verb, each a thin shell over a library function.

Expected mistakes (bad paths, malformed files, wrong model kinds) raise EdgeQAError and end as one
`edgeqa: error: ...` line on stderr with exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from edgeqa.bench.files import EdgeQAError

log = logging.getLogger("edgeqa")

DEFAULT_SHARED = Path(os.environ.get("EDGEQA_SHARED", "../shared"))
DEFAULT_TEACHER = DEFAULT_SHARED / "models" / "minilm-l6-h384-squad1"
DEFAULT_DEV = DEFAULT_SHARED / "data" / "squad" / "dev-v1.1.json.gz"


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


class _Parser(argparse.ArgumentParser):
    """A usage mistake ends like every other expected mistake: one `edgeqa: error:` line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("edgeqa").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"edgeqa: error: {where}{message} (see {self.prog} --help)\n")


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type for whole numbers >= low; the message names the value, argparse names the argument."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


POSITIVE = _int_at_least(1)
COUNT = _int_at_least(0)


def _qa_config(args: argparse.Namespace):
    from edgeqa.bench.qa import QAConfig

    return QAConfig(
        max_length=args.max_length,
        doc_stride=args.doc_stride,
        n_best=args.n_best,
        max_answer_length=args.max_answer_length,
    )


def _add_qa_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-length", type=POSITIVE, default=384, help="tokens per window (default 384)")
    p.add_argument("--doc-stride", type=COUNT, default=128, help="overlap between windows (default 128)")
    p.add_argument("--n-best", type=POSITIVE, default=20, help="start/end candidates per window (default 20)")
    p.add_argument("--max-answer-length", type=POSITIVE, default=30, help="longest answer in tokens (default 30)")
    p.add_argument("--threads", type=POSITIVE, default=None, help="intra-op threads (default: physical cores)")


def cmd_score(args: argparse.Namespace) -> int:
    from edgeqa.bench.metric import load_predictions, score
    from edgeqa.bench.squad import load_squad

    dataset = load_squad(args.data)
    metrics = score(dataset, load_predictions(args.predictions))
    _print_metrics(metrics)
    if args.json:
        _print_json(metrics)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from edgeqa.bench.evaluate import evaluate

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
    from edgeqa.bench.engines import load_qa_model
    from edgeqa.bench.squad import SquadExample

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
    from edgeqa.bench.squad import load_squad

    return load_squad(args.parity_data, args.parity_limit).examples if args.parity_limit > 0 else None


def cmd_export(args: argparse.Namespace) -> int:
    from edgeqa.export.onnx import export_onnx
    from edgeqa.export.optimize import fuse

    examples = _parity_examples(args)
    out = Path(args.out)
    if args.fuse:
        plain = out.with_name(out.name + "-unfused")
        export_onnx(args.model, plain, args.opset, examples)
        counts = fuse(plain, out, examples)
        print(f"fused ops: {counts}")
    else:
        export_onnx(args.model, out, args.opset, examples)
    if args.mobile:
        from edgeqa.export.mobile import convert_to_ort

        convert_to_ort(out, out.with_name(out.name + "-ort"))
    if (out / "parity.json").exists():
        p = json.loads((out / "parity.json").read_text())
        print(f"parity: max |logit diff| {p['max_abs_diff']:.2e}, same answers {100 * p['same_answer_share']:.2f}%")
    print(f"wrote {out}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from edgeqa.export.quantize import preset, preset_record, quantize

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
    from edgeqa.bench.latency import LatencyConfig, benchmark

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
    """A report for named models: each scored and timed here, side by side."""
    from edgeqa.bench.engines import resolve_model
    from edgeqa.bench.evaluate import evaluate
    from edgeqa.bench.files import check_writable_dir
    from edgeqa.bench.latency import LatencyConfig, benchmark_interleaved, library_versions, machine_info
    from edgeqa.bench.report import build_report, make_row, write_report
    from edgeqa.bench.squad import load_squad

    pairs = []
    for item in args.variant:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise EdgeQAError(f"--variant takes NAME=PATH, got {item!r}")
        resolve_model(path)
        pairs.append((name, path))
    load_squad(args.data, args.limit)  # a bad data file is refused before the output folder exists
    out = check_writable_dir(args.out)
    cfg = LatencyConfig(
        tuple(args.batch_sizes), tuple(args.seq_lens), args.warmup, args.repeats, args.threads, args.rounds
    )
    metrics = {
        name: evaluate(path, args.data, args.limit, threads=cfg.threads, batch_size=args.batch_size,
                       out_dir=out / "eval" / name)
        for name, path in pairs
    }  # fmt: skip
    timings = benchmark_interleaved({name: (path, False) for name, path in pairs}, cfg)
    rows = [
        make_row(name, timings[name], metrics[name], {"overhead_share": metrics[name]["overhead_share"]})
        for name, _ in pairs
    ]
    first = metrics[pairs[0][0]]
    eval_info = {"data": args.data, "limit": args.limit, "questions": first["total"], "settings": first["settings"]}
    bench_info = {k: v for k, v in cfg.to_dict().items() if k != "torch_int8"}
    report = build_report(
        args.name, rows, args.reference or pairs[0][0], eval_info, bench_info, machine_info(), library_versions()
    )
    for path in write_report(report, out):
        print(f"wrote {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from edgeqa.compress.recipe import run_recipe

    root = run_recipe(args.recipe, args.out, args.shared, retime=args.retime)
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
    from edgeqa.compress.recipe import is_main_process, load_recipe, run_recipe

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
    from edgeqa.bench.files import read_json

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
    from edgeqa.bench.files import read_json

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


def _add_parity_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parity-data", default=str(DEFAULT_DEV), help="SQuAD file whose questions check parity")
    p.add_argument("--parity-limit", type=COUNT, default=200, help="questions for the parity check (0: skip it)")


def _add_bench_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-sizes", type=POSITIVE, nargs="+", default=[1])
    p.add_argument("--seq-lens", type=POSITIVE, nargs="+", default=[384, 128])
    p.add_argument("--warmup", type=COUNT, default=10)
    p.add_argument("--repeats", type=POSITIVE, default=100)
    p.add_argument("--threads", type=POSITIVE, default=2)
    p.add_argument("--rounds", type=POSITIVE, default=1, help="passes over all models, the repeats split among them")


def build_parser() -> argparse.ArgumentParser:
    from edgeqa.export.onnx import MIN_OPSET
    from edgeqa.export.quantize import PRESET_CHOICES

    parser = _Parser(
        prog="edgeqa", description="Make BERT QA models small and fast, and measure what it cost in EM/F1."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("score", help="score a predictions file {id: text} against SQuAD data")
    p.add_argument("data", help="SQuAD v1.1 or v2.0 JSON file (plain or .gz)")
    p.add_argument("predictions", help="predictions JSON {question_id: answer_text}")
    p.add_argument("--json", action="store_true", help="end with one JSON line of metrics")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("eval", help="predict SQuAD data with a model and score it")
    p.add_argument("--model", required=True, help="transformers QA folder, ONNX folder or .onnx file")
    p.add_argument("--data", default=str(DEFAULT_DEV), help=f"SQuAD file or hub id (default {DEFAULT_DEV})")
    p.add_argument("--limit", type=POSITIVE, default=None, help="first N questions only")
    p.add_argument(
        "--batch-size",
        type=POSITIVE,
        default=None,
        help="windows per forward pass (default: 1 for dynamic int8, whose answers depend on the batch, else 16)",
    )
    p.add_argument("--out", default=None, help="folder for predictions.json and metrics.json")
    p.add_argument("--json", action="store_true", help="end with one JSON line of metrics")
    _add_qa_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("answer", help="answer one question about one context")
    p.add_argument("--model", required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--context", required=True)
    p.add_argument("--json", action="store_true")
    _add_qa_options(p)
    p.set_defaults(func=cmd_answer)

    p = sub.add_parser("export", help="export a transformers QA folder to ONNX, checked against PyTorch")
    p.add_argument("--model", required=True, help="transformers QA folder")
    p.add_argument("out", help="output folder (model.onnx, config, tokenizer, parity.json)")
    p.add_argument("--opset", type=_int_at_least(MIN_OPSET), default=17, help=f"ONNX opset ({MIN_OPSET} or later)")
    p.add_argument("--fuse", action="store_true", help="also fuse with onnxruntime.transformers (own parity check)")
    p.add_argument("--mobile", action="store_true", help="also write ONNX Runtime's mobile format to OUT-ort/")
    _add_parity_options(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("quantize", help="int8-quantize an ONNX model with ONNX Runtime")
    p.add_argument("--model", required=True, help="ONNX folder")
    p.add_argument("out", help="output folder")
    p.add_argument("--mode", choices=["dynamic", "static"], default="dynamic")
    p.add_argument(
        "--preset",
        choices=PRESET_CHOICES,
        default="auto",
        help="hardware preset (default auto: the one that fits this CPU); other flags override its settings",
    )
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--exclude", nargs="+", default=None, help="node-name globs kept in float")
    p.add_argument("--op-types", nargs="+", default=None, help="op types to quantize (default: ORT's)")
    p.add_argument("--calibration-data", default=None, help="SQuAD file for static calibration")
    p.add_argument("--calibration-method", choices=["minmax", "entropy", "percentile"], default="minmax")
    p.add_argument("--calibration-samples", type=POSITIVE, default=256)
    _add_parity_options(p)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("bench", help="latency of one model at fixed shapes")
    p.add_argument("--model", required=True)
    p.add_argument("--torch-int8", action="store_true", help="PyTorch dynamic int8 of nn.Linear (PyTorch folders)")
    p.add_argument("--json", action="store_true")
    _add_bench_options(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="score and time named models side by side; write report.json/.md/pareto.png")
    p.add_argument("--variant", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--reference", default=None, help="row the deltas are against (default: the first)")
    p.add_argument("--data", default=str(DEFAULT_DEV))
    p.add_argument("--limit", type=POSITIVE, default=None)
    p.add_argument(
        "--batch-size",
        type=POSITIVE,
        default=None,
        help="windows per forward pass (default: 1 for dynamic int8, else 16)",
    )
    p.add_argument("--name", default="report")
    p.add_argument("--out", required=True)
    _add_bench_options(p)
    p.set_defaults(func=cmd_report)

    for name, func, text in (
        ("run", cmd_run, "run a YAML recipe into runs/<name>/ (resumable)"),
        ("distill", cmd_distill, "run a recipe up to its distill steps: train the students (resumable, torchrun too)"),
        ("prune", cmd_prune, "run a recipe up to its prune steps: prune, recover, record (resumable)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("recipe")
        p.add_argument("--out", default="runs", help="parent folder of the run folder (default runs/)")
        p.add_argument("--shared", default=None, help="what ${shared} means in the recipe (default ../shared)")
        if name == "run":
            p.add_argument("--retime", action="store_true", help="time the bench steps again (a busy machine's)")
        p.set_defaults(func=func)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for noisy in ("fusion_base", "onnx_model", "onnx_model_bert"):  # onnxruntime.transformers chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:  # onnxruntime.quantization logs advice through the root logger
        handler.addFilter(lambda r: r.name != "root" or r.levelno >= logging.ERROR)
    try:
        return args.func(args)
    except EdgeQAError as e:
        print(f"edgeqa: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgeqa: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
