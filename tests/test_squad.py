"""Reading SQuAD files: both layouts, gzip, subsets, and a clear error for every kind of bad file."""

import time

import pytest

from conftest import TOY_QAS, write_squad
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.squad import load_squad


def test_plain_and_gzipped_files_load_the_same(tmp_path):
    plain = load_squad(write_squad(tmp_path / "a.json", TOY_QAS))
    gz = load_squad(write_squad(tmp_path / "a.json.gz", TOY_QAS, gz=True))
    assert plain.examples == gz.examples
    assert plain.version == "1.1" and not plain.is_v2
    assert [e.id for e in plain.examples] == ["q0", "q1", "q2"]
    assert plain.examples[1].answers == ("the king", "king")


def test_limit_takes_the_first_questions_in_file_order(toy_squad):
    assert [e.id for e in load_squad(toy_squad, limit=2).examples] == ["q0", "q1"]
    with pytest.raises(EdgeQAError, match="positive"):
        load_squad(toy_squad, limit=0)


def test_v2_layout_marks_unanswerable_questions(tmp_path):
    path = write_squad(tmp_path / "v2.json", [*TOY_QAS, ("the river is long.", "who is king?", [])], version="2.0")
    ds = load_squad(path)
    assert ds.is_v2
    assert ds.examples[-1].is_impossible and ds.examples[-1].answers == ()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "malformed JSON at line 1"),
        ("[1, 2]", "not a SQuAD file: the top level should be an object"),
        ('{"data": {}}', '"data" should be a list'),
        ('{"data": [{"paragraphs": [{"qas": []}]}]}', 'data\\[0\\].paragraphs\\[0\\] has no "context"'),
        ('{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "x", "answers": []}]}]}]}', 'has no "question"'),
        ('{"data": []}', "holds no questions"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(EdgeQAError, match=message) as err:
        load_squad(path)
    assert str(path) in str(err.value)


def test_missing_file_and_truncated_gzip(tmp_path):
    with pytest.raises(EdgeQAError, match="no such SQuAD file"):
        load_squad(tmp_path / "absent.json")
    gz = write_squad(tmp_path / "t.json.gz", TOY_QAS, gz=True)
    gz.write_bytes(gz.read_bytes()[:20])
    with pytest.raises(EdgeQAError, match="cannot read SQuAD file"):
        load_squad(gz)


def test_hub_id_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(EdgeQAError, match="not reachable"):
        load_squad("rajpurkar/squad")
    assert time.monotonic() - t0 < 5


# --- the layout read field by field, with every message by its exact words -------------------------------------


def _doc(qas, version=None, title="Normans"):
    doc = {"data": [{"title": title, "paragraphs": [{"context": "Ann wrote it in 1900.", "qas": qas}]}]}
    return doc if version is None else {**doc, "version": version}


def test_each_question_keeps_its_answers_starts_title_and_context():
    from edgeqa.bench.squad import parse_squad

    qas = [{"id": "a", "question": "Who?", "answers": [{"text": "Ann", "answer_start": 0}, {"text": "Ann"}]},
           {"id": "b", "question": "When?", "answers": [{"text": "1900", "answer_start": "16"}]}]  # fmt: skip
    ds = parse_squad(_doc(qas), "f.json")
    a, b = ds.examples
    assert (a.id, a.question, a.context, a.title) == ("a", "Who?", "Ann wrote it in 1900.", "Normans")
    assert a.answers == ("Ann", "Ann") and a.answer_starts == (0, -1)  # a start left out reads as -1
    assert b.answer_starts == (16,) and not b.is_impossible
    assert ds.source == "f.json" and len(ds) == 2 and ds.by_id() == {"a": a, "b": b}
    assert parse_squad({"data": [{"paragraphs": []}]}, "f").examples == []  # a title is optional
    assert parse_squad(_doc(qas, title=None), "f").examples[0].title is None


@pytest.mark.parametrize(
    ("version", "impossible", "read"),
    [(None, False, "1.1"), ("1.1", False, "1.1"), ("v2.0", False, "2.0"), ("", False, "1.1"), ("1.1", True, "2.0")],
)
def test_the_version_is_the_files_unless_a_question_is_unanswerable(version, impossible, read):
    from edgeqa.bench.squad import parse_squad

    qas = [{"id": "a", "question": "Who?", "answers": [{"text": "Ann", "answer_start": 0}]},
           {"id": "b", "question": "Why?", "is_impossible": impossible, "answers": []}]  # fmt: skip
    ds = parse_squad(_doc(qas, version), "f.json")
    assert ds.version == read and ds.is_v2 == read.startswith("2")
    assert ds.examples[1].is_impossible and ds.examples[1].answers == ()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "the top level should be an object"),
        ({}, 'the top level has no "data"'),
        ({"data": "x"}, 'the top level."data" should be a list'),
        ({"data": ["x"]}, "data[0] should be an object"),
        ({"data": [{"paragraphs": {}}]}, 'data[0]."paragraphs" should be a list'),
        ({"data": [{"paragraphs": [{"context": 1, "qas": []}]}]}, 'data[0].paragraphs[0]."context" should be a str'),
        ({"data": [{"paragraphs": [{"context": "c"}]}]}, 'data[0].paragraphs[0] has no "qas"'),
        (_doc([{"question": "q", "answers": []}]), 'data[0].paragraphs[0].qas[0] has no "id"'),
        (_doc([{"id": 7, "question": "q", "answers": []}]), 'data[0].paragraphs[0].qas[0]."id" should be a str'),
        (_doc([{"id": "a", "question": "q"}]), 'data[0].paragraphs[0].qas[0] has no "answers"'),
        (_doc([{"id": "a", "question": "q", "answers": [{"answer_start": 0}]}]),
         'data[0].paragraphs[0].qas[0].answers[0] has no "text"'),
        (_doc([{"id": "a", "question": "q", "answers": ["Ann"]}]),
         "data[0].paragraphs[0].qas[0].answers[0] should be an object"),
    ],
)  # fmt: skip
def test_the_first_field_that_is_not_squad_shaped_is_named_by_its_path(doc, message):
    from edgeqa.bench.squad import parse_squad

    with pytest.raises(EdgeQAError) as e:
        parse_squad(doc, "bad.json")
    assert str(e.value) == f"bad.json: not a SQuAD file: {message}"


def test_a_repeated_id_names_where_it_appears_again():
    from edgeqa.bench.squad import parse_squad

    qas = [{"id": "a", "question": "q", "answers": []}, {"id": "a", "question": "q", "answers": []}]
    with pytest.raises(EdgeQAError) as e:
        parse_squad(_doc(qas), "dup.json")
    assert str(e.value) == "dup.json: question id 'a' appears twice (second at data[0].paragraphs[0].qas[1])"


def test_a_limit_and_an_empty_selection_are_told_apart(tmp_path, toy_squad):
    with pytest.raises(EdgeQAError) as e:
        load_squad(toy_squad, limit=-2)
    assert str(e.value) == "--limit must be a positive number of questions, got -2"
    assert len(load_squad(toy_squad, limit=1)) == 1 and len(load_squad(toy_squad, limit=None)) == 3
    empty = tmp_path / "empty.json"
    empty.write_text('{"data": []}')
    with pytest.raises(EdgeQAError) as e:
        load_squad(str(empty))
    assert str(e.value) == f"{empty}: holds no questions"


@pytest.mark.parametrize(
    ("source", "is_path"),
    [("squad", False), ("rajpurkar/squad_v2", False), ("dev.json", True), ("dev.json.gz", True), ("./dev", True),
     ("/data/dev", True), ("~/dev", True), ("a/b/c", True)],
)  # fmt: skip
def test_a_source_that_cannot_be_a_hub_id_is_read_as_a_file(source, is_path):
    from edgeqa.bench.squad import _looks_like_path

    assert _looks_like_path(source) == is_path


def test_a_missing_file_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    from edgeqa.bench import squad

    monkeypatch.setattr(squad, "_load_from_hub", lambda source: pytest.fail(f"went to the hub for {source}"))
    with pytest.raises(EdgeQAError, match="no such SQuAD file"):
        load_squad(str(tmp_path / "nothing" / "dev"))  # a path by its slashes, though no such file


class _Split(list):
    column_names = ["id", "title", "context", "question", "answers"]


def test_a_hub_dataset_is_read_into_the_same_examples(monkeypatch):
    """With the hub reachable (faked), the `datasets` validation split becomes examples like a file's; an empty
    answer list makes the set v2.0."""
    import sys
    import types

    from edgeqa.bench import squad

    rows = _Split([{"id": 5, "title": "T", "context": "Ann wrote.", "question": "Who?",
                    "answers": {"text": ["Ann"], "answer_start": ["0"]}}])  # fmt: skip
    asked = []

    def load_dataset(name, split):
        asked.append((name, split))
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(squad, "_hub_reachable", lambda: True)
    ds = squad._load_from_hub("squad")
    assert asked == [("squad", "validation")] and ds.source == "squad" and ds.version == "1.1"
    assert ds.examples == [squad.SquadExample("5", "Who?", "Ann wrote.", ("Ann",), (0,), "T")]
    rows.append({"id": "6", "context": "c", "question": "q", "answers": {"text": [], "answer_start": []}})
    assert squad._load_from_hub("squad").version == "2.0" and squad._load_from_hub("squad").examples[1].title == ""
    rows.column_names = ["id", "context"]
    with pytest.raises(EdgeQAError) as e:
        squad._load_from_hub("other")
    assert str(e.value) == "other: not a SQuAD-shaped dataset, missing columns ['answers', 'question']"

    def fails(name, split):
        raise ConnectionError("timed out")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fails))
    with pytest.raises(EdgeQAError) as e:
        squad._load_from_hub("squad")
    assert str(e.value) == "squad: cannot load from the hub: timed out"


def test_the_hub_is_unreachable_when_either_offline_switch_is_set(monkeypatch):
    from edgeqa.bench import squad

    monkeypatch.setattr(squad.socket, "create_connection", lambda *a, **k: pytest.fail("probed the network"))
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
        monkeypatch.setenv(name, "1")
        assert squad._hub_reachable() is False
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    probes = []

    class Connection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def connect(address, timeout):
        probes.append((address, timeout))
        return Connection()

    monkeypatch.setattr(squad.socket, "create_connection", connect)
    assert squad._hub_reachable() is True and probes == [(("huggingface.co", 443), 3.0)]

    def refused(address, timeout):
        raise ConnectionRefusedError

    monkeypatch.setattr(squad.socket, "create_connection", refused)
    assert squad._hub_reachable() is False
    with pytest.raises(EdgeQAError) as e:
        squad._load_from_hub("squad")
    assert str(e.value) == ("squad: no such file, and the Hugging Face hub is not reachable (offline) to load it as a "
                            "dataset id; pass a SQuAD JSON file instead")  # fmt: skip


def test_a_hub_id_without_the_datasets_package_says_what_to_install(monkeypatch):
    import sys

    from edgeqa.bench import squad

    monkeypatch.setitem(sys.modules, "datasets", None)  # import then fails as if not installed
    monkeypatch.setattr(squad, "_hub_reachable", lambda: True)
    with pytest.raises(EdgeQAError) as e:
        squad.load_squad("squad")
    assert str(e.value) == "squad: loading hub datasets needs `pip install edgeqa[hub]`"


def test_an_unanswerable_question_anywhere_makes_the_file_v2_and_needs_no_answers():
    from edgeqa.bench.squad import parse_squad

    qas = [{"id": "a", "question": "Why?", "is_impossible": True},  # no "answers" key at all
           {"id": "b", "question": "Who?", "answers": [{"text": "Ann", "answer_start": 0}]}]  # fmt: skip
    doc = {"data": [{"paragraphs": [{"context": "Ann wrote it.", "qas": qas}]}]}
    ds = parse_squad(doc, "f.json")
    assert ds.version == "2.0" and ds.examples[0].answers == () and ds.examples[1].title == ""


def test_a_question_without_its_text_is_named(tmp_path):
    from edgeqa.bench.squad import parse_squad

    with pytest.raises(EdgeQAError) as e:
        parse_squad(_doc([{"id": "a", "answers": []}]), "f.json")
    assert str(e.value) == 'f.json: not a SQuAD file: data[0].paragraphs[0].qas[0] has no "question"'


def test_loading_says_how_many_questions_of_which_version(toy_squad, caplog):
    caplog.set_level("INFO", logger="edgeqa.bench.squad")
    load_squad(toy_squad, limit=2)
    assert [r.getMessage() for r in caplog.records] == [f"loaded 2 questions from {toy_squad} (SQuAD v1.1)"]
