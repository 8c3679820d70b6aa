"""Small pieces of the pipeline, each against values written by hand: what a model folder's records put in its
report row, the eval section of report.json, and the QA window in a model's identity."""

from __future__ import annotations

import json

from edgeqa.bench.qa import QAConfig
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
