"""Recipes: validation with file and line, a whole pipeline on a tiny model, and resuming a killed run."""

import json
import textwrap

import pytest

from conftest import edgeqa_command, kill_when_written, run_to_end
from edgeqa.bench.files import EdgeQAError
from edgeqa.pipeline.recipe import load_recipe
from edgeqa.pipeline.run import run_recipe
from edgeqa.pipeline.steps.quantize_step import QuantizeStep

STEPS = """\
steps:
  - export: {name: onnx-fp32}
  - fuse: {name: onnx-fused, from: onnx-fp32}
  - quantize: {name: int8-dyn, from: onnx-fp32, preset: avx512_vnni}
  - quantize: {name: int8-static, from: onnx-fp32, mode: static, calibration_samples: 3}
  - torch_int8: {name: pytorch-int8}
  - mobile: {name: mobile, from: int8-dyn}
  - bench: {}
  - report: {reference: pytorch-fp32}
"""


def _write(tmp_path, model, data, steps=STEPS, extra=""):
    text = (
        textwrap.dedent(f"""\
        name: tiny
        model: {model}
        eval: {{data: {data}, batch_size: 4}}
        calibration: {{data: {data}}}
        parity: {{limit: 3}}
        bench: {{threads: 1, batch_sizes: [1], seq_lens: [32], warmup: 1, repeats: 3}}
        {extra}""")
        + steps
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_full_pipeline_then_resume_gives_the_same_report(tmp_path, tiny_qa_model, toy_squad, monkeypatch):
    path = _write(tmp_path, tiny_qa_model, toy_squad)
    # First run dies in the middle of the static quantization step.
    real = QuantizeStep.run

    def dying(step, run):
        if step.name == "int8-static":
            raise KeyboardInterrupt
        real(step, run)

    monkeypatch.setattr(QuantizeStep, "run", dying)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(path, tmp_path / "runs")
    root = tmp_path / "runs" / "tiny"
    assert (root / "models" / "int8-dyn" / "step.json").exists()
    assert not (root / "models" / "int8-static").exists()
    assert not list((root / "models").glob(".*tmp"))  # nothing half-written
    monkeypatch.undo()

    run_recipe(path, tmp_path / "runs")
    report = json.loads((root / "report.json").read_text())
    names = [r["name"] for r in report["rows"]]
    assert names == ["pytorch-fp32", "onnx-fp32", "onnx-fused", "int8-dyn", "int8-static", "pytorch-int8", "mobile"]
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["pytorch-fp32"]["speedup"] == 1.0 and rows["pytorch-fp32"]["delta_f1"] == 0.0
    assert rows["onnx-fp32"]["extra"]["parity"]["ok"]
    assert rows["int8-static"]["extra"]["quantization"]["mode"] == "static"
    assert rows["pytorch-int8"]["backend"] == "torch-int8"
    assert rows["mobile"]["path"].endswith("mobile")
    # Dynamic int8 (ONNX, its .ort twin, PyTorch's) is scored one question at a time; the rest at the recipe's 4.
    assert {n: r["scored_batch_size"] for n, r in rows.items()} == {
        "pytorch-fp32": 4, "onnx-fp32": 4, "onnx-fused": 4, "int8-dyn": 1, "int8-static": 4, "pytorch-int8": 1,
        "mobile": 1,
    }  # fmt: skip
    assert rows["int8-static"]["extra"]["quantization"]["preset"]["asked"] == "auto"
    assert rows["mobile"]["extra"]["quantization"]["preset"]["asked"] == "avx512_vnni"  # from the model it converts
    assert (root / "report.md").exists() and (root / "pareto.png").exists()

    # A third run redoes nothing and rewrites the same rows.
    stamp = (root / "models" / "onnx-fp32" / "model.onnx").stat().st_mtime_ns
    run_recipe(path, tmp_path / "runs")
    again = json.loads((root / "report.json").read_text())
    assert again["rows"] == report["rows"]
    assert (root / "models" / "onnx-fp32" / "model.onnx").stat().st_mtime_ns == stamp


def test_changed_settings_are_not_silently_reused(tmp_path, tiny_qa_model, toy_squad):
    steps = "steps:\n  - export: {name: onnx-fp32}\n"
    run_recipe(_write(tmp_path, tiny_qa_model, toy_squad, steps), tmp_path / "runs")
    changed = "steps:\n  - export: {name: onnx-fp32, opset: 18}\n"
    with pytest.raises(EdgeQAError, match="other settings"):
        run_recipe(_write(tmp_path, tiny_qa_model, toy_squad, changed), tmp_path / "runs")


def test_an_automatic_preset_is_chosen_again_on_another_cpu(tmp_path, tiny_qa_model, toy_squad, monkeypatch):
    from edgeqa.bench.cpu import this_cpu

    steps = """\
steps:
  - export: {name: onnx-fp32}
  - quantize: {name: auto, from: onnx-fp32}
  - quantize: {name: named, from: onnx-fp32, preset: avx2}
"""
    path = _write(tmp_path, tiny_qa_model, toy_squad, steps)

    def settings(name):
        record = json.loads((tmp_path / "runs" / "tiny" / "models" / name / "quantization.json").read_text())
        return record["preset"]["chosen"], record["reduce_range"]

    for flags, chosen in (("avx2 avx512f avx512bw avx512_vnni", ("avx512_vnni", False)), ("avx2", ("avx2", True))):
        monkeypatch.setenv("EDGEQA_CPU_FLAGS", flags)
        this_cpu.cache_clear()
        run_recipe(path, tmp_path / "runs")
        assert settings("auto") == chosen and settings("named") == ("avx2", True)
    this_cpu.cache_clear()


def test_a_killed_run_resumes_and_ends_with_the_same_models_and_scores(tmp_path, tiny_qa_model, toy_squad):
    """`edgeqa run` SIGKILLed once its first model folder is in place, started again: it says it skips what was
    made, and its models and scores equal those of a run never stopped (timings are measured anew, so they differ)."""
    steps = """\
steps:
  - export: {name: onnx-fp32}
  - quantize: {name: int8-dyn, from: onnx-fp32}
  - bench: {}
  - report: {}
"""
    path = _write(tmp_path, tiny_qa_model, toy_squad, steps)
    whole, killed = tmp_path / "whole" / "tiny", tmp_path / "killed" / "tiny"
    run_to_end(edgeqa_command("run", str(path), "--out", str(whole.parent)), tmp_path / "whole.log", tmp_path)
    argv = edgeqa_command("run", str(path), "--out", str(killed.parent))
    kill_when_written(argv, killed / "models" / "onnx-fp32" / "step.json", tmp_path / "first.log", tmp_path)
    assert not (killed / "report.json").exists()
    log = run_to_end(argv, tmp_path / "second.log", tmp_path)
    assert "step export onnx-fp32: already done, skipping" in log
    assert "step quantize int8-dyn: already done" not in log
    for name in ("onnx-fp32", "int8-dyn"):
        model = [(root / "models" / name / "model.onnx").read_bytes() for root in (whole, killed)]
        assert model[0] == model[1]
    rows = [json.loads((root / "report.json").read_text())["rows"] for root in (whole, killed)]
    scores = [[(r["name"], r["exact_match"], r["f1"]) for r in rs] for rs in rows]
    assert scores[0] == scores[1] and len(scores[0]) == 3


def test_a_remade_model_is_exported_scored_and_timed_again(tmp_path, tiny_qa_model, toy_squad):
    """A model made again under the same name (its folder deleted, a step rerun) must not inherit the export,
    the scores or the timings of the one it replaced; the unchanged teacher is timed again beside it."""
    steps = """\
steps:
  - prune: {name: sparse, sparsity: 0.5}
  - export: {name: sparse-onnx, from: sparse}
  - bench: {}
  - report: {}
"""
    path = _write(tmp_path, tiny_qa_model, toy_squad, steps)
    root = run_recipe(path, tmp_path / "runs")

    def made(name):
        return json.loads((root / "models" / name / "step.json").read_text())["made"]

    def record(kind, name):
        path = root / kind / (f"{name}/metrics.json" if kind == "eval" else f"{name}.json")
        return json.loads(path.read_text())

    first = {n: made(n) for n in ("sparse", "sparse-onnx")}
    teacher_timed = (root / "bench" / "pytorch-fp32.json").stat().st_mtime_ns
    assert record("eval", "sparse-onnx")["made"] == first["sparse-onnx"]

    run_recipe(path, tmp_path / "runs")  # nothing changed: nothing is made, scored or timed again
    assert {n: made(n) for n in first} == first
    assert (root / "bench" / "pytorch-fp32.json").stat().st_mtime_ns == teacher_timed

    scored = (root / "eval" / "sparse-onnx" / "metrics.json").stat().st_mtime_ns
    run_recipe(path, tmp_path / "runs", retime=True)  # timed again, on request; nothing made or scored again
    assert {n: made(n) for n in first} == first
    assert (root / "eval" / "sparse-onnx" / "metrics.json").stat().st_mtime_ns == scored
    retimed = (root / "bench" / "pytorch-fp32.json").stat().st_mtime_ns
    assert retimed != teacher_timed
    teacher_timed = retimed

    import shutil

    shutil.rmtree(root / "models" / "sparse")
    run_recipe(path, tmp_path / "runs")
    again = {n: made(n) for n in first}
    assert again["sparse"] != first["sparse"] and again["sparse-onnx"] != first["sparse-onnx"]
    onnx_step = json.loads((root / "models" / "sparse-onnx" / "step.json").read_text())
    assert onnx_step["source_made"] == again["sparse"]
    for kind in ("eval", "bench"):
        assert record(kind, "sparse-onnx")["made"] == again["sparse-onnx"]
    assert (root / "bench" / "pytorch-fp32.json").stat().st_mtime_ns != teacher_timed  # side by side again


def test_runs_recorded_before_a_setting_existed_stay_valid(tmp_path, tiny_qa_model, toy_squad):
    path = _write(tmp_path, tiny_qa_model, toy_squad, "steps:\n  - prune: {name: sparse, sparsity: 0.5}\n")
    root = run_recipe(path, tmp_path / "runs")
    step_json = root / "models" / "sparse" / "step.json"
    record = json.loads(step_json.read_text())
    for key in ("version", "initial", "refit", "refit_batches", "refit_to"):  # a version 1 record, made before them
        del record[key]
    step_json.write_text(json.dumps(record))
    run_recipe(path, tmp_path / "runs")  # absent means the default: skipped, not refused and not made again
    assert json.loads(step_json.read_text())["made"] == record["made"]
    changed = f"steps:\n  - prune: {{name: sparse, sparsity: 0.5, refit: true, train: {{data: {toy_squad}}}}}\n"
    with pytest.raises(EdgeQAError, match="other settings"):
        run_recipe(_write(tmp_path, tiny_qa_model, toy_squad, changed), tmp_path / "runs")

    # A refit recorded before refit_to existed was a refit to each dense matrix, not to the dense model.
    refit = "steps:\n  - prune: {name: refit, sparsity: 0.5, refit: true, refit_to: matrix, train: {data: DATA}}\n"
    refit = refit.replace("DATA", str(toy_squad))
    run_recipe(_write(tmp_path, tiny_qa_model, toy_squad, refit), tmp_path / "runs")
    step_json = root / "models" / "refit" / "step.json"
    record = json.loads(step_json.read_text())
    del record["refit_to"], record["version"]
    step_json.write_text(json.dumps(record))
    run_recipe(_write(tmp_path, tiny_qa_model, toy_squad, refit), tmp_path / "runs")
    assert json.loads(step_json.read_text())["made"] == record["made"]
    with pytest.raises(EdgeQAError, match="other settings"):
        run_recipe(
            _write(tmp_path, tiny_qa_model, toy_squad, refit.replace("refit_to: matrix", "refit_to: model")),
            tmp_path / "runs",
        )

    # A record from a newer edgeqa is refused rather than misread.
    step_json.write_text(json.dumps({**record, "version": 99}))
    with pytest.raises(EdgeQAError, match="version 99 is newer"):
        run_recipe(_write(tmp_path, tiny_qa_model, toy_squad, refit), tmp_path / "runs")
    step_json.write_text(json.dumps(record))

    # train.dropout left at its default stays out of the record, as it was before the setting existed.
    recovered = (
        "steps:\n  - prune: {name: recovered, sparsity: 0.5, train: {data: DATA, batch_size: 2, eval_limit: 2,"
        " precision: fp32}, stages: [{loss: {hard: 1.0}, max_steps: 2}]}\n"
    ).replace("DATA", str(toy_squad))
    run_recipe(_write(tmp_path, tiny_qa_model, toy_squad, recovered), tmp_path / "runs")
    record = json.loads((root / "models" / "recovered" / "step.json").read_text())
    assert "dropout" not in record["train"]
    with pytest.raises(EdgeQAError, match="other settings"):
        without_dropout = recovered.replace("precision: fp32", "precision: fp32, dropout: 0.0")
        run_recipe(_write(tmp_path, tiny_qa_model, toy_squad, without_dropout), tmp_path / "runs")


@pytest.mark.parametrize(
    ("steps", "extra", "message"),
    [
        ("steps:\n  - export: {name: a}\n", "colour: blue\n", r"recipe.yaml:7: unknown key 'colour' in the recipe"),
        ("steps:\n  - export: {name: a}\n  - compile: {name: b}\n", "", r"recipe.yaml:9: unknown step 'compile'"),
        ("steps:\n  - export: {name: a, bits: 4}\n", "", r"recipe.yaml:8: unknown key 'bits' in step 'export'"),
        ("steps:\n  - fuse: {name: a, from: missing}\n", "", r"recipe.yaml:8: .*'missing', which no earlier step"),
        (
            "steps:\n  - export: {name: a}\n  - export: {name: a}\n",
            "",
            r"recipe.yaml:9: variant name 'a' is used twice",
        ),
        ("steps:\n  - report: {reference: nope}\n", "", r"recipe.yaml:8: unknown variant 'nope'"),
        ("steps:\n  - export: {name: a}\n  - report: {}\n", "", r"recipe.yaml:9: a report needs a bench step"),
        ("steps:\n  - report: {targets: [{speedup: 3}]}\n", "", r"recipe.yaml:8: a target needs f1_share, the"),
        (
            "steps:\n  - report: {targets: [{speedup: 3, f1_share: 98}]}\n",
            "",
            r"recipe.yaml:8: a target's f1_share must be in \(0, 1\]",
        ),
        ("steps: [\n", "", r"recipe.yaml:\d+: not valid YAML"),
        ("steps:\n  - quantize: {name: q, mode: fast}\n", "", r"recipe.yaml:8: quantize mode must be one of"),
        ("steps:\n  - quantize: {name: q, preset: avx9}\n", "", r"recipe.yaml:8: unknown hardware preset"),
        ("steps:\n  - fuse: {name: f, fusions: [warp]}\n", "", r"recipe.yaml:8: unknown fusion"),
        (
            "steps:\n  - export: {name: a}\n",
            "name: again\n",
            r"recipe.yaml: not valid YAML: line 7: key 'name' appears",
        ),
    ],
)
def test_bad_recipes_name_the_line(tmp_path, tiny_qa_model, toy_squad, steps, extra, message):
    path = _write(tmp_path, tiny_qa_model, toy_squad, steps, extra)
    with pytest.raises(EdgeQAError, match=message):
        load_recipe(path)


def test_bench_section_key_and_model_kind_are_checked(tmp_path, tiny_qa_model, toy_squad):
    path = _write(tmp_path, tiny_qa_model, toy_squad, "steps:\n  - export: {name: a}\n")
    path.write_text(path.read_text().replace("repeats: 3", "repeats: 3, turbo: true"))
    with pytest.raises(EdgeQAError, match=r"recipe.yaml:6: unknown key 'turbo' in bench"):
        load_recipe(path)
    path.write_text(path.read_text().replace("repeats: 3, turbo: true", "repeats: 0"))
    with pytest.raises(EdgeQAError, match=r"recipe.yaml: bad setting: bench settings: .* must be positive"):
        load_recipe(path)
    onnx_model = _write(tmp_path, tmp_path / "nowhere", toy_squad, "steps:\n  - export: {name: a}\n")
    with pytest.raises(EdgeQAError, match="no such model"):
        run_recipe(onnx_model, tmp_path / "runs")


def test_shipped_recipes_parse(tmp_path):
    from conftest import REPO

    for path in sorted((REPO / "recipes").glob("*.yaml")):
        recipe = load_recipe(path, shared=tmp_path)
        assert recipe.steps and str(tmp_path) in recipe.model


STAGE = "stages: [{loss: {hard: 1}, max_steps: 1, lr: 1.0e-4}]"
DISTILL = "- distill: {name: s, student: {layers: [0]}, train: {data: DATA%s}, %s}"


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("eval", "{data: DATA, limit: x}", r"eval.limit must be a positive whole number, got 'x'"),
        ("eval", "{data: DATA, batch_size: 0}", r"eval.batch_size must be a positive whole number, got 0"),
        ("eval", "{data: DATA, batch_size: 2.5}", r"eval.batch_size must be a positive whole number, got 2.5"),
        ("eval", "{data: DATA, batch_size: true}", r"eval.batch_size must be a positive whole number, got True"),
        ("eval", "{data: DATA, dynamic_int8_batch_size: -1}", r"dynamic_int8_batch_size must be a positive"),
        ("parity", "{limit: many}", r"parity.limit must be a whole number >= 0, got 'many'"),
        ("parity", "{limit: -1}", r"parity.limit must be a whole number >= 0, got -1"),
        ("parity", "{tolerance: -1}", r"parity.tolerance must be a positive number, got -1"),
        ("parity", "{min_same_answer_share: 1.5}", r"min_same_answer_share must be in \[0, 1\], got 1.5"),
        ("bench", "{threads: 0}", r"must be positive"),
        ("bench", "{repeats: x}", r"bench.repeats should be int, got 'x'"),
        ("bench", "{batch_sizes: 1}", r"bench.batch_sizes should be tuple\[int, ...\], got 1"),
        ("bench", "{warmup: -1}", r"warmup must be a whole number >= 0"),
        ("steps", "- export: {name: e, opset: 3}", r":7: export opset must be a whole number >= 14, got 3"),
        ("steps", "- quantize: {name: q, per_channel: maybe}", r":7: quantize.per_channel should be bool"),
        ("steps", "- quantize: {name: q, exclude: 3}", r":7: quantize.exclude should be tuple\[str, ...\], got 3"),
        ("steps", "- quantize: {name: q, calibration_samples: 0}", r":7: calibration_samples must be positive"),
        ("steps", "- prune: {name: p, sparsity: x}", r":7: prune \(magnitude\).sparsity should be float, got 'x'"),
        ("steps", DISTILL % (", batch_size: 0", STAGE), r":7: train.batch_size must be positive, got 0"),
        ("steps", DISTILL % (", limit: x", STAGE), r":7: train.limit should be int \| None, got 'x'"),
        ("steps", DISTILL % (", eval_every: -5", STAGE), r":7: train.eval_every and weight_decay must be >= 0"),
        ("steps", DISTILL % (", dropout: 2", STAGE), r":7: train.dropout must be in \[0, 1\), got 2"),
        ("steps", DISTILL % ("", STAGE.replace("max_steps: 1", "max_steps: 0")), r":7: a stage needs epochs > 0"),
        ("steps", DISTILL % ("", STAGE.replace("max_steps: 1", "epochs: 0")), r":7: a stage needs epochs > 0"),
        ("steps", DISTILL % ("", STAGE.replace("lr: 1.0e-4", "lr: -1")), r":7: stage lr must be positive, got -1"),
        ("steps", DISTILL % ("", STAGE.replace("}]", ", warmup: 2}]")), r":7: stage warmup is a share"),
        ("steps", DISTILL % ("", STAGE.replace("hard: 1", "soft: 1, temperature: 0")), r":7: temperature must be"),
    ],
)
def test_recipe_values_of_the_wrong_type_or_range_are_refused(tmp_path, tiny_qa_model, toy_squad, section, value,
                                                              message):  # fmt: skip
    sections = {"eval": "{data: DATA}", "parity": "{limit: 3}", "bench": "{threads: 1, seq_lens: [32]}"}
    steps = value if section == "steps" else "- export: {name: a}"
    if section != "steps":
        sections[section] = value
    text = f"name: t\nmodel: {tiny_qa_model}\n" + "".join(f"{k}: {v}\n" for k, v in sections.items())
    path = tmp_path / "recipe.yaml"
    path.write_text((text + f"steps:\n  {steps}\n").replace("DATA", str(toy_squad)))
    with pytest.raises(EdgeQAError, match=message):
        load_recipe(path)
