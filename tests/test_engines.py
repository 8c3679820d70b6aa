"""Loading QA models: what loads, and a clear error for each kind of wrong folder."""

import json

import numpy as np
import pytest

from conftest import make_tiny_qa_model
from edgeqa.bench.engines import load_qa_model, predict
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.squad import load_squad


def test_torch_folder_predicts_every_question(tiny_qa_model, toy_squad):
    ds = load_squad(toy_squad)
    model = load_qa_model(tiny_qa_model, threads=1)
    assert model.engine.backend == "torch"
    assert set(model.engine.input_names) == {"input_ids", "attention_mask", "token_type_ids"}
    preds = predict(model, ds.examples, progress=False)
    assert set(preds) == {e.id for e in ds.examples}
    for ex in ds.examples:
        assert preds[ex.id] in ex.context  # a random model still answers with a span of the context


def test_batch_size_does_not_change_answers(tiny_qa_model, toy_squad):
    ds = load_squad(toy_squad)
    model = load_qa_model(tiny_qa_model, threads=1)
    one = model.answer(ds.examples, batch_size=1, progress=False)
    many = model.answer(ds.examples, batch_size=8, progress=False)
    assert {k: a.text for k, a in one.items()} == {k: a.text for k, a in many.items()}
    for k in one:
        assert one[k].score == pytest.approx(many[k].score, abs=1e-4)


def test_folder_without_qa_head_is_refused(tmp_path):
    folder = make_tiny_qa_model(tmp_path / "encoder", qa_head=False)
    with pytest.raises(EdgeQAError, match="not a question-answering model"):
        load_qa_model(folder)
    # A config that claims a QA head whose weights are not there.
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForQuestionAnswering"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(EdgeQAError, match="no trained question-answering head"):
        load_qa_model(folder)


def test_tokenizer_larger_than_vocabulary_is_refused(tmp_path):
    folder = make_tiny_qa_model(tmp_path / "small-vocab", vocab_size=20)
    with pytest.raises(EdgeQAError, match="do not belong together"):
        load_qa_model(folder)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(EdgeQAError, match="no such model"):
        load_qa_model(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeQAError, match="not a model folder"):
        load_qa_model(tmp_path / "empty")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(EdgeQAError, match="expected a model folder, an .onnx or an .ort file"):
        load_qa_model(tmp_path / "weights.bin")


# --- the engines' pieces on fakes and hand-built files ---------------------------------------------------------------


class _IdsEngine:
    """Start logits = the token ids, end logits = their negatives; remembers each batch's shape."""

    backend = "fake"
    input_names = ("input_ids", "attention_mask")

    def __init__(self):
        self.shapes = []

    def __call__(self, inputs):
        ids = inputs["input_ids"]
        self.shapes.append((ids.shape, sorted(inputs)))
        return ids.astype(np.float32), -ids.astype(np.float32)


def test_logits_hold_each_window_at_its_own_length_and_minus_inf_past_it(tiny_qa_model):
    """Three questions of different lengths make windows of different lengths; in batches of 2, longest first,
    each window's logits are its own ids up to its length and -inf after, whatever its batch was padded to."""
    from edgeqa.bench.engines import QAModel
    from edgeqa.bench.qa import QAConfig, tokenize
    from edgeqa.bench.tokenizer import load_qa_tokenizer

    tok = load_qa_tokenizer(tiny_qa_model)
    questions = ["who?", "who lived in the city by the long river?", "who lived there?"]
    features = tokenize(tok, questions, ["the king lived in the city."] * 3, QAConfig(max_length=64, doc_stride=16))
    engine = _IdsEngine()
    start, end = QAModel(engine, tok, tiny_qa_model).logits(features, batch_size=2, progress=False)
    lengths = [len(ids) for ids in features.input_ids]
    assert len(set(lengths)) == 3 and start.shape == (3, max(lengths)) and start.dtype == np.float32
    for i, ids in enumerate(features.input_ids):
        assert start[i, : lengths[i]].tolist() == list(ids) and (start[i, lengths[i] :] == -np.inf).all()
        assert end[i, : lengths[i]].tolist() == [-t for t in ids] and (end[i, lengths[i] :] == -np.inf).all()
    longest, middle, shortest = sorted(lengths, reverse=True)
    names = ["attention_mask", "input_ids"]
    assert engine.shapes == [((2, longest), names), ((1, shortest), names)]


def test_answers_and_timings_of_every_question(tiny_qa_model, toy_squad):
    from edgeqa.bench.engines import QAModel, predict
    from edgeqa.bench.squad import load_squad
    from edgeqa.bench.tokenizer import load_qa_tokenizer

    examples = load_squad(toy_squad).examples
    timings = {}
    model = QAModel(_IdsEngine(), load_qa_tokenizer(tiny_qa_model), tiny_qa_model)
    answers = predict(model, examples, batch_size=8, progress=False, timings=timings)
    assert list(answers) == ["q0", "q1", "q2"] and all(isinstance(a, str) for a in answers.values())
    assert sorted(timings) == ["model_s", "postprocess_s", "tokenize_s", "windows"] and timings["windows"] == 3
    assert all(timings[k] >= 0 for k in ("model_s", "postprocess_s", "tokenize_s"))


def test_session_settings_are_read_and_checked(tmp_path):
    from edgeqa.bench.engines import session_settings

    assert session_settings(tmp_path) == {}
    path = tmp_path / "session.json"
    path.write_text('{"disabled_optimizers": ["SkipLayerNormFusion"]}')
    assert session_settings(tmp_path) == {"disabled_optimizers": ["SkipLayerNormFusion"]}
    for text, message in (
        ("{", f"{path}: unreadable session settings: "),
        ("[]", f"{path}: session settings should be a JSON object"),
        ('{"threads": 2, "arena": 1}', f"{path}: unknown session settings ['arena', 'threads']; only "
                                       "disabled_optimizers is known"),
    ):  # fmt: skip
        path.write_text(text)
        with pytest.raises(EdgeQAError) as e:
            session_settings(tmp_path)
        assert str(e.value).startswith(message)


def test_which_backend_a_path_names(tmp_path, tiny_qa_model):
    from edgeqa.bench.engines import resolve_model, weight_files

    assert resolve_model(tiny_qa_model) == ("torch", tiny_qa_model, tiny_qa_model)
    assert weight_files(tiny_qa_model) == [tiny_qa_model / "model.safetensors"]
    (tiny_qa_model / "model.ort").write_bytes(b"x")
    assert resolve_model(tiny_qa_model) == ("onnxruntime", tiny_qa_model / "model.ort", tiny_qa_model)
    (tiny_qa_model / "model.onnx").write_bytes(b"x")  # ONNX wins over both
    assert resolve_model(tiny_qa_model) == ("onnxruntime", tiny_qa_model / "model.onnx", tiny_qa_model)
    (tiny_qa_model / "model.onnx.data").write_bytes(b"x")
    assert weight_files(tiny_qa_model) == [tiny_qa_model / "model.onnx", tiny_qa_model / "model.onnx.data"]
    assert resolve_model(tiny_qa_model / "model.ort") == ("onnxruntime", tiny_qa_model / "model.ort", tiny_qa_model)
    for path, message in (
        (tmp_path / "none", f"{tmp_path / 'none'}: no such model file or folder"),
        (tiny_qa_model / "config.json", f"{tiny_qa_model / 'config.json'}: expected a model folder, an .onnx or an "
                                        ".ort file"),
        (tmp_path, f"{tmp_path}: not a model folder (no model.onnx or model.ort, nor config.json with weights)"),
    ):  # fmt: skip
        with pytest.raises(EdgeQAError) as e:
            resolve_model(path)
        assert str(e.value) == message


def test_a_model_whose_answers_depend_on_its_batch_is_found_by_its_ops(tmp_path, tiny_qa_model):
    from edgeqa.bench.engines import answers_depend_on_batch

    assert not answers_depend_on_batch(tiny_qa_model) and answers_depend_on_batch(tiny_qa_model, torch_int8=True)
    for op, depends in ((b"MatMul", False), (b"DynamicQuantizeLinear", True), (b"DynamicQuantizeMatMul", True)):
        (tmp_path / "model.onnx").write_bytes(b"\x08\x07" + op + b"\x12")
        assert answers_depend_on_batch(tmp_path) == depends
        assert answers_depend_on_batch(tmp_path, torch_int8=True) == depends  # torch int8 means nothing for ONNX


def test_a_config_that_is_not_question_answering_is_refused(tmp_path):
    from edgeqa.bench.engines import check_qa_config

    assert check_qa_config(tmp_path) == {}
    (tmp_path / "config.json").write_text('{"architectures": ["BertForMaskedLM", "BertModel"]}')
    with pytest.raises(EdgeQAError) as e:
        check_qa_config(tmp_path)
    assert str(e.value) == f"{tmp_path}: not a question-answering model (architectures: BertForMaskedLM, BertModel)"
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel", "BertForQuestionAnswering"]}')
    assert check_qa_config(tmp_path)["architectures"][1] == "BertForQuestionAnswering"
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')  # no architectures: nothing to refuse
    assert check_qa_config(tmp_path) == {"model_type": "bert"}
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(EdgeQAError, match=r"config.json: unreadable model config: "):
        check_qa_config(tmp_path)


def _onnx_file(path, inputs, outputs):
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", [inputs[0]], [o], to=TensorProto.FLOAT) for o in outputs]
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"]) for n in inputs]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["b", "s"]) for o in outputs]
    graph = helper.make_graph(nodes, "g", ins, outs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_an_onnx_model_must_take_qa_inputs_and_give_start_and_end_logits(tmp_path):
    from edgeqa.bench.engines import OrtEngine

    good = OrtEngine(
        _onnx_file(tmp_path / "a.onnx", ["input_ids", "attention_mask"], ["start_logits", "end_logits"]), 1
    )
    assert good.input_names == ("input_ids", "attention_mask") and good.backend == "onnxruntime"
    ids = np.array([[5, 6, 7]], dtype=np.int64)
    start, end = good({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert start.tolist() == [[5.0, 6.0, 7.0]] and end.tolist() == [[5.0, 6.0, 7.0]]
    for name, inputs, outputs, message in (
        ("b", ["input_ids", "pixel_values"], ["start_logits", "end_logits"],
         "ONNX inputs ['input_ids', 'pixel_values'] do not match a QA model (expected input_ids and some of "
         "attention_mask, token_type_ids)"),
        ("c", ["attention_mask"], ["start_logits", "end_logits"], "ONNX inputs ['attention_mask'] do not match"),
        ("d", ["input_ids"], ["end_logits", "start_logits"],
         "ONNX outputs ['end_logits', 'start_logits'] are not start_logits, end_logits"),
    ):  # fmt: skip
        with pytest.raises(EdgeQAError) as e:
            OrtEngine(_onnx_file(tmp_path / f"{name}.onnx", inputs, outputs), 1)
        assert str(e.value).startswith(f"{tmp_path / name}.onnx: {message}")
    (tmp_path / "e.onnx").write_bytes(b"not a model")
    with pytest.raises(EdgeQAError, match=r"e.onnx: ONNX Runtime cannot load this model: "):
        OrtEngine(tmp_path / "e.onnx", 1)


def test_an_onnx_session_runs_as_the_folder_asks(tmp_path):
    """One intra-op pool of the threads asked for, sequential, CPU only, and the optimisers session.json disables."""
    from edgeqa.bench.engines import OrtEngine

    path = _onnx_file(tmp_path / "model.onnx", ["input_ids"], ["start_logits", "end_logits"])
    (tmp_path / "session.json").write_text('{"disabled_optimizers": ["ConstantFolding"]}')
    engine = OrtEngine(path, 3)
    opts = engine.session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 1)
    assert str(opts.execution_mode).endswith("ORT_SEQUENTIAL")
    assert engine.session.get_providers() == ["CPUExecutionProvider"]
    assert engine.disabled_optimizers == ["ConstantFolding"]
