"""A recipe run in parts: `--only NAME` makes one variant and its sources; the whole run then reuses them, and the
report says how long each variant took to make."""

from __future__ import annotations

import json

import pytest

from conftest import write_recipe
from edgeqa.bench.files import EdgeQAError
from edgeqa.cli import main

STEPS = """\
- export: {name: onnx}
- quantize: {name: int8, from: onnx}
- export: {name: other, opset: 18}
- bench: {}
- report: {targets: [{speedup: 0.01, f1_share: 0.01}], notes: [a note from the recipe]}
"""


def _recipe(tmp_path, model, data):
    return write_recipe(tmp_path / "recipe.yaml", model, data, STEPS, name="parts")


def test_only_makes_the_named_variant_and_its_sources_and_the_whole_run_reuses_them(tmp_path, tiny_qa_model,
                                                                                      toy_squad, capsys):  # fmt: skip
    recipe, runs = _recipe(tmp_path, tiny_qa_model, toy_squad), tmp_path / "runs"
    assert main(["run", str(recipe), "--out", str(runs), "--only", "int8"]) == 0
    models = runs / "parts" / "models"
    assert sorted(p.name for p in models.iterdir()) == ["int8", "onnx"]  # not `other`
    assert not (runs / "parts" / "report.json").exists() and not (runs / "parts" / "bench").exists()
    made = {n: json.loads((models / n / "step.json").read_text()) for n in ("onnx", "int8")}
    assert all(r["seconds"] > 0 for r in made.values())

    assert main(["run", str(recipe), "--out", str(runs)]) == 0
    for name, record in made.items():  # reused, not made again
        assert json.loads((models / name / "step.json").read_text())["made"] == record["made"]
    rows = {r["name"]: r for r in json.loads((runs / "parts" / "report.json").read_text())["rows"]}
    making = rows["int8"]["extra"]["making"]
    assert [(s["step"], s["name"]) for s in making] == [("export", "onnx"), ("quantize", "int8")]
    assert [s["seconds"] for s in making] == [made["onnx"]["seconds"], made["int8"]["seconds"]]
    assert "making" not in rows["pytorch-fp32"]["extra"]  # the recipe's model was not made here
    markdown = (runs / "parts" / "report.md").read_text()
    assert "Time to make each variant" in markdown
    assert "| >= 0.01x at >= 1% |" in markdown and "- a note from the recipe" in markdown  # the report step's own


def test_only_refuses_a_name_no_step_makes(tmp_path, tiny_qa_model, toy_squad, capsys):
    recipe = _recipe(tmp_path, tiny_qa_model, toy_squad)
    assert main(["run", str(recipe), "--out", str(tmp_path / "runs"), "--only", "int9"]) == 2
    assert "no step makes int9 (it makes onnx, int8, other)" in capsys.readouterr().err
    with pytest.raises(EdgeQAError):
        from edgeqa.pipeline.run import run_recipe

        run_recipe(recipe, tmp_path / "runs", only=("pytorch-fp32",))
