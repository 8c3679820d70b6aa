"""`make arm64-check`'s pure side: runs turned into the report. Per-window logits assembled into bench.qa's layout,
two runs compared (identical answers, largest logit difference), the u8 x s8 probe's expected outputs and verdict,
the markdown table, and the files written. No emulator, no models: tests/test_arm64_check.py checks it natively.

export/emulation/avx2_check.py writes its report with the same functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeqa.bench.files import EdgeQAError, write_json

# CPU features that decide ONNX Runtime's int8 kernels on aarch64, in the order the report lists them.
KEY_FEATURES = ("asimddp", "i8mm", "sve", "sve2", "sme")


def assemble_logits(saved: Mapping[str, np.ndarray], lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-window logits from the runner (`w{i}.start`/`w{i}.end`) as (windows, longest) arrays, -inf past the end.

    This is the layout bench.qa.best_spans takes, the same that bench.engines.QAModel.logits builds.
    """
    width = int(max(lengths))
    start = np.full((len(lengths), width), -np.inf, dtype=np.float32)
    end = np.full_like(start, -np.inf)
    for i, n in enumerate(lengths):
        s, e = saved[f"w{i}.start"], saved[f"w{i}.end"]
        if s.shape != (n,) or e.shape != (n,):
            raise EdgeQAError(f"window {i}: logits shaped {s.shape}/{e.shape}, expected ({n},)")
        start[i, :n], end[i, :n] = s, e
    return start, end


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| over the positions both hold (the -inf padding is no difference)."""
    if a.shape != b.shape:
        raise EdgeQAError(f"cannot compare logits shaped {a.shape} and {b.shape}")
    real = np.isfinite(a) & np.isfinite(b)
    if (np.isfinite(a) != np.isfinite(b)).any():
        raise EdgeQAError("the two runs disagree on where windows end")
    return float(np.abs(a[real] - b[real]).max()) if real.any() else 0.0


def same_answer_share(reference: Mapping[str, str], other: Mapping[str, str]) -> float:
    """The share of questions whose answer text is identical, character for character."""
    if set(reference) != set(other):
        raise EdgeQAError("the two runs answered different questions")
    if not reference:
        return 1.0
    return sum(reference[q] == other[q] for q in reference) / len(reference)


def key_features(features: str) -> str:
    """The int8-relevant part of a /proc/cpuinfo Features line, e.g. 'asimddp i8mm sve sme'."""
    have = set(features.split())
    return " ".join(f for f in KEY_FEATURES if f in have) or "-"


# The u8 x s8 saturation probe: one MatMulInteger, an all-255 uint8 row times int8 columns of one value each.
# Per pair of products, 255*127*2 = 64770 and 255*-128*2 = -65280 overflow int16 (vpmaddubsw, AVX2 and AVX-512
# without VNNI, saturates them to 32767/-32768); 255*63*2 = 32130 (7-bit weights) does not. VNNI, AMX and ARM's
# dot products sum in 32 bits and return the exact products.
PROBE_K = 64
PROBE_WEIGHTS = (127, -128, 63)


def probe_expected(saturating_pairs: bool) -> list[int]:
    """What the probe returns with exact 32-bit sums, or with each pair of products saturated to int16."""
    pair = 2 * 255
    if not saturating_pairs:
        return [PROBE_K * 255 * w for w in PROBE_WEIGHTS]
    return [PROBE_K // 2 * min(max(pair * w, -32768), 32767) for w in PROBE_WEIGHTS]


def probe_verdict(output: Sequence[int] | None) -> str:
    """'exact', 'saturated' (16-bit pair sums) or 'unexpected ...' for a probe's output; '-' when it did not run."""
    if output is None:
        return "-"
    got = [int(v) for v in output]
    for verdict, saturating in (("exact", False), ("saturated", True)):
        if got == probe_expected(saturating):
            return verdict
    return f"unexpected {got}"


def render_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The report's markdown table: one row per (model, run), x86 first, EM/F1 beside the x86 run's."""
    lines = [
        "| model | run (QEMU_CPU) | int8 features seen | identical answers vs x86 | max abs logit diff "
        "| EM | F1 | x86 EM | x86 F1 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        run = r["profile"] if r["qemu_cpu"] is None else f"{r['profile']} ({r['qemu_cpu']})"
        lines.append(
            f"| {r['model']} | {run} | {key_features(r['cpu_features']) if r['qemu_cpu'] else 'x86'} "
            f"| {100 * r['same_answer_share']:.1f}% | {r['max_abs_logit_diff']:.2e} "
            f"| {r['exact_match']:.2f} | {r['f1']:.2f} | {r['x86_exact_match']:.2f} | {r['x86_f1']:.2f} |"
        )
    return "\n".join(lines)


def compare_runs(
    reference: tuple[np.ndarray, np.ndarray, dict[str, str], dict[str, float]],
    run: tuple[np.ndarray, np.ndarray, dict[str, str], dict[str, float]],
) -> dict[str, float]:
    """One report row's numbers from (start, end, predictions, metrics) of the x86 run and of another run."""
    ref_start, ref_end, ref_pred, ref_metrics = reference
    start, end, pred, metrics = run
    return {
        "same_answer_share": same_answer_share(ref_pred, pred),
        "max_abs_logit_diff": max(max_abs_diff(ref_start, start), max_abs_diff(ref_end, end)),
        "exact_match": metrics["exact_match"],
        "f1": metrics["f1"],
        "x86_exact_match": ref_metrics["exact_match"],
        "x86_f1": ref_metrics["f1"],
    }


def write_check(out: Path, name: str, report: dict, table: str, predictions: dict) -> None:
    """NAME.json, NAME.md (the table under one line on what ran where) and predictions.json; the table printed."""
    write_json(out / f"{name}.json", report)
    write_json(out / "predictions.json", predictions)
    (out / f"{name}.md").write_text(
        f"First {report['questions']} SQuAD v1.1 dev questions ({report['windows']} windows), batch 1, 1 thread per "
        f"run; host {report['host_cpu']} (family/model {report['host_cpu_family_model']}), {report['qemu']}.\n\n"
        f"{table}\n",
        encoding="utf-8",
    )
    print(table)
    print(f"wrote {out / f'{name}.json'} and {name}.md ({report['wall_s']:.0f} s)")
