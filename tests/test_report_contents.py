"""report.md, report.json and the plots in full, for a report that fills every section: each expected line written
by hand from the rows below, so a changed word, rounding or order in the report is caught."""

import datetime as dt

import pytest

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.markdown import to_markdown
from edgeqa.bench.report import build_report, make_row
from edgeqa.bench.targets import Target

MB = 2**20


def _lat(batch, seq, p50, p90=None, spread=None, throughput=None):
    timing = {
        "p50_ms": p50,
        "p90_ms": p90 or p50,
        "p99_ms": p50,
        "mean_ms": p50,
        "throughput": throughput or 1000 * batch / p50,
    }
    return {"batch_size": batch, "seq_len": seq, **timing, "runs": 30, "pass_spread": spread, "samples_ms": [p50]}


def _bench(model, mb, rss, latency):
    return {"backend": "onnxruntime", "model": model, "file_bytes": mb * MB, "peak_rss_mb": rss, "latency": latency}


WEIGHTS = {"parameters": 1_250_001, "file_bytes": 90 * MB}


def _rows():
    preset = {"chosen": "avx2", "fits_cpu": True, "cpu": {"isa": "avx2"}, "description": "avx2 preset"}
    return [
        make_row(
            "fp32",
            _bench("m/fp32", 90, 300.06, [_lat(1, 384, 40.0, 42.0, 0.05), _lat(1, 128, 12.5, throughput=80.0),
                                          _lat(4, 384, 150.0, throughput=26.666)]),
            {"exact_match": 70.123, "f1": 80.456, "batch_size": 16, "batch_dependent": False},
            {"weights": {**WEIGHTS, "matrix_sparsity": 0.0, "encoder_sparsity": 0.0, "gzip_bytes": 83 * MB},
             "making": [{"step": "export", "name": "fp32", "seconds": 600}]},
        ),
        make_row(
            "int8",
            _bench("m/int8", 23, 120.0, [_lat(1, 128, 4.0, throughput=250.0), _lat(1, 384, 10.0, 40.0)]),
            {"exact_match": 69.5, "f1": 79.9, "batch_size": 1, "batch_dependent": True},
            {"quantization": {"mode": "dynamic", "preset": preset},
             "making": [{"step": "export", "name": "fp32", "seconds": 600},
                        {"step": "quantize", "name": "int8", "seconds": None}]},
        ),
        make_row(
            "sparse",
            _bench("m/sparse", 90, 310.0, [_lat(1, 384, 38.0, 39.0, 0.3)]),
            {"exact_match": 65.0, "f1": 75.0},
            {"weights": {**WEIGHTS, "matrix_sparsity": 0.5, "encoder_sparsity": 0.6, "gzip_bytes": 50 * MB,
                         "per_layer_sparsity": {"0": 0.55, "1": 0.65}},
             "pruning": {"description": "magnitude 50% (layer, oneshot)"},
             "training": {"parameters": 1_250_001, "questions": 1000, "train_seconds": 600, "processes": 1},
             "making": [{"step": "prune", "name": "sparse"}]},
        ),
    ]  # fmt: skip


MACHINE = {"cpu": "AMD EPYC 9R14", "logical_cores": 2, "isa": "avx512_vnni", "flags": ["avx2", "avx512_vnni"]}
BENCH = {"threads": 2, "warmup": 1, "repeats": 30, "rounds": 3, "batch_sizes": [1, 4], "seq_lens": [384, 128]}
EVAL = {"data": "dev-v1.1.json", "limit": 100, "questions": 100, "settings": {}}


def _report(rows=None, machine=MACHINE, eval_info=EVAL, reference="fp32", **kwargs):
    return build_report("demo", rows or _rows(), reference, eval_info, BENCH, machine,
                        {"onnxruntime": "1.23.0", "numpy": "1.26.4"}, **kwargs)  # fmt: skip


EXPECTED = """\
# Latency-accuracy report: demo

Machine: AMD EPYC 9R14, 2 logical cores, int8 class avx512_vnni (flags: avx2, avx512_vnni); 2 intra-op threads. \
Latency at batch 1, sequence 384; 30 timed runs per shape after warm-up, in 3 interleaved passes over all variants.
Accuracy: SQuAD dev-v1.1.json (100 questions, first 100). Reference row: fp32. Pareto: no other row is as fast \
(p50 within 3%) and more accurate.

**Warnings** (⚠ in the table):

- int8: busy machine: p90 is 4.00x p50 (limit 1.50x)
- sparse: passes disagree: p50 moved 30% between passes (limit 25%)
- int8: quantized on a CPU of class avx2 (preset avx2), timed here on class avx512_vnni

| variant | backend | size MB | peak RSS MB | p50 ms | p90 ms | pass spread | speed-up | EM | F1 | ΔF1 \
| scored at batch | Pareto |
| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |
| fp32 | onnxruntime | 90.0 | 300 | 40.0 | 42.0 | 5.0% | 1.00x | 70.12 | 80.46 | +0.00 | 16 | yes |
| int8 | onnxruntime | 23.0 | 120 | 10.0 ⚠ | 40.0 | - | 4.00x | 69.50 | 79.90 | -0.56 | 1* | yes |
| sparse | onnxruntime | 90.0 | 310 | 38.0 ⚠ | 39.0 | 30.0% | 1.05x† | 65.00 | 75.00 | -5.46 | - |  |

\\* Answers depend on the batch (dynamic int8 scales activations per batch): scored at the batch size shown, 1 \
unless the recipe says otherwise, as such a model is deployed.

Int8 presets: int8: avx2 preset.

† The same dense kernels as another row, zeros the only difference: sparse (as fp32). The gap between their \
timings is noise, not a speed-up, and the front places such a row at its twin's time.

## Targets

Against the reference (fp32, F1 80.46): a target is met when a model at least that fast reaches that F1.

| target | latency | F1 needed | met | most accurate model at that speed | fastest model at that F1 |
| --- | --- | ---: | --- | --- | --- |
| >= 4x at >= 99% | 1x384 | 79.65 | yes | int8: 4.00x, F1 79.90 | int8: 4.00x, F1 79.90 |
| >= 1.5x at >= 100% | 1x384 | 80.38 | **no**: 0.48 F1 short | int8: 4.00x, F1 79.90 | fp32: 1.00x, F1 80.46 |
| >= 5x at >= 50% | 1x384 | 40.23 | **no**: no model is that fast | - | int8: 4.00x, F1 79.90 |

From the recipe:

- tried 3 layers

Other shapes (p50 ms / throughput in sequences per second):

| variant | b1 x 128 | b4 x 384 |
| --- | ---: | ---: |
| fp32 | 12.5 / 80.0 | 150.0 / 26.7 |
| int8 | 4.0 / 250.0 | - |
| sparse | - | - |

Weights, measured on each file:

| variant | parameters | zeros in weight matrices | in encoder layers | file MB | gzip MB | pruning |
| --- | ---: | ---: | ---: | ---: | ---: | --- |
| fp32 | 1.3M | 0.0% | 0.0% | 90.0 | 83.0 |  |
| sparse | 1.3M | 50.0% | 60.0% | 90.0 | 50.0 | magnitude 50% (layer, oneshot) |

Zeros in each encoder layer's weight matrices, measured on each file:

| variant | layer 0 | layer 1 |
| --- | ---: | ---: |
| sparse | 55.0% | 65.0% |

Trained here (distilled or fine-tuned):

| variant | parameters | training questions | training minutes | processes |
| --- | ---: | ---: | ---: | ---: |
| sparse | 1.3M | 1000 | 10.0 | 1 |

Time to make each variant (minutes per step, from the first step to the variant itself):

| variant | steps | total minutes |
| --- | --- | ---: |
| fp32 | export fp32 10.0 | 10.0 |
| int8 | export fp32 10.0, quantize int8 ? | 10.0 (some steps not recorded) |
| sparse | prune sparse ? | not recorded |

Notes:

- timed on a quiet machine

Versions: onnxruntime 1.23.0, numpy 1.26.4.
"""

TARGETS = (Target(4, 0.99), Target(1.5, 0.999), Target(5, 0.5))


def test_every_section_of_the_markdown_reads_as_written_by_hand():
    report = _report(notes=["timed on a quiet machine"], targets=TARGETS, recipe_notes=("tried 3 layers",))
    assert to_markdown(report).splitlines() == EXPECTED.splitlines()
    assert to_markdown(report).endswith("numpy 1.26.4.\n")


def test_a_bare_report_has_only_its_header_table_and_versions():
    """One row, one shape, nothing else: no warnings, targets, other shapes, weights, training, making or notes; a
    machine record without flags or class names the flags it has, and an evaluation without a limit says "all"."""
    machine = {"cpu": "Xeon", "logical_cores": 4, "avx2": True, "avx512_vnni": False, "amx_int8": True}
    bench = {"threads": 1, "warmup": 1, "repeats": 5, "batch_sizes": [1], "seq_lens": [64]}
    row = make_row("only", _bench("m", 1, 50.0, [_lat(1, 64, 2.0)]), {"exact_match": 50.0, "f1": 60.0})
    report = build_report("bare", [row], "only", {"data": "d.json", "limit": None, "questions": 7}, bench, machine,
                          {"numpy": "2"})  # fmt: skip
    assert to_markdown(report).splitlines() == [
        "# Latency-accuracy report: bare",
        "",
        "Machine: Xeon, 4 logical cores, int8 class ? (flags: avx2, amx_int8); 1 intra-op threads. Latency at batch 1, "
        "sequence 64; 5 timed runs per shape after warm-up, in 1 interleaved passes over all variants.",
        "Accuracy: SQuAD d.json (7 questions, all). Reference row: only. Pareto: no other row is as fast (p50 within "
        "3%) and more accurate.",
        "",
        "| variant | backend | size MB | peak RSS MB | p50 ms | p90 ms | pass spread | speed-up | EM | F1 | ΔF1 "
        "| scored at batch | Pareto |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
        "| only | onnxruntime | 1.0 | 50 | 2.0 | 2.0 | - | 1.00x | 50.00 | 60.00 | +0.00 | - | yes |",
        "",
        "Versions: numpy 2.",
    ]


def test_the_json_rows_hold_what_the_markdown_shows():
    """speed-up = reference p50 / p50 and the deltas against the reference, rounded to 3 places; p50 at the primary
    shape (the first batch size and the first length); the sparse row's twin; the front; file size in MB to 2
    places and peak memory to 1; no per-run samples."""
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    report = _report(notes=None)
    created = dt.datetime.fromisoformat(report["created"])
    assert before <= created <= dt.datetime.now(dt.timezone.utc) and report["created"].endswith("+00:00")
    assert report["schema"] == "edgeqa.report/1" and report["name"] == "demo" and report["reference"] == "fp32"
    assert report["primary_shape"] == {"batch_size": 1, "seq_len": 384}
    assert report["notes"] == [] and report["targets"] == [] and report["recipe_notes"] == []
    assert report["machine"] == MACHINE and report["bench"] == BENCH and report["eval"] == EVAL
    fp32, int8, sparse = report["rows"]
    assert {k: fp32[k] for k in ("name", "backend", "path", "file_mb", "peak_rss_mb", "exact_match", "f1")} == {
        "name": "fp32", "backend": "onnxruntime", "path": "m/fp32", "file_mb": 90.0, "peak_rss_mb": 300.1,
        "exact_match": 70.123, "f1": 80.456}  # fmt: skip
    computed = [(r["p50_ms"], r["speedup"], r["delta_em"], r["delta_f1"], r["pareto"]) for r in report["rows"]]
    assert computed == [(40.0, 1.0, 0.0, 0.0, True), (10.0, 4.0, -0.623, -0.556, True),
                        (38.0, 1.053, -5.123, -5.456, False)]  # fmt: skip
    assert (fp32["scored_batch_size"], int8["scored_batch_size"], sparse["scored_batch_size"]) == (16, 1, None)
    assert (fp32["batch_dependent"], int8["batch_dependent"], sparse["batch_dependent"]) == (False, True, None)
    assert sparse["same_kernels_as"] == "fp32" and "same_kernels_as" not in fp32 and "same_kernels_as" not in int8
    assert fp32["timing_flags"] == [] and int8["timing_flags"] == ["busy machine: p90 is 4.00x p50 (limit 1.50x)"]
    assert all("samples_ms" not in s for r in report["rows"] for s in r["latency"])
    assert [s["seq_len"] for s in fp32["latency"]] == [384, 128, 384] and fp32["latency"][0]["pass_spread"] == 0.05
    rounded = make_row("x", _bench("m", 1, 1.0, []), {"exact_match": 1.23456, "f1": 2.34567})
    assert (rounded["exact_match"], rounded["f1"]) == (1.235, 2.346)
    assert make_row("x", {**_bench("m", 1, 1.0, []), "file_bytes": 1234567}, {"exact_match": 1, "f1": 1})[
        "file_mb"] == 1.18  # fmt: skip


def test_a_row_without_the_primary_shape_is_refused_by_name():
    rows = _rows()
    rows[1]["latency"] = [s for s in rows[1]["latency"] if s["seq_len"] != 384]
    with pytest.raises(EdgeQAError, match=r"^variant int8 has no latency at batch 1, seq 384$"):
        _report(rows)
    with pytest.raises(EdgeQAError, match=r"^a report needs at least one variant$"):
        build_report("e", [], "fp32", EVAL, BENCH, MACHINE, {})
    with pytest.raises(EdgeQAError, match=r"^report reference 'nope' is not one of the variants: fp32, int8, sparse$"):
        build_report("e", _rows(), "nope", EVAL, BENCH, MACHINE, {})


@pytest.mark.parametrize(
    ("change", "twin"),
    [({}, "fp32"), ({"parameters": 22_600_001}, None), ({"backend": "torch"}, None), ({"mb": 99.0}, "fp32"),
     ({"mb": 98.9}, None), ({"fusion": {"model_type": "bert"}}, None), ({"quantization": {"mode": "dynamic"}}, None),
     ({"fusion": {"model_type": "bert"}, "both": True}, "fp32"),
     ({"zeros": 0.05}, None), ({"zeros": 0.051}, "fp32")],
)  # fmt: skip
def test_a_sparse_rows_twin_runs_the_same_kernels(change, twin):
    """The twin: same backend, parameters, fusion and quantization, file size within 1% of the larger (100 vs 99 MB
    is 1%, vs 98.9 MB 1.1%), and zeros above 5% of the matrices in the sparse row only."""
    dense_extra = {"fusion": change["fusion"]} if change.get("both") else {}  # fused alike: the same kernels
    dense = make_row("fp32", _bench("a", 100, 1.0, [_lat(1, 384, 40.0)]), {"exact_match": 1, "f1": 80.0},
                     {"weights": {"parameters": 22_600_000, "matrix_sparsity": 0.0}, **dense_extra})  # fmt: skip
    bench = {**_bench("b", 90, 1.0, [_lat(1, 384, 30.0)]), "backend": change.get("backend", "onnxruntime"),
             "file_bytes": int(change.get("mb", 100) * MB)}  # fmt: skip
    weights = {"parameters": change.get("parameters", 22_600_000), "matrix_sparsity": change.get("zeros", 0.5)}
    extra = {"weights": weights} | {k: change[k] for k in ("fusion", "quantization") if k in change}
    sparse = make_row("sparse", bench, {"exact_match": 1, "f1": 70.0}, extra)
    rows = {r["name"]: r for r in _report([dense, sparse])["rows"]}
    assert rows["sparse"].get("same_kernels_as") == twin
    assert rows["sparse"]["pareto"] == (twin is None)  # at the twin's 40 ms it is beaten; at its own 30 ms it is not
    assert rows["sparse"]["p50_ms"] == 30.0  # its measured time stays in the row either way


def test_the_front_counts_latencies_within_3_percent_as_equal():
    """At 100 ms and F1 80, a row at F1 79 joins the front only when clearly faster: below 97 ms. A row as
    accurate joins it at any time within 3%, and an equal row never beats another."""
    from edgeqa.bench.report import pareto_front

    best = {"name": "best", "p50_ms": 100.0, "f1": 80.0}
    assert pareto_front([best, {"name": "o", "p50_ms": 97.1, "f1": 79.0}]) == {"best"}
    assert pareto_front([best, {"name": "o", "p50_ms": 96.9, "f1": 79.0}]) == {"best", "o"}
    assert pareto_front([best, {"name": "o", "p50_ms": 102.9, "f1": 80.5}]) == {"o"}  # as fast, more accurate
    assert pareto_front([best, {"name": "o", "p50_ms": 103.1, "f1": 80.5}]) == {"best", "o"}
    assert pareto_front([best, {"name": "o", "p50_ms": 96.9, "f1": 80.0}]) == {"o"}  # clearly faster, as accurate
    assert pareto_front([best, {"name": "o", "p50_ms": 97.1, "f1": 80.0}]) == {"best", "o"}
    assert pareto_front([best, {"name": "o", "p50_ms": 90.0, "f1": 79.0}], tolerance=0.2) == {"best"}


def test_warnings_name_presets_made_for_another_cpu():
    def row(preset):
        return make_row("int8", _bench("m", 1, 1.0, [_lat(1, 384, 10.0)]), {"exact_match": 1, "f1": 1},
                        {"quantization": {"preset": preset}})  # fmt: skip

    here = {"chosen": "vnni", "cpu": {"isa": "avx512_vnni"}, "description": "d"}
    assert _report([row(here)], reference="int8")["warnings"] == []  # made for this class; fits_cpu absent: fits
    assert _report([row({**here, "fits_cpu": False, "warning": "w!"})], reference="int8")["warnings"] == ["int8: w!"]
    unnamed = {**MACHINE, "isa": None}  # a machine record that names no class: nothing to compare
    assert _report([row({**here, "cpu": {"isa": "avx2"}})], machine=unnamed, reference="int8")["warnings"] == []
    assert _report([row({**here, "cpu": {"isa": "amx"}})], reference="int8")["warnings"] == [
        "int8: quantized on a CPU of class amx (preset vnni), timed here on class avx512_vnni"]  # fmt: skip


@pytest.mark.parametrize(
    ("speedup", "share", "message"),
    [(0, 0.9, "speedup must be a positive number, got 0"), (-1.0, 0.9, "speedup"), (2, 0, "f1_share must be in"),
     (2, 1.001, r"f1_share must be in \(0, 1\], got 1.001"),
     ("2", 0.9, r"^target\.speedup should be float \| None, got '2'$")],
)  # fmt: skip
def test_a_target_out_of_range_is_refused(speedup, share, message):
    with pytest.raises(EdgeQAError, match=message):
        Target(speedup, share)


def test_a_target_parses_from_the_command_line():
    assert Target.parse("3:0.98") == Target(3.0, 0.98) and Target(1e-9, 1.0).f1_share == 1.0
    said = r"^a target is SPEEDUP:F1_SHARE or MSms:F1_SHARE such as 3:0.98 or 20ms:0.9, got '3'$"
    with pytest.raises(EdgeQAError, match=said):
        Target.parse("3")


def test_the_flags_a_machine_record_names_and_the_layers_a_row_lacks():
    """An older machine record without its flag list names the flags it has; a sparse row without a layer's figure
    shows "-" there; a report whose weighed rows are all dense has no per-layer table."""
    rows = _rows()
    half = make_row("half", _bench("m/h", 90, 1.0, [_lat(1, 384, 30.0)]), {"exact_match": 1, "f1": 70.0},
                    {"weights": {"matrix_sparsity": 0.3, "per_layer_sparsity": {"0": 0.3}}})  # fmt: skip
    md = to_markdown(_report([*rows, half], machine={"cpu": "EPYC", "logical_cores": 2, "avx512_vnni": True}))
    assert "int8 class ? (flags: avx512_vnni);" in md
    assert "| sparse | 55.0% | 65.0% |\n| half | 30.0% | - |" in md
    dense = [rows[0], make_row("dense2", _bench("m/d", 9, 1.0, [_lat(1, 384, 30.0)]), {"exact_match": 1, "f1": 70.0},
                               {"weights": {"matrix_sparsity": 0.01}})]  # fmt: skip
    md = to_markdown(_report(dense))
    assert "Weights, measured on each file:" in md and "Zeros in each encoder layer" not in md


def test_the_table_notes_list_every_preset_and_every_twin():
    from edgeqa.bench.markdown import _main_table_notes

    rows = [{"name": n, "extra": {"quantization": {"preset": {"description": f"{n} preset"}}}, "same_kernels_as": t}
            for n, t in (("a", "x"), ("b", "y"))]  # fmt: skip
    assert _main_table_notes({"rows": rows}) == [
        "",
        "Int8 presets: a: a preset; b: b preset.",
        "",
        "† The same dense kernels as another row, zeros the only difference: a (as x), b (as y). The gap between their "
        "timings is noise, not a speed-up, and the front places such a row at its twin's time.",
    ]


def test_targets_and_the_recipes_notes_each_make_the_section():
    only_targets = to_markdown(_report(targets=(Target(1, 1.0),)))
    assert "## Targets" in only_targets and "From the recipe:" not in only_targets
    # 100% of the reference's own F1, at its own speed: met by the reference itself, F1 compared as >=
    assert "| >= 1x at >= 100% | 1x384 | 80.46 | yes | fp32: 1.00x, F1 80.46 | fp32: 1.00x, F1 80.46 |" in only_targets
    only_notes = to_markdown(_report(recipe_notes=("tried 2 layers",)))
    assert "## Targets" in only_notes and "From the recipe:\n\n- tried 2 layers" in only_notes
    assert "| target |" not in only_notes


def test_the_fronts_tolerance_and_the_timing_limits_hold_at_their_edges():
    """Exact binary fractions, so the edges are exact: at a tolerance of 25%, 125 ms is as fast as 100 ms and 75 ms
    is not clearly faster; a pass spread of exactly 25% and a p90 of exactly 1.5 x p50 are still trusted."""
    from edgeqa.bench.report import pareto_front, timing_flags

    best = {"name": "best", "p50_ms": 100.0, "f1": 80.0}
    assert pareto_front([best, {"name": "o", "p50_ms": 125.0, "f1": 80.5}], tolerance=0.25) == {"o"}
    assert pareto_front([best, {"name": "o", "p50_ms": 75.0, "f1": 80.0}], tolerance=0.25) == {"best", "o"}
    assert timing_flags({"p50_ms": 30.0, "p90_ms": 45.0, "pass_spread": 0.25}) == []
