"""Latency per real question: a seeded sample of the eval data answered one question at a time, end to end.

Fixed shapes (batch 1 x 384) time the model at one length; a user's question is tokenised, its windows are run
one by one at their own lengths (most are far shorter than 384 tokens) and its answer is searched for. Attention's
cost grows with length faster than the rest, so two models can rank differently at real lengths than at 384. Each
question is timed as one wall-clock number over the three stages, through `QAModel.answer` at batch 1 (the same
windows, logits and span search as scoring), with each stage's share of the time.

Every model gets the same questions (the sample is drawn with a fixed seed), and every interleaved pass times all
of them, so the pass medians compare like with like. A report row carries the p50 and p90 per question and a
speed-up per question against the reference (`question_fields`, `question_speedups`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeqa.bench.qa import QAConfig
from edgeqa.bench.squad import SquadExample, load_squad

QUESTION_SEED = 0  # the sample of questions: the same for every model, run and pass
QUESTION_WARMUP = 3  # questions answered untimed first (at most the bench's warm-up count)
STAGES = {"tokenize": "tokenize_s", "model": "model_s", "spans": "postprocess_s"}  # ours: QAModel.answer's timings


def sample_questions(examples: Sequence[SquadExample], n: int, seed: int = QUESTION_SEED) -> list[SquadExample]:
    """`n` questions drawn without replacement with `seed` (all of them when there are fewer), in file order."""
    if n >= len(examples):
        return list(examples)
    picked = np.random.default_rng(seed).choice(len(examples), size=n, replace=False)
    return [examples[i] for i in sorted(picked.tolist())]


def time_questions(
    model, data: str | Path, n: int, qa: QAConfig = QAConfig(), warmup: int = QUESTION_WARMUP,
    seed: int = QUESTION_SEED,
) -> dict[str, Any]:  # fmt: skip
    """Time a loaded `QAModel` on `n` questions of `data`, each alone at batch 1 and end to end: tokenisation of its
    windows (unpadded), the model on each window at its own length, the span search."""
    dataset = load_squad(data)
    sample = sample_questions(dataset.examples, n, seed)
    for ex in sample[:warmup]:
        model.answer([ex], qa, batch_size=1, allow_null=dataset.is_v2, progress=False)
    samples, stage_s, windows, tokens = [], dict.fromkeys(STAGES, 0.0), 0, 0
    for ex in sample:
        stages: dict[str, float] = {}
        t0 = time.perf_counter()
        model.answer([ex], qa, batch_size=1, allow_null=dataset.is_v2, progress=False, timings=stages)
        samples.append((time.perf_counter() - t0) * 1e3)
        for stage, key in STAGES.items():
            stage_s[stage] += stages[key]
        windows, tokens = windows + stages["windows"], tokens + stages["tokens"]  # as the answer cut them
    section = {
        "data": str(data),
        "seed": seed,
        "qa": qa.to_dict(),
        "questions": len(sample),
        "windows": windows,
        "mean_tokens": round(tokens / windows, 1),
        "stage_ms": {k: round(v * 1e3, 4) for k, v in stage_s.items()},
    }
    return {**section, **summarise(samples, section["stage_ms"])}


def summarise(samples_ms: list[float], stage_ms: dict[str, float]) -> dict[str, Any]:
    """Percentiles of the per-question times and each stage's share of the three stages' time together."""
    samples = np.asarray(samples_ms)
    total = sum(stage_ms.values())
    return {
        "p50_ms": float(np.percentile(samples, 50)),
        "p90_ms": float(np.percentile(samples, 90)),
        "mean_ms": float(samples.mean()),
        "runs": len(samples),
        "stage_share": {k: round(v / total, 4) if total > 0 else None for k, v in stage_ms.items()},
        "samples_ms": [round(float(s), 4) for s in samples],
    }


def merge_question_passes(passes: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The question timings of all interleaved passes: their runs pooled, their stage times added, and each pass's
    p50 with their spread (max - min over the median), as `latency._merge_passes` does for a shape."""
    if not passes or passes[0] is None:
        return None
    stage_ms = {k: round(sum(p["stage_ms"][k] for p in passes), 4) for k in passes[0]["stage_ms"]}
    merged = {**passes[0], "stage_ms": stage_ms, **summarise([x for p in passes for x in p["samples_ms"]], stage_ms)}
    p50s = [round(float(p["p50_ms"]), 4) for p in passes]
    merged["pass_p50_ms"] = p50s
    merged["pass_spread"] = round((max(p50s) - min(p50s)) / float(np.median(p50s)), 4) if len(p50s) > 1 else None
    return merged


# --- in the report -------------------------------------------------------------------------------------------------


def question_fields(bench: dict[str, Any]) -> dict[str, Any]:
    """A report row's latency per question, from its benchmark result: p50 and p90, and the section without its
    runs; None for all three when it was not measured."""
    q = bench.get("questions")
    if not q:
        return {"question_p50_ms": None, "question_p90_ms": None, "question_latency": None}
    return {"question_p50_ms": q["p50_ms"], "question_p90_ms": q["p90_ms"],
            "question_latency": {k: v for k, v in q.items() if k != "samples_ms"}}  # fmt: skip


def question_speedups(rows: list[dict[str, Any]], reference: dict[str, Any]) -> None:
    """Each row's `question_speedup`: the reference's p50 per question over its own (None where either is missing)."""
    ref = reference.get("question_p50_ms")
    for r in rows:
        own = r.get("question_p50_ms")
        r["question_speedup"] = round(ref / own, 3) if ref and own else None
