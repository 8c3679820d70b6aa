"""`evaluate`, the one place EM/F1 come from: what metrics.json records beside the scores, the batch size a model is
scored at, and an output folder that a failure leaves as it found it."""

from __future__ import annotations

import json

import pytest

from conftest import TOY_QAS, write_squad
from edgeqa.bench import evaluate as evaluate_module
from edgeqa.bench.evaluate import evaluate
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.qa import QAConfig


class _Engine:
    backend = "fake"
    threads = 3


class _Model:
    engine = _Engine()


@pytest.fixture
def fake_model(monkeypatch):
    """A model that answers every question "paris", with stage times of 0.5 s tokenising, 2 s in the model and
    0.25 s in the span search; what it was loaded and asked with is kept."""
    calls = {}

    loaded = _Model()

    def load(model, threads, torch_int8):
        calls["load"] = (str(model), threads, torch_int8)
        return loaded

    def predict(qa, examples, cfg, batch_size, allow_null, progress, timings):
        assert qa is loaded
        calls["predict"] = ([e.id for e in examples], cfg, batch_size, allow_null, progress)
        timings.update(calls.get("timings", {"tokenize_s": 0.5, "model_s": 2.0, "postprocess_s": 0.25, "windows": 7}))
        return {e.id: "paris" for e in examples}

    def depends(model, torch_int8):
        assert model == "m", model
        return torch_int8

    monkeypatch.setattr(evaluate_module, "load_qa_model", load)
    monkeypatch.setattr(evaluate_module, "predict", predict)
    monkeypatch.setattr(evaluate_module, "answers_depend_on_batch", depends)
    return calls


def test_metrics_record_the_scores_and_how_they_were_made(tmp_path, toy_squad, fake_model):
    """Of the three toy questions only the first is "paris": EM = F1 = 100/3. (tokenize + span search) / model time
    = (0.5 + 0.25) / 2 = 0.375."""
    cfg = QAConfig(max_length=64, doc_stride=16)
    metrics = evaluate("m", toy_squad, limit=None, cfg=cfg, threads=2, out_dir=tmp_path / "out", progress=False)
    assert fake_model["load"] == ("m", 2, False)
    assert fake_model["predict"] == (["q0", "q1", "q2"], cfg, 16, False, False)
    assert metrics["exact_match"] == pytest.approx(100 / 3) and metrics["f1"] == pytest.approx(100 / 3)
    expected = {"model": "m", "backend": "fake", "data": str(toy_squad), "squad_version": "1.1", "limit": None,
                "settings": cfg.to_dict(), "batch_size": 16, "batch_dependent": False, "threads": 3,
                "timings": {"tokenize_s": 0.5, "model_s": 2.0, "postprocess_s": 0.25, "windows": 7},
                "overhead_share": 0.375}  # fmt: skip
    assert {k: metrics[k] for k in expected} == expected and 0 <= metrics["seconds"] < 5
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
    assert json.loads((tmp_path / "out" / "predictions.json").read_text()) == {"q0": "paris", "q1": "paris",
                                                                               "q2": "paris"}  # fmt: skip


def test_a_batch_dependent_model_is_scored_one_question_at_a_time(toy_squad, fake_model):
    metrics = evaluate("m", toy_squad, limit=2, torch_int8=True, progress=True)
    assert fake_model["load"] == ("m", None, True) and fake_model["predict"][0] == ["q0", "q1"]
    assert fake_model["predict"][2:] == (1, False, True)
    assert (metrics["batch_size"], metrics["batch_dependent"], metrics["limit"]) == (1, True, 2)
    assert evaluate("m", toy_squad, torch_int8=True, batch_size=4)["batch_size"] == 4  # asked for: kept


def test_unanswerable_questions_may_be_answered_empty_in_a_v2_file(tmp_path, fake_model):
    data = write_squad(tmp_path / "v2.json", [*TOY_QAS, ("the sky is blue.", "who is king?", [])], version="2.0")
    assert evaluate("m", data)["squad_version"] == "2.0" and fake_model["predict"][3] is True


def test_a_failed_evaluation_leaves_no_new_folder_and_a_bad_batch_is_refused(tmp_path, toy_squad, fake_model):
    with pytest.raises(EdgeQAError, match="no such SQuAD file"):
        evaluate("m", tmp_path / "none.json", out_dir=tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()
    with pytest.raises(EdgeQAError) as e:
        evaluate("m", toy_squad, batch_size=0, out_dir=tmp_path / "b")
    assert str(e.value) == "batch size must be positive, got 0" and not (tmp_path / "b").exists()
    assert "load" not in fake_model  # refused before any model was loaded


def test_times_are_rounded_and_the_overhead_never_divides_by_zero(toy_squad, fake_model, monkeypatch):
    """(0.1 + 0.2) / 0.7 = 0.4286 to four places; stage times to three (0.12345 s reads 0.123); the wall time,
    3.12345 - 1 s on a fake clock, 2.123. A model stage of 0 s counts as 1 ns."""
    ticks = iter([1.0, 3.12345])
    monkeypatch.setattr(evaluate_module.time, "perf_counter", lambda: next(ticks))
    fake_model["timings"] = {"tokenize_s": 0.1, "model_s": 0.7, "postprocess_s": 0.2, "windows": 3, "x_s": 0.12345}
    metrics = evaluate("m", toy_squad)
    assert metrics["overhead_share"] == 0.4286 and metrics["timings"]["x_s"] == 0.123 and metrics["seconds"] == 2.123
    assert fake_model["predict"][4] is True  # a bar unless asked for none
    monkeypatch.setattr(evaluate_module.time, "perf_counter", lambda: 0.0)
    fake_model["timings"] = {"tokenize_s": 0.5, "model_s": 0.0, "postprocess_s": 0.0, "windows": 3}
    assert evaluate("m", toy_squad)["overhead_share"] == 0.5e9
    fake_model["timings"] = {"tokenize_s": 0.5, "model_s": 0.5, "postprocess_s": 0.25, "windows": 3}
    assert evaluate("m", toy_squad)["overhead_share"] == 1.5


def test_an_engine_without_a_thread_count_records_none(toy_squad, fake_model, monkeypatch):
    monkeypatch.delattr(_Engine, "threads")
    assert evaluate("m", toy_squad)["threads"] is None
