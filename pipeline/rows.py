"""Report rows, one way for both ways in: a recipe's report step and `edgeqa report` build their rows here, from
each model's scores, timings and the records its folder (or the folders it was made from) carries."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgeqa.bench.files import read_json, write_json
from edgeqa.bench.latency import model_file_size
from edgeqa.bench.report import build_report, has_unstructured_sparsity, make_row
from edgeqa.bench.targets import LATENCY_KEYS, Target
from edgeqa.bench.weights import weight_stats
from edgeqa.compress.prune import describe_pruning
from edgeqa.export.quantize import describe_preset
from edgeqa.pipeline.records import inherited_record, made_id, making_times

log = logging.getLogger(__name__)

WEIGHT_PRESERVING_STEPS = ("export", "fuse", "quantize", "mobile")
PRUNING_KEYS = (
    "method",
    "settings",
    "pruned_matrices_sparsity",
    "per_layer",
    "heads_per_layer",
    "intermediate_size",
    "description",
)
TRAINING_KEYS = ("teacher", "parameters", "questions", "windows", "train_seconds", "processes", "device", "best")
NOTES = [
    "Latency: p50/p90/p99 of timed runs on synthetic full-length inputs after warm-up, gathered in passes "
    "over all variants (each pass a fresh process per variant; peak_rss_mb is the largest such process's "
    "peak). A rerun keeps a bench step's timings while all its variants are unchanged; if one is new or made "
    "again, all of them are timed again, side by side.",
    "Size: the weights file that ships (model.onnx, model.ort or model.safetensors); gzip MB is that file "
    "compressed, and sparsity the share of zeros in its weight matrices, both measured on the file.",
]
DENSE_KERNELS_NOTE = (
    "ONNX Runtime's CPU kernels are dense: zeros from unstructured pruning are multiplied like any other "
    "weight, so such sparsity shrinks the compressed file, not the latency. Structured pruning (fewer heads, "
    "narrower feed-forward layers) is what makes a model faster."
)


def model_records(path: Path, torch_int8: bool = False) -> dict[str, Any]:
    """What a model's folder says about how it was made: parity, quantization, fusion, pruning and training."""
    extra: dict[str, Any] = {}
    if not torch_int8:  # these describe the folder's own model, not the int8 one made from it at load
        for record in ("parity.json", "fusion.json"):
            if (path / record).exists():
                extra[record.removesuffix(".json")] = read_json(path / record)
        quantization = inherited_record(path, "quantization.json", ("mobile",))
        if quantization and quantization.get("preset"):  # records written before presets kept their description
            preset = quantization["preset"]
            quantization["preset"] = {**preset, "description": preset.get("description") or describe_preset(preset)}
        if quantization:
            extra["quantization"] = quantization
    pruning = inherited_record(path, "prune.json", WEIGHT_PRESERVING_STEPS)
    if pruning:
        extra["pruning"] = {
            **{k: pruning[k] for k in PRUNING_KEYS if k in pruning},
            "description": describe_pruning(pruning),
        }
    if (path / "training.json").exists():
        t = read_json(path / "training.json", "training record")
        extra["training"] = {k: t.get(k) for k in TRAINING_KEYS}
    making = making_times(path)
    if making:
        extra["making"] = making
    return extra


def weight_stats_cached(path: Path, cache: Path | None) -> dict:
    """Zeros, parameters, raw and gzip size of a model's file; cached while the file is unchanged."""
    # version 2 added ONNX parameter counts, 3 the encoder layers' share of zeros
    key = {"path": str(path), "bytes": model_file_size(path), "version": 3, "made": made_id(path)}
    if cache is not None and cache.exists() and read_json(cache).get("key") == key:
        return read_json(cache)["stats"]
    stats = weight_stats(path)
    if cache is not None:
        write_json(cache, {"key": key, "stats": stats})
    return stats


def report_row(name: str, path: Path, torch_int8: bool, metrics: dict, bench: dict, weights: dict) -> dict:
    """One row: scores, timings, the file's weight statistics and what the folder records about its making."""
    extra = {"overhead_share": metrics.get("overhead_share"), "timings": metrics.get("timings"),
             **model_records(path, torch_int8), "weights": weights}  # fmt: skip
    return make_row(name, bench, metrics, extra)


def assemble_report(
    name: str,
    rows: list[dict],
    reference: str,
    eval_info: dict,
    bench: dict,
    targets: tuple[Target, ...] = (),
    recipe_notes: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The report of rows timed together: `bench` is one row's timing result, whose settings and machine all share."""
    notes = NOTES + ([DENSE_KERNELS_NOTE] if any(has_unstructured_sparsity(r) for r in rows) else [])
    bench_info = {k: v for k, v in bench["settings"].items() if k != "torch_int8"}
    return build_report(name, rows, reference, eval_info, bench_info, bench["machine"], bench["versions"], notes,
                        targets, recipe_notes)  # fmt: skip


def eval_info(data: str, limit: int | None, metrics: dict) -> dict[str, Any]:
    return {"data": data, "limit": limit, "questions": metrics["total"], "settings": metrics["settings"]}


TRAINING_STEPS = ("distill", "prune")


def target_results(choices: list[dict], rows: list[dict], reference: str) -> list[dict[str, Any]]:
    """Each target's chosen shape beside what the run measured: the predicted speed-up and ms (the shapes table's)
    and the measured ones (this report's, over the same reference and latency), F1 against the share of the
    reference's the target asks, the minutes of training that made it, and met or by how much it is missed (in
    speed-up, or in ms for a target in ms)."""
    by_name = {r["name"]: r for r in rows}
    ref_f1 = by_name[reference]["f1"]
    out = []
    for choice in choices:
        row, over = by_name.get(choice["variant"]), by_name.get(choice["over"])
        result: dict[str, Any] = {**choice, "measured_speedup": None, "measured_ms": None, "f1": None, "met": False}
        key, ms_target = LATENCY_KEYS[choice["latency"]], choice.get("ms")
        ms = row.get(key) if row is not None else None
        speedup = over[key] / ms if ms and over is not None and over.get(key) else None
        if ms and (speedup or ms_target):
            fast = speedup >= choice["target"] if ms_target is None else ms <= ms_target
            short = choice["target"] - speedup if ms_target is None else ms - ms_target
            needed = choice["f1_share"] * ref_f1
            minutes = sum(m["seconds"] for m in row["extra"].get("making", []) if m["step"] in TRAINING_STEPS) / 60
            result.update(measured_speedup=round(speedup, 3) if speedup else None, measured_ms=round(ms, 3),
                          f1=row["f1"], f1_needed=round(needed, 2), training_minutes=round(minutes, 1),
                          met=fast and row["f1"] >= needed, speed_short=round(max(0.0, short), 3),
                          f1_short=round(max(0.0, needed - row["f1"]), 2))  # fmt: skip
        out.append(result)
    return out
