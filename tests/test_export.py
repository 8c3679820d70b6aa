"""Export, fusion, quantization and the mobile format on tiny random models: parity, artefacts, bad input."""

import json

import numpy as np
import onnx
import pytest

from edgeqa.bench.engines import load_qa_model, predict
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.squad import load_squad
from edgeqa.export.mobile import convert_to_ort
from edgeqa.export.onnx import check_parity, export_onnx
from edgeqa.export.optimize import fuse
from edgeqa.export.quantize import QuantizeConfig, preset, quantize


@pytest.fixture
def exported(tiny_qa_model, toy_squad, tmp_path):
    examples = load_squad(toy_squad).examples
    return export_onnx(tiny_qa_model, tmp_path / "onnx", parity_examples=examples)


def test_export_matches_pytorch_and_records_parity(tiny_qa_model, exported, toy_squad):
    parity = json.loads((exported / "parity.json").read_text())
    assert parity["ok"] and parity["max_abs_diff"] < 1e-4 and parity["same_answer_share"] == 1.0
    assert parity["reference"] == str(tiny_qa_model) and (parity["tolerance"], parity["min_same_answer_share"]) == (
        1e-3, 0.995)  # fmt: skip
    assert {"model.onnx", "config.json", "tokenizer.json"} <= {p.name for p in exported.iterdir()}
    graph = onnx.load(str(exported / "model.onnx")).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {n: ["batch", "sequence"] for n in ("input_ids", "attention_mask", "token_type_ids")}  # dynamic
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output}
    assert outputs == {"start_logits": ["batch", "sequence"], "end_logits": ["batch", "sequence"]}
    ds = load_squad(toy_squad)
    torch_preds = predict(load_qa_model(tiny_qa_model, 1), ds.examples, progress=False)
    onnx_model = load_qa_model(exported, 1)
    assert onnx_model.engine.backend == "onnxruntime"
    assert predict(onnx_model, ds.examples, progress=False) == torch_preds


def test_parity_failure_is_loud_and_leaves_nothing(tiny_qa_model, toy_squad, tmp_path, monkeypatch):
    import edgeqa.export.onnx as export_module
    from conftest import make_tiny_qa_model

    other = tmp_path / "other"
    make_tiny_qa_model(other, seed=1)
    exported = export_onnx(other, tmp_path / "other-onnx")
    examples = load_squad(toy_squad).examples
    with pytest.raises(EdgeQAError, match="parity check failed"):
        check_parity(tiny_qa_model, exported, examples)
    result = check_parity(tiny_qa_model, exported, examples, raise_on_failure=False)
    assert not result.ok and result.max_abs_diff > 1e-3
    # An exporter that writes another graph than the model it was given: its parity check fails inside the export,
    # and neither the output folder nor the temporary folder beside it is left.
    load = export_module.load_torch_qa_model
    monkeypatch.setattr(export_module, "load_torch_qa_model", lambda _: load(other))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(EdgeQAError, match="parity check failed"):
        export_onnx(tiny_qa_model, tmp_path / "drifted", parity_examples=examples)
    assert not (tmp_path / "drifted").exists()
    assert not list(tmp_path.glob(".drifted.*.tmp"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_fuse_keeps_answers(exported, toy_squad, tmp_path):
    counts = fuse(exported, tmp_path / "fused", parity_examples=load_squad(toy_squad).examples)
    assert counts.get("Attention") == 2 and counts.get("SkipLayerNormalization", 0) >= 2
    assert json.loads((tmp_path / "fused" / "parity.json").read_text())["ok"]


def test_fuse_attention_only(exported, tmp_path):
    counts = fuse(exported, tmp_path / "attn", fusions=("attention",))
    assert counts.get("Attention") == 2 and "SkipLayerNormalization" not in counts
    with pytest.raises(EdgeQAError, match="unknown fusion"):
        fuse(exported, tmp_path / "bad", fusions=("warp",))


def test_preset_session_settings_reach_the_engine(exported, tmp_path):
    out = quantize(exported, tmp_path / "q", preset("avx512_vnni"))
    assert json.loads((out / "session.json").read_text()) == {"disabled_optimizers": ["SkipLayerNormFusion"]}
    assert load_qa_model(out, 1).engine.disabled_optimizers == ["SkipLayerNormFusion"]
    assert not (quantize(exported, tmp_path / "plain", QuantizeConfig()) / "session.json").exists()
    (out / "session.json").write_text('{"turbo": true}')
    with pytest.raises(EdgeQAError, match="unknown session settings"):
        load_qa_model(out, 1)
    (out / "session.json").write_text('["SkipLayerNormFusion"]')
    with pytest.raises(EdgeQAError, match="should be a JSON object"):
        load_qa_model(out, 1)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_quantize_writes_int8_model(exported, toy_squad, tmp_path, mode):
    cfg = preset("avx512_vnni", mode=mode, calibration_samples=3, exclude=["/qa_outputs/MatMul"])
    out = quantize(
        exported, tmp_path / mode, cfg, calibration_data=toy_squad, parity_examples=load_squad(toy_squad).examples
    )
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert ("MatMulInteger" in ops) if mode == "dynamic" else ("QuantizeLinear" in ops)
    saved = json.loads((out / "quantization.json").read_text())
    assert saved["mode"] == mode and saved["excluded_nodes"] == ["/qa_outputs/MatMul"]
    assert QuantizeConfig.from_dict({k: v for k, v in saved.items() if k not in ("excluded_nodes", "source")}) == cfg
    qa_out = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.name == "/qa_outputs/MatMul"]
    assert qa_out and qa_out[0].op_type == "MatMul"  # kept in float
    answers = predict(load_qa_model(out, 1), load_squad(toy_squad).examples, progress=False)
    assert len(answers) == 3


def test_quantize_config_round_trips_and_refuses_nonsense(tmp_path, exported):
    cfg = QuantizeConfig(mode="static", op_types=("MatMul",), exclude=("*qa*",))
    assert QuantizeConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(EdgeQAError, match="unknown quantization setting"):
        QuantizeConfig.from_dict({"bits": 4})
    with pytest.raises(EdgeQAError, match="mode"):
        QuantizeConfig(mode="weird")
    with pytest.raises(EdgeQAError, match="unknown hardware preset"):
        preset("avx9000")
    with pytest.raises(EdgeQAError, match="matches no node"):
        quantize(exported, tmp_path / "q", QuantizeConfig(exclude=("no-such-node*",)))
    assert not (tmp_path / "q").exists()
    with pytest.raises(EdgeQAError, match="calibration data"):
        quantize(exported, tmp_path / "q", QuantizeConfig(mode="static"))
    assert not (tmp_path / "q").exists()


def test_mobile_format_loads_and_answers(exported, toy_squad, tmp_path):
    out = convert_to_ort(exported, tmp_path / "mobile")
    assert (out / "model.ort").exists() and not (out / "model.onnx").exists()
    assert (out / "model.ort").read_bytes()[4:8] == b"ORTM"  # ONNX Runtime's flatbuffer file identifier, not ONNX
    ds = load_squad(toy_squad)
    model = load_qa_model(out, 1)
    assert model.engine.path.suffix == ".ort"
    preds = predict(model, ds.examples, progress=False)
    assert preds == predict(load_qa_model(exported, 1), ds.examples, progress=False)


def test_onnx_with_wrong_inputs_is_refused(tmp_path, tiny_qa_model):
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["pixels"], ["start_logits"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("start_logits", TensorProto.FLOAT, [1])],
    )
    folder = tmp_path / "wrong"
    folder.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "model.onnx"))
    for f in tiny_qa_model.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special", "config")):
            (folder / f.name).write_bytes(f.read_bytes())
    with pytest.raises(EdgeQAError, match="do not match a QA model"):
        load_qa_model(folder)


def test_export_refuses_non_qa_and_onnx_sources(tmp_path):
    from conftest import make_tiny_qa_model

    encoder = make_tiny_qa_model(tmp_path / "enc", qa_head=False)
    with pytest.raises(EdgeQAError, match="not a question-answering model"):
        export_onnx(encoder, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(EdgeQAError, match="export it first"):
        fuse(encoder, tmp_path / "y")
    with pytest.raises(EdgeQAError, match="export it first"):
        quantize(encoder, tmp_path / "y", QuantizeConfig())
    assert not (tmp_path / "y").exists()


def test_unwritable_output_folder(tmp_path, tiny_qa_model, toy_squad, capsys):
    from edgeqa.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # tests run as root here, so permissions cannot make a folder unwritable
    code = main(["eval", "--model", str(tiny_qa_model), "--data", str(toy_squad), "--out", str(blocker / "out")])
    assert code == 2
    assert "cannot create output folder" in capsys.readouterr().err
    code = main(["export", "--model", str(tiny_qa_model), str(blocker), "--parity-limit", "0"])
    assert code == 2 and blocker.read_text() == "not a folder"


def test_logits_agree_numerically(exported, tiny_qa_model, toy_squad):
    from edgeqa.bench.qa import QAConfig, tokenize

    ds = load_squad(toy_squad)
    t, o = load_qa_model(tiny_qa_model, 1), load_qa_model(exported, 1)
    f = tokenize(t.tokenizer, [e.question for e in ds.examples], [e.context for e in ds.examples], QAConfig())
    a, b = t.logits(f, progress=False)[0], o.logits(f, progress=False)[0]
    ok = np.isfinite(a)
    assert np.array_equal(ok, np.isfinite(b)) and np.abs(a[ok] - b[ok]).max() < 1e-4


def test_quantization_records_the_preset_and_the_cpu(exported, tmp_path, caplog):
    from edgeqa.bench.cpu import this_cpu
    from edgeqa.export.quantize import preset_record

    other = "avx2" if this_cpu().isa != "avx2" else "avx512_vnni"
    info = preset_record(other)
    with caplog.at_level("WARNING"):
        out = quantize(exported, tmp_path / "q", preset(other), preset_info=info)
    saved = json.loads((out / "quantization.json").read_text())["preset"]
    assert saved["asked"] == other and saved["fits_cpu"] is False and saved["cpu"]["isa"] == this_cpu().isa
    assert f"preset {other!r} does not fit this CPU" in caplog.text


def test_dynamic_int8_answers_depend_on_the_batch_and_are_scored_alone(exported, toy_squad, tmp_path):
    from edgeqa.bench.engines import answers_depend_on_batch
    from edgeqa.bench.evaluate import evaluate

    dynamic = quantize(exported, tmp_path / "dyn", QuantizeConfig())
    static = quantize(exported, tmp_path / "static", QuantizeConfig(mode="static", calibration_samples=3), toy_squad)
    mobile = convert_to_ort(dynamic, tmp_path / "dyn-ort")
    assert [answers_depend_on_batch(p) for p in (exported, dynamic, static, mobile)] == [False, True, False, True]
    # Why it matters: one activation scale per batch, so a window's logits move with its batch-mates.
    engine = load_qa_model(dynamic, 1).engine
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 60, size=(2, 16), dtype=np.int64)
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    inputs = {k: v for k, v in inputs.items() if k in engine.input_names}
    alone = engine({k: v[:1] for k, v in inputs.items()})[0][0]
    together = engine(inputs)[0][0]
    assert not np.allclose(alone, together, atol=1e-6)
    assert evaluate(dynamic, toy_squad, progress=False)["batch_size"] == 1
    assert evaluate(exported, toy_squad, progress=False)["batch_size"] == 16
    assert evaluate(dynamic, toy_squad, batch_size=4, progress=False)["batch_size"] == 4
    with pytest.raises(EdgeQAError, match="batch size must be positive"):
        evaluate(dynamic, toy_squad, batch_size=0, progress=False)


def test_parity_compares_the_windows_of_the_qa_setting(tiny_qa_model, exported, tmp_path):
    """Parity runs on the windows a recipe's `qa:` section cuts. By hand, with the toy tokenizer: the question
    "what is the capital of france?" is 7 tokens and its context 14 (words and punctuation), so a 16-token window
    holds 16 - 7 - 3 special tokens = 6 context tokens; with doc_stride 2 the windows start at context tokens 0, 4
    and 8: three windows, where the default 384-token window holds the whole question in one."""
    from edgeqa.bench.qa import QAConfig
    from edgeqa.bench.squad import SquadExample

    example = SquadExample(
        "q0",
        "what is the capital of france?",
        "paris is the capital of france. berlin is the capital of germany.",
        ("paris",),
        (0,),
    )
    small = QAConfig(max_length=16, doc_stride=2)
    outs = {
        "export": export_onnx(tiny_qa_model, tmp_path / "e", parity_examples=[example], qa_cfg=small),
        "fuse": tmp_path / "f",
        "quantize": quantize(exported, tmp_path / "q", QuantizeConfig(), qa_cfg=small, parity_examples=[example]),
    }
    fuse(exported, outs["fuse"], parity_examples=[example], qa_cfg=small)
    for step, out in outs.items():
        parity = json.loads((out / "parity.json").read_text())
        assert (parity["questions"], parity["windows"]) == (1, 3), step
        assert (parity["qa"]["max_length"], parity["qa"]["doc_stride"]) == (16, 2), step
    default = quantize(exported, tmp_path / "q384", QuantizeConfig(), parity_examples=[example])
    parity = json.loads((default / "parity.json").read_text())
    assert (parity["windows"], parity["qa"]["max_length"]) == (1, 384)


def _graph_of(op_type: str, folder, tiny_qa_model):
    """A model folder (tokenizer and config of the tiny model) whose graph is one node of `op_type`."""
    from onnx import TensorProto, helper

    node = helper.make_node(op_type, ["input_ids"], ["start_logits"], name="n")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("start_logits", TensorProto.FLOAT, ["batch", "sequence"])],
    )
    folder.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "model.onnx"))
    for f in tiny_qa_model.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special", "config")):
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


@pytest.mark.parametrize(
    "op_type", ["DynamicQuantizeLinear", "MatMulInteger", "QuantizeLinear", "QLinearMatMul", "ConvInteger"]
)
def test_a_graph_with_int8_ops_is_not_quantized_again(op_type, tiny_qa_model, tmp_path):
    folder = _graph_of(op_type, tmp_path / "int8", tiny_qa_model)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(EdgeQAError, match=rf"model.onnx: is already int8 \(its graph holds {op_type}\)"):
        quantize(folder, tmp_path / "again", QuantizeConfig())
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary folder


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_an_int8_model_is_not_quantized_again(mode, exported, toy_squad, tmp_path):
    int8 = quantize(exported, tmp_path / "int8", QuantizeConfig(mode=mode, calibration_samples=3), toy_squad)
    cfg = QuantizeConfig(mode=mode, calibration_samples=3)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(EdgeQAError, match=r"int8/model.onnx: is already int8 \(.*int8/quantization.json records"):
        quantize(int8, tmp_path / "again", cfg, toy_squad)
    # Without its record, the graph still says so: MatMulInteger for dynamic, QuantizeLinear for static (QDQ) int8,
    # and DequantizeLinear for the int8 weights of both (dynamic int8 stores the embeddings' tables in int8).
    (int8 / "quantization.json").unlink()
    held = "DynamicQuantizeLinear, MatMulInteger" if mode == "dynamic" else "QuantizeLinear"
    with pytest.raises(EdgeQAError, match=rf"is already int8 \(its graph holds DequantizeLinear, {held}\)"):
        quantize(int8 / "model.onnx", tmp_path / "again", cfg, toy_squad)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
