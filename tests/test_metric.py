"""The official SQuAD metric, on hand-made cases for each normalisation rule and each v1.1/v2.0 difference."""

import pytest

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.metric import exact_match, f1, load_predictions, normalize_answer, score
from edgeqa.bench.squad import SquadDataset, SquadExample


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Paris", "paris"),  # lower-case
        ("U.S.A.", "usa"),  # punctuation removed, not replaced by space
        ("rock-and-roll!", "rockandroll"),
        ("The Beatles", "beatles"),  # articles dropped
        ("a cat and an owl", "cat and owl"),
        ("theatre another", "theatre another"),  # only whole-word articles
        ("  many   spaces\tand\nlines ", "many spaces and lines"),  # white space collapsed
        ("The, the. THE!", ""),  # punctuation goes before articles, so all three vanish
        ("café “quoted”", "café “quoted”"),  # only ASCII punctuation is removed, as in the official script
    ],
)
def test_normalize_answer(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_exact_match_uses_normalisation():
    assert exact_match("the Eiffel Tower.", "Eiffel tower") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0


def test_f1_counts_shared_tokens_with_multiplicity():
    # pred tokens: [new, york, new]; gold: [new, york, city]; common = new x1, york x1 -> P=2/3, R=2/3
    assert f1("new york new", "New York City") == pytest.approx(2 / 3)
    assert f1("in 1918", "1918") == pytest.approx(2 * (1 / 2) * 1 / (1 / 2 + 1))
    assert f1("paris", "berlin") == 0.0


def test_f1_empty_strings_differ_between_versions():
    assert f1("", "") == 0.0  # v1.1: no shared token, so 0
    assert f1("", "", v2=True) == 1.0  # v2.0: both empty is a match
    assert f1("the", "", v2=True) == 1.0  # "the" normalises to empty
    assert f1("paris", "", v2=True) == 0.0


def _dataset(version, rows):
    return SquadDataset("mem", version, [SquadExample(i, "q", "c", tuple(a), (0,) * len(a)) for i, a in rows])


def test_score_v1_takes_max_over_golds_and_counts_missing():
    ds = _dataset("1.1", [("a", ["Paris", "the city of Paris"]), ("b", ["1918"]), ("c", ["king"])])
    result = score(ds, {"a": "city of paris", "b": "in 1918"})
    assert result["total"] == 3
    assert result["missing"] == 1
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert "HasAns_f1" not in result


def test_score_v2_breakdown_and_gold_filtering():
    ds = _dataset("2.0", [("a", ["Paris"]), ("b", []), ("c", ["."])])  # "." normalises to "", so c has gold [""]
    result = score(ds, {"a": "Paris", "b": "", "c": "something"})
    assert result["exact_match"] == pytest.approx(200 / 3)
    assert result["HasAns_total"] == 2 and result["NoAns_total"] == 1
    assert result["HasAns_exact"] == pytest.approx(50.0)
    assert result["NoAns_exact"] == 100.0 and result["NoAns_f1"] == 100.0
    wrong = score(ds, {"a": "Paris", "b": "an answer", "c": ""})
    assert wrong["NoAns_exact"] == 0.0 and wrong["HasAns_exact"] == 100.0


def test_extra_predictions_are_ignored():
    ds = _dataset("1.1", [("a", ["x"])])
    assert score(ds, {"a": "x", "zzz": "y"})["exact_match"] == 100.0


def test_predictions_files_are_an_object_of_texts(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"q1": "Paris", "q2": ""}')
    assert load_predictions(good) == {"q1": "Paris", "q2": ""}
    with pytest.raises(EdgeQAError, match="absent.json: no such predictions file"):
        load_predictions(tmp_path / "absent.json")
    for name, text, message in (
        ("list.json", '["Paris"]', "expected a JSON object"),
        ("number.json", '{"q1": "Paris", "q2": 3}', "the value for 'q2' is int, expected text"),
    ):
        (tmp_path / name).write_text(text)
        with pytest.raises(EdgeQAError, match=message):
            load_predictions(tmp_path / name)


def test_v2_f1_is_partial_when_both_sides_have_tokens():
    assert f1("in 1918", "1918", v2=True) == pytest.approx(2 / 3)  # only an empty side makes it all or nothing


def test_score_counts_every_missing_question_and_goes_on_after_it():
    ds = _dataset("1.1", [("a", ["x"]), ("b", ["y"]), ("c", ["z"])])
    result = score(ds, {"c": "z"})
    assert result["missing"] == 2 and result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 / 3)


def test_a_v1_question_without_golds_scores_zero_and_the_rest_still_count():
    ds = _dataset("1.1", [("a", []), ("b", ["y"])])
    result = score(ds, {"a": "anything", "b": "y"})
    assert result["exact_match"] == 50.0 and result["f1"] == 50.0 and result["missing"] == 0


def test_v2_without_unanswerable_questions_has_an_empty_noans_group():
    ds = _dataset("2.0", [("a", ["Paris"])])
    result = score(ds, {"a": "Paris"})
    assert (result["NoAns_exact"], result["NoAns_f1"], result["NoAns_total"]) == (0.0, 0.0, 0)
    assert result["HasAns_exact"] == 100.0
