"""What training reads: the labelled windows of a SQuAD file (answered questions only, tokenised a chunk at a time
to the same result), compact dtypes, and a step's micro-batch as the loop receives it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TOY_QAS, make_tiny_qa_model, write_squad
from edgeqa.bench.engines import load_tokenizer
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.qa import QAConfig
from edgeqa.compress.trainset import StepBatches, as_is, load_trainset

SHORT = QAConfig(max_length=24, doc_stride=4)  # the toy contexts take two or three windows each


@pytest.fixture
def tokenizer(tmp_path):
    return load_tokenizer(make_tiny_qa_model(tmp_path / "m"))


def test_unanswerable_questions_are_left_out_and_a_file_without_answers_is_refused(tmp_path, tokenizer):
    unanswerable = ("the sea is blue.", "what colour is the sky?", [])
    data = write_squad(tmp_path / "v2.json", [unanswerable, *TOY_QAS, unanswerable], version="2.0")
    ts = load_trainset(data, None, tokenizer, SHORT)
    assert (ts.questions, ts.source, ts.limit) == (3, str(data), None)
    assert sorted(set(ts.example_index.tolist())) == [0, 1, 2]  # the three answered ones, numbered among themselves
    limited = load_trainset(data, 2, tokenizer, SHORT)  # the first 2 questions of the file: one is answered
    assert (limited.questions, limited.limit) == (1, 2)
    none = write_squad(tmp_path / "none.json", [unanswerable], version="2.0")
    with pytest.raises(EdgeQAError) as e:
        load_trainset(none, None, tokenizer, SHORT)
    assert str(e.value) == f"{none}: holds no answered questions to train on"


def test_tokenising_a_chunk_at_a_time_gives_the_windows_of_one_pass(tmp_path, tokenizer):
    data = write_squad(tmp_path / "t.json", TOY_QAS * 3)
    whole = load_trainset(data, None, tokenizer, SHORT)
    chunked = load_trainset(data, None, tokenizer, SHORT, chunk=2)  # 9 questions in chunks of 2
    assert len(whole) == len(chunked) > 9 and whole.questions == chunked.questions == 9
    np.testing.assert_array_equal(whole.example_index, chunked.example_index)
    np.testing.assert_array_equal(whole.labels, chunked.labels)
    assert all(np.array_equal(a, b) for a, b in zip(whole.input_ids, chunked.input_ids, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(whole.token_type_ids, chunked.token_type_ids, strict=True))
    assert whole.example_index.tolist() == sorted(whole.example_index.tolist())  # windows in question order
    assert whole.input_ids[0].dtype == np.int32 and whole.token_type_ids[0].dtype == np.int8  # compact in memory
    np.testing.assert_array_equal(whole.lengths, [len(x) for x in whole.input_ids])
    assert whole.lengths.dtype == np.int64 and whole.labels.shape == (len(whole), 2)


def test_a_family_without_token_types_gets_zeros_where_others_have_them(tmp_path):
    tok = load_tokenizer(make_tiny_qa_model(tmp_path / "r", family="roberta"))
    ts = load_trainset(write_squad(tmp_path / "t.json", TOY_QAS), None, tok, SHORT)
    assert ts.token_type_ids is None
    batch = StepBatches(ts, tok.pad_token_id).micro_batch(np.array([0, 1]))
    assert batch["input_ids"][0, 0] == tok.bos_token_id
    assert not batch["token_type_ids"].any()  # RoBERTa's inputs leave them out; the loop passes its model's names


def test_a_micro_batch_pads_to_its_longest_window_and_cuts_the_cached_logits_to_that_width(tmp_path, tokenizer):
    ts = load_trainset(write_squad(tmp_path / "t.json", TOY_QAS), None, tokenizer, QAConfig())
    logits = np.arange(len(ts) * 2 * 384, dtype=np.float16).reshape(len(ts), 2, 384) % 7
    idx = np.array([2, 0])
    batch = StepBatches(ts, 5, logits)[[idx]][0]  # as the loader asks: a step's list of micro-batches
    width = max(len(ts.input_ids[i]) for i in idx)
    assert batch["input_ids"].shape == (2, width) and batch["input_ids"].dtype == torch.int64
    for row, i in enumerate(idx):
        n = len(ts.input_ids[i])
        assert batch["input_ids"][row, :n].tolist() == ts.input_ids[i].tolist()
        assert batch["input_ids"][row, n:].tolist() == [5] * (width - n)  # the pad id given
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["token_type_ids"][row, :n].tolist() == ts.token_type_ids[i].tolist()
    assert batch["labels"].tolist() == ts.labels[idx].tolist()
    assert batch["windows"].tolist() == [2, 0] and batch["windows"].dtype == torch.int64
    assert batch["teacher_logits"].dtype == torch.float32
    np.testing.assert_array_equal(batch["teacher_logits"].numpy(), logits[idx, :, :width].astype(np.float32))
    assert "teacher_logits" not in StepBatches(ts, 0).micro_batch(idx)
    item = object()
    assert as_is(item) is item
