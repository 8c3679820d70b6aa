"""Loading QA models: what loads, and a clear error for each kind of wrong folder."""

import json

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
