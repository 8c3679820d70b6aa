"""The latency-accuracy report: report.json (schema below), report.md and pareto.png for a set of variants
(and sparsity.png, F1 and compressed size against measured sparsity, when rows carry unstructured sparsity).

report.json, schema "edgeqa.report/1":
  name, created (UTC ISO time), machine {cpu, logical_cores, avx2, avx512f, avx512_vnni, amx_int8, arch, python},
  versions {library: version}, eval {data, limit, questions, settings}, bench {threads, warmup, repeats, rounds,
  batch_sizes, seq_lens}, primary_shape {batch_size, seq_len}, reference (row name), notes [str], and rows, one per
  variant: name, backend, path, file_mb, peak_rss_mb, latency [{batch_size, seq_len, p50_ms, p90_ms, p99_ms,
  mean_ms, throughput, runs}], p50_ms (at the primary shape), speedup (reference p50 / p50), exact_match, f1,
  delta_em and delta_f1 (against the reference), pareto (on the F1-latency front, latencies within 3% counting
  as equal), same_kernels_as (only on a row whose unstructured zeros are its one difference from another row; it
  stands on the front at that row's time), extra {free-form details such as parity, quantization settings,
  fusion, time shares, weights}.
All rows are timed in one run, in interleaved passes, so their ratios hold even on a noisy shared machine.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from edgeqa.bench.files import EdgeQAError, atomic_file, write_json

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


def timing_flags(shape: dict[str, Any]) -> list[str]:
    """Why one shape's timing is not to be trusted (empty when it is): passes that disagree, or a long tail."""
    flags = []
    spread = shape.get("pass_spread")
    if spread is not None and spread > PASS_SPREAD_LIMIT:
        flags.append(f"passes disagree: p50 moved {spread:.0%} between passes (limit {PASS_SPREAD_LIMIT:.0%})")
    if shape["p90_ms"] > TAIL_RATIO_LIMIT * shape["p50_ms"]:
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
    ref = by_name[reference]
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


def to_markdown(report: dict[str, Any]) -> str:
    shape = report["primary_shape"]
    m = report["machine"]
    ev = report["eval"]
    lines = [
        f"# Latency-accuracy report: {report['name']}",
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, int8 class {m.get('isa', '?')} (flags: "
        f"{', '.join(m.get('flags') or [k for k in ('avx2', 'avx512_vnni', 'amx_int8') if m.get(k)])}); "
        f"{report['bench']['threads']} intra-op threads. Latency at batch {shape['batch_size']}, sequence "
        f"{shape['seq_len']}; {report['bench']['repeats']} timed runs per shape after warm-up, in "
        f"{report['bench'].get('rounds', 1)} interleaved passes over all variants.",
        f"Accuracy: SQuAD {ev.get('data')} ({ev.get('questions')} questions"
        + (f", first {ev['limit']}" if ev.get("limit") else ", all")
        + f"). Reference row: {report['reference']}. Pareto: no other row is as fast (p50 within "
        f"{LATENCY_TOLERANCE:.0%}) and more accurate.",
        "",
    ]
    if report.get("warnings"):
        lines += ["**Warnings** (⚠ in the table):", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    lines += [
        "| variant | backend | size MB | peak RSS MB | p50 ms | p90 ms | pass spread | speed-up | EM | F1 | ΔF1 "
        "| scored at batch | Pareto |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in report["rows"]:
        s = next(x for x in r["latency"] if x["batch_size"] == shape["batch_size"] and x["seq_len"] == shape["seq_len"])
        spread = f"{s['pass_spread']:.1%}" if s.get("pass_spread") is not None else "-"
        flag = " ⚠" if r.get("timing_flags") else ""
        batch = r.get("scored_batch_size") or "-"
        lines.append(
            f"| {r['name']} | {r['backend']} | {r['file_mb']:.1f} | {r['peak_rss_mb']:.0f} | {s['p50_ms']:.1f}{flag} | "
            f"{s['p90_ms']:.1f} | {spread} | {r['speedup']:.2f}x{'†' if r.get('same_kernels_as') else ''} | "
            f"{r['exact_match']:.2f} | {r['f1']:.2f} | {r['delta_f1']:+.2f} | "
            f"{batch}{'*' if r.get('batch_dependent') else ''} | {'yes' if r['pareto'] else ''} |"
        )
    if any(r.get("batch_dependent") for r in report["rows"]):
        lines += [
            "",
            "\\* Answers depend on the batch (dynamic int8 scales activations per batch): scored at the batch size "
            "shown, 1 unless the recipe says otherwise, as such a model is deployed.",
        ]
    presets = [(r["name"], r["extra"]["quantization"]["preset"]) for r in report["rows"] if _preset(r)]
    if presets:
        lines += ["", "Int8 presets: " + "; ".join(
            f"{n}: {p['chosen']} ({'chosen for' if p['asked'] == 'auto' else 'named, made on'} a CPU of class "
            f"{p['cpu']['isa']}{'' if p['fits_cpu'] else ', does not fit it'})" for n, p in presets
        ) + "."]  # fmt: skip
    twinned = [r for r in report["rows"] if r.get("same_kernels_as")]
    if twinned:
        pairs = ", ".join(f"{r['name']} (as {r['same_kernels_as']})" for r in twinned)
        lines += [
            "",
            f"† The same dense kernels as another row, zeros the only difference: {pairs}. The gap between their "
            "timings is noise, not a speed-up, and the front places such a row at its twin's time.",
        ]
    others = sorted(
        {(s["batch_size"], s["seq_len"]) for r in report["rows"] for s in r["latency"]} - {tuple(shape.values())}
    )
    if others:
        lines += ["", "Other shapes (p50 ms / throughput in sequences per second):", ""]
        header = " | ".join(f"b{b} x {n}" for b, n in others)
        lines += [f"| variant | {header} |", "| --- |" + " ---: |" * len(others)]
        for r in report["rows"]:
            cells = []
            for b, n in others:
                s = next((x for x in r["latency"] if x["batch_size"] == b and x["seq_len"] == n), None)
                cells.append(f"{s['p50_ms']:.1f} / {s['throughput']:.1f}" if s else "-")
            lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    weighed = [r for r in report["rows"] if r["extra"].get("weights")]
    if weighed:
        lines += ["", "Weights, measured on each file:", ""]
        lines += [
            "| variant | parameters | zeros in weight matrices | in encoder layers | file MB | gzip MB | pruning |"
        ]
        lines += ["| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in weighed:
            w, p = r["extra"]["weights"], r["extra"].get("pruning")
            params = f"{w['parameters'] / 1e6:.1f}M" if w.get("parameters") else "-"
            sparsity, encoder = (
                f"{w[k]:.1%}" if w.get(k) is not None else "-" for k in ("matrix_sparsity", "encoder_sparsity")
            )
            gz = f"{w['gzip_bytes'] / 2**20:.1f}" if w.get("gzip_bytes") else "-"
            raw = f"{w['file_bytes'] / 2**20:.1f}" if w.get("file_bytes") else "-"
            lines.append(f"| {r['name']} | {params} | {sparsity} | {encoder} | {raw} | {gz} | {_describe_pruning(p)} |")
        sparse = [r for r in weighed if has_unstructured_sparsity(r)]
        depth = max((len(r["extra"]["weights"].get("per_layer_sparsity") or {}) for r in sparse), default=0)
        if depth:
            lines += ["", "Zeros in each encoder layer's weight matrices, measured on each file:", ""]
            lines += ["| variant | " + " | ".join(f"layer {i}" for i in range(depth)) + " |"]
            lines += ["| --- |" + " ---: |" * depth]
            for r in sparse:
                per = r["extra"]["weights"].get("per_layer_sparsity") or {}
                cells = [f"{per[str(i)]:.1%}" if str(i) in per else "-" for i in range(depth)]
                lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    trained = [r for r in report["rows"] if r["extra"].get("training")]
    if trained:
        lines += ["", "Trained here (distilled or fine-tuned):", ""]
        lines += ["| variant | parameters | training questions | training minutes | processes |"]
        lines += ["| --- | ---: | ---: | ---: | ---: |"]
        for r in trained:
            t = r["extra"]["training"]
            lines.append(
                f"| {r['name']} | {t['parameters'] / 1e6:.1f}M | {t['questions']} | {t['train_seconds'] / 60:.1f} | "
                f"{t['processes']} |"
            )
    if report["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in report["notes"]]
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}.", ""]
    return "\n".join(lines)


def _preset(row: dict[str, Any]) -> dict | None:
    return (row["extra"].get("quantization") or {}).get("preset")


SELECTION_WORDS = {"input": "chosen by |w| x input RMS", "obs": "chosen by OBS saliency"}  # compress.prune's select


def _describe_pruning(p: dict[str, Any] | None) -> str:
    """One cell: what the pruning step asked for (what the file holds is in the other columns)."""
    if not p:
        return ""
    cfg = p.get("settings") or {}
    if p.get("method") == "structured":
        parts = [f"heads per layer {p['heads_per_layer']}" if p.get("heads_per_layer") else f"heads {cfg.get('heads')}"]
        parts.append(f"FFN {p['intermediate_size']}" if p.get("intermediate_size") else f"FFN {cfg.get('ffn')}")
        return f"structured ({cfg.get('importance', 'magnitude')}): " + ", ".join(parts)
    pattern = cfg.get("pattern", "1x1")
    shape = "" if pattern == "1x1" else f" {pattern}"
    how = [cfg.get("scope"), cfg.get("schedule")]
    if cfg.get("initial"):
        how[-1] += f" from {cfg['initial']:.0%}"
    select = cfg.get("select", "magnitude")
    if select != "magnitude":
        how.append(SELECTION_WORDS.get(select, f"chosen by {select}"))
    if cfg.get("refit"):
        how.append(f"refit to {cfg.get('refit_to', 'matrix')}")  # records from before refit_to: per matrix
    return f"magnitude{shape} {cfg.get('sparsity', 0):.0%} ({', '.join(str(h) for h in how)})"


def plot_pareto(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    x_span = max(r["p50_ms"] for r in rows) - min(r["p50_ms"] for r in rows) or 1.0
    y_span = max(r["f1"] for r in rows) - min(r["f1"] for r in rows) or 1.0
    placed: list[tuple[float, float]] = []
    for r in rows:
        ax.scatter(r["p50_ms"], r["f1"], s=60, color="tab:red" if r["pareto"] else "tab:gray", zorder=3)
        # Labels of points that nearly coincide are stacked downwards instead of printed over each other.
        near = sum(abs(r["p50_ms"] - x) < 0.08 * x_span and abs(r["f1"] - y) < 0.04 * y_span for x, y in placed)
        placed.append((r["p50_ms"], r["f1"]))
        ax.annotate(
            r["name"], (r["p50_ms"], r["f1"]), textcoords="offset points", xytext=(6, 4 - 11 * near), fontsize=8
        )
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
        ax.legend(loc="best")
    shape = report["primary_shape"]
    ax.set_xlabel(
        f"p50 latency, ms (batch {shape['batch_size']}, sequence {shape['seq_len']}, "
        f"{report['bench']['threads']} threads)"
    )
    ax.set_ylabel("SQuAD F1")
    ax.set_title(f"{report['name']}: F1 against latency")
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
    ax.plot([100 * _encoder_sparsity(r) for r in rows], [r["f1"] for r in rows], "o-", color="tab:blue")
    for r in rows:
        ax.annotate(r["name"], (100 * _encoder_sparsity(r), r["f1"]), textcoords="offset points", xytext=(5, 5))
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
    _save(fig, path)
    return True


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    write_json(out_dir / "report.json", report)
    with atomic_file(out_dir / "report.md") as tmp:
        tmp.write_text(to_markdown(report), encoding="utf-8")
    plot_pareto(report, out_dir / "pareto.png")
    paths = [out_dir / "report.json", out_dir / "report.md", out_dir / "pareto.png"]
    if plot_sparsity(report, out_dir / "sparsity.png"):
        paths.append(out_dir / "sparsity.png")
    return paths
