"""Static int8's calibration windows: which windows, at which length, padded with what.

Expected windows come from the tokenizer itself, called here on each (question, context) pair: SQuAD's order is
question first, then the context, and each toy context fits one window.
"""

from __future__ import annotations

import numpy as np

from conftest import make_tiny_qa_model, write_squad
from edgeqa.bench.engines import load_tokenizer
from edgeqa.bench.qa import QAConfig
from edgeqa.export.quantize import calibration_inputs

QAS = [
    ("the king lived in the city on the river.", "who lived in the city?", ["the king"]),
    ("the war began in 1914 and ended in 1918.", "when did the war end?", ["1918"]),
    # the longest of the three: a calibration of the first two questions must not take it
    ("paris is the capital of france, and berlin is the capital of germany, and rome of italy.",
     "what is the capital of france?", ["paris"]),
]  # fmt: skip


def _windows(folder, qas):
    tok = load_tokenizer(folder)
    return [tok(question, context) for context, question, _ in qas]


def test_calibration_takes_the_first_questions_windows_each_at_its_own_length(tmp_path):
    model = make_tiny_qa_model(tmp_path / "bert")
    data = write_squad(tmp_path / "dev.json", QAS)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    inputs = calibration_inputs(data, model, names, 2, QAConfig())
    expected = sorted(_windows(model, QAS[:2]), key=lambda w: -len(w["input_ids"]))  # longest first, as batched
    assert len(inputs) == 2
    for got, want in zip(inputs, expected, strict=True):
        assert list(got) == names and all(a.dtype == np.int64 for a in got.values())
        assert got["input_ids"].tolist() == [want["input_ids"]]  # one window a batch, unpadded
        assert got["token_type_ids"].tolist() == [want["token_type_ids"]]
        assert got["attention_mask"].tolist() == [[1] * len(want["input_ids"])]


def test_histogram_calibration_pads_every_window_to_max_length_with_the_pad_token(tmp_path):
    """RoBERTa's pad token is 1, not 0: the ids are padded with it, the mask with 0."""
    model = make_tiny_qa_model(tmp_path / "roberta", family="roberta")
    assert load_tokenizer(model).pad_token_id == 1
    data = write_squad(tmp_path / "dev.json", QAS)
    inputs = calibration_inputs(
        data, model, ["input_ids", "attention_mask"], 3, QAConfig(max_length=64, doc_stride=16), True
    )
    expected = sorted(_windows(model, QAS), key=lambda w: -len(w["input_ids"]))
    for got, want in zip(inputs, expected, strict=True):
        n = len(want["input_ids"])
        assert got["input_ids"].tolist() == [want["input_ids"] + [1] * (64 - n)]
        assert got["attention_mask"].tolist() == [[1] * n + [0] * (64 - n)]
