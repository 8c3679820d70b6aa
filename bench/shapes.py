"""Candidate shapes of a teacher and their int8 latency on this machine: the table speed targets are read against.

The best model for a speed target depends on the CPU that runs it (the same pruned shapes were 1.5x faster, relative
to the int8 teacher, on a Zen 4 than on the AMX Xeon: docs/results/front.md), so the table is made per machine. A
shapes folder (`edgeqa shapes --model M --out DIR`) holds the teacher's int8 model and one int8 model per shape;
`time_shapes` times them side by side and writes DIR/shapes.json. It needs only the runtime install (no torch), so a
folder made on one machine can be copied to the target (an ARM board, a laptop), timed there, and its table brought
back. Each shape keeps real teacher weights (first layers, first heads, first FFN neurons) but is never trained: only
its latency means anything.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeqa.bench.files import EdgeQAError, read_json, write_json
from edgeqa.bench.latency import LatencyConfig, benchmark_interleaved, library_versions, machine_info
from edgeqa.bench.report import timing_flags

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"  # what a shapes folder holds, written when it is made
TABLE = "shapes.json"  # its timings on one machine
SCHEMA = "edgeqa.shapes/1"
TEACHER_INT8 = "teacher-int8"
PYTORCH_FP32 = "pytorch-fp32"
# Batch 1 at the teacher's full window, two threads, the front recipe's settings; two passes give each shape a spread.
SHAPES_BENCH = LatencyConfig(batch_sizes=(1,), seq_lens=(384,), warmup=10, repeats=40, threads=2, rounds=2)


@dataclass(frozen=True, order=True)
class Shape:
    """An encoder shape: `layers` layers, `heads` attention heads and `ffn` feed-forward neurons in each."""

    layers: int
    heads: int
    ffn: int

    def __post_init__(self) -> None:
        for key in ("layers", "heads", "ffn"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise EdgeQAError(f"a shape's {key} must be a positive whole number, got {value!r}")

    @property
    def name(self) -> str:
        return f"l{self.layers}-h{self.heads}-f{self.ffn}"

    @classmethod
    def parse(cls, name: str) -> Shape:
        """`l3-h4-f768`: 3 layers, 4 heads and 768 FFN neurons in each."""
        m = re.fullmatch(r"l(\d+)-h(\d+)-f(\d+)", name)
        if not m:
            raise EdgeQAError(f"a shape is written lLAYERS-hHEADS-fFFN such as l3-h4-f768, got {name!r}")
        return cls(*(int(g) for g in m.groups()))

    def fits(self, teacher: Shape) -> bool:
        return self.layers <= teacher.layers and self.heads <= teacher.heads and self.ffn <= teacher.ffn


# The default grid, as shares of the teacher's: depth at whole, two thirds, half and a third; heads at whole, two
# thirds, half, a third and a quarter (fewer than a quarter left slim-b's recovery far behind: docs/results/front.md);
# FFN at whole, half and a quarter (past a quarter, FFN neurons bought no speed on any CPU measured).
LAYER_SHARES = (1, 2 / 3, 1 / 2, 1 / 3)
HEAD_SHARES = (1, 2 / 3, 1 / 2, 1 / 3, 1 / 4)
FFN_SHARES = (1, 1 / 2, 1 / 4)


def _levels(full: int, shares: tuple[float, ...]) -> set[int]:
    return {max(1, round(full * s)) for s in shares}  # never below 1; candidate_shapes orders the grid


def candidate_shapes(
    teacher: Shape,
    layers: tuple[int, ...] | None = None,
    heads: tuple[int, ...] | None = None,
    ffn: tuple[int, ...] | None = None,
) -> list[Shape]:
    """Every combination of the levels of each axis (the default grid's where not given), the teacher's own shape
    left out (its int8 model is timed anyway), largest first."""
    axes = (
        layers or _levels(teacher.layers, LAYER_SHARES),
        heads or _levels(teacher.heads, HEAD_SHARES),
        ffn or _levels(teacher.ffn, FFN_SHARES),
    )
    shapes = sorted({Shape(n, h, f) for n in axes[0] for h in axes[1] for f in axes[2]}, reverse=True)
    bad = [s.name for s in shapes if not s.fits(teacher)]
    if bad:
        raise EdgeQAError(f"shapes larger than the teacher ({teacher.name}): {', '.join(bad)}")
    return [s for s in shapes if s != teacher]


def read_manifest(folder: Path) -> dict[str, Any]:
    manifest = read_json(folder / MANIFEST, "shapes manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shapes"), list):
        raise EdgeQAError(f"{folder / MANIFEST}: not a shapes manifest (no list of shapes)")
    for entry in manifest["shapes"]:
        if not (folder / entry["name"] / "model.onnx").exists():
            raise EdgeQAError(f"{folder / entry['name']}: the manifest lists this shape but its model.onnx is missing")
    if not (folder / TEACHER_INT8 / "model.onnx").exists():
        raise EdgeQAError(f"{folder / TEACHER_INT8}: the teacher's int8 model is missing")
    return manifest


def _torch_available() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a broken or deliberately blocked install
        return False


def time_shapes(folder: str | Path, cfg: LatencyConfig = SHAPES_BENCH, data: str | None = None) -> dict[str, Any]:
    """Time every shape of a folder beside the int8 teacher (and the PyTorch fp32 teacher where torch and the
    teacher's folder are here), in interleaved passes; write and return the table (folder/shapes.json)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    models: dict[str, tuple[str | Path, bool]] = {TEACHER_INT8: (folder / TEACHER_INT8, False)}
    teacher = Path(manifest.get("teacher", ""))
    if _torch_available() and (teacher / "config.json").exists():
        models[PYTORCH_FP32] = (teacher, False)
    else:
        log.info("the PyTorch fp32 teacher is not timed here (no torch, or no %s)", teacher)
    models.update({e["name"]: (folder / e["name"], False) for e in manifest["shapes"]})
    results = benchmark_interleaved(models, cfg, data=data)
    table = shapes_table(manifest, results, cfg)
    write_json(folder / TABLE, table)
    return table


def _timing(result: dict[str, Any]) -> dict[str, Any]:
    shape = result["latency"][0]
    timing = {k: shape.get(k) for k in ("p50_ms", "p90_ms", "pass_p50_ms", "pass_spread")}
    questions = result.get("questions")
    if questions:
        timing["question_p50_ms"] = questions.get("p50_ms")
        timing["question_p90_ms"] = questions.get("p90_ms")
    return {**timing, "flags": timing_flags(shape)}


def shapes_table(manifest: dict[str, Any], results: dict[str, dict], cfg: LatencyConfig) -> dict[str, Any]:
    """The table: machine, references' timings and each shape's, with its speed-ups over each reference and the
    flags of a timing not to be trusted; `busy` when any is flagged (such a table is refused by the target choice
    unless the user accepts it)."""
    references = {name: _timing(results[name]) for name in (TEACHER_INT8, PYTORCH_FP32) if name in results}
    shapes = []
    for entry in manifest["shapes"]:
        timing = _timing(results[entry["name"]])
        speedup = {ref: round(t["p50_ms"] / timing["p50_ms"], 3) for ref, t in references.items()}
        shapes.append({**entry, **timing, "speedup": speedup})
    flagged = [f"{name}: {flag}" for name, t in [*references.items(), *((s["name"], s) for s in shapes)]
               for flag in t["flags"]]  # fmt: skip
    first = next(iter(results.values()))
    return {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": first.get("machine") or machine_info(),
        "versions": first.get("versions") or library_versions(),
        "teacher": manifest.get("teacher"),
        "teacher_shape": manifest.get("teacher_shape"),
        "preset": manifest.get("preset"),
        "settings": cfg.to_dict(),
        "references": references,
        "busy": bool(flagged),
        "flags": flagged,
        "shapes": shapes,
    }


def read_shapes_table(path: str | Path) -> dict[str, Any]:
    """A shapes.json (or a shapes folder holding one), checked enough that a target choice can trust its fields."""
    path = Path(path)
    path = path / TABLE if path.is_dir() else path
    table = read_json(path, "shapes table")
    if not isinstance(table, dict) or table.get("schema") != SCHEMA:
        raise EdgeQAError(f"{path}: not an edgeqa shapes table (schema {SCHEMA})")
    for entry in table["shapes"]:
        Shape.parse(entry["name"])
        if not isinstance(entry.get("p50_ms"), int | float) or entry["p50_ms"] <= 0:
            raise EdgeQAError(f"{path}: shape {entry['name']} has no positive p50_ms")
    return table


def shapes_markdown(table: dict[str, Any]) -> list[str]:
    """The table as printed after timing, fastest first: p50 at the fixed shape and its speed-ups over each
    reference, and where the shapes were timed per question, the p50 per question and its speed-ups too."""
    refs = table["references"]
    per_question = all(s.get("question_p50_ms") for s in [*refs.values(), *table["shapes"]])
    head = ["shape", "parameters", "p50 ms", "pass spread", *(f"over {r}" for r in refs)]
    if per_question:
        head += ["p50 ms/question", *(f"over {r}, per question" for r in refs)]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for s in sorted(table["shapes"], key=lambda s: s["p50_ms"]):
        spread = f"{s['pass_spread']:.1%}" if s.get("pass_spread") is not None else "-"
        cells = [s["name"], f"{s['parameters'] / 1e6:.1f}M", f"{s['p50_ms']:.2f}", spread]
        cells += [f"{s['speedup'][r]:.2f}x" for r in refs]
        if per_question:
            q = s["question_p50_ms"]
            cells += [f"{q:.2f}", *(f"{ref['question_p50_ms'] / q:.2f}x" for ref in refs.values())]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
