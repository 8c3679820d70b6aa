"""The span search on hand-built windows: max_answer_length, ends before starts, n_best, the best window per
question and SQuAD v2.0's null answer, every score worked out by hand (the windows themselves: test_qa.py)."""

import numpy as np
import pytest

from edgeqa.bench.qa import Features, QAConfig, best_spans

# --- the span rules on hand-built windows: every score below is worked out by hand, no two pairs tie ------------

WORDS8 = "aa bb cc dd ee ff gg hh"  # context word i spans characters [3i, 3i + 2)
NEG = -9.0  # the logit of every position a test leaves unset


def _windows(first_words: list[int], n_words: int, questions: list[int] | None = None) -> Features:
    """Windows [CLS] q [SEP] <n_words context words from first_words[w]> [SEP]: context word j of window w sits at
    position 3 + j and is WORDS8's word first_words[w] + j."""
    n = len(first_words)
    offsets = np.full((n, 16, 2), -1, dtype=np.int32)
    for w, first in enumerate(first_words):
        for j in range(n_words):
            offsets[w, 3 + j] = (3 * (first + j), 3 * (first + j) + 2)
    ids = [[0] * (n_words + 4) for _ in first_words]
    example = np.array(questions if questions is not None else [0] * n, dtype=np.int64)
    return Features(ids, None, example, offsets, np.zeros(n, dtype=np.int64))


def _hand_logits(n_windows: int, width: int, starts: dict, ends: dict) -> tuple[np.ndarray, np.ndarray]:
    """Start and end logits of NEG except at the (window, position) keys given."""
    start = np.full((n_windows, width), NEG, dtype=np.float32)
    end = start.copy()
    for (w, t), v in starts.items():
        start[w, t] = v
    for (w, t), v in ends.items():
        end[w, t] = v
    return start, end


def _answer(start, end, features, **cfg) -> str:
    return best_spans(start, end, features, [WORDS8], QAConfig(max_length=16, doc_stride=0, **cfg))[0].text


def test_a_span_of_exactly_max_answer_length_tokens_is_chosen():
    f = _windows([0], 8)  # positions 3..10 hold aa..hh
    # best pair: start bb (4) + end dd (6) = 3 + 3 = 6, three tokens; the next best, bb..bb, is 3 + 1 = 4.
    start, end = _hand_logits(1, 12, {(0, 4): 3.0}, {(0, 6): 3.0, (0, 4): 1.0})
    assert _answer(start, end, f, max_answer_length=3) == "bb cc dd"
    assert _answer(start, end, f, max_answer_length=2) == "bb"  # one token shorter a limit: the next best


def test_a_span_one_token_longer_than_max_answer_length_is_refused():
    f = _windows([0], 8)
    # bb (4) + ee (7) = 5 + 5 = 10 is four tokens: refused with max_answer_length 3. Of the pairs left, by hand:
    # bb+dd 5 + 2 = 7 (three tokens), cc+ee 0.5 + 5 = 5.5, bb+cc 5 + 0.4 = 5.4, dd+ee 0.2 + 5 = 5.2; so bb..dd.
    start, end = _hand_logits(1, 12, {(0, 4): 5.0, (0, 5): 0.5, (0, 6): 0.2}, {(0, 7): 5.0, (0, 6): 2.0, (0, 5): 0.4})
    answer = best_spans(start, end, f, [WORDS8], QAConfig(max_length=16, doc_stride=0, max_answer_length=3))[0]
    assert (answer.text, answer.start_char, answer.end_char) == ("bb cc dd", 3, 11)
    assert answer.score == pytest.approx(7.0)
    assert _answer(start, end, f, max_answer_length=4) == "bb cc dd ee"  # allowed once the limit is four


def test_a_span_that_ends_before_it_starts_is_refused():
    f = _windows([0], 8)
    # Start peak on ee (7), end peak on bb (4): 6 + 6 = 12 is refused. Of the pairs left, by hand: bb+bb 2 + 6 = 8,
    # ee+ee 6 + 1 = 7, bb+ee 2 + 1 = 3, anything with an unset logit at most 6 - 9. So bb alone.
    start, end = _hand_logits(1, 12, {(0, 7): 6.0, (0, 4): 2.0}, {(0, 4): 6.0, (0, 7): 1.0})
    assert _answer(start, end, f) == "bb"
    # With bb's start gone, ee alone (7) is the best left; never the reversed pair.
    start[0, 4] = NEG
    assert _answer(start, end, f) == "ee"


def test_only_the_n_best_starts_and_ends_are_combined():
    f = _windows([0], 8)
    # Starts by rank: ff (8) 4, hh (10) 3, cc (5) 2; ends by rank: bb (4) 4, cc (5) 3.5, gg (9) 1. Every pair of the
    # top two starts and top two ends ends before it starts, so with n_best 2 there is no answer; the third ones add
    # cc+cc 2 + 3.5 = 5.5, above ff+gg 4 + 1 = 5 and cc+gg 2 + 1 = 3.
    start, end = _hand_logits(1, 12, {(0, 8): 4.0, (0, 10): 3.0, (0, 5): 2.0}, {(0, 4): 4.0, (0, 5): 3.5, (0, 9): 1.0})
    none = best_spans(start, end, f, [WORDS8], QAConfig(max_length=16, doc_stride=0, n_best=2))[0]
    assert (none.text, none.start_char, none.end_char) == ("", -1, -1)
    assert _answer(start, end, f, n_best=3) == "cc"
    assert _answer(start, end, f, n_best=20) == "cc"


def test_the_first_window_wins_when_it_scores_higher():
    # Two windows of one question: aa..ee and dd..hh. The first holds the better span, so window order is no proxy.
    f = _windows([0, 3], 5)  # window 1's positions 3..7 are dd..hh
    start, end = _hand_logits(2, 9, {(0, 4): 4.0, (1, 5): 3.0}, {(0, 4): 4.0, (1, 5): 3.5})
    assert _answer(start, end, f) == "bb"  # 8 against window 1's ff (position 5) at 6.5
    start[1, 5] = 5.0  # ff: 8.5 now beats bb
    assert _answer(start, end, f) == "ff"


def test_each_question_keeps_its_own_best_window():
    # Windows 0 and 2 belong to question 0, window 1 to question 1; question 1's span scores highest of all.
    f = _windows([0, 0, 3], 5, questions=[0, 1, 0])
    start, end = _hand_logits(3, 9, {(0, 3): 1.0, (1, 4): 9.0, (2, 5): 2.0}, {(0, 3): 1.0, (1, 4): 9.0, (2, 5): 2.0})
    answers = best_spans(start, end, f, [WORDS8, WORDS8], QAConfig(max_length=16, doc_stride=0))
    assert [a.text for a in answers] == ["ff", "bb"]  # question 0: window 2's ff (4) beats window 0's aa (2)


def test_probability_is_the_product_of_the_two_softmaxes_in_the_winning_window():
    f = _windows([0], 2)  # positions 0..5: CLS q SEP aa bb SEP
    start = np.array([[0.0, 0.0, 0.0, np.log(3.0), 0.0, -np.inf]], dtype=np.float64)
    end = np.array([[0.0, 0.0, 0.0, 0.0, np.log(2.0), -np.inf]], dtype=np.float64)
    answer = best_spans(start, end, f, [WORDS8], QAConfig(max_length=16, doc_stride=0))[0]
    # softmax over the five finite logits: start aa = 3 / (3 + 4) and end bb = 2 / (2 + 4), by hand.
    assert answer.text == "aa bb"
    assert answer.probability == pytest.approx(3 / 7 * 2 / 6)


def test_the_n_best_th_end_is_still_combined():
    f = _windows([0], 8)
    # Starts by rank: cc (5) 2, gg (9) 1.5, hh (10) 1.2; ends by rank: bb (4) 4, aa (3) 3.5, dd (6) 1. The top two ends
    # end before every top start, so with n_best 2 there is no answer; with 3, cc+dd 2 + 1 = 3 is the only valid pair.
    start, end = _hand_logits(1, 12, {(0, 5): 2.0, (0, 9): 1.5, (0, 10): 1.2}, {(0, 4): 4.0, (0, 3): 3.5, (0, 6): 1.0})
    assert _answer(start, end, f, n_best=3) == "cc dd"
    assert _answer(start, end, f, n_best=2) == ""


def test_squad_v1_answers_are_never_null_by_default():
    f = _windows([0], 2)
    # The classifier token's null score, 10 + 10, beats the only span, aa: 1 + 1. Without allow_null it is ignored.
    start, end = _hand_logits(1, 6, {(0, 0): 10.0, (0, 3): 1.0}, {(0, 0): 10.0, (0, 3): 1.0})
    assert best_spans(start, end, f, [WORDS8], QAConfig(max_length=16, doc_stride=0))[0].text == "aa"
    assert best_spans(start, end, f, [WORDS8], QAConfig(max_length=16, doc_stride=0), allow_null=True)[0].text == ""


# --- SQuAD v2.0's null answer, on hand-built windows ---------------------------------------------------------------


def _v2(start, end, f, contexts=(WORDS8,), **cfg):
    return best_spans(start, end, f, list(contexts), QAConfig(max_length=16, doc_stride=0, **cfg), allow_null=True)


def test_the_null_score_is_the_classifier_tokens_start_plus_end():
    f = _windows([0], 2)
    # Null: 3 + 3 = 6 (the classifier token at 0); the best span aa: 2.5 + 2.5 = 5. 6 - 5 = 1 > 0: no answer.
    start, end = _hand_logits(1, 6, {(0, 0): 3.0, (0, 3): 2.5}, {(0, 0): 3.0, (0, 3): 2.5})
    null = _v2(start, end, f)[0]
    assert (null.text, null.score, null.probability, null.start_char, null.end_char) == ("", 6.0, 0.0, -1, -1)
    assert _v2(start, end, f, null_threshold=1.0)[0].text == "aa"  # 1 is not above a threshold of 1
    assert _v2(start, end, f, null_threshold=0.99)[0].text == ""
    # A null score below the span's (-1 + -1 = -2 against 5) keeps the span: 5 - (-2) is not the test, -2 - 5 is.
    start[0, 0] = end[0, 0] = -1.0
    assert _v2(start, end, f)[0].text == "aa"


def test_each_question_takes_the_lowest_null_score_of_its_own_windows():
    # Question 0: windows 0 and 1, null 3 + 3 = 6 and 0 + 0 = 0, span bb 2 + 2 = 4: min null 0 - 4 < 0, answered.
    # Question 1: window 2, null 6, span bb 4: 6 - 4 > 0, no answer. Question 2: window 3, span bb 8, answered.
    f = _windows([0, 0, 0, 0], 2, questions=[0, 0, 1, 2])
    start, end = _hand_logits(
        4, 6, {(0, 0): 3.0, (1, 0): 0.0, (2, 0): 3.0, (0, 4): 2.0, (2, 4): 2.0, (3, 4): 4.0},
        {(0, 0): 3.0, (1, 0): 0.0, (2, 0): 3.0, (0, 4): 2.0, (2, 4): 2.0, (3, 4): 4.0},
    )  # fmt: skip
    answers = _v2(start, end, f, contexts=(WORDS8, WORDS8, WORDS8))
    assert [a.text for a in answers] == ["bb", "", "bb"]  # a question after an unanswered one is still answered
    assert answers[1].score == 6.0


def test_a_question_without_windows_gets_no_answer():
    f = _windows([0], 2)  # one window, of question 0; question 1 has none
    start, end = _hand_logits(1, 6, {(0, 3): 1.0}, {(0, 3): 1.0})
    answers = best_spans(start, end, f, [WORDS8, WORDS8], QAConfig(max_length=16, doc_stride=0))
    assert answers[0].text == "aa"
    assert (answers[1].text, answers[1].score, answers[1].probability, answers[1].start_char) == ("", -np.inf, 0.0, -1)
