"""Windows, offsets and the vectorised span search, on a tiny tokenizer and hand-set logits."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.qa import QAConfig, best_spans, tokenize


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
