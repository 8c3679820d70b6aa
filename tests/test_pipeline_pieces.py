"""Small pieces of the pipeline, each against values written by hand: what a model folder's records put in its
report row, the eval section of report.json, the QA window in a model's identity, and a report of untimed
variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.qa import QAConfig
from edgeqa.pipeline.context import RecipeRun
from edgeqa.pipeline.recipe import load_recipe
from edgeqa.pipeline.rows import eval_info, model_records
from edgeqa.pipeline.step import window_identity


def test_a_model_folders_records_reach_its_report_row(tmp_path):
    (tmp_path / "parity.json").write_text(json.dumps({"max_abs_diff": 0.001}))
    (tmp_path / "fusion.json").write_text(json.dumps({"fused": ["attention"]}))
    training = {"teacher": "t", "parameters": 5, "questions": 3, "windows": 4, "train_seconds": 1.5, "processes": 1,
                "device": "cpu", "best": {"step": 2}, "stages": ["not in the row"]}  # fmt: skip
    (tmp_path / "training.json").write_text(json.dumps(training))
    records = model_records(tmp_path)
    assert records["parity"] == {"max_abs_diff": 0.001} and records["fusion"] == {"fused": ["attention"]}
    assert records["training"] == {
        "teacher": "t", "parameters": 5, "questions": 3, "windows": 4, "train_seconds": 1.5, "processes": 1,
        "device": "cpu", "best": {"step": 2},
    }  # fmt: skip
    assert "parity" not in model_records(tmp_path, torch_int8=True)  # the int8 model made at load has no parity


def test_the_eval_section_names_data_limit_questions_and_settings():
    metrics = {"total": 7, "settings": {"max_length": 384}, "f1": 50.0}
    assert eval_info("dev.json", 10, metrics) == {"data": "dev.json", "limit": 10, "questions": 7,
                                                  "settings": {"max_length": 384}}  # fmt: skip


def test_only_a_window_other_than_the_default_enters_a_models_identity():
    assert window_identity(QAConfig()) == {}
    other = QAConfig(max_length=256, doc_stride=64)
    assert window_identity(other) == {"qa": other.to_dict()} and other.to_dict()["max_length"] == 256


def _recipe(tmp_path, model, data, qa: str, steps: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"name: w\nmodel: {model}\nqa: {qa}\neval: {{data: {data}}}\ncalibration: {{data: {data}}}\n"
                    f"steps:\n{steps}")  # fmt: skip
    return path


QUANTIZE_STEPS = """\
  - export: {name: onnx}
  - quantize: {name: static, from: onnx, mode: static}
  - quantize: {name: dynamic, from: onnx}
"""


def test_static_int8_carries_the_recipes_window_in_its_identity(tmp_path, tiny_qa_model, toy_squad):
    """Calibration windows shape a static model's scales: another window makes another model; dynamic int8 reads
    no windows."""
    for qa, window in (("{max_length: 48, doc_stride: 16}", QAConfig(max_length=48, doc_stride=16)), ("{}", None)):
        recipe = load_recipe(_recipe(tmp_path, tiny_qa_model, toy_squad, qa, QUANTIZE_STEPS))
        run = RecipeRun(recipe, tmp_path / "runs")
        run.add("onnx")
        made = {s.name: s.identity(run) for s in recipe.steps if s.kind == "quantize"}
        assert made["static"]["from"] == str(tmp_path / "runs" / "models" / "onnx") and "qa" not in made["dynamic"]
        assert made["static"].get("qa") == (window.to_dict() if window else None)


def test_a_report_of_variants_never_timed_is_refused_by_line(tmp_path, tiny_qa_model, toy_squad):
    steps = "  - export: {name: onnx}\n  - bench: {variants: [onnx]}\n  - report: {variants: [onnx]}\n"
    path = _recipe(tmp_path, tiny_qa_model, toy_squad, "{}", steps)
    recipe = load_recipe(path)
    run = RecipeRun(recipe, tmp_path / "runs")
    run.add("onnx")
    with pytest.raises(EdgeQAError) as e:
        recipe.steps[-1].run(run)
    assert str(e.value) == f"{path}:9: report needs a bench step for onnx first"


def test_a_pruned_models_record_reaches_the_rows_of_models_exported_and_quantized_from_it(tmp_path):
    """prune.json's reported keys and its description follow the model through export and quantize (they keep the
    weights), also for the int8 model made from a folder at load; keys outside the report's stay out. A record
    written before steps kept a description gets the one its settings and kept shapes give."""
    record = {"method": "structured", "settings": {"method": "structured", "heads": 0.5}, "heads_per_layer": [2, 1],
              "intermediate_size": 8, "scores": [0.1, 0.2]}  # fmt: skip
    pruned, onnx_dir, int8 = (tmp_path / n for n in ("pruned", "onnx", "int8"))
    for folder, step, source in ((pruned, "prune", None), (onnx_dir, "export", pruned), (int8, "quantize", onnx_dir)):
        folder.mkdir()
        (folder / "step.json").write_text(json.dumps({"step": step, **({"from": str(source)} if source else {})}))
    (pruned / "prune.json").write_text(json.dumps(record))
    expected = {k: v for k, v in record.items() if k != "scores"}
    expected["description"] = "structured (magnitude): heads per layer [2, 1], FFN 8"
    assert model_records(int8)["pruning"] == expected
    assert model_records(onnx_dir, torch_int8=True)["pruning"] == expected
    (int8 / "step.json").write_text(json.dumps({"step": "distill", "from": str(onnx_dir)}))  # new weights
    assert "pruning" not in model_records(int8)


def test_weight_statistics_are_cached_per_making_of_the_file(tmp_path, tiny_qa_model):
    """The cache answers while the file and its making are the same; a folder made again (another step.json
    `made`) is measured again though its file has the same bytes."""
    from edgeqa.bench.weights import weight_stats
    from edgeqa.pipeline.rows import weight_stats_cached

    cache = tmp_path / "w.json"
    measured = weight_stats(tiny_qa_model)
    (tiny_qa_model / "step.json").write_text(json.dumps({"step": "distill", "made": "first"}))
    assert weight_stats_cached(tiny_qa_model, cache) == measured and measured["parameters"] > 0
    cached = json.loads(cache.read_text())
    cache.write_text(json.dumps({**cached, "stats": {"parameters": -1}}))  # what only the cache could answer
    assert weight_stats_cached(tiny_qa_model, cache) == {"parameters": -1}
    (tiny_qa_model / "step.json").write_text(json.dumps({"step": "distill", "made": "second"}))
    assert weight_stats_cached(tiny_qa_model, cache) == measured
    assert weight_stats_cached(tiny_qa_model, None) == measured


def test_a_report_row_carries_the_models_scoring_times_and_records(tmp_path):
    from edgeqa.pipeline.rows import report_row

    bench = {"backend": "onnxruntime", "model": "m.onnx", "file_bytes": 2**20, "peak_rss_mb": 50.0, "latency": []}
    metrics = {"exact_match": 1.0, "f1": 2.0, "overhead_share": 0.25, "timings": {"tokenize_s": 0.5}}
    (tmp_path / "fusion.json").write_text(json.dumps({"fused": []}))
    row = report_row("m", tmp_path, False, metrics, bench, {"parameters": 3})
    assert row["extra"] == {"overhead_share": 0.25, "timings": {"tokenize_s": 0.5}, "fusion": {"fused": []},
                            "weights": {"parameters": 3}}  # fmt: skip


def test_a_variant_added_as_pytorch_int8_is_marked_so(tmp_path):
    """A torch_int8 step's variant has no folder of its own: it is its source's, made int8 at load."""
    from edgeqa.pipeline.context import Variant

    run = RecipeRun(None, tmp_path)
    run.add("q", torch_int8=True, path=tmp_path / "src")
    run.add("f")
    assert run.variants == {"q": Variant("q", tmp_path / "src", True), "f": Variant("f", tmp_path / "models" / "f")}


RECIPE_MISTAKES = [  # (steps or a section, the error's text after the path) by hand from docs/recipes.md's rules
    ("steps: []\n", ":6: steps should be a non-empty list"),
    ("steps:\n  - prune: {name: p, sparsity: 0.5, teacher: nobody}\n", ":7: unknown teacher variant 'nobody'"),
    (
        "steps:\n  - report: {targets: 3}\n",
        ":7: report targets must be a list of {speedup: X or ms: Y, f1_share: Z[, latency: fixed or questions]}",
    ),
]


@pytest.mark.parametrize(("steps", "said"), RECIPE_MISTAKES)
def test_recipe_mistakes_are_refused_by_line(tmp_path, tiny_qa_model, toy_squad, steps, said):
    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\nmodel: {tiny_qa_model}\neval: {{data: {toy_squad}}}\nqa: {{}}\nbench: {{}}\n{steps}")
    with pytest.raises(EdgeQAError) as e:
        load_recipe(path)
    assert str(e.value).startswith(str(path)) and str(e.value).endswith(said), str(e.value)


def test_an_eval_setting_of_the_wrong_type_is_named(tmp_path, tiny_qa_model):
    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\nmodel: {tiny_qa_model}\neval: {{data: 5}}\nsteps:\n  - export: {{name: o}}\n")
    with pytest.raises(EdgeQAError) as e:
        load_recipe(path)
    assert str(e.value) == f"{path}: bad setting: eval.data should be str, got 5"


def test_a_quantization_record_without_a_preset_description_gets_one(tmp_path):
    """Records written before presets kept their description are described now, by the preset's own words."""
    from edgeqa.export.quantize import describe_preset, preset_record

    preset = {k: v for k, v in preset_record("avx2").items() if k != "description"}
    (tmp_path / "quantization.json").write_text(json.dumps({"mode": "dynamic", "preset": preset}))
    described = model_records(tmp_path)["quantization"]["preset"]
    assert described == {**preset, "description": describe_preset(preset)} and described["description"]


def test_an_unreadable_training_record_is_named_as_such(tmp_path):
    (tmp_path / "training.json").write_bytes(b"\xff\xfe")
    with pytest.raises(EdgeQAError) as e:
        model_records(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'training.json'}: training record is not UTF-8 text")


def test_a_run_until_a_kind_runs_the_steps_up_to_its_last_one(tmp_path, tiny_qa_model, toy_squad, monkeypatch):
    """`edgeqa distill` and `edgeqa prune` run a recipe up to (and with) its last step of their kind."""
    from edgeqa.pipeline import run as run_module

    ran = []
    monkeypatch.setattr(run_module, "_run_steps", lambda run, steps, *a: ran.extend(s.name for s in steps))
    steps = ("  - export: {name: a}\n  - quantize: {name: b, from: a}\n  - export: {name: c}\n"
             "  - quantize: {name: d, from: c}\n  - bench: {}\n")  # fmt: skip
    path = _recipe(tmp_path, tiny_qa_model, toy_squad, "{}", steps)
    run_module.run_recipe(path, tmp_path / "runs", until="quantize")
    assert ran == ["a", "b", "c", "d"]
    ran.clear()
    run_module.run_recipe(path, tmp_path / "runs", until="export")
    assert ran == ["a", "b", "c"]
