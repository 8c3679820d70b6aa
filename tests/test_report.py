"""The report: Pareto front, deltas against the reference, and the three files."""

import json

import pytest

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.markdown import to_markdown
from edgeqa.bench.report import build_report, make_row, pareto_front, plot_sparsity, write_report
from edgeqa.bench.targets import Target
from edgeqa.compress.prune import describe_pruning


def _bench(p50, model="m"):
    lat = [
        {
            "batch_size": 1,
            "seq_len": 384,
            "p50_ms": p50,
            "p90_ms": p50 * 1.1,
            "p99_ms": p50 * 1.2,
            "mean_ms": p50,
            "throughput": 1000 / p50,
            "runs": 10,
            "samples_ms": [p50] * 10,
        }
    ]
    return {"backend": "onnxruntime", "model": model, "file_bytes": 2**20, "peak_rss_mb": 100.0, "latency": lat}


def _rows():
    return [
        make_row("fp32", _bench(50.0), {"exact_match": 72.0, "f1": 82.0}),
        make_row("int8", _bench(25.0), {"exact_match": 71.0, "f1": 81.0}),
        make_row("slow-bad", _bench(60.0), {"exact_match": 70.0, "f1": 80.0}),
        make_row("fast-bad", _bench(20.0), {"exact_match": 60.0, "f1": 70.0}),
    ]


def _report(rows, reference="fp32", **kwargs):
    return build_report(
        "t",
        rows,
        reference,
        {"data": "dev", "limit": 10, "questions": 10, "settings": {}},
        {"threads": 2, "warmup": 1, "repeats": 10, "batch_sizes": [1], "seq_lens": [384]},
        {"cpu": "x", "logical_cores": 2, "avx2": True, "avx512_vnni": True},
        {"numpy": "1"},
        **kwargs,
    )


def test_pareto_front_and_deltas():
    report = _report(_rows())
    rows = {r["name"]: r for r in report["rows"]}
    assert {n for n, r in rows.items() if r["pareto"]} == {"fp32", "int8", "fast-bad"}
    assert rows["int8"]["speedup"] == 2.0 and rows["int8"]["delta_f1"] == -1.0
    assert "samples_ms" not in rows["int8"]["latency"][0]
    assert pareto_front([{"name": "a", "p50_ms": 1, "f1": 1}, {"name": "b", "p50_ms": 1, "f1": 1}]) == {"a", "b"}
    # 1% faster is timing noise, not a place on the front for a less accurate model; 10% faster is.
    dense, sparse = {"name": "dense", "p50_ms": 31.0, "f1": 81.4}, {"name": "sparse", "p50_ms": 30.6, "f1": 77.3}
    assert pareto_front([dense, sparse]) == {"dense"}
    assert pareto_front([dense, {**sparse, "p50_ms": 28.0}]) == {"dense", "sparse"}


def test_sparse_row_is_timed_on_the_front_at_its_dense_twins_time():
    def weights(zeros):
        return {"weights": {"parameters": 22_600_000, "matrix_sparsity": zeros}}

    def bench(p50, mb):
        return {**_bench(p50), "file_bytes": int(mb * 2**20)}

    rows = [
        make_row("fp32", bench(50.0, 86.1), {"exact_match": 72.0, "f1": 82.0}, weights(0.0)),
        # 15% faster on the clock, but the same matrices with zeros in them: noise, not a speed-up
        make_row("sparse", bench(43.0, 86.1), {"exact_match": 62.0, "f1": 74.0}, weights(0.38)),
        # int8 of a sparse model: a quarter of the file, other kernels, really faster
        make_row("sparse-int8", bench(25.0, 21.7), {"exact_match": 61.0, "f1": 73.0}, weights(0.38)),
    ]
    report = _report(rows)
    by = {r["name"]: r for r in report["rows"]}
    assert by["sparse"]["same_kernels_as"] == "fp32" and not by["sparse"]["pareto"]
    assert by["sparse"]["p50_ms"] == 43.0 and by["sparse"]["speedup"] == round(50 / 43, 3)  # measured time kept
    assert "same_kernels_as" not in by["sparse-int8"] and by["sparse-int8"]["pareto"] and by["fp32"]["pareto"]
    md = to_markdown(report)
    assert "sparse (as fp32)" in md and "| 1.16x† |" in md and "| 2.00x |" in md
    # fused, the sparse model runs other kernels than the unfused dense one: its own time counts
    fused = make_row("sparse", bench(43.0, 86.1), {"exact_match": 62.0, "f1": 74.0}, {**weights(0.38), "fusion": {}})
    assert "same_kernels_as" not in {r["name"]: r for r in _report([rows[0], fused])["rows"]}["sparse"]
    # with no dense twin in the report, the sparse row's own time counts
    alone = _report([rows[1], make_row("slow", bench(60.0, 50.0), {"exact_match": 1.0, "f1": 2.0})], "sparse")
    assert {r["name"] for r in alone["rows"] if r["pareto"]} == {"sparse"}


def test_write_report_files(tmp_path):
    paths = write_report(_report(_rows()), tmp_path)
    assert [p.name for p in paths] == ["report.json", "report.md", "pareto.png"]
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["schema"] == "edgeqa.report/1" and len(data["rows"]) == 4
    md = (tmp_path / "report.md").read_text()
    assert "| int8 | onnxruntime | 1.0 | 100 | 25.0 |" in md and "2.00x" in md
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sparsity_curve_only_for_sparse_rows(tmp_path):
    def weighed(name, f1, zeros):
        w = {"encoder_sparsity": zeros, "matrix_sparsity": zeros / 2, "gzip_bytes": int((1 - zeros) * 2**20)}
        return make_row(name, _bench(50.0), {"exact_match": f1, "f1": f1}, {"weights": w})

    dense_only = _report([weighed("fp32", 82.0, 0.0), weighed("slim", 81.0, 0.0)])
    assert not plot_sparsity(dense_only, tmp_path / "a.png") and not (tmp_path / "a.png").exists()
    curve = _report([weighed("fp32", 82.0, 0.0), weighed("s50", 80.0, 0.5), weighed("s80", 70.0, 0.8)])
    paths = write_report(curve, tmp_path)
    assert paths[-1].name == "sparsity.png" and paths[-1].read_bytes()[:4] == b"\x89PNG"
    assert "| s50 | - | 25.0% | 50.0% |" in (tmp_path / "report.md").read_text()


def test_reference_must_be_a_row():
    with pytest.raises(EdgeQAError, match="not one of the variants"):
        _report(_rows(), reference="nope")


def test_the_pruning_cell_prints_what_the_pruning_step_recorded(tmp_path):
    from edgeqa.pipeline.rows import model_records

    folder = tmp_path / "pruned"
    folder.mkdir()
    settings = {"sparsity": 0.5, "scope": "layer", "schedule": "oneshot"}
    (folder / "prune.json").write_text(json.dumps({"method": "magnitude", "settings": settings}))
    assert model_records(folder)["pruning"]["description"] == "magnitude 50% (layer, oneshot)"  # an older record
    said = {"method": "magnitude", "settings": settings, "description": "as the step said"}
    (folder / "prune.json").write_text(json.dumps(said))
    pruning = model_records(folder)["pruning"]
    assert pruning["description"] == "as the step said"  # the record's own words, not decoded again
    w = {"weights": {"encoder_sparsity": 0.5, "matrix_sparsity": 0.25}, "pruning": pruning}
    rows = [make_row("fp32", _bench(50.0), {"exact_match": 80.0, "f1": 80.0}, {"weights": {"matrix_sparsity": 0.0}}),
            make_row("s50", _bench(50.0), {"exact_match": 79.0, "f1": 79.0}, w)]  # fmt: skip
    assert "| 25.0% | 50.0% | - | - | as the step said |" in to_markdown(_report(rows))


def test_an_int8_preset_is_printed_as_its_quantize_step_recorded_it(tmp_path):
    from edgeqa.pipeline.rows import model_records

    older = {"asked": "auto", "chosen": "avx2", "fits_cpu": True, "cpu": {"isa": "avx2"}}  # before descriptions
    (tmp_path / "quantization.json").write_text(json.dumps({"mode": "dynamic", "preset": older}))
    assert model_records(tmp_path)["quantization"]["preset"]["description"] == "avx2 (chosen for a CPU of class avx2)"
    said = {**older, "asked": "amx", "chosen": "amx", "fits_cpu": False, "description": "as the step said"}
    (tmp_path / "quantization.json").write_text(json.dumps({"mode": "dynamic", "preset": said}))
    assert model_records(tmp_path)["quantization"]["preset"]["description"] == "as the step said"


def test_the_pruning_cell_says_how_the_zeros_were_made():

    settings = {"sparsity": 0.8, "scope": "global", "schedule": "cubic", "initial": 0.5, "refit": True}
    assert describe_pruning({"method": "magnitude", "settings": {**settings, "refit_to": "model"}}) == (
        "magnitude 80% (global, cubic from 50%, refit to model)"
    )
    assert describe_pruning({"method": "magnitude", "settings": settings}) == (  # recorded before refit_to
        "magnitude 80% (global, cubic from 50%, refit to matrix)"
    )
    assert describe_pruning({"method": "magnitude", "settings": {**settings, "select": "obs"}}) == (
        "magnitude 80% (global, cubic from 50%, chosen by OBS saliency, refit to matrix)"
    )
    plain = {"sparsity": 0.5, "scope": "layer", "schedule": "oneshot"}
    assert describe_pruning({"method": "magnitude", "settings": plain}) == "magnitude 50% (layer, oneshot)"
    chosen = {**plain, "select": "input"}
    assert describe_pruning({"method": "magnitude", "settings": chosen}) == (
        "magnitude 50% (layer, oneshot, chosen by |w| x input RMS)"
    )


def test_untrustworthy_timings_are_flagged_in_the_json_and_the_markdown():
    from edgeqa.bench.report import timing_flags

    quiet = {"p50_ms": 30.0, "p90_ms": 33.0, "pass_spread": 0.03}
    assert timing_flags(quiet) == []
    assert timing_flags({**quiet, "pass_spread": None}) == []  # one pass: no spread to judge
    assert timing_flags({**quiet, "pass_spread": 0.18}) == []  # the most a quiet run's passes were seen to spread
    assert timing_flags({**quiet, "pass_spread": 0.84}) == ["passes disagree: p50 moved 84% between passes (limit 25%)"]
    assert timing_flags({**quiet, "p90_ms": 102.0}) == ["busy machine: p90 is 3.40x p50 (limit 1.50x)"]

    rows = _rows()
    rows[1]["latency"][0].update(p90_ms=75.0, pass_spread=0.02)  # int8: p90 3x its p50 of 25
    report = _report(rows)
    assert report["warnings"] == ["int8: busy machine: p90 is 3.00x p50 (limit 1.50x)"]
    md = to_markdown(report)
    assert "**Warnings**" in md and "| 25.0 ⚠ |" in md and "| 50.0 |" in md
    assert _report(_rows())["warnings"] == []


def test_rows_say_at_which_batch_they_were_scored_and_which_preset_they_fit():
    preset = {"asked": "avx512_vnni", "chosen": "avx512_vnni", "fits_cpu": False, "warning": "does not fit",
              "cpu": {"isa": "avx2"}, "description": "as the quantize step said"}  # fmt: skip
    rows = [
        make_row("fp32", _bench(50.0), {"exact_match": 72.0, "f1": 82.0, "batch_size": 32, "batch_dependent": False}),
        make_row(
            "int8",
            _bench(25.0),
            {"exact_match": 71.0, "f1": 81.0, "batch_size": 1, "batch_dependent": True},
            {"quantization": {"mode": "dynamic", "preset": preset}},
        ),
    ]
    report = _report(rows)
    assert [r["scored_batch_size"] for r in report["rows"]] == [32, 1]
    assert report["warnings"] == ["int8: does not fit"]
    md = to_markdown(report)
    assert "| 32 |" in md and "| 1* |" in md and "Answers depend on the batch" in md
    assert "Int8 presets: int8: as the quantize step said." in md  # the record's own words, not decoded again


def test_targets_say_met_or_by_how_much_they_are_missed():
    # The reference (fp32) has F1 82.0; int8 is 2.0x at 81.0, fast-bad 2.5x at 70.0, slow-bad 0.83x at 80.0.
    targets = (Target(2, 0.98), Target(2.5, 0.9), Target(3, 0.5))
    report = _report(_rows(), targets=targets, recipe_notes=("tried a 2-layer student",))
    met, short, none_fast = report["targets"]
    assert met["f1_needed"] == 80.36 and met["met"] and met["best_at_speed"]["name"] == "int8"
    # 90% of 82 is 73.8; the one row that fast has 70.0: 3.8 short, and the fastest row at 73.8 is int8.
    assert short["f1_needed"] == 73.8 and not short["met"] and short["f1_short"] == 3.8
    assert short["best_at_speed"]["name"] == "fast-bad" and short["fastest_at_f1"]["name"] == "int8"
    assert not none_fast["met"] and none_fast["best_at_speed"] is None and none_fast["f1_short"] is None
    assert none_fast["fastest_at_f1"] == {"name": "fast-bad", "speedup": 2.5, "f1": 70.0}
    md = to_markdown(report)
    assert "| >= 2x at >= 98% | 1x384 | 80.36 | yes | int8: 2.00x, F1 81.00 | int8: 2.00x, F1 81.00 |" in md
    assert "| >= 2.5x at >= 90% | 1x384 | 73.80 | **no**: 3.80 F1 short | fast-bad: 2.50x, F1 70.00 |" in md
    assert "| >= 3x at >= 50% | 1x384 | 41.00 | **no**: no model is that fast | - |" in md
    assert "- tried a 2-layer student" in md
    assert "## Targets" not in to_markdown(_report(_rows()))
    # Compared unrounded: 0.9812793 x 82.0 = 80.4649, which shows as 80.46, and a row at 80.463 falls short of it.
    close = [_rows()[0], make_row("close", _bench(25.0), {"exact_match": 71.0, "f1": 80.463})]
    (near,) = _report(close, targets=(Target(2, 0.9812793),))["targets"]
    assert near["f1_needed"] == 80.46 and not near["met"] and near["f1_short"] == 0.0


@pytest.mark.parametrize("text", ["3", "3:x", "0:0.9", "3:98"])
def test_a_bad_target_is_refused(text):
    with pytest.raises(EdgeQAError, match="target"):
        Target.parse(text)
