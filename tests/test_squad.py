"""Reading SQuAD files: both layouts, gzip, subsets, and a clear error for every kind of bad file."""

import json
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


def test_duplicate_ids_are_refused(tmp_path):
    doc = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": "c",
                        "qas": [
                            {"id": "x", "question": "q", "answers": []},
                            {"id": "x", "question": "q", "answers": []},
                        ],
                    }
                ]
            }
        ]
    }
    path = tmp_path / "dup.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(EdgeQAError, match="appears twice"):
        load_squad(path)


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
