"""`edgeqa shapes`: a teacher's candidate shapes made as the recipes make their models, timed here or on the target
with the runtime install alone, and the table targets are read against."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from conftest import make_tiny_qa_model
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.shapes import LatencyConfig, Shape, candidate_shapes, read_shapes_table, shapes_table, time_shapes

TINY = Shape(2, 4, 64)  # the tiny teacher below: 2 layers of 4 heads (hidden 32) and 64 FFN neurons


def test_a_shape_is_named_and_parsed_the_same_way():
    assert Shape(3, 4, 768).name == "l3-h4-f768" and Shape.parse("l3-h4-f768") == Shape(3, 4, 768)
    for bad in ("l3-h4", "3-4-768", "l0-h4-f768"):
        with pytest.raises(EdgeQAError, match="l3-h4-f768|positive whole number"):
            Shape.parse(bad)


def test_the_default_grid_covers_depth_heads_and_ffn_at_shares_of_the_teacher():
    """MiniLM-L6 (6 x 12 x 1,536): layers 6, 4, 3, 2; heads 12, 8, 6, 4, 3; FFN 1,536, 768, 384: 4 x 5 x 3 = 60
    shapes, less the teacher's own."""
    shapes = candidate_shapes(Shape(6, 12, 1536))
    assert len(shapes) == 59 and Shape(6, 12, 1536) not in shapes
    assert {s.layers for s in shapes} == {6, 4, 3, 2} and {s.heads for s in shapes} == {12, 8, 6, 4, 3}
    assert {s.ffn for s in shapes} == {1536, 768, 384} and shapes[0] == Shape(6, 12, 768)  # largest first
    assert candidate_shapes(TINY, layers=(1,), heads=(2, 4), ffn=(16,)) == [Shape(1, 4, 16), Shape(1, 2, 16)]
    with pytest.raises(EdgeQAError, match="larger than the teacher"):
        candidate_shapes(TINY, heads=(8,))


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    from edgeqa.pipeline.shapes import make_shapes

    root = tmp_path_factory.mktemp("shapes")
    teacher = make_tiny_qa_model(root / "teacher", layers=2, heads=4, intermediate=64)
    return make_shapes(teacher, root / "out", [Shape(2, 2, 32), Shape(1, 4, 16)])


def _graph_shape(folder: Path) -> tuple[int, list[int], list[int]]:
    """(layers, heads per layer, FFN neurons per layer) read from an int8 graph: one QAttention per layer, whose
    packed q/k/v weight is hidden x (3 x heads x 8) for the tiny model's 8-wide heads, and each layer's first FFN
    matrix hidden x width."""
    graph = onnx.load(folder / "model.onnx").graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    attention = [n for n in graph.node if n.op_type == "QAttention"]
    ffn = [dims[n.input[1]][1] for n in graph.node
           if n.op_type == "MatMulInteger" and "intermediate/dense" in n.output[0]]  # fmt: skip
    return len(attention), [dims[n.input[1]][1] // 24 for n in attention], ffn


def test_made_shapes_have_their_shape_in_the_graph_and_the_record(shapes_dir):
    manifest = json.loads((shapes_dir / "manifest.json").read_text())
    assert manifest["teacher_shape"] == "l2-h4-f64" and manifest["preset"]["asked"] == "auto"
    assert [(e["name"], e["layers"], e["heads"], e["ffn"]) for e in manifest["shapes"]] == [
        ("l2-h2-f32", 2, 2, 32), ("l1-h4-f16", 1, 4, 16)]  # fmt: skip
    assert _graph_shape(shapes_dir / "l2-h2-f32") == (2, [2, 2], [32, 32])
    assert _graph_shape(shapes_dir / "l1-h4-f16") == (1, [4], [16])
    assert _graph_shape(shapes_dir / "teacher-int8") == (2, [4, 4], [64, 64])
    config = json.loads((shapes_dir / "l2-h2-f32" / "config.json").read_text())
    assert {k: len(v) for k, v in config["pruned_heads"].items()} == {"0": 2, "1": 2}  # 2 of 4 heads left in each
    params = {e["name"]: e["parameters"] for e in manifest["shapes"]}
    # By hand: l1-h4-f16 drops a layer of 4 x (32 x 32 + 32) attention, 2 x 32 LayerNorm and a 32 x 64 FFN, and
    # narrows the other from 64 to 16 neurons, so l2-h2-f32 (half of each layer's attention, FFN 32) is larger.
    assert params["l2-h2-f32"] > params["l1-h4-f16"]
    assert not list(shapes_dir.glob("*.tmp")) and not (shapes_dir / ".work").exists()


def test_a_second_call_keeps_what_was_made_and_remakes_a_half_made_shape(shapes_dir):
    from edgeqa.pipeline.shapes import make_shapes

    teacher = Path(json.loads((shapes_dir / "manifest.json").read_text())["teacher"])
    made = (shapes_dir / "l1-h4-f16" / "model.onnx").stat().st_mtime_ns
    (shapes_dir / "l2-h2-f32" / "shape.json").unlink()  # as a kill after the model, before its record
    make_shapes(teacher, shapes_dir, [Shape(2, 2, 32), Shape(1, 4, 16)])
    assert (shapes_dir / "l1-h4-f16" / "model.onnx").stat().st_mtime_ns == made
    assert (shapes_dir / "l2-h2-f32" / "shape.json").exists()
    with pytest.raises(EdgeQAError, match="holds the shapes of another teacher"):
        make_shapes(teacher.parent, shapes_dir, [Shape(1, 1, 1)])


def _result(p50: float, spread: float | None = 0.02, p90: float | None = None) -> dict:
    shape = {"batch_size": 1, "seq_len": 384, "p50_ms": p50, "p90_ms": p90 or p50 * 1.05, "pass_p50_ms": [p50],
             "pass_spread": spread}  # fmt: skip
    return {"latency": [shape], "machine": {"cpu": "hand", "isa": "avx2"}, "versions": {}}


def test_the_table_holds_each_speedup_by_hand_and_flags_a_busy_machine():
    manifest = {"teacher": "t", "teacher_shape": "l2-h4-f64", "shapes": [{"name": "l1-h4-f16", "layers": 1,
                "heads": 4, "ffn": 16, "parameters": 10}]}  # fmt: skip
    quiet = {"teacher-int8": _result(20.0), "pytorch-fp32": _result(60.0), "l1-h4-f16": _result(8.0)}
    table = shapes_table(manifest, quiet, LatencyConfig())
    assert table["shapes"][0]["speedup"] == {"teacher-int8": 2.5, "pytorch-fp32": 7.5} and not table["busy"]
    busy = {**quiet, "l1-h4-f16": _result(8.0, spread=0.4)}
    table = shapes_table(manifest, busy, LatencyConfig())
    assert table["busy"] and table["flags"] == ["l1-h4-f16: passes disagree: p50 moved 40% between passes (limit 25%)"]
    assert table["shapes"][0]["pass_p50_ms"] == [8.0]  # each pass's figure is kept


def test_time_shapes_times_the_folder_beside_both_teachers_and_writes_the_table(shapes_dir, monkeypatch):
    from edgeqa.bench import shapes as shapes_module

    timed = {}

    def hand_timer(models, cfg, done=None, data=None):
        timed.update(models)
        return {name: _result(30.0 if name == "pytorch-fp32" else 10.0 / (1 + i)) for i, name in enumerate(models)}

    monkeypatch.setattr(shapes_module, "benchmark_interleaved", hand_timer)
    table = time_shapes(shapes_dir)
    assert list(timed) == ["teacher-int8", "pytorch-fp32", "l2-h2-f32", "l1-h4-f16"]
    assert read_shapes_table(shapes_dir) == table
    assert {s["name"]: s["speedup"]["teacher-int8"] for s in table["shapes"]} == {"l2-h2-f32": 3.0, "l1-h4-f16": 4.0}


def test_shapes_are_timed_on_a_target_without_torch(shapes_dir, tmp_path):
    """`edgeqa shapes --time DIR` with torch and transformers blocked, as on a box with the runtime install: it
    times the int8 models (really, briefly) and writes shapes.json without the PyTorch teacher."""
    from test_runtime import _blocked

    run = _blocked("shapes", "--time", str(shapes_dir), "--seq-lens", "16", "--warmup", "0", "--repeats", "2",
                   "--rounds", "2", "--threads", "1", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    table = read_shapes_table(shapes_dir / "shapes.json")
    assert set(table["references"]) == {"teacher-int8"}
    assert [s["name"] for s in table["shapes"]] == ["l2-h2-f32", "l1-h4-f16"]
    assert all(s["p50_ms"] > 0 and len(s["pass_p50_ms"]) == 2 for s in table["shapes"])
    assert f"wrote {shapes_dir / 'shapes.json'}" in run.stdout and "| l1-h4-f16 |" in run.stdout


def test_bad_shapes_input_is_one_line(tmp_path, capsys):
    from edgeqa.cli import main

    assert main(["shapes"]) == 2
    assert capsys.readouterr().err.strip() == (
        "edgeqa: error: shapes needs --model and --out to make shapes, or --time DIR to time a made folder"
    )
    assert main(["shapes", "--time", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"edgeqa: error: {tmp_path / 'manifest.json'}: no such shapes manifest"
    (tmp_path / "shapes.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(EdgeQAError, match="not an edgeqa shapes table"):
        read_shapes_table(tmp_path)


def test_a_shape_refuses_what_is_not_a_positive_whole_number():
    for bad in ((True, 1, 1), (1, 0, 1), (1, 1, 1.0)):
        with pytest.raises(EdgeQAError, match="must be a positive whole number"):
            Shape(*bad)


def test_the_grid_of_a_small_teacher_keeps_one_of_each_and_names_every_shape_too_large():
    """A 1 x 2 x 2 teacher: a quarter, a third or a half of 2 rounds to 0 or 1, kept at 1, so heads and FFN take
    2 and 1, and layers 1: three shapes besides the teacher's, largest first."""
    assert candidate_shapes(Shape(1, 2, 2)) == [Shape(1, 2, 1), Shape(1, 1, 2), Shape(1, 1, 1)]
    with pytest.raises(EdgeQAError) as e:
        candidate_shapes(TINY, layers=(1,), heads=(8,), ffn=(16, 128))
    assert str(e.value) == "shapes larger than the teacher (l2-h4-f64): l1-h8-f128, l1-h8-f16"


def test_the_table_records_the_machine_the_teacher_the_settings_and_each_latency():
    """Every field of the table, for a hand-made manifest and results timed per question too; speed-ups to three
    decimals (30 / 9 = 3.333, 90 / 9 = 10.0); the machine and versions are the timing's, not this process's."""
    manifest = {"teacher": "/t", "teacher_shape": "l2-h4-f64", "preset": {"asked": "auto", "preset": "x"},
                "shapes": [{"name": "l1-h4-f16", "layers": 1, "heads": 4, "ffn": 16, "parameters": 10}]}  # fmt: skip
    results = {}
    for name, p50, q50 in (("teacher-int8", 30.0, 12.0), ("pytorch-fp32", 90.0, 40.0), ("l1-h4-f16", 9.0, 4.0)):
        results[name] = _result(p50, spread=0.1, p90=p50 + 1)
        results[name]["questions"] = {"p50_ms": q50, "p90_ms": q50 + 2}
    results["teacher-int8"]["versions"] = {"onnxruntime": "9.9"}
    cfg = LatencyConfig(batch_sizes=(1,), seq_lens=(16,), repeats=3)
    table = shapes_table(manifest, results, cfg)
    created = table.pop("created")
    assert created.endswith("+00:00") and len(created) == 25  # UTC, to the second

    def timing(p50, q50):
        return {"p50_ms": p50, "p90_ms": p50 + 1, "pass_p50_ms": [p50], "pass_spread": 0.1, "question_p50_ms": q50,
                "question_p90_ms": q50 + 2, "flags": []}  # fmt: skip

    assert table == {
        "schema": "edgeqa.shapes/1", "machine": {"cpu": "hand", "isa": "avx2"}, "versions": {"onnxruntime": "9.9"},
        "teacher": "/t", "teacher_shape": "l2-h4-f64", "preset": {"asked": "auto", "preset": "x"},
        "settings": cfg.to_dict(), "busy": False, "flags": [],
        "references": {"teacher-int8": timing(30.0, 12.0), "pytorch-fp32": timing(90.0, 40.0)},
        "shapes": [{**manifest["shapes"][0], **timing(9.0, 4.0),
                    "speedup": {"teacher-int8": 3.333, "pytorch-fp32": 10.0}}],
    }  # fmt: skip
    results["l1-h4-f16"].pop("questions")  # a shape not timed per question has no such fields
    assert "question_p50_ms" not in shapes_table(manifest, results, cfg)["shapes"][0]


def test_time_shapes_hands_the_timer_each_int8_model_its_settings_and_data(shapes_dir, monkeypatch, tmp_path):
    """The ONNX models by folder, the PyTorch teacher by its own folder, none as a PyTorch int8 model; without the
    teacher's folder here (a folder copied to a target), the PyTorch teacher is left out."""
    from edgeqa.bench import shapes as shapes_module

    calls = []

    def hand_timer(models, cfg, done=None, data=None):
        calls.append((dict(models), cfg, data))
        return {name: _result(10.0) for name in models}

    monkeypatch.setattr(shapes_module, "benchmark_interleaved", hand_timer)
    cfg = LatencyConfig(batch_sizes=(1,), seq_lens=(16,), repeats=3)
    time_shapes(shapes_dir, cfg, data="dev.json")
    teacher = Path(json.loads((shapes_dir / "manifest.json").read_text())["teacher"])
    onnx = {name: (shapes_dir / name, False) for name in ("teacher-int8", "l2-h2-f32", "l1-h4-f16")}
    assert calls[0] == ({**onnx, "pytorch-fp32": (teacher, False)}, cfg, "dev.json")
    assert list(calls[0][0]) == ["teacher-int8", "pytorch-fp32", "l2-h2-f32", "l1-h4-f16"]
    copied = tmp_path / "copied"
    shutil.copytree(shapes_dir, copied)
    manifest = json.loads((copied / "manifest.json").read_text())
    (copied / "manifest.json").write_text(json.dumps({**manifest, "teacher": str(tmp_path / "elsewhere")}))
    time_shapes(copied, cfg)
    assert list(calls[1][0]) == ["teacher-int8", "l2-h2-f32", "l1-h4-f16"] and calls[1][2] is None
    (copied / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "teacher"}))
    time_shapes(copied, cfg)
    assert list(calls[2][0]) == ["teacher-int8", "l2-h2-f32", "l1-h4-f16"]


def test_a_shapes_folder_missing_a_part_is_refused_by_name(shapes_dir, tmp_path):
    from edgeqa.bench.shapes import read_manifest

    folder = tmp_path / "f"
    shutil.copytree(shapes_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({"teacher": "t"}))
    with pytest.raises(EdgeQAError) as e:
        read_manifest(folder)
    assert str(e.value) == f"{folder / 'manifest.json'}: not a shapes manifest (no list of shapes)"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(folder / "l1-h4-f16")
    with pytest.raises(EdgeQAError) as e:
        read_manifest(folder)
    assert str(e.value) == f"{folder / 'l1-h4-f16'}: the manifest lists this shape but its model.onnx is missing"
    (folder / "manifest.json").write_text(json.dumps({**manifest, "shapes": manifest["shapes"][:1]}))
    shutil.rmtree(folder / "teacher-int8")
    with pytest.raises(EdgeQAError) as e:
        read_manifest(folder)
    assert str(e.value) == f"{folder / 'teacher-int8'}: the teacher's int8 model is missing"


def test_a_shapes_table_without_a_positive_latency_is_refused_by_name(tmp_path):
    with pytest.raises(EdgeQAError) as e:
        read_shapes_table(tmp_path)
    assert str(e.value) == f"{tmp_path / 'shapes.json'}: no such shapes table"
    for p50 in (0, -1.0, "3", None):
        (tmp_path / "shapes.json").write_text(json.dumps({"schema": "edgeqa.shapes/1", "shapes": [
            {"name": "l1-h4-f16", "p50_ms": 2.0}, {"name": "l1-h2-f16", "p50_ms": p50}]}))  # fmt: skip
        with pytest.raises(EdgeQAError) as e:
            read_shapes_table(tmp_path / "shapes.json")
        assert str(e.value) == f"{tmp_path / 'shapes.json'}: shape l1-h2-f16 has no positive p50_ms"


def test_making_shapes_refuses_by_name_before_loading_the_teacher(shapes_dir, tmp_path):
    from edgeqa.pipeline.shapes import make_shapes, teacher_shape

    teacher = Path(json.loads((shapes_dir / "manifest.json").read_text())["teacher"])
    with pytest.raises(EdgeQAError) as e:
        make_shapes(teacher, tmp_path / "a", [Shape(1, 8, 16), Shape(3, 4, 16), Shape(1, 4, 16)])
    assert str(e.value) == f"shapes larger than the teacher {teacher} (l2-h4-f64): l1-h8-f16, l3-h4-f16"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").mkdir()
    with pytest.raises(EdgeQAError, match=r"b/manifest.json: is a folder, expected a shapes manifest$"):
        make_shapes(teacher, tmp_path / "b", [Shape(1, 4, 16)])
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "intermediate_size": 8}))
    with pytest.raises(EdgeQAError) as e:
        teacher_shape(tmp_path / "t")
    assert str(e.value) == f"{tmp_path / 't'}/config.json: no num_attention_heads; shapes need a BERT-layout teacher"
    with pytest.raises(EdgeQAError) as e:
        teacher_shape(tmp_path)
    assert str(e.value) == f"{tmp_path / 'config.json'}: no such model config"


def test_a_made_shapes_record_that_cannot_be_read_is_named(shapes_dir):
    from edgeqa.pipeline.shapes import make_shapes

    teacher = Path(json.loads((shapes_dir / "manifest.json").read_text())["teacher"])
    record = shapes_dir / "l1-h4-f16" / "shape.json"
    kept = record.read_text()
    record.unlink()
    record.mkdir()
    try:
        with pytest.raises(EdgeQAError, match=r"l1-h4-f16/shape.json: is a folder, expected a shape record$"):
            make_shapes(teacher, shapes_dir, [Shape(1, 4, 16)])
    finally:
        record.rmdir()
        record.write_text(kept)
    quantization = json.loads((shapes_dir / "l1-h4-f16" / "quantization.json").read_text())
    assert quantization["preset"]["asked"] == "auto"  # the preset `auto` picked, in each model's own record


def test_the_printed_table_is_fastest_first_and_per_question_where_timed():
    """teacher-int8 30 ms (12 per question), pytorch-fp32 90 (48); l1-h4-f16 9 ms (4), l2-h2-f32 15 (6): speed-ups
    3.33x and 10.00x, 2.00x and 6.00x at 384; per question 3.00x and 12.00x, 2.00x and 8.00x."""

    def timing(p50, q50, spread=0.02):
        return {"p50_ms": p50, "question_p50_ms": q50, "pass_spread": spread}

    table = {"references": {"teacher-int8": timing(30.0, 12.0), "pytorch-fp32": timing(90.0, 48.0)},
             "shapes": [{"name": "l2-h2-f32", "parameters": 2_500_000, **timing(15.0, 6.0, None),
                         "speedup": {"teacher-int8": 2.0, "pytorch-fp32": 6.0}},
                        {"name": "l1-h4-f16", "parameters": 1_250_000, **timing(9.0, 4.0, 0.034),
                         "speedup": {"teacher-int8": 3.333, "pytorch-fp32": 10.0}}]}  # fmt: skip
    from edgeqa.bench.shapes import shapes_markdown

    assert shapes_markdown(table) == [
        "| shape | parameters | p50 ms | pass spread | over teacher-int8 | over pytorch-fp32 | p50 ms/question | "
        "over teacher-int8, per question | over pytorch-fp32, per question |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        "| l1-h4-f16 | 1.2M | 9.00 | 3.4% | 3.33x | 10.00x | 4.00 | 3.00x | 12.00x |",
        "| l2-h2-f32 | 2.5M | 15.00 | - | 2.00x | 6.00x | 6.00 | 2.00x | 8.00x |",
    ]  # fmt: skip
    del table["references"]["pytorch-fp32"]["question_p50_ms"]  # not timed per question: the fixed columns alone
    assert shapes_markdown(table)[2] == "| l1-h4-f16 | 1.2M | 9.00 | 3.4% | 3.33x | 10.00x |"
