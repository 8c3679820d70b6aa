"""The engines' pieces on fakes and hand-built files: window logits and padding, the settings handed on, ONNX
sessions and their checks, which backend a path names, and the errors for folders that are not QA models."""

import numpy as np
import pytest

from conftest import make_tiny_qa_model
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.qa import QAConfig, tokenize


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
    assert sorted(timings) == ["model_s", "postprocess_s", "tokenize_s", "tokens", "windows"]
    assert timings["windows"] == 3
    windows = tokenize(model.tokenizer, [e.question for e in examples], [e.context for e in examples], QAConfig())
    assert timings["tokens"] == int(windows.lengths.sum())  # every window's tokens, as they were cut
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
    assert resolve_model(tiny_qa_model / "model.onnx")[:2] == ("onnxruntime", tiny_qa_model / "model.onnx")
    (tiny_qa_model / "weights.onnx_data").write_bytes(b"x")
    assert weight_files(tiny_qa_model)[2:] == [tiny_qa_model / "weights.onnx_data"]
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_text("{}")
    with pytest.raises(EdgeQAError, match="not a model folder"):
        resolve_model(tmp_path / "config-only")  # a config without weights is no PyTorch model
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
    assert good.disabled_optimizers == []  # no session.json: every optimiser on
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
    extra = OrtEngine(_onnx_file(tmp_path / "f.onnx", ["input_ids"], ["start_logits", "end_logits", "extra"]), 1)
    start, end = extra({"input_ids": ids})  # a third output is allowed, and not asked for
    assert start.tolist() == [[5.0, 6.0, 7.0]] and end.tolist() == [[5.0, 6.0, 7.0]]
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


def test_answers_follow_the_settings_they_are_given(tiny_qa_model, monkeypatch):
    """`predict` hands its window settings, batch size, null answers and progress bar on to the span search and the
    model; the answer texts come back by question id."""
    from edgeqa.bench import engines
    from edgeqa.bench.qa import QAConfig
    from edgeqa.bench.squad import SquadExample
    from edgeqa.bench.tokenizer import load_qa_tokenizer

    seen = {}
    real_logits = engines.QAModel.logits

    def logits(self, features, batch_size=16, progress=True):
        seen["logits"] = (batch_size, progress, len(features))
        return real_logits(self, features, batch_size, False)

    def best_spans(start, end, features, contexts, cfg, allow_null):
        seen["spans"] = (cfg, allow_null, contexts)
        return [engines.Answer(f"answer {i}", 1.0, 0.5, 0, 1) for i in range(len(contexts))]

    monkeypatch.setattr(engines.QAModel, "logits", logits)
    monkeypatch.setattr(engines, "best_spans", best_spans)
    examples = [SquadExample(f"q{i}", "who?", "ann wrote the book.", (), ()) for i in range(2)]
    cfg = QAConfig(max_length=32, doc_stride=8, max_answer_length=5)
    model = engines.QAModel(_IdsEngine(), load_qa_tokenizer(tiny_qa_model), tiny_qa_model)
    answers = engines.predict(model, examples, cfg, batch_size=3, allow_null=True, progress=True)
    assert answers == {"q0": "answer 0", "q1": "answer 1"}
    assert seen["logits"] == (3, True, 2) and seen["spans"] == (cfg, True, ["ann wrote the book."] * 2)
    engines.predict(model, examples)  # the defaults: batches of 16, a progress bar, no null answers
    assert seen["logits"] == (16, True, 2) and seen["spans"] == (QAConfig(), False, ["ann wrote the book."] * 2)
    model.answer(examples)
    assert seen["logits"] == (16, True, 2) and seen["spans"][1] is False


def test_inference_shows_a_bar_of_windows_unless_asked_not_to(tiny_qa_model, capsys):
    from edgeqa.bench.engines import QAModel
    from edgeqa.bench.qa import QAConfig, tokenize
    from edgeqa.bench.tokenizer import load_qa_tokenizer

    tok = load_qa_tokenizer(tiny_qa_model)
    features = tokenize(tok, ["who?"] * 3, ["the king lived."] * 3, QAConfig(max_length=64, doc_stride=16))
    model = QAModel(_IdsEngine(), tok, tiny_qa_model)
    model.logits(features, batch_size=2, progress=True)
    bar = capsys.readouterr().err
    assert "fake inference: 100%" in bar and "3/3" in bar and "window/s" in bar
    model.logits(features, batch_size=2, progress=False)
    assert capsys.readouterr().err == ""


def test_the_vocabulary_size_a_config_gives(tmp_path):
    from edgeqa.bench.engines import _config_vocab

    assert _config_vocab(tmp_path) is None  # no config.json
    for text, vocab in (('{"vocab_size": 30522}', 30522), ('{"vocab_size": "99"}', 99), ("{}", None),
                        ('{"vocab_size": "many"}', None)):  # fmt: skip
        (tmp_path / "config.json").write_text(text)
        assert _config_vocab(tmp_path) == vocab


def test_a_transformers_tokenizer_loads_or_names_the_folder(tiny_qa_model, tmp_path):
    from edgeqa.bench.engines import load_tokenizer

    assert load_tokenizer(tiny_qa_model).is_fast
    with pytest.raises(EdgeQAError, match=rf"^{tmp_path}: cannot load a tokenizer from this folder: "):
        load_tokenizer(tmp_path)


def test_threads_default_to_the_physical_cores(monkeypatch):
    import os

    import psutil

    from edgeqa.bench.engines import default_threads

    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 3 if logical is False else None)
    assert default_threads() == 3
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: None)  # unknown: the logical count
    monkeypatch.setattr(os, "cpu_count", lambda: 5)
    assert default_threads() == 5
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert default_threads() == 1


def test_a_model_folder_opens_with_the_engine_its_files_ask_for(tiny_qa_model, tmp_path, caplog):
    """A PyTorch folder opens as torch (or torch-int8), the same folder with a model.onnx as onnxruntime with the
    threads asked for; ONNX refuses torch int8, and a config whose vocabulary is smaller than the tokenizer's is
    refused by the folder's name; each load says what it opened."""
    import json
    import shutil

    from edgeqa.bench.engines import load_qa_model

    caplog.set_level("INFO", logger="edgeqa.bench.engines")
    torch_model = load_qa_model(tiny_qa_model, threads=1)
    assert torch_model.engine.backend == "torch" and torch_model.source == tiny_qa_model
    assert load_qa_model(tiny_qa_model, threads=1, torch_int8=True).engine.backend == "torch-int8"
    assert caplog.records[0].getMessage() == f"loaded torch model from {tiny_qa_model} (1 threads)"
    folder = tmp_path / "onnx"
    shutil.copytree(tiny_qa_model, folder)
    _onnx_file(folder / "model.onnx", ["input_ids", "attention_mask"], ["start_logits", "end_logits"])
    onnx_model = load_qa_model(folder, threads=2)
    assert onnx_model.engine.backend == "onnxruntime" and onnx_model.engine.path == folder / "model.onnx"
    assert onnx_model.engine.session.get_session_options().intra_op_num_threads == 2
    assert onnx_model.source == folder and len(onnx_model.tokenizer) == len(torch_model.tokenizer)
    with pytest.raises(EdgeQAError) as e:
        load_qa_model(folder, threads=1, torch_int8=True)
    assert str(e.value) == f"{folder}: torch int8 applies to PyTorch folders, not ONNX models"
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 10}))
    with pytest.raises(EdgeQAError) as e:
        load_qa_model(folder, threads=1)
    assert str(e.value) == (f"{folder}: the tokenizer has {len(torch_model.tokenizer)} tokens but the model's "
                            "vocabulary has 10; they do not belong together")  # fmt: skip
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
    with pytest.raises(EdgeQAError, match="not a question-answering model"):
        load_qa_model(folder, threads=1)


def test_stage_times_are_differences_of_the_clock(tiny_qa_model, monkeypatch):
    """On a clock that reads 1, 3, 7 and 15 s around the three stages: 2 s tokenising, 4 in the model, 8 searching."""
    from edgeqa.bench import engines
    from edgeqa.bench.squad import SquadExample
    from edgeqa.bench.tokenizer import load_qa_tokenizer

    ticks = iter([1.0, 3.0, 7.0, 15.0])
    monkeypatch.setattr(engines.time, "perf_counter", lambda: next(ticks))
    timings = {}
    model = engines.QAModel(_IdsEngine(), load_qa_tokenizer(tiny_qa_model), tiny_qa_model)
    model.answer([SquadExample("q", "who?", "ann wrote.", (), ())], progress=False, timings=timings)
    # [CLS] who ? [SEP] an ##n wrote . [SEP] (the tiny vocabulary splits "ann"): one window of 9 tokens
    assert timings == {"tokenize_s": 2.0, "model_s": 4.0, "postprocess_s": 8.0, "windows": 1, "tokens": 9}


def test_padding_uses_the_tokenizers_pad_id_or_0(tiny_qa_model):
    from edgeqa.bench.engines import QAModel
    from edgeqa.bench.qa import QAConfig, tokenize
    from edgeqa.bench.tokenizer import load_qa_tokenizer

    tok = load_qa_tokenizer(tiny_qa_model)
    features = tokenize(tok, ["who?", "who lived in the city by the river?"], ["the king lived."] * 2,
                        QAConfig(max_length=64, doc_stride=16))  # fmt: skip
    padded = []

    class Engine(_IdsEngine):
        def __call__(self, inputs):
            padded.append(inputs["input_ids"][-1].tolist())
            return super().__call__(inputs)

    QAModel(Engine(), tok, tiny_qa_model).logits(features, batch_size=2, progress=False)
    short = min(len(ids) for ids in features.input_ids)
    assert set(padded[0][short:]) == {tok.pad_token_id} == {0}  # [PAD] is id 0 in the tiny vocabulary
    tok.pad_token = None  # a tokenizer without a pad token pads with 0
    padded.clear()
    QAModel(Engine(), tok, tiny_qa_model).logits(features, batch_size=2, progress=False)
    assert set(padded[0][short:]) == {0}


def test_a_torch_folder_that_is_not_a_qa_model_is_refused_by_what_it_lacks(tmp_path, tiny_qa_model):
    import json

    from edgeqa.bench.engines import load_torch_qa_model

    with pytest.raises(EdgeQAError) as e:
        load_torch_qa_model(tiny_qa_model / "config.json")
    assert str(e.value) == f"{tiny_qa_model / 'config.json'}: expected a transformers model folder, got a file"
    encoder = make_tiny_qa_model(tmp_path / "encoder", qa_head=False)
    config = json.loads((encoder / "config.json").read_text())
    (encoder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "architectures"}))
    with pytest.raises(EdgeQAError) as e:
        load_torch_qa_model(encoder)
    assert str(e.value) == (f"{encoder}: has no trained question-answering head (missing weights: qa_outputs.bias, "
                            "qa_outputs.weight)")  # fmt: skip
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(EdgeQAError, match=rf"^{tmp_path / 'broken'}: cannot load as a question-answering model: "):
        load_torch_qa_model(tmp_path / "broken")


def test_a_slow_tokenizer_is_refused(monkeypatch, tmp_path):
    import transformers

    from edgeqa.bench.engines import load_tokenizer

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda folder: type("Slow", (), {})())
    with pytest.raises(EdgeQAError) as e:
        load_tokenizer(tmp_path)
    assert str(e.value) == f"{tmp_path}: the tokenizer is not a fast tokenizer; QA needs character offsets"
