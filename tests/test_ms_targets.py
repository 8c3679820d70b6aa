"""Targets in milliseconds (bench/targets.py): a latency the user asks for on their machine instead of a speed-up,
per question by default; checked in the report, chosen against a shapes table and judged after the run. Expected
values are worked out by hand."""

from __future__ import annotations

import json

import pytest

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.markdown import _choices, _targets
from edgeqa.bench.shapes import SCHEMA
from edgeqa.bench.targets import Target, check_targets
from edgeqa.pipeline.rows import target_results
from edgeqa.pipeline.targets import pick_shape


def test_a_target_in_ms_is_per_question_unless_it_says_otherwise():
    ms = Target(ms=20, f1_share=0.9)
    assert (ms.latency, ms.label, ms.key, ms.describe()) == (
        "questions",
        "20ms",
        "question_p50_ms",
        "<= 20 ms at >= 90%",
    )
    assert Target(ms=20, f1_share=0.9, latency="fixed").key == "p50_ms"
    up = Target(3, 0.98)
    assert (up.latency, up.label, up.key, up.describe()) == ("fixed", "3x", "speedup", ">= 3x at >= 98%")
    assert Target(3, 0.98, "questions").key == "question_speedup"
    assert Target.parse("20ms:0.9") == ms and Target.parse("12.5ms:0.9:fixed") == Target(None, 0.9, "fixed", 12.5)
    assert Target.parse("3:0.98") == up


@pytest.mark.parametrize(
    ("fields", "said"),
    [({"speedup": 3, "ms": 20, "f1_share": 0.9}, "a target gives a speedup or ms (milliseconds), one of them"),
     ({"f1_share": 0.9}, "a target gives a speedup or ms (milliseconds), one of them"),
     ({"ms": 0, "f1_share": 0.9}, "a target's ms must be a positive number, got 0"),
     ({"ms": 20}, "a target needs f1_share, the share of the reference's F1 it must keep"),
     ({"ms": 20, "f1_share": 0.9, "latency": "p99"}, "a target's latency must be fixed or questions, got 'p99'")],
)  # fmt: skip
def test_a_target_in_ms_is_refused_in_words(fields, said):
    with pytest.raises(EdgeQAError, match="^" + said.replace("(", r"\(").replace(")", r"\)")):
        Target(**fields)


def _row(name: str, q50: float | None, f1: float) -> dict:
    return {"name": name, "f1": f1, "speedup": 1.0, "question_p50_ms": q50, "question_speedup": None}


def test_the_report_judges_a_target_in_ms_on_each_rows_p50_per_question():
    """Reference F1 80: 20 ms at 90% needs F1 72. a (15 ms, 70) and b (20 ms, at the limit, 75) are fast enough; b
    is the most accurate of them and reaches 72: met. At 95% (76) b is 1 F1 short; the fastest at 76 is ref
    (30 ms). 10 ms: none is fast enough. A row not timed per question is left out."""
    rows = [_row("ref", 30.0, 80.0), _row("a", 15.0, 70.0), _row("b", 20.0, 75.0), _row("old", None, 79.0)]
    met, short, none = check_targets(rows, rows[0], (Target(ms=20, f1_share=0.9), Target(ms=20, f1_share=0.95),
                                                     Target(ms=10, f1_share=0.9)))  # fmt: skip
    assert met["met"] and met["best_at_speed"] == {"name": "b", "ms": 20.0, "f1": 75.0} and met["ms"] == 20
    assert met["fastest_at_f1"] == {"name": "b", "ms": 20.0, "f1": 75.0}
    assert (short["met"], short["f1_short"], short["fastest_at_f1"]["name"]) == (False, 1.0, "ref")
    assert (none["met"], none["best_at_speed"], none["f1_short"]) == (False, None, None)


def _table() -> dict:
    """The int8 teacher 24 ms per question, its shapes 19.5, 18 and 10 ms."""
    refs = {"teacher-int8": {"p50_ms": 30.0, "question_p50_ms": 24.0}}
    shapes = [{"name": n, "p50_ms": 1.0, "question_p50_ms": q} for n, q in
              (("l2-h2-f32", 19.5), ("l1-h4-f64", 18.0), ("l1-h2-f16", 10.0))]  # fmt: skip
    return {"schema": SCHEMA, "teacher_shape": "l2-h4-f64", "references": refs, "shapes": shapes}


def test_a_target_in_ms_picks_among_the_shapes_timed_at_most_that_long_less_the_margin():
    """21 ms with a 5% margin needs at most 20.00 ms: three shapes are that fast, and l2-h2-f32 (19.5 ms) keeps both
    layers; 19 ms (18.10 with the margin) only the one-layer shapes, the widest l1-h4-f64; 5 ms none, so the
    fastest, l1-h2-f16. Read against the int8 teacher whatever `over` says, since a table made without torch has no
    PyTorch timing."""
    tbl = _table()
    first = pick_shape(tbl, Target(ms=21, f1_share=0.9), "pytorch-fp32")
    assert (first["shape"], first["ms"], first["target"], first["over"]) == ("l2-h2-f32", 21, None, "teacher-int8")
    assert (first["predicted_ms"], first["predicted_speedup"], first["latency"]) == (19.5, 1.231, "questions")
    assert first["why"] == ("of the 3 of 4 shapes predicted at <= 20.00 ms (21 ms and a 5% margin), it keeps the "
                            "most layers, then heads, then FFN neurons")  # fmt: skip
    assert pick_shape(tbl, Target(ms=19, f1_share=0.9))["shape"] == "l1-h4-f64"
    none = pick_shape(tbl, Target(ms=5, f1_share=0.9))
    assert (none["shape"], none["fast_enough"], none["predicted_ms"]) == ("l1-h2-f16", False, 10.0)
    assert none["why"] == "no shape is predicted at <= 4.76 ms (5 ms and a 5% margin): the fastest"


def test_a_made_model_for_a_target_in_ms_is_judged_on_its_measured_ms():
    """Chosen at 19.5 ms for 21 ms; measured 22.5 ms per question (teacher-int8 27.0: 1.2x), F1 78 of the 72 needed:
    missed by 1.5 ms. Another at 19.0 ms is met; a speed-up target beside them is judged as before."""
    choice = pick_shape(_table(), Target(ms=21, f1_share=0.9))
    rows = [{"name": "pytorch-fp32", "f1": 80.0, "p50_ms": 60.0, "question_p50_ms": 45.0, "extra": {}},
            {"name": "teacher-int8", "f1": 80.0, "p50_ms": 30.0, "question_p50_ms": 27.0, "extra": {}},
            {"name": "t21ms-int8", "f1": 78.0, "p50_ms": 25.0, "question_p50_ms": 22.5, "extra": {}}]  # fmt: skip
    (slow,) = target_results([{**choice, "variant": "t21ms-int8"}], rows, "pytorch-fp32")
    assert (slow["measured_ms"], slow["measured_speedup"], slow["met"]) == (22.5, 1.2, False)
    assert (slow["speed_short"], slow["f1_short"], slow["f1_needed"]) == (1.5, 0.0, 72.0)
    rows[2]["question_p50_ms"] = 19.0
    (fast,) = target_results([{**choice, "variant": "t21ms-int8"}], rows, "pytorch-fp32")
    assert (fast["met"], fast["speed_short"]) == (True, 0.0)
    speed = pick_shape(_table() | {"references": {**_table()["references"],
                                                   "pytorch-fp32": {"p50_ms": 60.0}}}, Target(2, 0.9))  # fmt: skip
    (up,) = target_results([{**speed, "variant": "t21ms-int8"}], rows, "pytorch-fp32")
    assert (up["measured_speedup"], up["measured_ms"], up["met"]) == (2.4, 25.0, True)


def test_the_markdown_says_a_target_in_ms_in_ms():
    report = {"name": "r", "rows": [{"name": "ref", "f1": 80.0}], "reference": "ref",
              "primary_shape": {"batch_size": 1, "seq_len": 384},
              "targets": [{"speedup": None, "ms": 20, "f1_share": 0.9, "latency": "questions", "f1_needed": 72.0,
                           "met": True, "f1_short": None, "best_at_speed": {"name": "b", "ms": 19.04, "f1": 75.0},
                           "fastest_at_f1": {"name": "b", "ms": 19.04, "f1": 75.0}}],
              "choices": [{"target": None, "ms": 21, "f1_share": 0.9, "latency": "questions", "over": "teacher-int8",
                           "variant": "t21ms-int8", "shape": "l2-h2-f32", "why": "w", "predicted_ms": 20.0,
                           "predicted_speedup": 1.2, "measured_ms": 22.5, "measured_speedup": 1.2, "f1": 78.0,
                           "f1_needed": 72.0, "training_minutes": 3.0, "met": False, "speed_short": 1.5,
                           "f1_short": 0.0, "table": "s.json", "cpu": "c", "isa": "x"}]}  # fmt: skip
    lines = _targets(report) + _choices(report)
    assert "| <= 20 ms at >= 90% | per question | 72.00 | yes | b: 19.0 ms, F1 75.00 | b: 19.0 ms, F1 75.00 |" in lines
    assert ("| <= 21 ms at >= 90% (questions, over teacher-int8) | t21ms-int8 | l2-h2-f32 | w | 20.0 ms | 22.5 ms | "
            "78.00 (72.00) | 3.0 | **no**: 1.5 ms slow |") in lines  # fmt: skip


def test_a_targets_step_names_a_model_for_a_target_in_ms_by_its_ms():
    from edgeqa.bench.qa import QAConfig
    from edgeqa.pipeline.steps.targets_step import TargetsStep

    raw = {"targets": [{"ms": 20, "f1_share": 0.9}, {"speedup": 3, "f1_share": 0.9}], "train": {"data": "t.json"},
           "steps": 10}  # fmt: skip
    step = TargetsStep.parse(raw, 3, QAConfig())
    assert step.made_names() == ["t20ms-int8", "t3x-int8"] and step.targets[0].latency == "questions"
    with pytest.raises(EdgeQAError, match="each speed once"):
        TargetsStep.parse({**raw, "targets": [{"ms": 20, "f1_share": 0.9}, {"ms": 20, "f1_share": 0.8}]}, 3, QAConfig())


def _made(name: str, f1: float, p50: float, q50: float | None, making: list | None = None) -> dict:
    return {"name": name, "f1": f1, "p50_ms": p50, "question_p50_ms": q50, "extra": {"making": making or []}}


def test_each_targets_result_by_hand_at_its_limits_and_rounded():
    """Reference F1 80.123: 90% needs 72.1107 (shown 72.11). A 3x target made as t3x: over pytorch-fp32 (61 ms)
    at 23 ms, 2.652x (2.652), 0.348x short, F1 70 is 2.11 short; distilled 200 s and pruned 47 s, exported 600 s:
    247 / 60 = 4.1 training minutes. At exactly 2x and exactly the F1 needed (0.9 x 80.123 as a float) a target is
    met; so is one at exactly its ms. A model not in the report, or a speed-up with no time for its reference, keeps
    its prediction and nothing measured; a target in ms needs no reference."""
    making = [{"step": "distill", "seconds": 200.0}, {"step": "prune", "seconds": 47.0}, {"step": "export",
              "seconds": 600.0}]  # fmt: skip
    rows = [_made("pytorch-fp32", 80.123, 61.0, 40.0), _made("teacher-int8", 80.0, 30.0, None),
            _made("t3x", 70.0, 23.0, 23.45678, making), _made("t2x", 0.9 * 80.123, 30.5, 20.0)]  # fmt: skip
    speed = {"target": 3, "ms": None, "f1_share": 0.9, "latency": "fixed", "over": "pytorch-fp32", "variant": "t3x"}
    (got,) = target_results([speed], rows, "pytorch-fp32")
    assert got == {**speed, "measured_speedup": 2.652, "measured_ms": 23.0, "f1": 70.0, "f1_needed": 72.11,
                   "training_minutes": 4.1, "met": False, "speed_short": 0.348, "f1_short": 2.11}  # fmt: skip
    (exact,) = target_results([{**speed, "target": 2, "variant": "t2x"}], rows, "pytorch-fp32")
    assert (exact["measured_speedup"], exact["met"], exact["speed_short"], exact["f1_short"]) == (2.0, True, 0.0, 0.0)
    ms = {**speed, "target": None, "ms": 23.45678, "latency": "questions", "over": "teacher-int8"}
    (at_ms,) = target_results([ms], rows, "pytorch-fp32")
    assert (at_ms["measured_ms"], at_ms["measured_speedup"], at_ms["speed_short"]) == (23.457, None, 0.0)
    assert (at_ms["f1"], at_ms["training_minutes"], at_ms["met"]) == (70.0, 4.1, False)  # F1 short, in time
    (on_time,) = target_results([{**ms, "variant": "t2x", "ms": 20.0}], rows, "pytorch-fp32")
    assert (on_time["measured_ms"], on_time["met"]) == (20.0, True)  # exactly its ms, exactly the F1 needed
    empty = {"measured_speedup": None, "measured_ms": None, "f1": None, "met": False}
    for choice in ({**speed, "variant": "gone"}, {**speed, "over": "teacher-int8", "latency": "questions"}):
        assert target_results([choice], rows, "pytorch-fp32") == [{**choice, **empty}]


def test_a_report_with_the_recipes_word_and_no_targets_prints_the_word():
    report = {"rows": [{"name": "ref", "f1": 80.0}], "reference": "ref", "recipe_notes": ["tried a longer schedule"]}
    assert _targets(report) == ["", "## Targets", "", "", "From the recipe:", "", "- tried a longer schedule"]


def test_the_models_for_the_targets_table_line_by_line():
    """Met (3.10x measured for 3x), missed both ways (2.50x for 3x: 0.50x slow and 1.25 F1 short), a target whose
    model the report does not hold, and one missed on F1 alone; the table names where its shapes were timed."""
    base = {"target": 3, "ms": None, "f1_share": 0.9, "latency": "fixed", "over": "pytorch-fp32", "why": "w",
            "predicted_speedup": 3.3, "predicted_ms": 18.0, "table": "runs/x/shapes/shapes.json", "cpu": "EPYC",
            "isa": "avx2", "f1_needed": 72.0, "training_minutes": 12.34}  # fmt: skip
    report = {"choices": [
        {**base, "variant": "t3x-int8", "shape": "l6-h4-f384", "measured_speedup": 3.1, "f1": 73.0, "met": True,
         "speed_short": 0.0, "f1_short": 0.0},
        {**base, "variant": "t3x-b", "shape": "l3-h4-f384", "measured_speedup": 2.5, "f1": 70.75, "met": False,
         "speed_short": 0.5, "f1_short": 1.25},
        {**base, "variant": "t5x-int8", "shape": "l2-h4-f384", "measured_speedup": None, "f1": None,
         "met": False},
        {**base, "variant": "t3x-c", "shape": "l6-h3-f384", "measured_speedup": 3.2, "f1": 71.5, "met": False,
         "speed_short": 0.0, "f1_short": 0.5}]}  # fmt: skip
    target = ">= 3x at >= 90% (fixed, over pytorch-fp32)"
    assert _choices(report) == [
        "", "## Models for the targets", "",
        "Shapes chosen from runs/x/shapes/shapes.json (timed on EPYC, int8 class avx2).", "",
        "| target | model | shape | why | predicted | measured | F1 (needed) | training min | met |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
        f"| {target} | t3x-int8 | l6-h4-f384 | w | 3.30x | 3.10x | 73.00 (72.00) | 12.3 | yes |",
        f"| {target} | t3x-b | l3-h4-f384 | w | 3.30x | 2.50x | 70.75 (72.00) | 12.3 | "
        "**no**: 0.50x slow, 1.25 F1 short |",
        f"| {target} | t5x-int8 | l2-h4-f384 | w | 3.30x | not in this report | - | - | - |",
        f"| {target} | t3x-c | l6-h3-f384 | w | 3.30x | 3.20x | 71.50 (72.00) | 12.3 | **no**: 0.50 F1 short |",
    ]  # fmt: skip
    assert _choices({"choices": []}) == [] and _choices({}) == []


def test_a_report_target_rounds_what_it_shows_and_says_why_it_cannot_judge():
    """Reference F1 80.1234: 90% needs 72.11106 (shown 72.11); the fast row's 70.0 is 2.11 short."""
    rows = [_row("ref", 30.0, 80.1234), _row("a", 15.0, 70.0)]
    (t,) = check_targets(rows, rows[0], (Target(ms=20, f1_share=0.9),))
    assert (t["f1_needed"], t["f1_short"], t["fastest_at_f1"]["name"]) == (72.11, 2.11, "ref")
    untimed = [{**r, "question_p50_ms": None} for r in rows]
    with pytest.raises(EdgeQAError) as e:
        check_targets(untimed, untimed[0], (Target(ms=20, f1_share=0.9),))
    assert str(e.value) == ("target <= 20 ms at >= 90% is per question, but no row was timed per question (bench "
                            "questions 0, or no eval data)")  # fmt: skip
    assert Target(ms=0.5, f1_share=0.9).ms == 0.5  # under a millisecond is a time too
    tbl = _table()
    tbl["shapes"][2]["question_p50_ms"] = 7.12345
    assert pick_shape(tbl, Target(ms=5, f1_share=0.9))["predicted_ms"] == 7.123


# A recipe on the tiny teacher whose bench step is timed by `hand_timer`; the steps follow.
RECIPE_HEAD = """\
name: tgt
model: {model}
eval: {{data: {data}, batch_size: 4}}
parity: {{limit: 0}}
bench: {{threads: 1, batch_sizes: [1], seq_lens: [32], warmup: 0, repeats: 2, questions: 0}}
steps:
"""


def hand_timer(p50: dict[str, tuple[float, float | None]]):
    """`benchmark_interleaved` by hand: each model's p50 at the recipe's one shape and, where given, per question."""

    def timer(models, cfg, done=None, data=None, qa=None):
        results = {}
        for name, (path, _) in models.items():
            fixed, question = p50[name]
            lat = [{"batch_size": 1, "seq_len": 32, "p50_ms": fixed, "p90_ms": fixed, "p99_ms": fixed,
                    "mean_ms": fixed, "throughput": 1.0, "runs": 2, "pass_spread": None}]  # fmt: skip
            results[name] = {"backend": "x", "model": str(path), "file_bytes": 1, "peak_rss_mb": 1.0, "latency": lat,
                             "settings": cfg.to_dict(), "machine": {"cpu": "x", "logical_cores": 2},
                             "versions": {}}  # fmt: skip
            if question is not None:
                results[name]["questions"] = {
                    "data": "dev.json", "seed": 0, "questions": 5, "windows": 5, "mean_tokens": 30.0,
                    "p50_ms": question, "p90_ms": question, "mean_ms": question, "runs": 5,
                    "stage_share": {"tokenize": 0.1, "model": 0.8, "spans": 0.1}, "pass_p50_ms": [question],
                    "pass_spread": None, "samples_ms": [question] * 5}  # fmt: skip
            if done:
                done(name, results[name])
        return results

    return timer


MS_RECIPE = (
    RECIPE_HEAD
    + """\
  - targets:
      targets: [{{ms: 20, f1_share: 0.01}}]
      shapes: {table}
      train: {{data: {data}, batch_size: 2}}
      steps: 2
      loss: {{hard: 1.0}}
  - bench: {{variants: [pytorch-fp32, t20ms-int8]}}
  - report: {{reference: pytorch-fp32}}
"""
)


def test_a_recipes_target_in_ms_makes_its_model_and_the_report_judges_it_in_ms(tmp_path, toy_squad, monkeypatch):
    """The tiny teacher's table per question: its int8 model 24 ms, l2-h2-f32 19 ms, l1-h4-f64 12 ms. 20 ms (at
    most 19.05 with the margin) takes l2-h2-f32, made as t20ms-int8; the run times it (by hand) at 21 ms per
    question: missed by 1.0 ms, in the report's words."""
    from conftest import make_tiny_qa_model
    from edgeqa.pipeline.run import run_recipe

    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=2, heads=4, intermediate=64)
    refs = {"pytorch-fp32": {"p50_ms": 30.0, "question_p50_ms": 40.0, "flags": []},
            "teacher-int8": {"p50_ms": 28.0, "question_p50_ms": 24.0, "flags": []}}  # fmt: skip
    shapes = [{"name": n, "layers": int(n[1]), "p50_ms": 9.0, "question_p50_ms": q, "flags": []}
              for n, q in (("l2-h2-f32", 19.0), ("l1-h4-f64", 12.0))]  # fmt: skip
    table = tmp_path / "shapes.json"
    table.write_text(json.dumps({"schema": SCHEMA, "machine": {"cpu": "by hand", "isa": "x"}, "busy": False,
                                 "flags": [], "teacher_shape": "l2-h4-f64", "references": refs,
                                 "shapes": shapes}))  # fmt: skip
    recipe = tmp_path / "ms.yaml"
    recipe.write_text(MS_RECIPE.format(model=teacher, data=toy_squad, table=table))
    timer = hand_timer({"pytorch-fp32": (30.0, 40.0), "t20ms-int8": (12.0, 21.0)})
    monkeypatch.setattr("edgeqa.pipeline.steps.bench_step.benchmark_interleaved", timer)
    root = run_recipe(recipe, tmp_path / "runs")
    config = json.loads((root / "models" / "t20ms" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["intermediate_size"] == 32
    (choice,) = json.loads((root / "report.json").read_text())["choices"]
    assert (choice["variant"], choice["shape"], choice["predicted_ms"], choice["measured_ms"]) == (
        "t20ms-int8", "l2-h2-f32", 19.0, 21.0)  # fmt: skip
    assert (choice["met"], choice["speed_short"], choice["measured_speedup"]) == (False, 1.0, None)
    (line,) = [x for x in (root / "report.md").read_text().splitlines() if "| t20ms-int8 | l2-h2-f32 |" in x]
    assert line.startswith("| <= 20 ms at >= 1% (questions, over teacher-int8) |") and "| 19.0 ms | 21.0 ms |" in line
    assert line.endswith("**no**: 1.0 ms slow |")
