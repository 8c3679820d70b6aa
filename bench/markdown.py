"""report.md: the report as Markdown, one function per section, in the order a reader meets them."""

from __future__ import annotations

from typing import Any

from edgeqa.bench.report import LATENCY_TOLERANCE, QUESTION_FLAG, has_unstructured_sparsity
from edgeqa.bench.targets import Target


def to_markdown(report: dict[str, Any]) -> str:
    lines = _header(report)
    if report.get("warnings"):
        lines += ["**Warnings** (⚠ in the table):", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    lines += _main_table(report) + _main_table_notes(report) + _targets(report) + _choices(report)
    lines += _questions(report)
    lines += _other_shapes(report)
    lines += _weights(report)
    lines += _training(report) + _making(report)
    if report["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in report["notes"]]
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}.", ""]
    return "\n".join(lines)


def _header(report: dict[str, Any]) -> list[str]:
    shape, m, ev = report["primary_shape"], report["machine"], report["eval"]
    flags = m.get("flags") or [k for k in ("avx2", "avx512_vnni", "amx_int8") if m.get(k)]
    return [
        f"# Latency-accuracy report: {report['name']}",
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, int8 class {m.get('isa', '?')} (flags: "
        f"{', '.join(flags)}); {report['bench']['threads']} intra-op threads. Latency at batch {shape['batch_size']}, "
        f"sequence {shape['seq_len']}; {report['bench']['repeats']} timed runs per shape after warm-up, in "
        f"{report['bench'].get('rounds', 1)} interleaved passes over all variants.",
        f"Accuracy: SQuAD {ev.get('data')} ({ev.get('questions')} questions"
        + (f", first {ev['limit']}" if ev.get("limit") else ", all")
        + f"). Reference row: {report['reference']}. Pareto: no other row is as fast (p50 within "
        f"{LATENCY_TOLERANCE:.0%}) and more accurate.",
        "",
    ]


def _per_question(report: dict[str, Any]) -> bool:
    return any(r.get("question_p50_ms") is not None for r in report["rows"])


def _main_table(report: dict[str, Any]) -> list[str]:
    """One row per variant; with timings per real question, their p50 and speed-up beside those at the primary
    shape, the headers saying which is which."""
    shape, per_question = report["primary_shape"], _per_question(report)
    at = f" ({shape['batch_size']}x{shape['seq_len']})" if per_question else ""
    asked, aligned = (" p50 ms/question | speed-up/question |", " ---: | ---: |") if per_question else ("", "")
    lines = [
        f"| variant | backend | size MB | peak RSS MB | p50 ms{at} | p90 ms{at} | pass spread | speed-up{at} |{asked} "
        "EM | F1 | ΔF1 | scored at batch | Pareto |",
        f"| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |{aligned} ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in report["rows"]:
        s = next(x for x in r["latency"] if x["batch_size"] == shape["batch_size"] and x["seq_len"] == shape["seq_len"])
        spread = f"{s['pass_spread']:.1%}" if s.get("pass_spread") is not None else "-"
        flags = r.get("timing_flags") or []
        flag = " ⚠" if any(not f.startswith(QUESTION_FLAG) for f in flags) else ""
        batch = r.get("scored_batch_size") or "-"
        cells = ""
        if per_question:
            q_flag = " ⚠" if any(f.startswith(QUESTION_FLAG) for f in flags) else ""
            q50, q_up = r.get("question_p50_ms"), r.get("question_speedup")
            cells = f" {q50:.1f}{q_flag} |" if q50 is not None else " - |"
            cells += f" {q_up:.2f}x |" if q_up is not None else " - |"
        lines.append(
            f"| {r['name']} | {r['backend']} | {r['file_mb']:.1f} | {r['peak_rss_mb']:.0f} | {s['p50_ms']:.1f}{flag} | "
            f"{s['p90_ms']:.1f} | {spread} | {r['speedup']:.2f}x{'†' if r.get('same_kernels_as') else ''} |{cells} "
            f"{r['exact_match']:.2f} | {r['f1']:.2f} | {r['delta_f1']:+.2f} | "
            f"{batch}{'*' if r.get('batch_dependent') else ''} | {'yes' if r['pareto'] else ''} |"
        )
    return lines


def _questions(report: dict[str, Any]) -> list[str]:
    """Latency per real question: the sample, then per variant its windows, percentiles, speed-up and stage shares."""
    timed = [r for r in report["rows"] if r.get("question_latency")]
    if not timed:
        return []
    first = timed[0]["question_latency"]
    lines = [
        "",
        f"Latency per question: {first['questions']} questions of {first['data']} (drawn with seed {first['seed']}), "
        "each answered alone at batch 1, end to end: tokenisation, the model on each window at its own length, the "
        "span search. Shares: of the three stages' time.",
        "",
        "| variant | questions | windows | tokens per window | p50 ms | p90 ms | pass spread | speed-up | tokenise "
        "| model | span search |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in timed:
        q = r["question_latency"]
        spread = f"{q['pass_spread']:.1%}" if q.get("pass_spread") is not None else "-"
        up = f"{r['question_speedup']:.2f}x" if r.get("question_speedup") is not None else "-"
        shares = " | ".join(f"{v:.1%}" if v is not None else "-" for v in q["stage_share"].values())
        lines.append(
            f"| {r['name']} | {q['questions']} | {q['windows']} | {q['mean_tokens']:.1f} | {q['p50_ms']:.1f} | "
            f"{q['p90_ms']:.1f} | {spread} | {up} | {shares} |"
        )
    return lines


def _targets(report: dict[str, Any]) -> list[str]:
    """Each target met or missed, and by how much: the F1 the fastest-enough model lacks, the speed the
    accurate-enough model lacks; then what the recipe says was tried."""
    if not report.get("targets") and not report.get("recipe_notes"):
        return []
    ref = next(r for r in report["rows"] if r["name"] == report["reference"])
    lines = ["", "## Targets", ""]
    if report.get("targets"):
        lines += [
            f"Against the reference ({report['reference']}, F1 {ref['f1']:.2f}): a target is met when a model at "
            "least that fast reaches that F1.",
            "",
            "| target | latency | F1 needed | met | most accurate model at that speed | fastest model at that F1 |",
            "| --- | --- | ---: | --- | --- | --- |",
        ]
    for t in report.get("targets", []):
        best, fastest = t["best_at_speed"], t["fastest_at_f1"]
        if t["met"]:
            verdict = "yes"
        elif best is None:
            verdict = "**no**: no model is that fast"
        else:
            verdict = f"**no**: {t['f1_short']:.2f} F1 short"
        key = "speedup" if t.get("ms") is None else "ms"
        at_speed = f"{best['name']}: {_speed(best[key], key)}, F1 {best['f1']:.2f}" if best else "-"
        # Never none: the reference itself reaches any share of its own F1.
        at_f1 = f"{fastest['name']}: {_speed(fastest[key], key)}, F1 {fastest['f1']:.2f}"
        shape = report["primary_shape"]
        basis = "per question" if t.get("latency") == "questions" else f"{shape['batch_size']}x{shape['seq_len']}"
        lines.append(f"| {_target(t)} | {basis} | {t['f1_needed']:.2f} | {verdict} | {at_speed} | {at_f1} |")
    if report.get("recipe_notes"):
        lines += ["", "From the recipe:", ""] + [f"- {n}" for n in report["recipe_notes"]]
    return lines


def _speed(value: float, key: str) -> str:
    """A speed-up as `3.00x`, a latency (a target in ms) as `19.5 ms`."""
    return f"{value:.2f}x" if key == "speedup" else f"{value:.1f} ms"


def _target(t: dict[str, Any]) -> str:
    """A target as asked, from its record (a report's check, or a targets step's choice, whose speed-up is `target`)."""
    speedup = t["speedup"] if "speedup" in t else t["target"]
    return Target(speedup, t["f1_share"], t.get("latency"), t.get("ms")).describe()


def _preset(row: dict[str, Any]) -> dict | None:
    return (row["extra"].get("quantization") or {}).get("preset")


def _main_table_notes(report: dict[str, Any]) -> list[str]:
    """The footnotes the table's marks (*, †) and its int8 rows call for."""
    lines = []
    if any(r.get("batch_dependent") for r in report["rows"]):
        lines += [
            "",
            "\\* Answers depend on the batch (dynamic int8 scales activations per batch): scored at the batch size "
            "shown, 1 unless the recipe says otherwise, as such a model is deployed.",
        ]
    presets = [(r["name"], _preset(r)) for r in report["rows"] if _preset(r)]
    if presets:
        lines += ["", "Int8 presets: " + "; ".join(f"{n}: {p['description']}" for n, p in presets) + "."]
    twinned = [r for r in report["rows"] if r.get("same_kernels_as")]
    if twinned:
        pairs = ", ".join(f"{r['name']} (as {r['same_kernels_as']})" for r in twinned)
        lines += [
            "",
            f"† The same dense kernels as another row, zeros the only difference: {pairs}. The gap between their "
            "timings is noise, not a speed-up, and the front places such a row at its twin's time.",
        ]
    return lines


def _other_shapes(report: dict[str, Any]) -> list[str]:
    primary = tuple(report["primary_shape"].values())
    others = sorted({(s["batch_size"], s["seq_len"]) for r in report["rows"] for s in r["latency"]} - {primary})
    if not others:
        return []
    lines = ["", "Other shapes (p50 ms / throughput in sequences per second):", ""]
    header = " | ".join(f"b{b} x {n}" for b, n in others)
    lines += [f"| variant | {header} |", "| --- |" + " ---: |" * len(others)]
    for r in report["rows"]:
        cells = []
        for b, n in others:
            s = next((x for x in r["latency"] if x["batch_size"] == b and x["seq_len"] == n), None)
            cells.append(f"{s['p50_ms']:.1f} / {s['throughput']:.1f}" if s else "-")
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return lines


def _weights(report: dict[str, Any]) -> list[str]:
    weighed = [r for r in report["rows"] if r["extra"].get("weights")]
    if not weighed:
        return []
    lines = ["", "Weights, measured on each file:", ""]
    lines += ["| variant | parameters | zeros in weight matrices | in encoder layers | file MB | gzip MB | pruning |"]
    lines += ["| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in weighed:
        w, p = r["extra"]["weights"], r["extra"].get("pruning")
        params = f"{w['parameters'] / 1e6:.1f}M" if w.get("parameters") else "-"
        sparsity, encoder = (
            f"{w[k]:.1%}" if w.get(k) is not None else "-" for k in ("matrix_sparsity", "encoder_sparsity")
        )
        gz = f"{w['gzip_bytes'] / 2**20:.1f}" if w.get("gzip_bytes") else "-"
        raw = f"{w['file_bytes'] / 2**20:.1f}" if w.get("file_bytes") else "-"
        how = (p or {}).get("description", "")  # written by the pruning step (compress.prune_config.describe_pruning)
        lines.append(f"| {r['name']} | {params} | {sparsity} | {encoder} | {raw} | {gz} | {how} |")
    return lines + _layer_sparsity([r for r in weighed if has_unstructured_sparsity(r)])


def _layer_sparsity(sparse: list[dict[str, Any]]) -> list[str]:
    depth = max((len(r["extra"]["weights"].get("per_layer_sparsity") or {}) for r in sparse), default=0)
    if not depth:
        return []
    lines = ["", "Zeros in each encoder layer's weight matrices, measured on each file:", ""]
    lines += ["| variant | " + " | ".join(f"layer {i}" for i in range(depth)) + " |"]
    lines += ["| --- |" + " ---: |" * depth]
    for r in sparse:
        per = r["extra"]["weights"].get("per_layer_sparsity") or {}
        cells = [f"{per[str(i)]:.1%}" if str(i) in per else "-" for i in range(depth)]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return lines


def _training(report: dict[str, Any]) -> list[str]:
    trained = [r for r in report["rows"] if r["extra"].get("training")]
    if not trained:
        return []
    lines = ["", "Trained here (distilled or fine-tuned):", ""]
    lines += ["| variant | parameters | training questions | training minutes | processes |"]
    lines += ["| --- | ---: | ---: | ---: | ---: |"]
    for r in trained:
        t = r["extra"]["training"]
        lines.append(
            f"| {r['name']} | {t['parameters'] / 1e6:.1f}M | {t['questions']} | {t['train_seconds'] / 60:.1f} | "
            f"{t['processes']} |"
        )
    return lines


def _making(report: dict[str, Any]) -> list[str]:
    """How long each variant took to make, step by step along the chain of models it was made from."""
    made = [r for r in report["rows"] if r["extra"].get("making")]
    if not made:
        return []
    lines = ["", "Time to make each variant (minutes per step, from the first step to the variant itself):", ""]
    lines += ["| variant | steps | total minutes |", "| --- | --- | ---: |"]
    for r in made:
        steps = r["extra"]["making"]
        known = [s["seconds"] for s in steps if s.get("seconds") is not None]
        cells = ", ".join(
            f"{s['step']} {s['name']} " + (f"{s['seconds'] / 60:.1f}" if s.get("seconds") is not None else "?")
            for s in steps
        )
        if not known:
            total = "not recorded"  # made before step.json kept times
        else:
            total = f"{sum(known) / 60:.1f}" + ("" if len(known) == len(steps) else " (some steps not recorded)")
        lines.append(f"| {r['name']} | {cells} | {total} |")
    return lines


def _choices(report: dict[str, Any]) -> list[str]:
    """The shapes a recipe's targets step chose on a machine's shapes table, beside what this run measured."""
    if not report.get("choices"):
        return []
    first = report["choices"][0]
    lines = ["", "## Models for the targets", "",
             f"Shapes chosen from {first['table']} (timed on {first['cpu']}, int8 class {first['isa']}).", "",
             "| target | model | shape | why | predicted | measured | F1 (needed) | training min | met |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    for c in report["choices"]:
        target = f"{_target(c)} ({c['latency']}, over {c['over']})"
        key = "speedup" if c.get("ms") is None else "ms"
        predicted = _speed(c[f"predicted_{key}"], key)
        if c.get(f"measured_{key}") is None:
            lines.append(f"| {target} | {c['variant']} | {c['shape']} | {c['why']} | {predicted} "
                         "| not in this report | - | - | - |")  # fmt: skip
            continue
        slow = f"{c['speed_short']:.2f}x slow" if key == "speedup" else f"{c['speed_short']:.1f} ms slow"
        short = [slow if c["speed_short"] else "", f"{c['f1_short']:.2f} F1 short" if c["f1_short"] else ""]
        verdict = "yes" if c["met"] else "**no**: " + ", ".join(x for x in short if x)
        lines.append(f"| {target} | {c['variant']} | {c['shape']} | {c['why']} | {predicted} | "
                     f"{_speed(c[f'measured_{key}'], key)} | {c['f1']:.2f} ({c['f1_needed']:.2f}) | "
                     f"{c['training_minutes']:.1f} | {verdict} |")  # fmt: skip
    return lines
