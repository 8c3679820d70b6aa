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
from pathlib import Path

from bench.files import EdgeQAError

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


def _qa_config(args: argparse.Namespace):
    from bench.qa import QAConfig

    return QAConfig(
        max_length=args.max_length,
        doc_stride=args.doc_stride,
        n_best=args.n_best,
        max_answer_length=args.max_answer_length,
    )


def _add_qa_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-length", type=int, default=384, help="tokens per window (default 384)")
    p.add_argument("--doc-stride", type=int, default=128, help="overlap between windows (default 128)")
    p.add_argument("--n-best", type=int, default=20, help="start/end candidates per window (default 20)")
    p.add_argument("--max-answer-length", type=int, default=30, help="longest answer in tokens (default 30)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")


# --- issue 2: score, eval, answer -------------------------------------------------------------------------------


def cmd_score(args: argparse.Namespace) -> int:
    from bench.metric import load_predictions, score
    from bench.squad import load_squad

    dataset = load_squad(args.data)
    metrics = score(dataset, load_predictions(args.predictions))
    _print_metrics(metrics)
    if args.json:
        _print_json(metrics)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from bench.evaluate import evaluate

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
    from bench.engines import load_qa_model
    from bench.squad import SquadExample

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    p.add_argument("--limit", type=int, default=None, help="first N questions only")
    p.add_argument("--batch-size", type=int, default=16)
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

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
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
