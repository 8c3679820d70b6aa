"""The report as the pipeline and the CLI make it: against the reference a recipe or a command names, and the time
each variant took to make, from hand-written records (tests/test_report.py and test_report_contents.py test the
report's functions themselves)."""

import json

# --- the speed-up reference: the one named, not the first row ------------------------------------------------------

BENCH_SETTINGS = {"threads": 1, "warmup": 1, "repeats": 3, "rounds": 1, "batch_sizes": [1], "seq_lens": [32],
                  "torch_int8": False}  # fmt: skip
P50 = {"first": 40.0, "named": 20.0, "fastest": 10.0}  # ms at batch 1 x 32; "named" is the reference
F1 = {"first": 80.0, "named": 79.0, "fastest": 75.5}


def _timing(name, path):
    """A bench result as bench.latency writes it, with a hand-written p50 at batch 1 x 32."""
    p50 = P50[name]
    lat = [{"batch_size": 1, "seq_len": 32, "p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p50 * 1.2, "mean_ms": p50,
            "throughput": 1000 / p50, "runs": 3, "pass_spread": None}]  # fmt: skip
    machine = {"cpu": "x", "logical_cores": 2}
    return {"backend": "onnxruntime", "model": str(path), "file_bytes": 2**20, "peak_rss_mb": 100.0, "latency": lat,
            "settings": BENCH_SETTINGS, "machine": machine, "versions": {"numpy": "1"}}  # fmt: skip


def _speedups(report_json):
    report = json.loads(report_json.read_text())
    rows = {r["name"]: r for r in report["rows"]}
    return report["reference"], {n: r["speedup"] for n, r in rows.items()}, {n: r["delta_f1"] for n, r in rows.items()}


# By hand from the p50s above, against "named" (20 ms, F1 79.0): first 20/40, named 1, fastest 20/10.
EXPECTED_SPEEDUPS = {"first": 0.5, "named": 1.0, "fastest": 2.0}
EXPECTED_DELTA_F1 = {"first": 1.0, "named": 0.0, "fastest": -3.5}


def _report_step_run(tmp_path, tiny_onnx_model, report: str, names: dict[str, str]):
    """Run a recipe's report step over hand-written scores and timings: `names` maps each variant to the P50/F1
    entry it takes, in the order the run benched them."""
    from conftest import write_recipe, write_squad
    from edgeqa.pipeline.context import RecipeRun, Variant
    from edgeqa.pipeline.recipe import load_recipe

    onnx_dir = tiny_onnx_model[1]
    tmp_path.mkdir(exist_ok=True)
    data = write_squad(tmp_path / "dev.json", [("Ann wrote the book.", "Who wrote the book?", ["Ann"])])
    steps = f"- export: {{name: named}}\n- export: {{name: fastest}}\n- bench: {{}}\n- report: {report}\n"
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_onnx_model[0], data, steps))
    (report_step,) = [s for s in recipe.steps if s.kind == "report"]
    run = RecipeRun(recipe, tmp_path / "runs" / "t")
    run.variants = {name: Variant(name, onnx_dir) for name in names}
    run.benched = list(names)
    for name, entry in names.items():
        (run.root / "eval" / name).mkdir(parents=True)
        metrics = {"exact_match": F1[entry] - 10, "f1": F1[entry], "total": 1, "settings": {}}
        (run.root / "eval" / name / "metrics.json").write_text(json.dumps(metrics))
        (run.root / "bench").mkdir(exist_ok=True)
        (run.root / "bench" / f"{name}.json").write_text(json.dumps(_timing(entry, onnx_dir)))
    report_step.run(run)
    return _speedups(run.root / "report.json")


def test_a_recipe_report_is_against_the_reference_it_names(tiny_onnx_model, tmp_path):
    """The report step's rows, from hand-written scores and timings in the run folder: the recipe names the second
    variant as its reference, and neither the first variant nor pytorch-fp32 may stand in for it."""
    speedups = _report_step_run(tmp_path, tiny_onnx_model, "{reference: named}", {n: n for n in P50})
    assert speedups == ("named", EXPECTED_SPEEDUPS, EXPECTED_DELTA_F1)


def test_a_recipe_report_without_a_reference_is_against_the_teacher_else_its_first_variant(tiny_onnx_model, tmp_path):
    """docs/recipes.md: the reference is "by default pytorch-fp32 when the report has it, else its first variant". By
    hand: against "first" (40 ms, F1 80.0) named is 40/20 = 2x, fastest 4x; against pytorch-fp32, timed and scored
    as "named" (20 ms, F1 79.0) though benched second, first is 0.5x and fastest 2x."""
    without_teacher = _report_step_run(tmp_path / "a", tiny_onnx_model, "{}", {n: n for n in P50})
    assert without_teacher == ("first", {"first": 1.0, "named": 2.0, "fastest": 4.0},
                               {"first": 0.0, "named": -1.0, "fastest": -4.5})  # fmt: skip
    names = {"first": "first", "pytorch-fp32": "named", "fastest": "fastest"}
    with_teacher = _report_step_run(tmp_path / "b", tiny_onnx_model, "{}", names)
    assert with_teacher[:2] == ("pytorch-fp32", {"first": 0.5, "pytorch-fp32": 1.0, "fastest": 2.0})


def test_edgeqa_report_is_against_the_reference_given(tiny_onnx_model, tmp_path, monkeypatch, capsys):
    """`edgeqa report --reference named` with three variants, scored for real and timed by hand (the timer replaced
    by the p50s above): speed-ups and F1 deltas are against "named", not the first variant."""
    from conftest import write_squad
    from edgeqa.cli import main

    onnx_dir = tiny_onnx_model[1]
    data = write_squad(tmp_path / "dev.json", [("Ann wrote the book.", "Who wrote the book?", ["Ann"])])
    timed = {}

    def hand_timer(models, cfg, done, data=None, qa=None):
        timed.update(models)
        for name, (path, _) in models.items():
            done(name, _timing(name, path))

    monkeypatch.setattr("edgeqa.pipeline.steps.bench_step.benchmark_interleaved", hand_timer)
    argv = ["report", *[a for name in P50 for a in ("--variant", f"{name}={onnx_dir}")], "--data", str(data),
            "--out", str(tmp_path / "out"), "--reference", "named"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert list(timed) == list(P50)
    reference, speedups, _ = _speedups(tmp_path / "out" / "report.json")
    assert (reference, speedups) == ("named", EXPECTED_SPEEDUPS)
    # without --reference, the first variant is the reference: 40 ms against 40, 20 and 10
    assert main(argv[:-2]) == 0
    reference, speedups, _ = _speedups(tmp_path / "out" / "report.json")
    assert (reference, speedups) == ("first", {"first": 1.0, "named": 2.0, "fastest": 4.0})


# --- making times: the chain of steps and their seconds, from hand-written records --------------------------------


def test_making_times_follow_the_chain_and_count_every_training_start(tmp_path):
    """A model made by distill -> prune -> export -> quantize, its records written by hand with known seconds. The
    distillation was killed and resumed: its step.json times the last start (30 s), its training.json both (95.5 s),
    and the larger counts. The pruning's recovery trained 8 s of a 12 s step: the step's own time counts."""
    from edgeqa.pipeline.records import making_times
    from edgeqa.pipeline.rows import model_records

    def made(name, step, source, seconds, train_seconds=None):
        folder = tmp_path / name
        folder.mkdir()
        record = {"version": 2, "step": step, "from": str(source), "made": name, "seconds": seconds}
        (folder / "step.json").write_text(json.dumps(record))
        if train_seconds is not None:
            (folder / "training.json").write_text(json.dumps({"train_seconds": train_seconds}))
        return folder

    teacher = tmp_path / "teacher"  # no step made it: the chain starts after it
    teacher.mkdir()
    student = made("student", "distill", teacher, 30.0, train_seconds=95.5)
    pruned = made("pruned", "prune", student, 12.0, train_seconds=8.0)
    onnx_dir = made("onnx", "export", pruned, 4.2)
    int8 = made("int8", "quantize", onnx_dir, 1.5)
    (int8 / "model.onnx").write_bytes(b"")
    expected = [
        {"step": "distill", "name": "student", "seconds": 95.5},
        {"step": "prune", "name": "pruned", "seconds": 12.0},
        {"step": "export", "name": "onnx", "seconds": 4.2},
        {"step": "quantize", "name": "int8", "seconds": 1.5},
    ]
    assert making_times(int8) == expected
    assert making_times(int8 / "model.onnx") == expected  # a model file: its folder's records
    assert making_times(pruned) == expected[:2]
    assert making_times(teacher) == []
    assert model_records(int8)["making"] == expected
    assert "making" not in model_records(teacher)
