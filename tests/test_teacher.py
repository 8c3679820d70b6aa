"""Integration: the shared SQuAD teacher on a small dev subset, end to end through the CLI."""

import json

from conftest import DEV
from edgeqa.cli import main


def test_teacher_scores_on_dev_subset(teacher, tmp_path, capsys):
    # The first 200 dev questions; the full dev set gives EM 72.65 / F1 82.12 (docs/results/deploy.md), this
    # subset is easier.
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


def test_teacher_exports_with_parity_on_real_questions_and_int8_stays_close(teacher, tmp_path, capsys):
    """The export's default parity check (the first 200 dev questions) on the real teacher, then dynamic int8:
    on the first 300 dev questions, scored one window at a time as deployed, int8 must stay within 2 F1 of fp32
    (on the full dev set it costs about 0.5 to 0.7, docs/results/deploy.md; 300 questions move a score by about a
    point)."""
    onnx_dir, int8_dir = tmp_path / "onnx", tmp_path / "int8"
    assert main(["export", "--model", str(teacher), str(onnx_dir), "--parity-data", str(DEV)]) == 0
    parity = json.loads((onnx_dir / "parity.json").read_text())
    assert parity["questions"] == 200
    assert parity["max_abs_diff"] <= 1e-3 and parity["same_answer_share"] == 1.0
    assert main(["quantize", "--model", str(onnx_dir), str(int8_dir), "--parity-limit", "0"]) == 0
    scores = {}
    for name, folder in (("fp32", onnx_dir), ("int8", int8_dir)):
        capsys.readouterr()
        argv = ["eval", "--model", str(folder), "--data", str(DEV), "--limit", "300", "--threads", "2", "--json"]
        assert main(argv) == 0
        scores[name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["int8"]["batch_size"] == 1 and scores["int8"]["batch_dependent"]
    assert scores["fp32"]["f1"] > 80  # the teacher, not a broken export
    assert abs(scores["int8"]["f1"] - scores["fp32"]["f1"]) <= 2.0, scores
