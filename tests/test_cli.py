"""The command line: outputs, --json contracts, and one clean error line for expected mistakes."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from edgeqa.bench.evaluate import evaluate
from edgeqa.cli import main


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_score_json_last_line(toy_squad, tmp_path, capsys):
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"q0": "Paris", "q1": "a king"}))
    assert main(["score", str(toy_squad), str(preds), "--json"]) == 0
    m = _last_json(capsys)
    assert m["total"] == 3 and m["missing"] == 1
    assert m["exact_match"] == pytest.approx(200 / 3)


def test_eval_writes_predictions_and_metrics(tiny_qa_model, toy_squad, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "--model",
            str(tiny_qa_model),
            "--data",
            str(toy_squad),
            "--limit",
            "2",
            "--threads",
            "1",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    m = _last_json(capsys)
    assert m["total"] == 2 and m["missing"] == 0 and 0 <= m["f1"] <= 100
    assert json.loads((out / "metrics.json").read_text())["f1"] == m["f1"]
    assert set(json.loads((out / "predictions.json").read_text())) == {"q0", "q1"}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_answer_prints_a_span_of_the_context(tiny_qa_model, capsys):
    context = "paris is the capital of france."
    assert (
        main(
            [
                "answer",
                "--model",
                str(tiny_qa_model),
                "--question",
                "what is the capital?",
                "--context",
                context,
                "--json",
            ]
        )
        == 0
    )
    a = _last_json(capsys)
    assert a["answer"] in context and context[a["start"] : a["end"]] == a["answer"]
    assert 0 <= a["probability"] <= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["score", "{tmp}/absent.json", "{tmp}/p.json"], "absent.json: no such SQuAD file"),
        (["score", "{toy}", "{tmp}/list.json"], "list.json: not a predictions file"),
        (["eval", "--model", "{tmp}", "--data", "{toy}"], "not a model folder"),
    ],
)
def test_expected_mistakes_exit_2_with_one_line(args, message, toy_squad, tmp_path):
    (tmp_path / "list.json").write_text("[]")
    argv = [a.format(tmp=tmp_path, toy=toy_squad) for a in args]
    proc = subprocess.run([sys.executable, "-m", "edgeqa.cli", *argv], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edgeqa: error:")]
    assert len(errors) == 1 and message in errors[0]


def test_deployment_subcommands_chain(tiny_qa_model, toy_squad, tmp_path, capsys, monkeypatch):
    onnx_dir, int8_dir = tmp_path / "onnx", tmp_path / "int8"
    parity = ["--parity-data", str(toy_squad), "--parity-limit", "3"]
    assert main(["export", "--model", str(tiny_qa_model), str(onnx_dir), "--fuse", "--mobile", *parity]) == 0
    assert (onnx_dir / "model.onnx").exists() and (tmp_path / "onnx-unfused" / "parity.json").exists()
    assert (tmp_path / "onnx-ort" / "model.ort").exists()
    assert main(["quantize", "--model", str(onnx_dir), str(int8_dir), "--preset", "avx512_vnni", *parity]) == 0
    assert json.loads((int8_dir / "quantization.json").read_text())["per_channel"] is True
    capsys.readouterr()
    common = ["--seq-lens", "32", "--warmup", "1", "--repeats", "3", "--threads", "1"]
    assert main(["bench", "--model", str(int8_dir), "--json", *common]) == 0
    bench = _last_json(capsys)
    assert bench["latency"][0]["seq_len"] == 32 and bench["machine"]["logical_cores"] >= 1
    out = tmp_path / "report"
    assert (
        main(
            [
                "report",
                "--variant",
                f"fp32={tiny_qa_model}",
                "--variant",
                f"int8={int8_dir}",
                "--data",
                str(toy_squad),
                "--out",
                str(out),
                "--target",
                "0.01:0.01",
                *common,
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["targets"][0]["met"] and report["targets"][0]["speedup"] == 0.01
    assert [r["name"] for r in report["rows"]] == ["fp32", "int8"] and report["reference"] == "fp32"
    # Rows are assembled as a recipe's are: the int8 row carries its folder's quantization and parity records.
    int8_row = report["rows"][1]["extra"]
    assert int8_row["quantization"]["per_channel"] is True and "parity" in int8_row
    assert "quantization" not in report["rows"][0]["extra"]
    assert main(["report", "--variant", "no-equals-sign", "--out", str(out)]) == 2
    assert main(["report", "--variant", f"fp32={tiny_qa_model}", "--target", "3:98", "--out", str(tmp_path / "t")]) == 2
    assert "f1_share must be in (0, 1]" in capsys.readouterr().err and not (tmp_path / "t").exists()

    # The commands run the recipe's step kinds: made once per identity, measured once per made model.
    made = json.loads((int8_dir / "step.json").read_text())
    assert (made["step"], made["preset"], made["from"]) == ("quantize", "avx512_vnni", str(onnx_dir.absolute()))
    assert main(["quantize", "--model", str(onnx_dir), str(int8_dir), "--preset", "avx512_vnni", *parity]) == 0
    assert json.loads((int8_dir / "step.json").read_text())["made"] == made["made"]  # reused, not made again
    assert main(["quantize", "--model", str(onnx_dir), str(int8_dir), "--preset", "avx2", *parity]) == 2
    assert "was made by a step with other settings" in capsys.readouterr().err
    assert json.loads((int8_dir / "step.json").read_text())["made"] == made["made"]  # the refusal kept it
    again = ["report", "--variant", f"fp32={tiny_qa_model}", "--variant", f"int8={int8_dir}", "--data", str(toy_squad),
             "--out", str(out), *common]  # fmt: skip
    scored = []
    monkeypatch.setattr(
        "edgeqa.pipeline.steps.bench_step.evaluate",
        lambda path, *a, **k: scored.append(path) or evaluate(path, *a, **k),
    )
    assert main(again) == 0 and scored == []  # scores and timings reused
    weights = tiny_qa_model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # replaced in place
    assert main(again) == 0 and scored == [tiny_qa_model]  # only the model that changed is scored again
