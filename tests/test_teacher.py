"""Integration: the shared SQuAD teacher on a small dev subset, end to end through the CLI."""

import json

from compress.cli import main
from conftest import DEV


def test_teacher_scores_on_dev_subset(teacher, tmp_path, capsys):
    # The first 200 dev questions; the full dev set gives EM 72.65 / F1 82.12 (README), this subset is easier.
    assert (
        main(
            [
                "eval",
                "--model",
                str(teacher),
                "--data",
                str(DEV),
                "--limit",
                "200",
                "--threads",
                "2",
                "--batch-size",
                "32",
                "--out",
                str(tmp_path),
                "--json",
            ]
        )
        == 0
    )
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert m["total"] == 200 and m["missing"] == 0
    assert 76 <= m["exact_match"] <= 88 and 80 <= m["f1"] <= 92


def test_teacher_answers_past_max_length(teacher, capsys):
    filler = " ".join(f"In year {1000 + i} the harvest in the valley was ordinary." for i in range(60))
    context = filler + " The tallest tower in the valley was built by Margaret Okafor in 1887."
    assert (
        main(
            [
                "answer",
                "--model",
                str(teacher),
                "--question",
                "Who built the tallest tower in the valley?",
                "--context",
                context,
                "--json",
            ]
        )
        == 0
    )
    a = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert a["answer"] == "Margaret Okafor"
    assert a["start"] > 2000  # far beyond the first 384-token window
