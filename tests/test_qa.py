"""Windows, offsets and the vectorised span search, on a tiny tokenizer and hand-set logits."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from conftest import make_tiny_qa_model
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.qa import Features, QAConfig, batches, best_spans, pad, tokenize


@pytest.fixture
def tokenizer(tiny_qa_model):
    return AutoTokenizer.from_pretrained(tiny_qa_model)


def _logits(features, hot_start: dict[int, int], hot_end: dict[int, int], base=-5.0, peak=5.0):
    """Logits that peak at the given (window -> token) positions; -inf past each window's end."""
    width = int(features.lengths.max())
    start = np.full((len(features), width), base, dtype=np.float32)
    end = start.copy()
    for w, t in hot_start.items():
        start[w, t] = peak
    for w, t in hot_end.items():
        end[w, t] = peak
    for w, n in enumerate(features.lengths):
        start[w, n:] = end[w, n:] = -np.inf
    return start, end


def _token_of(features, window: int, context: str, word: str, last_piece: bool = False) -> int:
    """The token where `word` starts (or, with last_piece, where it ends) in a window."""
    edge = context.index(word) + (len(word) if last_piece else 0)
    hits = np.nonzero(features.offsets[window, :, 1 if last_piece else 0] == edge)[0]
    assert len(hits), f"{word!r} not in window {window}"
    return int(hits[0])


def test_offsets_cover_only_the_context(tokenizer):
    cfg = QAConfig(max_length=64, doc_stride=16)
    context = "paris is the capital of france."
    f = tokenize(tokenizer, ["what is the capital?"], [context], cfg)
    assert len(f) == 1 and f.example_index.tolist() == [0]
    spans = [tuple(s) for s in f.offsets[0] if s[0] >= 0]
    assert "".join(context[a:b] for a, b in spans) == context.replace(" ", "")
    question_len = len(tokenizer("what is the capital?")["input_ids"])
    assert (f.offsets[0, :question_len] == -1).all()  # [CLS] question [SEP] are never answer tokens


def test_long_context_is_windowed_and_answer_past_max_length_is_found(tokenizer):
    cfg = QAConfig(max_length=48, doc_stride=16)
    context = " ".join(["the river"] * 40) + " berlin is the capital of germany."
    f = tokenize(tokenizer, ["what is the capital?"], [context], cfg)
    assert len(f) > 2 and set(f.example_index.tolist()) == {0}
    last = len(f) - 1
    s = _token_of(f, last, context, "berlin")
    start, end = _logits(f, {last: s}, {last: s})
    answer = best_spans(start, end, f, [context], cfg)[0]
    assert answer.text == "berlin"
    assert answer.start_char == context.index("berlin") > 100


def test_best_window_wins_across_windows(tokenizer):
    cfg = QAConfig(max_length=48, doc_stride=16)
    context = "paris " + " ".join(["the river"] * 40) + " berlin"
    f = tokenize(tokenizer, ["what?"], [context], cfg)
    first, last = 0, len(f) - 1
    p, b = _token_of(f, first, context, "paris"), _token_of(f, last, context, "berlin")
    start, end = _logits(f, {first: p, last: b}, {first: p, last: b})
    start[last, b] += 1.0  # berlin's window scores higher
    assert best_spans(start, end, f, [context], cfg)[0].text == "berlin"


def test_span_rules_end_after_start_and_max_answer_length(tokenizer):
    context = "the war began in 1914 and ended in 1918 in paris"
    f = tokenize(tokenizer, ["when?"], [context], QAConfig(max_length=64, doc_stride=16))
    s, e = _token_of(f, 0, context, "began"), _token_of(f, 0, context, "1918", last_piece=True)
    start, end = _logits(f, {0: s}, {0: e})
    assert best_spans(start, end, f, [context], QAConfig(max_length=64, doc_stride=16))[0].text == (
        "began in 1914 and ended in 1918"
    )
    # The same peaks with a 3-token limit: the long span is out, so a short span around a peak wins.
    short = best_spans(start, end, f, [context], QAConfig(max_length=64, doc_stride=16, max_answer_length=3))[0]
    assert short.text != "began in 1914 and ended in 1918"
    assert short.end_char - short.start_char < len("began in 1914 and ended in 1918")
    # An end peak before the start peak is never chosen.
    start2, end2 = _logits(f, {0: e}, {0: s})
    text = best_spans(start2, end2, f, [context], QAConfig(max_length=64, doc_stride=16))[0].text
    assert text not in ("1918 in paris began", "")


def test_question_tokens_are_never_answers(tokenizer):
    context = "paris is nice"
    f = tokenize(tokenizer, ["capital of france?"], [context], QAConfig(max_length=32, doc_stride=8))
    start, end = _logits(f, {0: 2}, {0: 2}, peak=50.0)  # peak on a question token
    assert best_spans(start, end, f, [context], QAConfig(max_length=32, doc_stride=8))[0].text in context


def test_null_answer_for_v2(tokenizer):
    cfg = QAConfig(max_length=32, doc_stride=8)
    context = "paris is nice"
    f = tokenize(tokenizer, ["who?"], [context], cfg)
    start, end = _logits(f, {0: 0}, {0: 0}, peak=10.0)  # [CLS] scores highest: no answer
    assert best_spans(start, end, f, [context], cfg, allow_null=True)[0].text == ""
    assert best_spans(start, end, f, [context], cfg, allow_null=False)[0].text != ""


def test_many_questions_are_kept_apart(tokenizer):
    cfg = QAConfig(max_length=32, doc_stride=8)
    contexts = ["paris is the capital", "berlin is big", "the king lived"]
    f = tokenize(tokenizer, ["q?"] * 3, contexts, cfg)
    words = ["capital", "berlin", "king"]
    hot = {w: _token_of(f, w, contexts[w], words[w]) for w in range(3)}
    start, end = _logits(f, hot, hot)
    assert [a.text for a in best_spans(start, end, f, contexts, cfg)] == words


def test_bad_settings_are_refused():
    with pytest.raises(EdgeQAError, match="doc_stride"):
        QAConfig(max_length=64, doc_stride=64)
    with pytest.raises(EdgeQAError, match="max_length"):
        QAConfig(max_length=4)


# --- settings, room for the question, padding and batches ---------------------------------------------------------


def test_settings_at_their_limits():
    QAConfig(max_length=16, doc_stride=7, n_best=1, max_answer_length=1)  # the smallest allowed of each
    QAConfig(max_length=64, doc_stride=0)
    for kwargs, message in (
        ({"max_length": 15, "doc_stride": 0}, "max_length must be at least 16 tokens, got 15"),
        ({"max_length": 16, "doc_stride": 8}, r"doc_stride must be in \[0, max_length/2\), got 8"),
        ({"max_length": 64, "doc_stride": -1}, "got -1"),
        ({"n_best": 0}, "^n_best and max_answer_length must be positive$"),
        ({"max_answer_length": 0}, "^n_best and max_answer_length must be positive$"),
        ({"max_length": 17, "doc_stride": 8}, "got 8"),  # 8 is not below 17 // 2 = 8
    ):
        with pytest.raises(EdgeQAError, match=message):
            QAConfig(**kwargs)
    assert QAConfig().to_dict() == {"max_length": 384, "doc_stride": 128, "n_best": 20, "max_answer_length": 30,
                                    "null_threshold": 0.0}  # fmt: skip


def test_a_question_must_leave_room_for_doc_stride_context_tokens(tokenizer):
    cfg = QAConfig(max_length=24, doc_stride=8)  # room: 24 - 3 special tokens - 8 = 13, so at most 12 tokens
    fits, too_long = " ".join(["king"] * 12), " ".join(["king"] * 13)
    assert len(tokenizer(fits, add_special_tokens=False)["input_ids"]) == 12
    assert len(tokenize(tokenizer, [fits], ["paris is nice"], cfg)) == 1
    with pytest.raises(EdgeQAError, match=r"is 13 tokens: too long for windows of max_length=24 with doc_stride=8 "
                       r"\(at most 12\)"):  # fmt: skip
        tokenize(tokenizer, [fits, too_long], ["paris is nice", "paris is nice"], cfg)


def test_batches_are_longest_first_and_padded_to_their_own_longest():
    f = Features([[1, 2], [3, 4, 5, 6], [7, 8, 9], [10, 11, 12]], [[0, 0], [0, 0, 1, 1], [0, 1, 1], [0, 0, 1]],
                 np.zeros(4, dtype=np.int64), np.full((4, 16, 2), -1), np.zeros(4, dtype=np.int64))  # fmt: skip
    got = list(batches(f, 2, pad_id=99, input_names=("input_ids", "attention_mask", "token_type_ids")))
    assert [idx.tolist() for idx, _ in got] == [[1, 2], [3, 0]]  # lengths 4, 3, 3, 2; ties keep their order
    first, second = got[0][1], got[1][1]
    assert first["input_ids"].tolist() == [[3, 4, 5, 6], [7, 8, 9, 99]]
    assert first["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert first["token_type_ids"].tolist() == [[0, 0, 1, 1], [0, 1, 1, 0]]
    assert second["input_ids"].tolist() == [[10, 11, 12], [1, 2, 99]]
    assert all(a.dtype == np.int64 for _, arrays in got for a in arrays.values())
    (idx, only), *_ = batches(f, 4, pad_id=0, input_names=("input_ids",))
    assert list(only) == ["input_ids"] and only["input_ids"].shape == (4, 4)
    f.token_type_ids = None  # a model without token types: zeros
    assert pad(f, [2], pad_id=0)["token_type_ids"].tolist() == [[0, 0, 0]]


# --- windows: overlap, order of question and context, token types ---------------------------------------------------


def _context_tokens(f, w):
    return [tuple(s) for s in f.offsets[w] if s[0] >= 0]


def test_consecutive_windows_overlap_by_doc_stride_and_cover_the_context(tokenizer):
    cfg = QAConfig(max_length=32, doc_stride=8)
    context = " ".join(f"{w} {i}" for i, w in enumerate(["river", "king", "city", "war"] * 8))
    f = tokenize(tokenizer, ["what is the capital?"], [context], cfg)
    assert len(f) > 2 and f.offsets.dtype == np.int32
    windows = [_context_tokens(f, w) for w in range(len(f))]
    for a, b in zip(windows, windows[1:], strict=False):
        assert a[-8:] == b[:8]  # doc_stride tokens of overlap
    every = sorted(set().union(*windows))
    assert "".join(context[s:e] for s, e in every) == context.replace(" ", "")  # every context token, once
    question = tokenizer("what is the capital?")["input_ids"][:-1]  # [CLS] question, then [SEP]
    assert all(ids[: len(question)] == question for ids in f.input_ids)  # every window holds the whole question
    assert all(len(ids) <= 32 for ids in f.input_ids)


def test_windows_are_those_of_transformers_tokenizer_call(tokenizer):
    cfg = QAConfig(max_length=32, doc_stride=8)
    question, context = "who?", "paris [CLS] is nice " + " ".join(["the river"] * 20)  # special text, as transformers
    f = tokenize(tokenizer, [question], [context], cfg)
    ref = tokenizer([question], [context], truncation="only_second", max_length=32, stride=8,
                    return_overflowing_tokens=True, return_offsets_mapping=True)  # fmt: skip
    assert len(f) == len(ref["input_ids"]) > 1
    assert f.input_ids == ref["input_ids"] and f.token_type_ids == ref["token_type_ids"]
    for w in range(len(f)):
        context_tokens = [i for i, s in enumerate(ref.sequence_ids(w)) if s == 1]
        assert [tuple(f.offsets[w, i]) for i in context_tokens] == [ref["offset_mapping"][w][i] for i in context_tokens]
        assert (np.delete(f.offsets[w], context_tokens, axis=0) == -1).all()
    assert f.cls_index.tolist() == [0] * len(f)


def test_context_first_tokenizers_window_the_context_before_the_question(tokenizer):
    tokenizer.padding_side = "left"  # as XLNet's: <context> <sep> <question> <sep> <cls> in transformers' layout
    cfg = QAConfig(max_length=32, doc_stride=8)
    context = " ".join(["the river"] * 12) + " berlin is the capital"
    f = tokenize(tokenizer, ["what is the capital?"], [context], cfg)
    assert len(f) > 1
    question = tokenizer("what is the capital?", add_special_tokens=False)["input_ids"]
    for w, ids in enumerate(f.input_ids):
        assert ids[-len(question) - 1 : -1] == question  # the whole question ends every window
        spans = _context_tokens(f, w)
        assert spans and np.nonzero(f.offsets[w, :, 0] >= 0)[0].max() < len(ids) - len(question) - 1
    windows = [_context_tokens(f, w) for w in range(len(f))]
    assert "".join(context[s:e] for s, e in sorted(set().union(*windows))) == context.replace(" ", "")
    last = len(f) - 1
    b = _token_of(f, last, context, "berlin")
    start, end = _logits(f, {last: b}, {last: b})
    assert best_spans(start, end, f, [context], cfg)[0].text == "berlin"


def test_questions_and_contexts_must_pair_up(tokenizer):
    with pytest.raises(ValueError):
        tokenize(tokenizer, ["who?", "what?"], ["paris is nice"], QAConfig(max_length=32, doc_stride=8))
    tokenizer.padding_side = "left"
    with pytest.raises(ValueError):
        tokenize(tokenizer, ["who?"], ["paris is nice", "berlin"], QAConfig(max_length=32, doc_stride=8))


def test_a_byte_level_tokenizer_ignores_the_questions_leading_space(tmp_path):
    roberta = AutoTokenizer.from_pretrained(make_tiny_qa_model(tmp_path / "r", family="roberta"))
    cfg = QAConfig(max_length=32, doc_stride=8)
    plain = tokenize(roberta, ["who is king?"], ["the king lived"], cfg)
    spaced = tokenize(roberta, ["   who is king?"], ["the king lived"], cfg)
    assert spaced.input_ids == plain.input_ids
    assert plain.token_type_ids is None  # RoBERTa has no token types


def test_windows_of_equal_length_keep_their_order_in_long_batches():
    lengths = [(i * 7) % 5 + 1 for i in range(60)]  # 60 windows, 12 of each length: quicksort would reorder ties
    f = Features([[1] * n for n in lengths], None, np.zeros(60, dtype=np.int64), np.full((60, 16, 2), -1),
                 np.zeros(60, dtype=np.int64))  # fmt: skip
    order = [i for idx, _ in batches(f, 7, pad_id=0, input_names=("input_ids",)) for i in idx.tolist()]
    assert order == sorted(range(60), key=lambda i: -lengths[i])  # Python's sort is stable: ties by position


def test_a_long_question_is_named_by_its_first_60_characters(tokenizer):
    question = " ".join(["king"] * 20)  # 99 characters, 20 tokens
    with pytest.raises(EdgeQAError, match=f"^the question {question[:60]!r} is 20 tokens"):
        tokenize(tokenizer, [question], ["paris"], QAConfig(max_length=24, doc_stride=4))


def test_only_the_context_is_cut_even_beside_a_long_question(tokenizer):
    cfg = QAConfig(max_length=24, doc_stride=2)  # room for 24 - 3 - 2 = 19: an 18-token question fits
    question, context = " ".join(["king"] * 18), " ".join(["the river"] * 10)
    f = tokenize(tokenizer, [question], [context], cfg)
    ref = tokenizer([question], [context], truncation="only_second", max_length=24, stride=2,
                    return_overflowing_tokens=True)  # fmt: skip
    assert f.input_ids == ref["input_ids"] and len(f) > 3
    assert all(ids[1:19] == ref["input_ids"][0][1:19] for ids in f.input_ids)  # the whole question in every window


def test_the_classifier_token_is_found_wherever_the_tokenizer_puts_it(tokenizer):
    from tokenizers.processors import TemplateProcessing

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]")}
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(  # XLNet's order: the classifier token last
        single="$A [SEP] [CLS]", pair="$A [SEP] $B:1 [SEP]:1 [CLS]:2", special_tokens=list(ids.items())
    )
    f = tokenize(tokenizer, ["who?"], [" ".join(["the river"] * 20)], QAConfig(max_length=32, doc_stride=8))
    assert len(f) > 1
    assert f.cls_index.tolist() == [len(ids) - 1 for ids in f.input_ids]


def test_without_a_classifier_token_the_first_position_stands_for_no_answer(tokenizer):
    tokenizer.cls_token = None
    f = tokenize(tokenizer, ["who?"], [" ".join(["the river"] * 20)], QAConfig(max_length=32, doc_stride=8))
    assert len(f) > 1 and f.cls_index.tolist() == [0] * len(f)


def test_a_left_truncating_tokenizer_windows_as_transformers_does(tokenizer):
    tokenizer.truncation_side = "left"
    cfg = QAConfig(max_length=32, doc_stride=8)
    question, context = "who?", " ".join(f"w{i}" for i in range(40))
    f = tokenize(tokenizer, [question], [context], cfg)
    ref = tokenizer([question], [context], truncation="only_second", max_length=32, stride=8,
                    return_overflowing_tokens=True)  # fmt: skip
    assert len(f) > 1 and f.input_ids == ref["input_ids"]
    tokenizer.truncation_side = "right"
    assert tokenize(tokenizer, [question], [context], cfg).input_ids != ref["input_ids"]
