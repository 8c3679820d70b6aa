"""`make avx2-check`: do 8-bit weights lose accuracy on ONNX Runtime's AVX2 int8 kernels, here, on an AMX machine?

On AVX2 (and AVX-512 without VNNI) MLAS multiplies u8 activations by s8 weights with vpmaddubsw, which sums each
pair of products in int16 and saturates; export/quantize.py's avx2/avx512 presets therefore use 7-bit weights
(reduce_range). This machine's AMX and VNNI kernels sum in 32 bits, so they cannot show the effect. qemu-x86_64
(user mode, TCG) with an AVX2-only CPU model can: cpuid reports AVX2/FMA and no AVX-512/VNNI, so MLAS dispatches
its AVX2 kernels, and this venv's own Python and ONNX Runtime run unchanged under it.

Four dynamic int8 variants of the teacher's attention-fused graph (8 or 7-bit weights, per-channel or per-tensor
scales, all with the avx2 preset's other settings) run on the first N dev questions natively and under the
emulated profile(s). Per variant and run: the share of answers identical to the native run, the largest logit
difference, EM/F1, and a u8 x s8 probe that says whether the kernels that ran saturate pair sums (proof of the
AVX2 path). Emulated run times are no latency and are kept only as job durations. The machinery is
export/emulation/arm64_check.py's; only the models and the table are this module's.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeqa.bench.engines import ONNX_NAME
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.qa import QAConfig
from edgeqa.export.emulation.arm64_check import (
    PROFILES,
    Job,
    attention_fused_graph,
    load_questions,
    machine_record,
    qemu_binary,
    run_jobs,
    score_runs,
    setup_logging,
    write_check,
    write_inputs,
    write_u8s8_probe,
)
from edgeqa.export.quantize import preset, preset_record, quantize

log = logging.getLogger(__name__)

# About 24 s of emulated CPU time per window (~170 tokens) and variant: 24 questions x 4 variants take about
# 20 minutes on 2 cores.
DEFAULT_LIMIT = 24
X86_PROFILES = tuple(name for name, p in PROFILES.items() if p.target == "x86_64")
PRESET = "avx2"
# name -> quantize overrides on top of the avx2 preset.
VARIANTS: dict[str, dict[str, bool]] = {
    "int8-w8-per-channel": {"per_channel": True, "reduce_range": False},
    "int8-w7-per-channel": {"per_channel": True, "reduce_range": True},
    "int8-w8-per-tensor": {"per_channel": False, "reduce_range": False},
    "int8-w7-per-tensor": {"per_channel": False, "reduce_range": True},
}


def ensure_variants(base: Path, out: Path) -> dict[str, Path]:
    """Each variant quantized from `base` into `out/<name>` with edgeqa's quantize(); made ones are reused."""

    models = {}
    for name, overrides in VARIANTS.items():
        folder = out / name
        if not (folder / ONNX_NAME).exists():
            quantize(base, folder, preset(PRESET, **overrides), preset_info=preset_record(PRESET))
        models[name] = folder / ONNX_NAME
    return models


def render_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One row per (variant, run), as score_runs orders them; EM/F1 beside the native run's."""
    lines = [
        "| variant | weights | scales | run (QEMU_CPU) | cpuid int8 features | u8s8 pair sums "
        "| identical answers vs native | max abs logit diff | EM | F1 | native EM | native F1 |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        v = VARIANTS[r["model"]]
        run = "native" if r["qemu_cpu"] is None else f"{r['profile']} ({r['qemu_cpu']})"
        scales = "per-channel" if v["per_channel"] else "per-tensor"
        lines.append(
            f"| {r['model']} | {7 if v['reduce_range'] else 8}-bit | {scales} | {run} "
            f"| {r['cpuid_features'] or '-'} | {r['u8s8_probe']} "
            f"| {100 * r['same_answer_share']:.1f}% | {r['max_abs_logit_diff']:.2e} "
            f"| {r['exact_match']:.2f} | {r['f1']:.2f} | {r['x86_exact_match']:.2f} | {r['x86_f1']:.2f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edgeqa.export.emulation.avx2_check", description=__doc__.splitlines()[0]
    )
    p.add_argument("--shared", type=Path, default=Path("../shared"), help="shared teacher and data (../shared)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"first N dev questions ({DEFAULT_LIMIT})")
    p.add_argument("--profiles", nargs="+", choices=X86_PROFILES, default=list(X86_PROFILES))
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--quickstart", type=Path, default=Path("runs/quickstart/models"), help="models of `make run`")
    p.add_argument("--out", type=Path, default=Path("runs/avx2-check"))
    p.add_argument("--env", type=Path, default=Path(".arm64"), help="folder `scripts/arm64-env.sh qemu` provisioned")
    p.add_argument("--parallel", type=int, default=os.cpu_count() or 1, help="jobs at a time, one thread each")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(__name__)
    t0 = time.monotonic()
    try:
        if not qemu_binary(args.env, "x86_64").exists():
            raise EdgeQAError(f"{args.env}: no qemu-x86_64; run `scripts/arm64-env.sh qemu` first")
        teacher, dataset = load_questions(args.shared, args.limit)
        out = args.out / "models"
        base = attention_fused_graph(teacher, args.quickstart, out, dataset.examples[:16])
        models = {k: v for k, v in ensure_variants(base, out).items() if k in args.variants}
        cfg = QAConfig()
        work = args.out / "logits"
        work.mkdir(parents=True, exist_ok=True)
        features, lengths = write_inputs(dataset.examples, teacher, work / "inputs.npz", cfg)
        probe = write_u8s8_probe(work / "u8s8_probe.onnx")
        log.info("%d questions, %d windows; %d variants x %s", len(dataset), len(lengths), len(models), args.profiles)
        jobs = [Job(m, path, None) for m, path in models.items()]
        jobs += [Job(m, path, PROFILES[p]) for m, path in models.items() for p in args.profiles]
        records = run_jobs(jobs, work / "inputs.npz", work, args.env.resolve(), args.parallel, probe.resolve())
        rows, predictions, pairwise = score_runs(records, jobs, dataset, features, lengths, cfg)
    except EdgeQAError as e:
        print(f"avx2-check: error: {e}", file=sys.stderr)
        return 1
    table = render_table(rows)
    report = {
        "questions": len(dataset),
        "windows": len(lengths),
        "data": str(dataset.source),
        "base": str(base),
        "preset": PRESET,
        "variants": {name: {**VARIANTS[name], "model": str(path)} for name, path in models.items()},
        "profiles": {p: PROFILES[p].__dict__ for p in args.profiles},
        **machine_record(args.env, "x86_64"),
        "note": "load_s and windows_s are how long the jobs took, under emulation for emulated rows: no latency",
        "rows": rows,
        "pairwise": pairwise,
        "wall_s": round(time.monotonic() - t0, 1),
    }
    write_check(args.out, "avx2-check", report, table, predictions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
