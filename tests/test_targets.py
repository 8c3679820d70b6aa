"""Speed targets in, shapes out: the rule of pipeline/targets.py on shapes tables written by hand from the two
machines docs/results/front.md and issue 30 measured, and the steps that make a chosen shape."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
from test_ms_targets import RECIPE_HEAD, hand_timer

from conftest import make_tiny_qa_model
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.shapes import SCHEMA, Shape
from edgeqa.bench.targets import Target
from edgeqa.pipeline.targets import pick_shape, plan_steps

TEACHER = Shape(6, 12, 1536)
# Speed-ups over the int8 teacher, batch 1 x 384, 2 threads: the AMX Xeon (2026-12-03, docs/results/front.md) and a
# user's Zen 4 (2026-12-06, issue 30), on the six shapes both timed; and each machine's int8 teacher and PyTorch
# fp32 teacher in ms.
AMX = {"l6-h6-f384": 1.79, "l6-h4-f384": 2.28, "l4-h6-f384": 2.53, "l3-h6-f768": 2.72, "l3-h4-f768": 3.19,
       "l2-h12-f1536": 2.57}  # fmt: skip
ZEN4 = {"l6-h6-f384": 2.65, "l6-h4-f384": 3.34, "l4-h6-f384": 3.79, "l3-h6-f768": 4.13, "l3-h4-f768": 5.23,
        "l2-h12-f1536": 3.10}  # fmt: skip
MS = {"amx": (21.05, 60.95), "zen4": (26.40, 75.65)}


def table(over_int8: dict[str, float], int8_ms: float, fp32_ms: float | None, flags: list[str] = ()) -> dict:
    """A shapes table as bench.shapes writes it: each shape's p50 from its speed-up over the int8 teacher."""
    refs = {"teacher-int8": {"p50_ms": int8_ms, "flags": []}}
    if fp32_ms is not None:
        refs["pytorch-fp32"] = {"p50_ms": fp32_ms, "flags": []}
    shapes = [{"name": n, **Shape.parse(n).__dict__, "p50_ms": int8_ms / x, "flags": []} for n, x in over_int8.items()]
    return {"schema": SCHEMA, "machine": {"cpu": "by hand", "isa": "x"}, "teacher_shape": TEACHER.name,
            "references": refs, "busy": bool(flags), "flags": list(flags), "shapes": shapes}  # fmt: skip


def picks(tbl: dict, speedups=(3, 5, 8, 10), margin: float = 0.05) -> dict[float, str]:
    return {s: pick_shape(tbl, Target(s, 0.9), "pytorch-fp32", margin)["shape"] for s in speedups}


def test_the_same_targets_pick_other_shapes_on_another_cpu():
    """Over the PyTorch fp32 teacher, with a 5% margin. AMX (fp32 = 2.896x the int8 teacher): l6-h6-f384 is 5.18x,
    short of 5.25 for 5x, so 5x takes l6-h4-f384 (6.60x); 8x (8.40 needed) only l3-h4-f768 (9.24x); 10x none, so
    the fastest. Zen 4 (fp32 = 2.866x): l6-h6-f384 is 7.59x and serves 3x and 5x; l6-h4-f384 (9.57x) serves 8x; for
    10x (10.5) l4-h6-f384 (10.86x) keeps the most layers of the three fast enough."""
    amx, zen4 = table(AMX, *MS["amx"]), table(ZEN4, *MS["zen4"])
    assert picks(amx) == {3: "l6-h6-f384", 5: "l6-h4-f384", 8: "l3-h4-f768", 10: "l3-h4-f768"}
    assert picks(zen4) == {3: "l6-h6-f384", 5: "l6-h6-f384", 8: "l6-h4-f384", 10: "l4-h6-f384"}
    eight = pick_shape(amx, Target(8, 0.9))
    assert eight["predicted_speedup"] == pytest.approx(60.95 / (21.05 / 3.19), abs=1e-3) and eight["fast_enough"]
    assert "of the 1 of 7 shapes predicted at >= 8.40x (8x and a 5% margin)" in eight["why"]
    ten = pick_shape(amx, Target(10, 0.9))
    assert not ten["fast_enough"] and ten["why"].startswith("no shape is predicted at >= 10.50x (10x and a 5% margin)")


def test_the_front_recipe_asks_for_speedups_and_makes_other_shapes_on_another_cpu():
    """recipes/front-cpu.yaml names targets, not shapes; on the AMX and Zen 4 tables above its 5x and 8x models
    differ: on Zen 4, six layers reach 8x (issue 30's observation), on AMX three are needed."""
    from conftest import REPO, SHARED
    from edgeqa.pipeline.recipe import load_recipe

    (step,) = [s for s in load_recipe(REPO / "recipes" / "front-cpu.yaml", SHARED).steps if s.kind == "targets"]
    assert [t.speedup for t in step.targets] == [3, 5, 8, 10] and step.shapes == "auto"
    chosen = {
        machine: [pick_shape(table(over, *MS[machine]), t, step.over, step.margin)["shape"] for t in step.targets]
        for machine, over in (("amx", AMX), ("zen4", ZEN4))
    }
    assert chosen == {"amx": ["l6-h6-f384", "l6-h4-f384", "l3-h4-f768", "l3-h4-f768"],
                      "zen4": ["l6-h6-f384", "l6-h6-f384", "l6-h4-f384", "l4-h6-f384"]}  # fmt: skip


def test_a_run_with_only_cuts_the_targets_step_to_the_named_targets():
    """`edgeqa run recipes/front-cpu.yaml --only t8x-int8` runs the targets step for 8x alone; a name no step makes
    is refused with the names the recipe makes, the targets' among them."""
    from conftest import REPO, SHARED
    from edgeqa.pipeline.recipe import load_recipe
    from edgeqa.pipeline.run import steps_making

    recipe = load_recipe(REPO / "recipes" / "front-cpu.yaml", SHARED)
    (step,) = steps_making(recipe, ("t8x-int8",))
    assert step.kind == "targets" and [t.speedup for t in step.targets] == [8] and step.made_names() == ["t8x-int8"]
    both = steps_making(recipe, ("t3x-int8", "teacher-int8"))
    assert [s.kind for s in both] == ["export", "fuse", "quantize", "targets"] and both[-1].made_names() == ["t3x-int8"]
    with pytest.raises(EdgeQAError, match=r"no step makes t4x-int8 \(it makes teacher-onnx, .*, t10x-int8\)"):
        steps_making(recipe, ("t4x-int8",))


def test_the_margin_and_the_reference_decide_what_is_fast_enough():
    amx = table(AMX, *MS["amx"])
    assert picks(amx, (5,), margin=0.0) == {5: "l6-h6-f384"}  # 5.18x: 5x without a margin, not 5.25x with one
    assert picks(amx, (5,)) == {5: "l6-h4-f384"}
    over_int8 = pick_shape(amx, Target(2.4, 0.9), "teacher-int8")  # 2.52x needed
    assert over_int8["shape"] == "l4-h6-f384" and over_int8["predicted_speedup"] == pytest.approx(2.53)


def test_the_int8_teacher_itself_serves_a_target_it_reaches():
    """2x over PyTorch fp32 needs 2.10x: the int8 teacher (2.90x) keeps every layer and head."""
    choice = pick_shape(table(AMX, *MS["amx"]), Target(2, 0.98))
    assert choice["shape"] == TEACHER.name and choice["predicted_speedup"] == pytest.approx(60.95 / 21.05, abs=1e-3)


def test_per_question_targets_read_per_question_timings():
    """At real question lengths attention weighs less: here l6-h6-f384 reaches 5x per question but not at 384."""
    amx = table(AMX, *MS["amx"])
    amx["references"]["pytorch-fp32"]["question_p50_ms"] = 30.0
    amx["references"]["teacher-int8"]["question_p50_ms"] = 12.0
    for s in amx["shapes"]:
        s["question_p50_ms"] = 30.0 / (5.5 if s["name"] == "l6-h6-f384" else 9.0)
    assert pick_shape(amx, Target(5, 0.9, "questions"))["shape"] == "l6-h6-f384"
    assert pick_shape(amx, Target(5, 0.9))["shape"] == "l6-h4-f384"
    with pytest.raises(EdgeQAError) as e:
        pick_shape(table(AMX, *MS["amx"]), Target(5, 0.9, "questions"))
    assert str(e.value) == "the shapes table has no per-question timing: make it with --data, or use fixed latency"


def test_a_table_without_the_pytorch_teacher_takes_targets_over_the_int8_one_only():
    with pytest.raises(EdgeQAError, match="no pytorch-fp32 timing .* give targets over teacher-int8"):
        pick_shape(table(ZEN4, 26.4, None), Target(5, 0.9))


TRAINING = {"train": {"data": "train.json"}, "stage": {"loss": {"hard": 1.0}, "lr": 1e-4}, "steps": 1000,
            "distill_share": 0.6}  # fmt: skip


def test_a_choice_records_the_target_the_shape_and_the_reason():
    """Over the int8 teacher with no margin, 1.5x needs 1.5x: l2-h2-f32 (30 / 20 = 1.5 exactly) is fast enough and
    keeps both layers; 1.6x only l1-h4-f16 (30 / 15 = 2x). Speed-ups to three decimals (30 / 9 = 3.333)."""
    tbl = {"references": {"teacher-int8": {"p50_ms": 30.0}}, "teacher_shape": "l2-h4-f64",
           "shapes": [{"name": "l2-h2-f32", "p50_ms": 20.0}, {"name": "l1-h4-f16", "p50_ms": 15.0},
                      {"name": "l1-h1-f16", "p50_ms": 9.0}]}  # fmt: skip
    assert pick_shape(tbl, Target(1.5, 0.9), "teacher-int8", 0.0) == {
        "target": 1.5, "ms": None, "f1_share": 0.9, "latency": "fixed", "over": "teacher-int8", "shape": "l2-h2-f32",
        "layers": 2, "heads": 2, "ffn": 32, "predicted_speedup": 1.5, "predicted_ms": 20.0, "fast_enough": True,
        "why": "of the 3 of 4 shapes predicted at >= 1.50x (1.5x and a 0% margin), it keeps the most layers, then "
               "heads, then FFN neurons"}  # fmt: skip
    assert pick_shape(tbl, Target(1.6, 0.9), "teacher-int8", 0.0)["shape"] == "l1-h4-f16"
    fastest = pick_shape(tbl, Target(4, 0.9), "teacher-int8", 0.0)
    assert (fastest["shape"], fastest["predicted_speedup"], fastest["fast_enough"]) == ("l1-h1-f16", 3.333, False)


def test_a_step_cut_to_named_targets_keeps_them_in_order():
    both = _parse(targets=[{"speedup": 3, "f1_share": 0.9}, {"speedup": 5, "f1_share": 0.9},
                           {"speedup": 8, "f1_share": 0.9}])  # fmt: skip
    cut = both.making(("t8x-int8", "t3x-int8", "other"))
    assert [t.speedup for t in cut.targets] == [3, 8] and cut.training == both.training and cut.line == both.line
    assert both.making(("t4x-int8",)) is None


def test_a_shape_with_all_layers_is_pruned_and_recovered_on_the_whole_budget():
    """l6-h4-f384 of l6-h12-f1536: 8 of 12 heads (0.6667) and 1,152 of 1,536 FFN neurons (0.75) removed."""
    steps = plan_steps("t5x", Shape(6, 4, 384), TEACHER, TRAINING)
    assert [k for k, _ in steps] == ["prune", "export", "fuse", "quantize"]
    assert steps[0][1] == {"name": "t5x", "from": "pytorch-fp32", "method": "structured", "importance": "gradient",
                           "heads": 0.6667, "ffn": 0.75, "train": {"data": "train.json"},
                           "stages": [{"loss": {"hard": 1.0}, "lr": 1e-4, "max_steps": 1000}]}  # fmt: skip
    assert steps[-1][1] == {"name": "t5x-int8", "from": "t5x-fused"}


def test_a_shallower_shape_is_a_student_of_spread_layers_then_pruned_on_a_split_budget():
    """l3-h4-f768: teacher layers 0, 2, 4 distilled for 600 steps (0.6 of 1,000), then two thirds of the heads and
    half the FFN pruned and recovered for the other 400; l3-h12-f1536 is the student alone, on all 1,000."""
    steps = plan_steps("t8x", Shape(3, 4, 768), TEACHER, TRAINING)
    assert [k for k, _ in steps] == ["distill", "prune", "export", "fuse", "quantize"]
    distill, prune = steps[0][1], steps[1][1]
    assert distill["name"] == "t8x-student" and distill["student"] == {"layers": [0, 2, 4]}
    assert distill["stages"][0]["max_steps"] == 600 and prune["stages"][0]["max_steps"] == 400
    assert prune["from"] == "t8x-student" and (prune["heads"], prune["ffn"]) == (0.6667, 0.5)
    alone = plan_steps("t6x", Shape(3, 12, 1536), TEACHER, TRAINING)
    assert [k for k, _ in alone] == ["distill", "export", "fuse", "quantize"]
    assert alone[0][1]["name"] == "t6x" and alone[0][1]["stages"][0]["max_steps"] == 1000
    assert alone[1][1]["from"] == "t6x"


def test_heads_alone_or_ffn_alone_are_pruned_alone():
    """l6-h4-f1536 prunes two thirds of the heads and no FFN neuron; l6-h12-f384 three quarters of the FFN and no
    head; l3-h12-f768 is a student of 600 steps, then half its FFN pruned over the other 400."""
    (heads, *_) = plan_steps("a", Shape(6, 4, 1536), TEACHER, TRAINING)
    assert heads[0] == "prune" and (heads[1]["heads"], "ffn" in heads[1]) == (0.6667, False)
    (ffn, *_) = plan_steps("b", Shape(6, 12, 384), TEACHER, TRAINING)
    assert ffn[0] == "prune" and (ffn[1]["ffn"], "heads" in ffn[1]) == (0.75, False)
    distill, prune, *_ = plan_steps("c", Shape(3, 12, 768), TEACHER, TRAINING)
    assert (distill[1]["name"], distill[1]["stages"][0]["max_steps"]) == ("c-student", 600)
    assert (prune[1]["from"], prune[1]["ffn"], prune[1]["stages"][0]["max_steps"]) == ("c-student", 0.5, 400)


# --- the targets step in a recipe, on the tiny model -----------------------------------------------------------


def _tiny_table(path, over_fp32: dict[str, float]):
    """A table for the tiny teacher (l2-h4-f64), timed by hand: the PyTorch teacher 30 ms, its int8 model 28."""
    refs = {"pytorch-fp32": {"p50_ms": 30.0, "flags": []}, "teacher-int8": {"p50_ms": 28.0, "flags": []}}
    shapes = [{"name": n, **Shape.parse(n).__dict__, "p50_ms": 30.0 / x, "flags": []} for n, x in over_fp32.items()]
    tbl = {"schema": SCHEMA, "machine": {"cpu": "by hand", "isa": "x"}, "teacher_shape": "l2-h4-f64",
           "references": refs, "busy": False, "flags": [], "shapes": shapes}  # fmt: skip
    path.write_text(json.dumps(tbl))
    return path


TARGETS_RECIPE = (
    RECIPE_HEAD
    + """\
  - targets:
      targets: [{{speedup: 1.2, f1_share: 0.5}}, {{speedup: 2, f1_share: 0.5}}]
      shapes: {table}
      accept_busy: true
      margin: 0.2
      train: {{data: {data}, batch_size: 2}}
      steps: 2
      loss: {{hard: 1.0}}
  - bench: {{variants: [pytorch-fp32, t1.2x-int8, t2x-int8]}}
  - report: {{reference: pytorch-fp32}}
"""
)


def test_a_recipes_targets_make_the_shapes_the_table_picks_and_the_report_weighs_them(tmp_path, toy_squad,
                                                                                      monkeypatch, caplog):  # fmt: skip
    """Table by hand: l2-h2-f32 1.5x, l1-h4-f64 2.5x, l1-h2-f16 4x over the PyTorch teacher. 1.2x (1.44 with the
    recipe's 20% margin) takes l2-h2-f32: both layers, half the heads and FFN pruned; 2x (2.4) takes l1-h4-f64: a
    one-layer student. The run times them (by hand) at 30, 25 and 16 ms: measured 1.2x and 1.875x, so 2x is missed
    by 0.125x."""
    from edgeqa.pipeline.run import run_recipe

    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=2, heads=4, intermediate=64)
    table = _tiny_table(tmp_path / "shapes.json", {"l2-h2-f32": 1.5, "l1-h4-f64": 2.5, "l1-h2-f16": 4.0})
    busy = {**json.loads(table.read_text()), "busy": True, "flags": ["l1-h2-f16: passes disagree"]}
    table.write_text(json.dumps(busy))  # used all the same: the recipe accepts a busy table
    recipe = tmp_path / "tgt.yaml"
    recipe.write_text(TARGETS_RECIPE.format(model=teacher, data=toy_squad, table=table))
    timer = hand_timer({"pytorch-fp32": (30.0, None), "t1.2x-int8": (25.0, None), "t2x-int8": (16.0, None)})
    monkeypatch.setattr("edgeqa.pipeline.steps.bench_step.benchmark_interleaved", timer)
    with caplog.at_level(logging.INFO, logger="edgeqa.pipeline.steps.targets_step"):
        root = run_recipe(recipe, tmp_path / "runs")
    said = [r.getMessage() for r in caplog.records if r.name == "edgeqa.pipeline.steps.targets_step"]
    assert any(m.startswith("target 2x: l1-h4-f64 (of the 2 of 4 shapes predicted at >= 2.40x (2x and a 20% margin)")
               for m in said)  # fmt: skip

    pruned = json.loads((root / "models" / "t1.2x" / "config.json").read_text())
    assert pruned["num_hidden_layers"] == 2 and pruned["intermediate_size"] == 32
    assert sum(len(h) for h in pruned["pruned_heads"].values()) == 4  # 4 of 8 heads: 2 per layer on average
    student = json.loads((root / "models" / "t2x" / "config.json").read_text())
    assert (student["num_hidden_layers"], student["intermediate_size"], student.get("pruned_heads") or {}) == (
        1,
        64,
        {},
    )
    choice = json.loads((root / "choice.json").read_text())
    assert [(c["shape"], c["predicted_speedup"]) for c in choice["choices"]] == [("l2-h2-f32", 1.5), ("l1-h4-f64", 2.5)]
    assert (choice["table"], choice["machine"]) == (str(table), {"cpu": "by hand", "isa": "x"})
    assert [(c["variant"], c["table"], c["cpu"], c["isa"]) for c in choice["choices"]] == [
        ("t1.2x-int8", str(table), "by hand", "x"), ("t2x-int8", str(table), "by hand", "x")]  # fmt: skip
    report = json.loads((root / "report.json").read_text())
    got = {c["variant"]: (c["shape"], c["predicted_speedup"], c["measured_speedup"], c["speed_short"])
           for c in report["choices"]}  # fmt: skip
    assert got == {"t1.2x-int8": ("l2-h2-f32", 1.5, 1.2, 0.0), "t2x-int8": ("l1-h4-f64", 2.5, 1.875, 0.125)}
    assert not report["choices"][1]["met"] and report["choices"][0]["training_minutes"] >= 0
    (line,) = [x for x in (root / "report.md").read_text().splitlines() if "| t2x-int8 | l1-h4-f64 |" in x]
    assert line.startswith("| >= 2x at >= 50% (fixed, over pytorch-fp32) |") and "| 2.50x | 1.88x |" in line
    assert "**no**: 0.12x slow" in line


# --- the targets step's settings, refusals and table ---------------------------------------------------------

STEP = {"targets": [{"speedup": 3, "f1_share": 0.98}], "train": {"data": "train.json"}, "steps": 100}


def _parse(**changes):
    from edgeqa.bench.qa import QAConfig
    from edgeqa.pipeline.steps.targets_step import TargetsStep

    return TargetsStep.parse({**STEP, **changes}, 7, QAConfig())


def test_a_targets_step_reads_its_defaults_from_the_recipe_reference():
    """docs/recipes.md: over pytorch-fp32, shapes auto, margin 0.05, prefix t, 0.5 hard + 0.5 soft at T=2, lr 1e-4,
    warm-up 0.05, distill_share 0.5."""
    step = _parse()
    assert (step.over, step.shapes, step.margin, step.accept_busy, step.prefix, step.grid) == (
        "pytorch-fp32", "auto", 0.05, False, "t", {})  # fmt: skip
    assert step.training == {"train": {"data": "train.json"}, "steps": 100, "distill_share": 0.5,
                             "stage": {"loss": {"hard": 0.5, "soft": 0.5, "temperature": 2.0}, "lr": 1e-4,
                                       "warmup": 0.05}}  # fmt: skip
    assert step.targets == (Target(3, 0.98),) and step.made_names() == ["t3x-int8"]
    other = _parse(over="teacher-int8", shapes="s.json", margin=0.1, accept_busy=True, prefix="m", layers=[3],
                   heads=[4, 6], lr=2e-4, warmup=0.1, distill_share=0.7, loss={"hard": 1.0})  # fmt: skip
    assert (other.over, other.shapes, other.margin, other.accept_busy, other.prefix) == (
        "teacher-int8", "s.json", 0.1, True, "m")  # fmt: skip
    assert other.grid == {"layers": (3,), "heads": (4, 6)} and other.made_names() == ["m3x-int8"]
    assert other.training["stage"] == {"loss": {"hard": 1.0}, "lr": 2e-4, "warmup": 0.1}
    assert other.training["distill_share"] == 0.7
    assert _parse().keys() == {"targets", "over", "shapes", "margin", "accept_busy", "prefix", "train", "loss",
                               "steps", "lr", "warmup", "distill_share", "layers", "heads", "ffn"}  # fmt: skip


TARGET_MISTAKES = [
    ({"targets": []}, "targets needs a list of {speedup: X or ms: Y, f1_share: Z[, latency: fixed or questions]}"),
    ({"targets": [3]}, "targets needs a list of {speedup: X or ms: Y, f1_share: Z[, latency: fixed or questions]}"),
    ({"over": "onnx"}, "targets.over must be pytorch-fp32 or teacher-int8, got 'onnx'"),
    ({"steps": None}, "targets.steps must be a whole number of training steps >= 2, got None"),
    ({"steps": 1}, "targets.steps must be a whole number of training steps >= 2, got 1"),
    ({"steps": True}, "targets.steps must be a whole number of training steps >= 2, got True"),
    ({"distill_share": 1}, "targets.distill_share must be between 0 and 1, got 1"),
    ({"distill_share": 0}, "targets.distill_share must be between 0 and 1, got 0"),
    ({"distill_share": "x"}, "targets.distill_share must be between 0 and 1, got 'x'"),
    ({"targets": [{"speedup": 3, "f1_share": 0.9}, {"speedup": 3, "f1_share": 0.8}]},
     "targets: each speed once, and a prefix of letters, digits, '.', '_', '-'"),
    ({"prefix": "a b"}, "targets: each speed once, and a prefix of letters, digits, '.', '_', '-'"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "said"), TARGET_MISTAKES)
def test_a_bad_targets_step_is_refused_in_words(changes, said):
    with pytest.raises(EdgeQAError) as e:
        _parse(**changes)
    assert str(e.value) == said


def test_a_targets_step_needs_training_data_and_a_budget_and_checks_the_training_settings():
    from edgeqa.bench.qa import QAConfig
    from edgeqa.pipeline.steps.targets_step import TargetsStep

    for missing in ("train", "steps"):
        with pytest.raises(EdgeQAError) as e:
            TargetsStep.parse({k: v for k, v in STEP.items() if k != missing}, 7, QAConfig())
        assert str(e.value) == "targets needs train (the training data and settings) and steps (the budget per model)"
    with pytest.raises(EdgeQAError, match="unknown"):  # a training setting no distill step takes, refused at once
        _parse(train={"data": "train.json", "epochz": 3})


def _targets_run(tmp_path, toy_squad, table: str, extra: str = ""):
    from edgeqa.pipeline.context import RecipeRun
    from edgeqa.pipeline.recipe import load_recipe

    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=2, heads=4, intermediate=64)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nmodel: {teacher}\neval: {{data: {toy_squad}}}\nbench: {{threads: 1}}\nsteps:\n"
                      f"  - targets: {{targets: [{{speedup: 2, f1_share: 0.5}}], shapes: {table}, steps: 2,"
                      f" train: {{data: {toy_squad}}}{extra}}}\n")  # fmt: skip
    loaded = load_recipe(recipe)
    return loaded.steps[0], RecipeRun(loaded, tmp_path / "runs" / "r"), recipe


def test_a_busy_table_or_another_teachers_is_refused_before_any_training(tmp_path, toy_squad):
    path = _tiny_table(tmp_path / "shapes.json", {"l1-h4-f64": 2.5})
    tbl = json.loads(path.read_text())
    path.write_text(json.dumps({**tbl, "busy": True, "flags": ["l1-h4-f64: busy machine: p90 is 2.00x p50"]}))
    step, run, recipe = _targets_run(tmp_path, toy_squad, str(path))
    with pytest.raises(EdgeQAError) as e:
        step.run(run)
    busy = "l1-h4-f64: busy machine: p90 is 2.00x p50"
    assert str(e.value) == (f"{recipe}:6: {path} was timed on a busy machine ({busy}); time it again "
                            f"(edgeqa shapes --time {tmp_path}) or set accept_busy: true")  # fmt: skip
    path.write_text(json.dumps({**tbl, "teacher_shape": "l6-h12-f1536"}))
    with pytest.raises(EdgeQAError) as e:
        step.run(run)
    assert str(e.value) == f"{recipe}:6: {path} holds shapes of a l6-h12-f1536 teacher, the recipe's model is l2-h4-f64"
    assert not (run.root / "models").exists()


def test_an_auto_table_is_made_and_timed_here_once_and_again_on_retime(tmp_path, toy_squad, monkeypatch):
    """shapes: auto makes the recipe's teacher's grid under the run folder and times it with the recipe's threads,
    on its eval data only when a target asks for latency per question; the next run reads the table it wrote."""
    from edgeqa.bench.shapes import Shape
    from edgeqa.pipeline.steps import targets_step

    made, timed = [], []

    def make(teacher, folder, shapes, preset_name="auto"):
        made.append((str(teacher), folder, shapes))

    def time_(folder, cfg, data):
        timed.append((folder, cfg.threads, data))
        folder.mkdir(parents=True, exist_ok=True)
        _tiny_table(folder / "shapes.json", {"l1-h4-f64": 2.5})

    monkeypatch.setattr(targets_step, "make_shapes", make)
    monkeypatch.setattr(targets_step, "time_shapes", time_)
    step, run, _ = _targets_run(tmp_path, toy_squad, "auto", ", layers: [1], heads: [2, 4], ffn: [16]")
    path, table = step.table(run)
    assert path == run.root / "shapes" / "shapes.json" and table["teacher_shape"] == "l2-h4-f64"
    assert made == [(run.recipe.model, run.root / "shapes", [Shape(1, 4, 16), Shape(1, 2, 16)])]
    assert timed == [(run.root / "shapes", 1, None)]
    step.table(run)
    assert len(made) == len(timed) == 1  # read, not made again
    run.retime = True
    step = dataclasses.replace(step, targets=(Target(2, 0.5, "questions"),))
    step.table(run)
    assert len(made) == 2 and timed[-1] == (run.root / "shapes", 1, run.recipe.eval.data)
