"""The `edgeqa` command line: one subcommand per verb, each a thin shell over a library function.

Expected mistakes (bad paths, malformed files, wrong model kinds) raise EdgeQAError and end as one
`edgeqa: error: ...` line on stderr with exit status 2; anything else is a bug and keeps its traceback. So does a
command that needs an optional dependency the install lacks (the base install runs ONNX models only): the line names
the missing module and the extra that installs it. Commands import what they need inside, so that `edgeqa answer` on
an ONNX model starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from edgeqa.bench.files import FULL_DISK, NOT_WRITABLE, EdgeQAError
from edgeqa.bench.shapes import SHAPES_BENCH
from edgeqa.commands import (
    cmd_answer,
    cmd_bench,
    cmd_distill,
    cmd_eval,
    cmd_export,
    cmd_prune,
    cmd_quantize,
    cmd_report,
    cmd_run,
    cmd_score,
    cmd_shapes,
)
from edgeqa.export.onnx import MIN_OPSET
from edgeqa.export.quantize import PRESET_CHOICES

log = logging.getLogger("edgeqa")

# Optional dependencies by import name -> the extra (pyproject.toml) that installs them.
EXTRAS = {
    "torch": "full",
    "transformers": "full",
    "huggingface_hub": "full",
    "safetensors": "full",
    "onnx": "full",
    "onnxscript": "full",
    "matplotlib": "full",
    "optimum": "optimum",
    "accelerate": "gpu",
    "datasets": "hub",
    "neural_compressor": "prune",
}

DEFAULT_SHARED = Path(os.environ.get("EDGEQA_SHARED", "../shared"))
DEFAULT_TEACHER = DEFAULT_SHARED / "models" / "minilm-l6-h384-squad1"
DEFAULT_DEV = DEFAULT_SHARED / "data" / "squad" / "dev-v1.1.json.gz"


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


def _add_qa_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-length", type=POSITIVE, default=384, help="tokens per window (default 384)")
    p.add_argument("--doc-stride", type=COUNT, default=128, help="overlap between windows (default 128)")
    p.add_argument("--n-best", type=POSITIVE, default=20, help="start/end candidates per window (default 20)")
    p.add_argument("--max-answer-length", type=POSITIVE, default=30, help="longest answer in tokens (default 30)")
    p.add_argument("--threads", type=POSITIVE, default=None, help="intra-op threads (default: physical cores)")


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
    p.add_argument("--questions", type=COUNT, default=100,
                   help="real questions of --data timed end to end at batch 1, every pass (0: none)")  # fmt: skip


def _add_runtime_commands(sub) -> None:
    """The commands an ONNX model needs, and all the base install has: score, eval, answer, bench."""
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

    p = sub.add_parser("bench", help="latency of one model at fixed shapes")
    p.add_argument("--model", required=True)
    p.add_argument("--torch-int8", action="store_true", help="PyTorch dynamic int8 of nn.Linear (PyTorch folders)")
    p.add_argument("--data", default=None, help="SQuAD file: also time the model per real question (default: none)")
    p.add_argument("--json", action="store_true")
    _add_bench_options(p)
    p.set_defaults(func=cmd_bench)


def _add_deploy_commands(sub) -> None:
    """Export and int8 of a model, and the side-by-side report."""

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
    p.add_argument("--target", action="append", default=[], metavar="SPEEDUP:F1_SHARE[:LATENCY]",
                   help="report whether a model reaches this speed at this share of the reference's F1: a speed-up "
                   "such as 3:0.98 (at batch 1 x the first --seq-lens) or 3:0.98:questions (p50 per question), or "
                   "milliseconds such as 20ms:0.9 (p50 per question) or 20ms:0.9:fixed (repeatable)")  # fmt: skip
    _add_bench_options(p)
    p.set_defaults(func=cmd_report)


def _add_shapes_command(sub) -> None:
    b = SHAPES_BENCH
    p = sub.add_parser("shapes", help="make a teacher's candidate shapes in int8 and time them on this machine")
    p.add_argument("--model", help="the teacher: a transformers QA folder")
    p.add_argument("--out", help="shapes folder (int8 models, manifest.json, shapes.json); resumable")
    p.add_argument("--time", metavar="DIR", help="only time a shapes folder made elsewhere (no torch needed)")
    p.add_argument("--no-time", action="store_true", help="make the shapes, time them later (on the target)")
    p.add_argument("--data", default=None, help="SQuAD file: also time each model per real question")
    p.add_argument("--shapes", nargs="+", metavar="lL-hH-fF", help="these shapes instead of a grid")
    for axis, what in (("layers", "layers"), ("heads", "attention heads per layer"), ("ffn", "FFN neurons per layer")):
        p.add_argument(f"--{axis}", type=POSITIVE, nargs="+", help=f"the grid's {what} (default: teacher's shares)")
    p.add_argument("--preset", choices=PRESET_CHOICES, default="auto", help="int8 preset (default: this CPU's)")
    p.add_argument("--seq-lens", type=POSITIVE, nargs="+", default=list(b.seq_lens))
    p.add_argument("--warmup", type=COUNT, default=b.warmup)
    p.add_argument("--repeats", type=POSITIVE, default=b.repeats)
    p.add_argument("--threads", type=POSITIVE, default=b.threads)
    p.add_argument("--rounds", type=POSITIVE, default=b.rounds, help="interleaved passes (their spread flags noise)")
    p.add_argument("--questions", type=COUNT, default=b.questions, help="real questions timed per model with --data")
    p.set_defaults(func=cmd_shapes)


def _add_recipe_commands(sub) -> None:
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
            p.add_argument(
                "--only",
                action="append",
                metavar="NAME",
                help="make only this variant and what it is made from (repeatable); no bench or report",
            )
        p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgeqa", description="Make BERT QA models small and fast, and measure what it cost in EM/F1."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_runtime_commands(sub)
    _add_deploy_commands(sub)
    _add_shapes_command(sub)
    _add_recipe_commands(sub)
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
    except ModuleNotFoundError as e:
        module = (e.name or "").partition(".")[0]
        if module not in EXTRAS:
            raise
        extra = EXTRAS[module]
        print(
            f"edgeqa: error: {args.command} needs {module}, which is not installed; "
            f"pip install 'edgeqa[{extra}]' installs it",
            file=sys.stderr,
        )
        return 2
    except OSError as e:  # a write that no atomic writer saw (a library's own cache, say): still one line
        if e.errno not in FULL_DISK + NOT_WRITABLE:
            raise
        print(f"edgeqa: error: {e.filename or 'output'}: cannot write: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgeqa: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
