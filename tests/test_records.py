"""Caches and records: step.json identity and history (pipeline.records) and the bench step's score and timing
caches (pipeline.steps.bench_step); training checkpoints and the teacher-logit cache: test_checkpoints.py."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
from test_checkpoints import ONE, _trainee

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.latency import LatencyConfig
from edgeqa.bench.qa import QAConfig
from edgeqa.compress.checkpoint import gather_rng, load_checkpoint, save_checkpoint
from edgeqa.compress.trainset import (
    check_cache,
)
from edgeqa.pipeline.context import RecipeRun
from edgeqa.pipeline.recipe import EvalSettings, Recipe
from edgeqa.pipeline.records import (
    RECORD_VERSION,
    inherited_record,
    made_id,
    make_once,
    making_times,
    upgrade,
)
from edgeqa.pipeline.steps.bench_step import BenchStep, bench_path


def test_a_version_1_prune_record_gets_what_those_runs_did():
    old = {"step": "prune", "from": "m", "sparsity": 0.5}
    assert upgrade(old) == {"step": "prune", "from": "m", "sparsity": 0.5, "initial": 0.0, "refit": False,
                            "refit_batches": 32, "refit_to": "model"}  # fmt: skip
    # A version 1 record that did refit could only refit each matrix; its own values win over the defaults.
    refit = upgrade({"step": "prune", "refit": True, "refit_batches": 8})
    assert (refit["refit"], refit["refit_batches"], refit["refit_to"], refit["initial"]) == (True, 8, "matrix", 0.0)
    assert old == {"step": "prune", "from": "m", "sparsity": 0.5}  # the caller's record is not changed


def test_current_and_other_step_records_are_kept_as_they_are():
    assert upgrade({"version": RECORD_VERSION, "step": "prune", "from": "m"}) == {"step": "prune", "from": "m"}
    assert upgrade({"step": "export", "from": "m"}) == {"step": "export", "from": "m"}  # version 1, not a prune
    with pytest.raises(EdgeQAError, match=f"version 3 is newer than this edgeqa reads \\({RECORD_VERSION}\\)"):
        upgrade({"version": RECORD_VERSION + 1, "step": "export"})
    assert json.dumps(upgrade({"version": 2, "step": "prune", "refit": True})) == '{"step": "prune", "refit": true}'


# --- step.json: made once, skipped, refused, remade ---------------------------------------------------------------


def _step(folder, **record):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "step.json").write_text(json.dumps(record))
    return folder


def _read(folder):
    return json.loads((folder / "step.json").read_text())


def test_a_step_is_made_once_then_skipped_with_the_same_settings(tmp_path):
    src = _step(tmp_path / "src", step="export", made="s1")
    out, calls = tmp_path / "out", []

    def make(folder):
        calls.append(folder)
        (folder / "model.onnx").write_text("int8")

    settings = {"from": str(src), "x": 1}
    assert make_once(out, "quantize", settings, make) == out
    assert len(calls) == 1 and (out / "model.onnx").read_text() == "int8"
    record = _read(out)
    made = record.pop("made")
    assert len(made) == 32 and int(made, 16) >= 0  # a fresh uuid4 hex
    assert record.pop("seconds") >= 0
    assert record == {"version": RECORD_VERSION, "step": "quantize", "from": str(src), "x": 1, "source_made": "s1"}
    assert made_id(out) == made and made_id(out / "model.onnx") == made  # a file inside the folder has its identity
    assert make_once(out, "quantize", dict(settings), make) == out
    assert len(calls) == 1 and _read(out)["made"] == made  # skipped: not made again, same identity


def test_other_settings_are_refused_unless_the_machine_chose_them(tmp_path):
    out = tmp_path / "out"
    make_once(out, "quantize", {"x": 1}, lambda f: None)
    made = _read(out)["made"]
    with pytest.raises(EdgeQAError, match=f"{out}: was made by a step with other settings; delete the folder"):
        make_once(out, "quantize", {"x": 2}, lambda f: pytest.fail("made again"))
    with pytest.raises(EdgeQAError, match="other settings"):
        make_once(out, "export", {"x": 1}, lambda f: pytest.fail("made again"))  # another step kind
    calls = []
    make_once(out, "quantize", {"x": 2}, calls.append, remake_on_change=True)
    assert len(calls) == 1 and _read(out)["x"] == 2 and _read(out)["made"] != made


def test_a_step_whose_source_was_made_again_is_made_again(tmp_path):
    src = _step(tmp_path / "src", made="s1")
    out, calls = tmp_path / "out", []
    make_once(out, "export", {"from": str(src)}, calls.append)
    first = _read(out)["made"]
    make_once(out, "export", {"from": str(src)}, calls.append)
    assert len(calls) == 1
    _step(src, made="s2")
    make_once(out, "export", {"from": str(src)}, calls.append)
    assert len(calls) == 2 and _read(out)["source_made"] == "s2" and _read(out)["made"] != first
    # A source no step made (the teacher) has no identity: its outputs are skipped once made.
    teacher, other = tmp_path / "teacher", tmp_path / "other"
    teacher.mkdir()
    make_once(other, "export", {"from": str(teacher)}, calls.append)
    make_once(other, "export", {"from": str(teacher)}, calls.append)
    assert len(calls) == 3 and _read(other)["source_made"] is None


def test_a_version_1_record_is_read_as_what_its_run_did(tmp_path):
    out = _step(tmp_path / "out", step="prune", sparsity=0.5, made="m1", seconds=3.0)  # version 1: no "version"
    settings = {"sparsity": 0.5, "initial": 0.0, "refit": False, "refit_batches": 32, "refit_to": "model"}
    make_once(out, "prune", settings, lambda f: pytest.fail("made again"))  # the same step, written long ago
    assert _read(out)["made"] == "m1"
    with pytest.raises(EdgeQAError, match="other settings"):
        make_once(out, "prune", {**settings, "refit_batches": 16}, lambda f: pytest.fail("made again"))


def test_made_id_of_folders_no_step_made_is_none(tmp_path):
    assert made_id(tmp_path) is None
    assert made_id(tmp_path / "config.json") is None
    _step(tmp_path / "m", step="export")  # a record without an identity
    assert made_id(tmp_path / "m") is None


# --- making times and inherited records ----------------------------------------------------------------------------


def test_making_times_walk_the_chain_first_to_last_with_training_time(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    a = _step(tmp_path / "a", step="distill", **{"from": str(teacher)}, seconds=2.0)
    (a / "training.json").write_text(json.dumps({"train_seconds": 10.0}))  # killed and resumed: all starts count
    b = _step(tmp_path / "b", step="prune", **{"from": str(a)}, seconds=5.0)
    (b / "training.json").write_text(json.dumps({"train_seconds": 4.0}))  # step.json's time is the longer
    c = _step(tmp_path / "c", step="export", **{"from": str(b)}, seconds=0.5)
    (c / "training.json").write_text(json.dumps({"train_seconds": None}))
    assert making_times(c / "model.onnx") == [
        {"step": "distill", "name": "a", "seconds": 10.0},
        {"step": "prune", "name": "b", "seconds": 5.0},
        {"step": "export", "name": "c", "seconds": 0.5},
    ]
    d = _step(tmp_path / "d", step="quantize", seconds=1.0)  # no "from": the chain starts here
    assert making_times(d) == [{"step": "quantize", "name": "d", "seconds": 1.0}]
    assert making_times(teacher) == []
    e = _step(tmp_path / "e", step="export")  # no time recorded
    (e / "training.json").write_text(json.dumps({"train_seconds": 9.0}))
    assert making_times(e) == [{"step": "export", "name": "e", "seconds": None}]


def test_a_hand_made_cycle_of_steps_ends(tmp_path):
    _step(tmp_path / "x", step="export", **{"from": str(tmp_path / "y")}, seconds=1.0)
    _step(tmp_path / "y", step="export", **{"from": str(tmp_path / "x")}, seconds=1.0)
    assert len(making_times(tmp_path / "x")) == 32
    assert inherited_record(tmp_path / "x", "prune.json", ("export",)) is None


def test_inherited_records_pass_only_through_the_steps_named(tmp_path):
    pruned = _step(tmp_path / "pruned", step="prune", **{"from": str(tmp_path / "dense")})
    (pruned / "prune.json").write_text(json.dumps({"sparsity": 0.5}))
    onnx = _step(tmp_path / "onnx", step="export", **{"from": str(pruned)})
    fused = _step(tmp_path / "fused", step="optimize", **{"from": str(onnx)})
    retrained = _step(tmp_path / "retrained", step="distill", **{"from": str(fused)})
    assert inherited_record(pruned, "prune.json", ()) == {"sparsity": 0.5}  # its own
    assert inherited_record(fused, "prune.json", ("export", "optimize")) == {"sparsity": 0.5}
    assert inherited_record(fused, "prune.json", ("export",)) is None  # optimize is not passed through
    assert inherited_record(retrained, "prune.json", ("export", "optimize")) is None
    rootless = _step(tmp_path / "rootless", step="export")  # no "from"
    assert inherited_record(rootless, "prune.json", ("export",)) is None
    assert inherited_record(tmp_path / "dense", "prune.json", ("export",)) is None  # no step.json at all


# --- the bench step's caches: scores and timings per model identity and settings ----------------------------------


class _Bench:
    """Stand-ins for evaluate and benchmark_interleaved that record their calls."""

    def __init__(self, monkeypatch, dynamic=()):
        self.scored, self.timed, self.asked = [], [], []
        monkeypatch.setattr("edgeqa.pipeline.steps.bench_step.evaluate", self.evaluate)
        monkeypatch.setattr("edgeqa.pipeline.steps.bench_step.benchmark_interleaved", self.benchmark)
        monkeypatch.setattr("edgeqa.pipeline.steps.bench_step.answers_depend_on_batch",
                            lambda path, t8: Path(path).name in dynamic)  # fmt: skip

    def evaluate(self, model, data, limit, torch_int8, cfg, batch_size, threads, out_dir):
        self.scored.append((Path(model).name, data, limit, torch_int8, cfg, batch_size, threads, out_dir))
        return {"f1": 50.0, "model": str(model), "data": str(data), "limit": limit, "settings": cfg.to_dict(),
                "batch_size": batch_size}  # fmt: skip

    def benchmark(self, todo, cfg, done, data=None, qa=None):
        self.timed.append(sorted(todo))
        self.asked.append((data, qa))
        for name, (_path, torch_int8) in todo.items():
            done(name, {"p50_ms": 1.0, "settings": dataclasses.replace(cfg, torch_int8=torch_int8).to_dict()})


def _run(tmp_path, **eval_settings):
    recipe = Recipe(tmp_path / "r.yaml", "r", "teacher", EvalSettings(data="dev.json", **eval_settings),
                    qa=QAConfig(max_length=64, doc_stride=16), bench=LatencyConfig(threads=3))  # fmt: skip
    run = RecipeRun(recipe, tmp_path / "runs" / "r")
    for name in ("fp32", "int8"):
        _step(run.model_dir(name), step="export", made=f"{name}-1")
        run.add(name)
    run.add("torch-int8", torch_int8=True, path=run.model_dir("fp32"))
    return run


def test_scores_are_cached_per_model_identity_data_and_settings(tmp_path, monkeypatch):
    bench = _Bench(monkeypatch, dynamic=("int8",))
    run = _run(tmp_path, limit=5, batch_size=8, dynamic_int8_batch_size=2)
    BenchStep(line=1, variants=("fp32", "int8")).run(run)
    eval_dir = run.root / "eval"
    assert bench.scored == [
        ("fp32", "dev.json", 5, False, run.recipe.qa, 8, 3, eval_dir / "fp32"),
        ("int8", "dev.json", 5, False, run.recipe.qa, 2, 3, eval_dir / "int8"),  # dynamic int8: its own batch size
    ]
    saved = json.loads((eval_dir / "int8" / "metrics.json").read_text())
    assert saved["made"] == "int8-1" and saved["f1"] == 50.0
    BenchStep(line=1, variants=("fp32", "int8")).run(run)
    assert len(bench.scored) == 2  # nothing changed: both cached
    _step(run.model_dir("int8"), step="export", made="int8-2")  # int8 made again
    BenchStep(line=1, variants=("fp32", "int8")).run(run)
    assert [s[0] for s in bench.scored[2:]] == ["int8"]
    for change in ({"limit": 6}, {"batch_size": 4}):  # other eval settings: scored again
        other = _run(tmp_path, **{"limit": 5, "batch_size": 8, "dynamic_int8_batch_size": 2, **change})
        BenchStep(line=1, variants=("fp32",)).run(other)
    assert [s[0] for s in bench.scored[3:]] == ["fp32", "fp32"]
    metrics = eval_dir / "fp32" / "metrics.json"
    for key, value in (("data", "other.json"), ("model", "elsewhere"), ("settings", {}), ("made", "x")):
        count = len(bench.scored)
        metrics.write_text(json.dumps({**json.loads(metrics.read_text()), key: value}))
        BenchStep(line=1, variants=("fp32",)).run(other)
        assert len(bench.scored) == count + 1, key  # a cached score of other data, model or settings is not used


def test_timings_are_taken_again_side_by_side_when_any_model_needs_them(tmp_path, monkeypatch):
    bench = _Bench(monkeypatch)
    run = _run(tmp_path)
    BenchStep(line=1).run(run)  # no variants named: every variant so far
    assert bench.timed == [["fp32", "int8", "torch-int8"]]
    assert run.benched == ["fp32", "int8", "torch-int8"]
    saved = json.loads(bench_path(run, "torch-int8").read_text())
    assert saved["made"] == "fp32-1" and saved["settings"]["torch_int8"] is True
    assert bench_path(run, "int8") == run.root / "bench" / "int8.json"
    BenchStep(line=1).run(run)
    assert len(bench.timed) == 1 and run.benched == ["fp32", "int8", "torch-int8"]  # cached; listed once
    _step(run.model_dir("int8"), step="export", made="int8-2")
    BenchStep(line=1, variants=("fp32", "int8")).run(run)
    assert bench.timed[1:] == [["fp32", "int8"]]  # one remade: both timed again, together
    run.retime = True
    BenchStep(line=1, variants=("int8",)).run(run)
    assert bench.timed[2:] == [["int8"]]
    run.retime = False
    other = _run(tmp_path)
    other.recipe = dataclasses.replace(other.recipe, bench=LatencyConfig(threads=1))  # other timing settings
    BenchStep(line=1, variants=("fp32",)).run(other)
    assert bench.timed[3:] == [["fp32"]]


def test_timings_per_question_are_taken_again_when_their_data_or_windows_change(tmp_path, monkeypatch):
    """The recipe's eval data and windows go to the timer; other data (not merely other spelling of its path), other
    windows, or no questions at all time again."""
    bench = _Bench(monkeypatch)
    run = _run(tmp_path)
    BenchStep(line=1, variants=("fp32",)).run(run)
    assert bench.asked == [("dev.json", run.recipe.qa)]
    saved = json.loads(bench_path(run, "fp32").read_text())
    assert saved["questions_from"] == {"data": "dev.json", "qa": run.recipe.qa.to_dict()}
    monkeypatch.chdir(tmp_path)
    same = dataclasses.replace(run.recipe.eval, data=f"../{tmp_path.name}/dev.json")
    other = dataclasses.replace(run.recipe.eval, data="other.json")
    changes = [{"eval": same}, {"eval": other}, {"qa": QAConfig(max_length=64, doc_stride=8)},
               {"bench": LatencyConfig(threads=3, questions=0)}]  # fmt: skip
    for change in changes:
        run.recipe = dataclasses.replace(run.recipe, **change)
        BenchStep(line=1, variants=("fp32",)).run(run)
    assert len(bench.timed) == 4  # the same file by another path is not timed again; each change after it is
    before, after = QAConfig(max_length=64, doc_stride=16), QAConfig(max_length=64, doc_stride=8)
    assert bench.asked[1:] == [("other.json", before), ("other.json", after), (None, after)]
    assert json.loads(bench_path(run, "fp32").read_text())["questions_from"] is None


def test_a_broken_record_is_named_in_the_error(tmp_path):
    bad = _step(tmp_path / "bad", step="export")
    (bad / "step.json").write_bytes(b"\xff\xfe")
    with pytest.raises(EdgeQAError, match="bad/step.json: step record is not UTF-8 text"):
        making_times(bad)
    with pytest.raises(EdgeQAError, match="bad/step.json: step record is not UTF-8 text"):
        inherited_record(bad, "prune.json", ("export",))
    trained = _step(tmp_path / "trained", step="distill", seconds=1.0)
    (trained / "training.json").write_bytes(b"\xff\xfe")
    with pytest.raises(EdgeQAError, match="trained/training.json: training record is not UTF-8 text"):
        making_times(trained)
    (trained / "prune.json").write_bytes(b"\xff\xfe")
    with pytest.raises(EdgeQAError, match="trained/prune.json: prune.json is not UTF-8 text"):
        inherited_record(trained, "prune.json", ())


def test_make_once_says_why_it_skips_or_makes_again(tmp_path, caplog):
    src = _step(tmp_path / "src", made="s1")
    out = tmp_path / "out"
    caplog.set_level(logging.INFO, logger="edgeqa.pipeline.records")
    make_once(out, "quantize", {"from": str(src), "preset": "avx2"}, lambda f: None)
    make_once(out, "quantize", {"from": str(src), "preset": "avx2"}, lambda f: None)
    make_once(out, "quantize", {"from": str(src), "preset": "amx"}, lambda f: None, remake_on_change=True)
    _step(src, made="s2")
    make_once(out, "quantize", {"from": str(src), "preset": "amx"}, lambda f: None)
    assert caplog.messages == [
        "step quantize out: already done, skipping",
        "step quantize out: this machine chooses other settings; making it again",
        f"step quantize out: its source {src} was made again since; making it again",
    ]


def test_a_hand_written_record_without_identity_or_time_is_still_compared(tmp_path):
    out = _step(tmp_path / "out", version=2, step="export", x=1, source_made=None)  # no "made", no "seconds"
    make_once(out, "export", {"x": 1}, lambda f: pytest.fail("made again"))
    (out / "step.json").write_bytes(b"\xff\xfe")
    with pytest.raises(EdgeQAError, match="out/step.json: step record is not UTF-8 text"):
        make_once(out, "export", {"x": 1}, lambda f: None)


def test_loading_a_checkpoint_and_scoring_say_so(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    model, opt, sched = _trainee()
    save_checkpoint(tmp_path / "c.pt", {}, model, opt, sched, 1, 5, None, [], 1, 0.0, gather_rng(ONE))
    load_checkpoint(tmp_path / "c.pt", {})
    bench = _Bench(monkeypatch)
    run = _run(tmp_path, batch_size=8)
    BenchStep(line=1, variants=("fp32",)).run(run)
    assert [m for m in caplog.messages if m.startswith(("resuming", "scoring"))] == [
        f"resuming from {tmp_path / 'c.pt'}: stage 1, step 5",
        "scoring fp32 on dev.json at batch 8",
    ]
    assert len(bench.scored) == 1


def test_a_torch_int8_variant_is_scored_at_the_dynamic_int8_batch_size(tmp_path, monkeypatch):
    bench = _Bench(monkeypatch)
    monkeypatch.setattr("edgeqa.pipeline.steps.bench_step.answers_depend_on_batch", lambda path, torch_int8: torch_int8)
    run = _run(tmp_path, batch_size=8, dynamic_int8_batch_size=2)
    BenchStep(line=1, variants=("fp32", "torch-int8")).run(run)
    assert [(s[0], s[3], s[5]) for s in bench.scored] == [("fp32", False, 8), ("fp32", True, 2)]


def test_broken_cache_and_identity_records_are_named(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "meta.json").write_bytes(b"\xff\xfe")
    with pytest.raises(EdgeQAError, match="c/meta.json: teacher cache record is not UTF-8 text"):
        check_cache(folder, {"max_length": 8})
    (folder / "step.json").write_bytes(b"\xff\xfe")
    with pytest.raises(EdgeQAError, match="c/step.json: step record is not UTF-8 text"):
        made_id(folder)


def test_a_step_records_its_making_seconds_to_a_tenth(tmp_path, monkeypatch):
    clock = iter([100.0, 112.37])  # the step starts at 100 s and ends at 112.37 s on a fake clock
    monkeypatch.setattr("edgeqa.pipeline.records.time.perf_counter", lambda: next(clock))
    make_once(tmp_path / "m", "export", {"x": 1}, lambda f: None)
    assert json.loads((tmp_path / "m" / "step.json").read_text())["seconds"] == 12.4


def test_a_source_spelt_another_way_is_the_same_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shared" / "teacher").mkdir(parents=True)
    calls = []
    make_once(tmp_path / "out", "export", {"from": "shared/teacher", "opset": 17}, calls.append)
    made = _read(tmp_path / "out")["made"]
    for spelling in (str(tmp_path / "shared" / "teacher"), "shared/../shared/teacher"):
        make_once(tmp_path / "out", "export", {"from": spelling, "opset": 17}, lambda f: pytest.fail("made again"))
    assert len(calls) == 1 and _read(tmp_path / "out")["made"] == made
    (tmp_path / "other").mkdir()
    with pytest.raises(EdgeQAError, match="other settings"):
        make_once(tmp_path / "out", "export", {"from": "other", "opset": 17}, calls.append)
