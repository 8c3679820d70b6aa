"""The Python API: the README's example, run as written against the shared teacher, and the configs' round trip."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import edgeqa
from conftest import REPO, SHARED
from edgeqa.bench.files import EdgeQAError


def readme_example() -> str:
    section = (REPO / "README.md").read_text(encoding="utf-8").split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.integration
def test_the_readme_example_runs_and_answers(tmp_path, teacher):
    code = readme_example().replace("../shared", str(SHARED))
    (tmp_path / "example.py").write_text(code)
    proc = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    em, f1 = map(float, re.fullmatch(r"EM ([\d.]+)  F1 ([\d.]+)", lines[0]).groups())
    # The teacher scores 72.65 / 82.12 on the full dev set; int8 on its first 100 questions lands near that.
    assert 60 < em <= 100 and 70 < f1 <= 100
    assert re.fullmatch(r"[\d.]+ ms at batch 1 x 384 on .+", lines[1])
    assert lines[2] == "Ada Lovelace"
    assert (tmp_path / "out" / "teacher-int8" / "quantization.json").exists()
    assert (tmp_path / "out" / "teacher-onnx" / "parity.json").exists()


def test_configs_round_trip_through_json_and_stay_frozen():
    import json

    cfg = edgeqa.ExportConfig(opset=18, fuse=False, parity_data="dev.json", parity_limit=5)
    assert edgeqa.ExportConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(AttributeError):
        cfg.opset = 17  # frozen
    latency = edgeqa.LatencyConfig(seq_lens=(128,), repeats=5)
    assert edgeqa.LatencyConfig.from_dict(json.loads(json.dumps(latency.to_dict()))) == latency
    with pytest.raises(EdgeQAError, match="unknown export setting"):
        edgeqa.ExportConfig.from_dict({"opset": 17, "fusion": True})


def test_importing_the_api_imports_neither_torch_nor_transformers():
    code = "import sys, edgeqa\nedgeqa.to_onnx, edgeqa.QAConfig\n"
    code += "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"


def test_the_api_verbs_make_once_and_record_what_they_were_given(tmp_path, tiny_onnx_model, toy_squad):
    import json

    _, onnx = tiny_onnx_model
    own = edgeqa.QuantizeConfig(per_channel=False, reduce_range=True)
    out = edgeqa.quantize(onnx, tmp_path / "own", own)
    record = json.loads((out / "quantization.json").read_text())
    assert record["per_channel"] is False and "preset" not in record  # a config as given: no preset claimed
    step = json.loads((out / "step.json").read_text())
    assert step["step"] == "quantize" and "preset" not in step and step["per_channel"] is False
    assert edgeqa.quantize(onnx, tmp_path / "own", own) == out
    assert json.loads((out / "step.json").read_text())["made"] == step["made"]  # made once
    named = edgeqa.quantize(onnx, tmp_path / "named", "avx2", reduce_range=False)
    assert json.loads((named / "quantization.json").read_text())["preset"]["chosen"] == "avx2"
    assert json.loads((named / "quantization.json").read_text())["reduce_range"] is False  # the override won
    with pytest.raises(EdgeQAError, match="settings over a preset need a preset name"):
        edgeqa.quantize(onnx, tmp_path / "x", own, reduce_range=False)
    bench = edgeqa.LatencyConfig(seq_lens=(32,), warmup=1, repeats=3, threads=1)
    root = edgeqa.report({"own": out, "named": named}, toy_squad, tmp_path / "report", bench=bench)
    report = json.loads((root / "report.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["own", "named"] and report["reference"] == "own"
    assert sorted(p.name for p in (root / "eval").iterdir()) == ["named", "own"]
