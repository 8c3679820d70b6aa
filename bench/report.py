"""The latency-accuracy report: report.json (schema below), report.md and pareto.png for a set of variants
(and sparsity.png, F1 and compressed size against measured sparsity, when rows carry unstructured sparsity).

report.json, schema "edgeqa.report/1":
  name, created (UTC ISO time), machine {cpu, logical_cores, avx2, avx512f, avx512_vnni, amx_int8, arch, python},
  versions {library: version}, eval {data, limit, questions, settings}, bench {threads, warmup, repeats, rounds,
  batch_sizes, seq_lens, questions}, primary_shape {batch_size, seq_len}, reference (row name), notes [str], and rows,
  one per variant: name, backend, path, file_mb, peak_rss_mb, latency [{batch_size, seq_len, p50_ms, p90_ms, p99_ms,
  mean_ms, throughput, runs}], p50_ms (at the primary shape), speedup (reference p50 / p50), question_p50_ms,
  question_p90_ms, question_speedup and question_latency (per real question, `bench.question_latency`; None when not
  measured), exact_match, f1,
  delta_em and delta_f1 (against the reference), pareto (on the F1-latency front, latencies within 3% counting
  as equal), same_kernels_as (only on a row whose unstructured zeros are its one difference from another row; it
  stands on the front at that row's time), extra {free-form details such as parity, quantization settings,
  fusion, time shares, weights}; targets [{speedup, f1_share, latency, ms, f1_needed, met, best_at_speed,
  f1_short, fastest_at_f1}] when the report was asked to check any (bench/targets.py); recipe_notes [str], what
  the recipe's author says about them (what was tried).
All rows are timed in one run, in interleaved passes, so their ratios hold even on a noisy shared machine.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeqa.bench.files import EdgeQAError, atomic_file, write_json
from edgeqa.bench.question_latency import question_fields, question_speedups
from edgeqa.bench.targets import Target, check_targets

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Text

log = logging.getLogger(__name__)

SCHEMA = "edgeqa.report/1"


def make_row(name: str, bench: dict[str, Any], metrics: dict[str, Any], extra: dict[str, Any] | None = None) -> dict:
    """One report row from a `bench.latency.benchmark` result and a `bench.evaluate.evaluate` result."""
    return {
        "name": name,
        "backend": bench["backend"],
        "path": bench["model"],
        "file_mb": round(bench["file_bytes"] / 2**20, 2),
        "peak_rss_mb": round(bench["peak_rss_mb"], 1),
        "latency": [{k: v for k, v in s.items() if k != "samples_ms"} for s in bench["latency"]],
        "exact_match": round(metrics["exact_match"], 3),
        "f1": round(metrics["f1"], 3),
        "scored_batch_size": metrics.get("batch_size"),
        "batch_dependent": metrics.get("batch_dependent"),
        **question_fields(bench),
        "extra": extra or {},
    }


def has_unstructured_sparsity(row: dict[str, Any]) -> bool:
    """Whether a row's file holds zeros worth reporting (int8 zero points alone give about 1%)."""
    return ((row["extra"].get("weights") or {}).get("matrix_sparsity") or 0) > 0.05


# Latencies within 3% of each other count as equal on the front: repeated interleaved passes on these machines
# move p50 by 1-3%, and a model no faster than another (a sparse model on dense kernels) must not join the front
# on timing noise alone.
LATENCY_TOLERANCE = 0.03


# When a row's timing cannot be trusted. In quiet runs on the AMX machine the p50s of interleaved passes spread by
# 5-18% (one row 29%) and p90 stayed within 1.12x of p50; runs that shared the cores with another job spread by 84%
# and more, with p90 at 1.7x to 20x p50. The limits sit between the two (docs/machines.md has the measurements).
PASS_SPREAD_LIMIT = 0.25  # (max - min) / median of the per-pass p50s
TAIL_RATIO_LIMIT = 1.5  # p90 / p50
QUESTION_FLAG = "per question: "  # the start of a flag of the timing per real question


def timing_flags(shape: dict[str, Any], tail: bool = True) -> list[str]:
    """Why one shape's timing is not to be trusted (empty when it is): passes that disagree, or a long tail."""
    flags = []
    spread = shape.get("pass_spread")
    if spread is not None and spread > PASS_SPREAD_LIMIT:
        flags.append(f"passes disagree: p50 moved {spread:.0%} between passes (limit {PASS_SPREAD_LIMIT:.0%})")
    if tail and shape["p90_ms"] > TAIL_RATIO_LIMIT * shape["p50_ms"]:
        flags.append(
            f"busy machine: p90 is {shape['p90_ms'] / shape['p50_ms']:.2f}x p50 (limit {TAIL_RATIO_LIMIT:.2f}x)"
        )
    return flags


def pareto_front(rows: list[dict], tolerance: float = LATENCY_TOLERANCE) -> set[str]:
    """Rows that no other row beats: as fast (within `tolerance`) with a higher F1, or clearly faster at equal F1."""

    def beats(o: dict, r: dict) -> bool:
        as_fast = o["p50_ms"] <= r["p50_ms"] * (1 + tolerance)
        clearly_faster = o["p50_ms"] < r["p50_ms"] * (1 - tolerance)
        return o["f1"] >= r["f1"] and as_fast and (o["f1"] > r["f1"] or clearly_faster)

    return {r["name"] for r in rows if not any(o is not r and beats(o, r) for o in rows)}


def dense_twin(row: dict[str, Any], rows: list[dict]) -> dict | None:
    """The row that runs the same kernels as a row with unstructured sparsity: same backend, parameter count, raw
    file size (zeros are stored like any weight), graph fusion and quantization, no such sparsity. Dense kernels
    make the two equally fast, so a gap between their timings is noise; None when the report holds no such row."""
    w = row["extra"].get("weights") or {}
    if not has_unstructured_sparsity(row) or not w.get("parameters"):
        return None
    for o in rows:
        ow = o["extra"].get("weights") or {}
        if (
            o is not row
            and not has_unstructured_sparsity(o)
            and o["backend"] == row["backend"]
            and ow.get("parameters") == w["parameters"]
            and abs(o["file_mb"] - row["file_mb"]) <= 0.01 * max(o["file_mb"], row["file_mb"])
            and all(o["extra"].get(k) == row["extra"].get(k) for k in ("fusion", "quantization"))
        ):
            return o
    return None


def build_report(
    name: str,
    rows: list[dict],
    reference: str,
    eval_info: dict[str, Any],
    bench_info: dict[str, Any],
    machine: dict[str, Any],
    versions: dict[str, str],
    notes: list[str] | None = None,
    targets: tuple[Target, ...] = (),
    recipe_notes: tuple[str, ...] = (),
) -> dict[str, Any]:
    if not rows:
        raise EdgeQAError("a report needs at least one variant")
    by_name = {r["name"]: r for r in rows}
    if reference not in by_name:
        raise EdgeQAError(f"report reference {reference!r} is not one of the variants: {', '.join(by_name)}")
    primary = {"batch_size": bench_info["batch_sizes"][0], "seq_len": bench_info["seq_lens"][0]}
    for r in rows:
        match = [
            s for s in r["latency"] if s["batch_size"] == primary["batch_size"] and s["seq_len"] == primary["seq_len"]
        ]
        if not match:
            raise EdgeQAError(
                f"variant {r['name']} has no latency at batch {primary['batch_size']}, seq {primary['seq_len']}"
            )
        r["p50_ms"] = match[0]["p50_ms"]
        r["timing_flags"] = timing_flags(match[0])
        if r.get("question_latency"):  # only its passes: p90/p50 per question is the spread of question lengths
            r["timing_flags"] += [QUESTION_FLAG + f for f in timing_flags(r["question_latency"], tail=False)]
    ref = by_name[reference]
    question_speedups(rows, ref)
    # A sparse row is placed on the front at its dense twin's time: its own timing differs only by noise, which
    # on a busy 2-core machine reaches 15% and must not buy it a place (its measured p50 stays in the row).
    twins = {r["name"]: t for r in rows if (t := dense_twin(r, rows))}
    for r in rows:
        if r["name"] in twins:
            r["same_kernels_as"] = twins[r["name"]]["name"]
    front = pareto_front([{**r, "p50_ms": twins[r["name"]]["p50_ms"]} if r["name"] in twins else r for r in rows])
    for r in rows:
        r["speedup"] = round(ref["p50_ms"] / r["p50_ms"], 3)
        r["delta_em"] = round(r["exact_match"] - ref["exact_match"], 3)
        r["delta_f1"] = round(r["f1"] - ref["f1"], 3)
        r["pareto"] = r["name"] in front
    return {
        "schema": SCHEMA,
        "name": name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": versions,
        "eval": eval_info,
        "bench": bench_info,
        "primary_shape": primary,
        "reference": reference,
        "notes": notes or [],
        "warnings": report_warnings(rows, machine),
        "targets": check_targets(rows, ref, targets),
        "recipe_notes": list(recipe_notes),
        "rows": rows,
    }


def report_warnings(rows: list[dict], machine: dict[str, Any]) -> list[str]:
    """What a reader must know before trusting the table: untrustworthy timings, int8 presets made for another CPU."""
    out = [f"{r['name']}: {flag}" for r in rows for flag in r.get("timing_flags", [])]
    for r in rows:
        p = (r["extra"].get("quantization") or {}).get("preset")
        if p and not p.get("fits_cpu", True):
            out.append(f"{r['name']}: {p['warning']}")
        elif p and machine.get("isa") and p["cpu"]["isa"] != machine["isa"]:
            out.append(
                f"{r['name']}: quantized on a CPU of class {p['cpu']['isa']} (preset {p['chosen']}), timed here on "
                f"class {machine['isa']}"
            )
    return out


LABEL_DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1))  # right, left, up, ...
LABEL_SPOTS = tuple((d, dx, dy) for d in (6, 16, 28, 42) for dx, dy in LABEL_DIRECTIONS)  # d: points off the point
LEADER = {"arrowstyle": "-", "color": "0.45", "lw": 0.6, "shrinkA": 1, "shrinkB": 4}


def place_labels(
    ax: Axes, points: list[tuple[float, float]], labels: list[str], marker_size: float = 60, fontsize: float = 8
) -> list[Text]:
    """Label the points of a scatter plot where no label covers another label, a point or a line: fixed offsets
    print the names of close points over each other, and only drawn text has a size to test.

    Greedy, in display units, so call it once the axes are laid out: point by point in the given order, the spots
    around the point (right, left, above, below, the diagonals, then the same farther out), keeping the first whose
    text box stays inside the axes and hits no label placed before, no marker (`marker_size` as scatter's s) and no
    line on the axes; when none is free, the least bad. A label set away from its point gets a thin line to it.
    """
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    r = math.sqrt(marker_size) / 2 * fig.dpi / 72  # a marker's radius in pixels
    taken = [Bbox.from_extents(x - r, y - r, x + r, y + r) for x, y in ax.transData.transform(points)]
    lines = [line.get_transform().transform_path(line.get_path()) for line in ax.lines]
    texts = []
    for point, label in zip(points, labels, strict=True):
        best = None
        for spot in LABEL_SPOTS:
            text = _label(ax, label, point, spot, fontsize)
            box = text.get_window_extent(renderer)
            text.remove()
            hits = box.count_overlaps(taken) + sum(line.intersects_bbox(box, filled=False) for line in lines)
            cost = (not (frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)), hits)
            if best is None or cost < best[0]:
                best = (cost, spot, box)
            if cost == (False, 0):
                break
        cost, spot, box = best
        if cost != (False, 0):
            log.debug("no free spot for the label %r (outside the axes: %s, overlaps: %d)", label, *cost)
        texts.append(_label(ax, label, point, spot, fontsize, leader=spot[0] > LABEL_SPOTS[0][0]))
        taken.append(box.padded(2))  # a gap between neighbouring labels
    return texts


def _label(ax: Axes, label: str, point: tuple[float, float], spot: tuple[int, int, int], fontsize: float,
           leader: bool = False) -> Text:  # fmt: skip
    """`label` at `spot` (distance in points, x and y direction) from `point`, its near side or corner facing it."""
    d, dx, dy = spot
    return ax.annotate(label, point, xytext=(dx * d, dy * d), textcoords="offset points", fontsize=fontsize,
                       ha=("right", "center", "left")[dx + 1], va=("top", "center", "bottom")[dy + 1],
                       arrowprops=LEADER if leader else None)  # fmt: skip


def pareto_figure(report: dict[str, Any]) -> tuple[Figure, list[Text]]:
    """The Pareto plot, drawn but not saved, and its point labels: F1 against p50, the front a red step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    for r in rows:
        ax.scatter(r["p50_ms"], r["f1"], s=60, color="tab:red" if r["pareto"] else "tab:gray", zorder=3)
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["p50_ms"])
    if len(front) > 1:
        ax.step(
            [r["p50_ms"] for r in front],
            [r["f1"] for r in front],
            where="post",
            color="tab:red",
            alpha=0.6,
            label="Pareto front",
        )
    shape = report["primary_shape"]
    ax.set_xlabel(
        f"p50 latency, ms (batch {shape['batch_size']}, sequence {shape['seq_len']}, "
        f"{report['bench']['threads']} threads)"
    )
    ax.set_ylabel("SQuAD F1")
    ax.set_title(f"{report['name']}: F1 against latency")
    fig.tight_layout()  # the layout _save gives it, before the labels are placed in display units
    texts = place_labels(ax, [(r["p50_ms"], r["f1"]) for r in rows], [r["name"] for r in rows])
    if len(front) > 1:
        ax.legend(loc="best")  # after the labels, which "best" keeps clear of
    return fig, texts


def plot_pareto(report: dict[str, Any], path: Path) -> None:
    fig, _ = pareto_figure(report)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    """Grid, tight layout, written under a temporary name and renamed, figure closed."""
    import matplotlib.pyplot as plt

    fig.axes[0].grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _encoder_sparsity(row: dict[str, Any]) -> float | None:
    return (row["extra"].get("weights") or {}).get("encoder_sparsity")


def plot_sparsity(report: dict[str, Any], path: Path) -> bool:
    """F1 and gzip size against the zeros measured in each file's encoder matrices: the sparsity-accuracy curve.

    Drawn only when the report holds unstructured sparsity worth a curve (a row above 5%) and something to compare
    it with; returns whether it was.
    """
    rows = sorted((r for r in report["rows"] if _encoder_sparsity(r) is not None), key=_encoder_sparsity)
    if len(rows) < 2 or not any(has_unstructured_sparsity(r) for r in rows):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    points = [(100 * _encoder_sparsity(r), r["f1"]) for r in rows]
    ax.plot(*zip(*points, strict=True), "o-", color="tab:blue")
    ax.set_xlabel("zeros in the encoder layers' weight matrices, % (measured on the file)")
    ax.set_ylabel("SQuAD F1", color="tab:blue")
    sized = [r for r in rows if r["extra"]["weights"].get("gzip_bytes")]
    if sized:
        right = ax.twinx()
        x = [100 * _encoder_sparsity(r) for r in sized]
        right.plot(x, [r["extra"]["weights"]["gzip_bytes"] / 2**20 for r in sized], "s--", color="tab:green")
        right.set_ylabel("file size gzip-compressed, MB", color="tab:green")
        right.set_ylim(bottom=0)
    ax.margins(x=0.2)  # room for the labels of the sparsest points
    ax.set_title(f"{report['name']}: F1 and compressed size against sparsity")
    fig.tight_layout()
    place_labels(ax, points, [r["name"] for r in rows], marker_size=36)  # the curve's own line is an obstacle too
    _save(fig, path)
    return True


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    write_json(out_dir / "report.json", report)
    from edgeqa.bench.markdown import to_markdown

    with atomic_file(out_dir / "report.md") as tmp:
        tmp.write_text(to_markdown(report), encoding="utf-8")
    plot_pareto(report, out_dir / "pareto.png")
    paths = [out_dir / "report.json", out_dir / "report.md", out_dir / "pareto.png"]
    if plot_sparsity(report, out_dir / "sparsity.png"):
        paths.append(out_dir / "sparsity.png")
    return paths
